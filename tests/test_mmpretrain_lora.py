"""LoRA inserted from the config vs mmpretrain's own ``LoRAModel`` (its
PEFT wrapper, ``mmpretrain/models/peft/lora.py``), on mmpretrain's own
``VisionTransformer`` in an ``ImageClassifier``, rank 4 on every ``qkv``:

* the same weights (base, A, B) give the same outputs and gradients, bit
  for bit: both compute ``qkv(x) + alpha / r * B(A(x))`` with the same ops;
* our names stay the backbone's own (``backbone.layers.N.attn.qkv.weight``
  plus ``...qkv.lora_A.weight``), so a plain ViT checkpoint loads by name,
  where ``LoRAModel`` moves everything under ``backbone.module.`` and the
  target's weight under ``...qkv.original_layer.``; its ``state_dict``
  keeps only the ``lora_`` keys (and what follows the backbone);
* layer decay: mmpretrain's ``LearningRateDecayOptimWrapperConstructor``
  asks ``VisionTransformer.get_layer_depth``, which does not know the
  ``module.`` prefix, so under ``LoRAModel`` every parameter gets the depth
  of "the rest" (scale 1); with ours inserted, both that stock constructor
  and ``ProvenanceOptimWrapperConstructor`` give every parameter the depth
  and learning rate stock gives the plain ViT, each LoRA tensor those of
  its block.
"""
import re
from typing import Dict, Optional

import pytest
import torch
import torch.nn as nn
from mmengine.registry import init_default_scope
from mmpretrain.engine.optimizers import \
    LearningRateDecayOptimWrapperConstructor
from mmpretrain.registry import MODELS

from mmext_init import ProvenanceOptimWrapperConstructor, get_provenance

ARCH = dict(embed_dims=32, num_layers=4, num_heads=2, feedforward_channels=64)
RANK, ALPHA = 4, 8


def vit(**kwargs) -> dict:
    return dict(type='VisionTransformer', arch=ARCH, img_size=32,
                patch_size=8, **kwargs)


OURS = [dict(type='LoRA', targets=r'backbone\.layers\.\d+\.attn\.qkv',
             rank=RANK, alpha=ALPHA)]
PEER = dict(type='LoRAModel', module=vit(), alpha=ALPHA, rank=RANK,
            targets=[dict(type='qkv')])


def classifier(backbone: dict, insert: Optional[list] = None) -> nn.Module:
    """An initialized mmpretrain ``ImageClassifier`` (4 classes)."""
    cfg = dict(type='ImageClassifier', backbone=backbone,
               head=dict(type='VisionTransformerClsHead', num_classes=4,
                         in_channels=ARCH['embed_dims']))
    if insert is not None:
        cfg['insert'] = insert
    init_default_scope('mmpretrain')
    model = MODELS.build(cfg)
    model.init_weights()
    return model


def peer_name(name: str) -> str:
    """Our parameter name -> ``LoRAModel``'s name of the same tensor."""
    name = re.sub(r'^backbone\.', 'backbone.module.', name)
    name = re.sub(r'\.qkv\.(weight|bias)$', r'.qkv.original_layer.\1', name)
    return name.replace('.lora_A.', '.lora_down.').replace(
        '.lora_B.', '.lora_up.')


def trained(model: nn.Module) -> None:
    """Draw what starts at zero (LoRA's B, the head), as after training."""
    for name, p in model.named_parameters():
        if name.endswith('.lora_B.weight') or name.startswith('head.'):
            p.normal_(0, 0.5)


@pytest.fixture
def pair():
    """Ours and the peer with the same weights: ours as built, B and the
    head drawn (as after training: else the branches add 0 and the zero
    head hides everything), everything copied across."""
    ours, peer = classifier(vit(), OURS), classifier(PEER)
    with torch.no_grad():
        trained(ours)
        theirs = dict(peer.named_parameters())
        for name, p in ours.named_parameters():
            theirs.pop(peer_name(name)).copy_(p)
    assert theirs == {}  # every peer parameter was set
    return ours, peer


def test_same_weights_give_the_same_outputs(pair):
    ours, peer = pair
    x = torch.randn(3, 3, 32, 32)
    ours.eval(), peer.eval()
    with torch.no_grad():
        out, ref = ours(x, mode='tensor'), peer(x, mode='tensor')
        plain = classifier(vit())
        plain.load_state_dict({k: v for k, v in ours.state_dict().items()
                               if '.lora_' not in k})
        without = plain.eval()(x, mode='tensor')
    assert torch.equal(out, ref)
    print(f'\nLoRA branch moves the logits by up to '
          f'{(out - without).abs().max().item():.3e}')
    assert (out - without).abs().max() > 1e-3  # the branches count


def test_same_gradients_with_dropout_in_train_mode():
    """Train mode with LoRA dropout 0.2 in both (same seed, same draws, in
    the same order): the logits and the gradients of A and B are equal."""
    ours = classifier(vit(), [dict(OURS[0], dropout=0.2)])
    peer = classifier(dict(PEER, drop_rate=0.2))
    with torch.no_grad():
        trained(ours)
        theirs = dict(peer.named_parameters())
        for name, p in ours.named_parameters():
            theirs[peer_name(name)].copy_(p)
    x = torch.randn(3, 3, 32, 32)
    outputs = []
    for model in (ours.train(), peer.train()):
        torch.manual_seed(1)
        out = model(x, mode='tensor')
        out.square().sum().backward()
        outputs.append(out.detach())
    assert torch.equal(outputs[0], outputs[1])
    theirs = dict(peer.named_parameters())
    lora = [n for n, _ in ours.named_parameters() if '.lora_' in n]
    assert len(lora) == 2 * ARCH['num_layers']
    for name, p in ours.named_parameters():
        if '.lora_' in name:
            assert torch.equal(p.grad, theirs[peer_name(name)].grad), name


def test_inits_keep_the_function_at_step_0():
    """Both branches start as in the paper, A Kaiming-uniform and B zero
    (adding exactly 0); ours is declared (the modules' ``init_cfg``) and
    the ledger says what inserted it, the peer's is drawn in
    ``LoRALinear.__init__``, which the ledger can only call the
    constructor default."""
    ours, peer = classifier(vit(), OURS), classifier(PEER)
    mine, theirs = dict(ours.named_parameters()), \
        dict(peer.named_parameters())
    name = 'backbone.layers.2.attn.qkv.lora_{}.weight'
    for params, rename in ((mine, str), (theirs, peer_name)):
        assert torch.count_nonzero(params[rename(name.format('A'))]) > 0
        assert torch.count_nonzero(params[rename(name.format('B'))]) == 0
    entry = get_provenance(ours).entries[name.format('B')]
    assert entry.kind == 'initializer' and entry.source == 'Constant'
    assert 'inserted by LoRA(rank=4, alpha=8) from insert[0]' in \
        entry.describe('ImageClassifier')
    assert get_provenance(peer).entries[
        peer_name(name.format('B'))].kind == 'constructor'


def test_names_stay_the_backbones_own(pair):
    ours, peer = pair
    plain = set(classifier(vit()).state_dict())
    mine = set(ours.state_dict())
    lora = {f'backbone.layers.{i}.attn.qkv.lora_{ab}.weight'
            for i in range(ARCH['num_layers']) for ab in 'AB'}
    assert mine == plain | lora  # a plain ViT checkpoint loads by name
    theirs = {n for n, _ in peer.named_parameters()}
    assert 'backbone.module.layers.0.attn.qkv.original_layer.weight' in \
        theirs
    assert not {n for n in theirs if n.startswith('backbone.')} & plain
    # LoRAModel's state_dict hook drops every non-LoRA key saved so far:
    # a checkpoint of it holds the LoRA tensors and the head, no backbone
    saved = set(peer.state_dict())
    assert saved == {peer_name(n) for n in lora} | {
        n for n in plain if n.startswith('head.')}


def stock_depths(model: nn.Module) -> Dict[str, int]:
    """mmpretrain's own layer decay: ``layer_id`` per trainable parameter
    name (its groups carry ``param_name`` and ``layer_id``)."""
    build = LearningRateDecayOptimWrapperConstructor(
        dict(optimizer=dict(type='AdamW', lr=1.0, weight_decay=0.05)),
        dict(layer_decay_rate=0.5))
    groups = build(model).optimizer.param_groups
    return {g['param_name']: g['layer_id'] for g in groups}


def test_peer_renaming_gives_every_parameter_the_same_depth():
    """``backbone.module.layers.N...`` is no ``layers.N`` to
    ``VisionTransformer.get_layer_depth``: under LoRAModel every parameter
    (all of them made trainable here, as in a full fine-tuning) gets depth
    num_layers + 1, where the plain ViT's range from 0 to num_layers + 1."""
    top = ARCH['num_layers'] + 1
    plain = stock_depths(classifier(vit()))
    assert set(plain.values()) == set(range(top + 1))
    peer = classifier(PEER)
    trained = stock_depths(peer)  # LoRA's own freezing: lora_ and head
    assert {n for n in trained if '.lora_' in n} and \
        set(trained.values()) == {top}
    for p in peer.parameters():
        p.requires_grad_(True)
    everything = stock_depths(peer)
    assert len(everything) == len(list(peer.parameters()))
    assert set(everything.values()) == {top}
    assert everything['backbone.module.patch_embed.projection.weight'] == \
        top != plain['backbone.patch_embed.projection.weight'] == 0


def block_of(name: str) -> str:
    """The name whose depth a parameter has on the plain ViT: a LoRA
    tensor's, that of its target's weight."""
    return re.sub(r'\.lora_[AB]\.weight$', '.weight', name)


def test_depths_stay_right_with_lora_inserted():
    """Stock's table on the plain ViT is the reference. With ours
    inserted, mmpretrain's own constructor gives the same depths (the names
    did not change) and each LoRA tensor its block's; our constructor's
    ``layer_decay`` (depths from the structure, no table) gives every
    parameter the learning rate stock gives it on the plain ViT."""
    plain = stock_depths(classifier(vit()))
    ours = classifier(vit(), OURS)
    with_lora = stock_depths(ours)
    lora = [n for n in with_lora if '.lora_' in n]
    assert len(lora) == 2 * ARCH['num_layers']
    assert {n: with_lora[n] for n in plain} == plain
    for name in lora:
        layer = int(name.split('.')[2])
        assert with_lora[name] == plain[block_of(name)] == layer + 1, name

    rate, base_lr = 0.5, 1.0
    build = ProvenanceOptimWrapperConstructor(
        dict(optimizer=dict(type='AdamW', lr=base_lr, weight_decay=0.05)),
        dict(layer_decay=dict(rate=rate, select=dict(name=r'backbone\..*'))))
    lr_of = {id(p): g['lr'] for g in build(ours).optimizer.param_groups
             for p in g['params']}
    top = ARCH['num_layers'] + 2  # stock's max_id: scale rate**(top - d - 1)
    for name, p in ours.named_parameters():
        expected = base_lr * rate**(top - plain[block_of(name)] - 1)
        assert lr_of[id(p)] == pytest.approx(expected, rel=1e-12), name
