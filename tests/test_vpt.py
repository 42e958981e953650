"""Visual Prompt Tuning inserted from the config (``insert=[dict(type='VPT',
targets='backbone', num_tokens=..., deep=...)]``) on mmpretrain's and
mmseg's own ``VisionTransformer`` (and mmpretrain's DeiT, two prefix
tokens):

* against the paper's formula, written out by hand on the plain model with
  the same weights and the same prompt tensors (prompts concatenated after
  the prefix tokens at the first block, and for VPT-deep replacing the
  prompt positions at every further block; the prompt positions dropped
  where the backbone formats its outputs): the same outputs, every
  ``out_indices`` output, bit for bit (max abs difference 0.0: both run
  the same ops on the same sequences, the hooks only slice and
  concatenate);
* backbones whose blocks are bound to the patch grid refused at insert
  time; a plain checkpoint loads bit-exact beside the prompts' declared
  init, a delta restores them; only the prompts and the head train under
  ``freeze='loaded'``; ``mmext-merge`` refuses to fold them and
  ``mmext-check`` reports the changed function.
"""
import copy
import pickle
from typing import Callable, Dict, List, Optional, Tuple

import pytest
import torch
import timm
import torch.nn as nn
from mmengine.registry import init_default_scope
from mmpretrain.registry import MODELS as CLS_MODELS
from mmseg.registry import MODELS as SEG_MODELS

from mmext_init import (InitConfigError, ProvenanceOptimWrapperConstructor,
                        get_provenance)
from mmext_init.hooks.delta_checkpoint import delta_checkpoint
from mmext_init.inserting import insert_modules
from mmext_init.inserting.methods.prompts import prompt_bound
from mmext_init.tools import check_function_preserving, merge_inserted

ARCH = dict(embed_dims=32, num_layers=4, num_heads=2, feedforward_channels=64)
N = 3  # prompt tokens
NOTE = 'inserted by VPT(num_tokens=3, deep={}) from insert[0]'


def vpt(deep: bool, **kwargs) -> List[dict]:
    return [dict(type='VPT', targets='backbone', num_tokens=N, deep=deep,
                 **kwargs)]


def cls_backbone(kind: str = 'VisionTransformer', **kwargs) -> dict:
    return dict(type=kind, arch=ARCH, img_size=32, patch_size=8,
                out_indices=(1, 3), **kwargs)


def built(scope: str, cfg: dict, insert: Optional[list]) -> nn.Module:
    """``cfg`` built in ``scope`` (with ``insert`` when given), initialized."""
    init_default_scope(scope)
    registry = CLS_MODELS if scope == 'mmpretrain' else SEG_MODELS
    model = registry.build(cfg if insert is None else dict(cfg, insert=insert))
    model.init_weights()
    return model


def classifier(backbone: dict, insert: Optional[list] = None,
               init_cfg: Optional[dict] = None) -> nn.Module:
    """An initialized mmpretrain ``ImageClassifier`` (4 classes)."""
    head = 'DeiTClsHead' if backbone['type'].startswith('Distilled') else \
        'VisionTransformerClsHead'
    return built('mmpretrain', dict(
        type='ImageClassifier', backbone=backbone, init_cfg=init_cfg,
        head=dict(type=head, num_classes=4,
                  in_channels=ARCH['embed_dims'])), insert)


SEG_HEAD = dict(type='FCNHead', in_channels=32, channels=8, num_convs=1,
                num_classes=2, in_index=-1)


def segmentor(insert: Optional[list] = None, **kwargs) -> nn.Module:
    """An mmseg ``EncoderDecoder`` on mmseg's ``VisionTransformer`` (4
    blocks), initialized."""
    backbone = dict(type='VisionTransformer', img_size=32, patch_size=8,
                    embed_dims=32, num_layers=4, num_heads=2, mlp_ratio=2,
                    out_indices=(1, 3), final_norm=True, **kwargs)
    return built('mmseg', dict(type='EncoderDecoder', backbone=backbone,
                               decode_head=SEG_HEAD), insert)


def plain_copy(inserted: nn.Module, plain: nn.Module) -> nn.Module:
    """``plain`` holding every tensor of ``inserted`` but the prompts."""
    state = {k: v for k, v in inserted.state_dict().items()
             if '.vpt_prompt.' not in k}
    plain.load_state_dict(state, strict=True)
    plain.eval()
    return plain


def block_input(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The plain backbone's own token sequence at its first block (patch
    and position embedding, prefix tokens): the reference starts there."""
    seen = []
    handle = backbone.layers[0].register_forward_pre_hook(
        lambda m, args: seen.append(args[0]))
    backbone(x)
    handle.remove()
    return seen[0]


def reference_blocks(backbone: nn.Module, tokens: torch.Tensor,
                     prompts: List[torch.Tensor], prefix: int,
                     after: Callable[[int, torch.Tensor], torch.Tensor]
                     ) -> List[torch.Tensor]:
    """The paper's forward through the blocks: the prompts after the
    ``prefix`` tokens at the first block, each further prompt tensor in
    place of the prompt positions (VPT-deep; one tensor: VPT-shallow, they
    travel on); ``after(i, x)`` is what the backbone does after block i
    (its norm), and each ``out_indices`` output is formatted without the
    prompt positions."""
    batch, n = tokens.shape[0], prompts[0].shape[0]
    x = torch.cat([tokens[:, :prefix], prompts[0].expand(batch, -1, -1),
                   tokens[:, prefix:]], dim=1)
    outs = []
    for i, layer in enumerate(backbone.layers):
        if 0 < i < len(prompts):
            x = torch.cat([x[:, :prefix], prompts[i].expand(batch, -1, -1),
                           x[:, prefix + n:]], dim=1)
        x = after(i, layer(x))
        if i in backbone.out_indices:
            outs.append(torch.cat([x[:, :prefix], x[:, prefix + n:]], dim=1))
    return outs


def prompt_tensors(model: nn.Module, prefix: str = '') -> List[torch.Tensor]:
    return [p for n, p in model.named_parameters()
            if n.startswith(prefix) and n.endswith('.vpt_prompt.tokens')]


def drawn(model: nn.Module) -> nn.Module:
    """Prompts and head drawn as after training (a zero head hides all)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if '.vpt_prompt.' in name or name.startswith('head.'):
                p.normal_(0, 0.5)
    return model.eval()


def flat(outs: tuple) -> List[torch.Tensor]:
    """The output tensors (DeiT's cls-token output is a pair)."""
    return [t for out in outs
            for t in (out if isinstance(out, tuple) else (out, ))]


@pytest.mark.parametrize('deep', [True, False])
@pytest.mark.parametrize('kind', ['VisionTransformer',
                                  'DistilledVisionTransformer'])
def test_mmpretrain_vit_matches_the_paper_by_hand(kind, deep):
    """mmpretrain's ViT (1 prefix token) and DeiT (2), every out_indices
    output and the logits, bit for bit; the prompts count (the output
    without them differs)."""
    ours = drawn(classifier(cls_backbone(kind), vpt(deep)))
    plain = plain_copy(ours, classifier(cls_backbone(kind)))
    vit = plain.backbone
    prefix = vit.num_extra_tokens
    assert prefix == (2 if kind.startswith('Distilled') else 1)
    prompts = prompt_tensors(ours)
    assert len(prompts) == (ARCH['num_layers'] if deep else 1)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        outs = ours.backbone(x)
        last = len(vit.layers) - 1
        ref = reference_blocks(
            vit, block_input(vit, x), prompts, prefix,
            lambda i, t: vit.ln1(t) if i == last else t)
        ref = tuple(vit._format_output(t, (4, 4)) for t in ref)
        logits = ours(x, mode='tensor')
        ref_logits = plain.head(plain.neck(ref) if plain.with_neck else ref)
        without = plain(x, mode='tensor')
    assert len(outs) == len(ref) == 2
    for out, expected in zip(flat(outs), flat(ref)):
        assert out.shape == expected.shape
        assert (out - expected).abs().max().item() == 0.0
    assert torch.equal(logits, ref_logits.detach())
    assert (logits - without).abs().max() > 1e-3


@pytest.mark.parametrize('deep', [True, False])
@pytest.mark.parametrize('with_cls_token', [True, False])
def test_mmseg_vit_matches_the_paper_by_hand(deep, with_cls_token):
    """mmseg's ViT (1 prefix token, 0 with ``with_cls_token=False``): its
    (B, C, h, w) outputs keep their shape and equal the hand-written
    reference bit for bit."""
    model = segmentor(vpt(deep), with_cls_token=with_cls_token)
    with torch.no_grad():
        for p in prompt_tensors(model):
            p.normal_(0, 0.5)
    model.eval()  # not chained: mmseg's ViT.train() returns None
    ours = model.backbone
    vit = plain_copy(model, segmentor(with_cls_token=with_cls_token)).backbone
    prefix = int(with_cls_token)
    x = torch.randn(2, 3, 32, 64)
    last = len(vit.layers) - 1
    with torch.no_grad():
        outs = ours(x)
        ref = reference_blocks(
            vit, block_input(vit, x), prompt_tensors(ours), prefix,
            lambda i, t: vit.norm1(t) if i == last else t)
        without = vit(x)
    for out, tokens, plain_out in zip(outs, ref, without):
        expected = tokens[:, prefix:].reshape(2, 4, 8, 32).permute(0, 3, 1, 2)
        assert out.shape == plain_out.shape == (2, 32, 4, 8)
        assert (out - expected).abs().max().item() == 0.0
        assert (out - plain_out).abs().max() > 1e-3


@pytest.mark.parametrize('deep', [True, False])
def test_timm_vit_with_register_tokens_matches_by_hand(deep):
    """timm's ViT with a class token and 4 register tokens
    (``num_prefix_tokens`` 5): the prompts go after all five."""
    vit = timm.create_model('vit_tiny_patch16_224', img_size=32, patch_size=8,
                            depth=3, reg_tokens=4, num_classes=0)
    plain = copy.deepcopy(vit).eval()
    insert_modules(vit, [dict(type='VPT', targets='', num_tokens=N,
                              deep=deep)])
    vit.eval()  # the prompts as their constructor drew them
    x = torch.randn(2, 3, 32, 32)
    seen = []
    plain.blocks[0].register_forward_pre_hook(
        lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        plain(x)
        tokens = seen[0]
        assert tokens.shape[1] == 5 + 16
        plain.out_indices = (len(plain.blocks) - 1, )
        plain.layers = plain.blocks
        ref, = reference_blocks(plain, tokens, prompt_tensors(vit), 5,
                                lambda i, t: t)
        out = vit.forward_features(x)
    assert (out - plain.norm(ref)).abs().max().item() == 0.0
    assert (out - plain.forward_features(x)).abs().max() > 1e-3


def test_shallow_prompts_travel_and_copies_keep_their_own():
    """VPT-shallow: one prompt tensor, at the first block; a deep copy and
    a pickle give the same outputs and use their own prompts."""
    ours = drawn(classifier(cls_backbone(), vpt(False)))
    names = [n for n, _ in ours.named_parameters() if '.vpt_prompt.' in n]
    assert names == ['backbone.layers.0.vpt_prompt.tokens']
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = ours(x, mode='tensor')
        for twin in (copy.deepcopy(ours), pickle.loads(pickle.dumps(ours))):
            assert torch.equal(twin(x, mode='tensor'), out)
            twin.backbone.layers[0].vpt_prompt.tokens.add_(1.0)
            assert not torch.equal(twin(x, mode='tensor'), out)
            assert torch.equal(ours(x, mode='tensor'), out)


@pytest.mark.parametrize('deep', [True, False])
def test_every_prompt_gets_a_gradient(deep):
    """Through the carried prompt outputs too (shallow): each prompt
    tensor, and nothing of the model's own that is frozen, gets a
    gradient."""
    ours = drawn(classifier(cls_backbone(), vpt(deep)))
    for name, p in ours.named_parameters():
        p.requires_grad_('.vpt_prompt.' in name)
    ours.train()
    ours(torch.randn(2, 3, 32, 32), mode='tensor').square().sum().backward()
    grads = {n: p.grad for n, p in ours.named_parameters()
             if p.grad is not None}
    assert sorted(grads) == sorted(
        n for n, _ in ours.named_parameters() if '.vpt_prompt.' in n)
    assert all(g.abs().max() > 0 for g in grads.values())


def test_prompt_dropout_in_train_mode_only():
    ours = classifier(cls_backbone(), vpt(True, prompt_dropout=0.5))
    drawn(ours)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        evals = [ours(x, mode='tensor') for _ in range(2)]
        ours.train()
        torch.manual_seed(0)
        a = ours(x, mode='tensor')
        torch.manual_seed(1)
        b = ours(x, mode='tensor')
    assert torch.equal(evals[0], evals[1]) and not torch.equal(a, b)


def test_declared_init_and_the_ledger_with_a_plain_checkpoint(tmp_path):
    """A plain ViT classifier checkpoint loads bit-exact; each block's
    prompts are new, uniform in [-v, v] with the paper's v (patch 8x8, 3
    channels, width 32), and the ledger says so and who inserted them."""
    base = classifier(cls_backbone())
    path = str(tmp_path / 'vit.pth')
    torch.save({'state_dict': base.state_dict()}, path)
    ours = classifier(cls_backbone(), vpt(True),
                      init_cfg=dict(type='Pretrained', checkpoint=path))
    state = ours.state_dict()
    for name, value in base.state_dict().items():
        assert torch.equal(state[name], value), name
    entries = get_provenance(ours).entries
    bound = prompt_bound(3 * 8 * 8, 32)
    assert bound == pytest.approx((6 / (192 + 32))**0.5)
    prompts = [n for n in state if '.vpt_prompt.' in n]
    assert prompts == [f'backbone.layers.{i}.vpt_prompt.tokens'
                       for i in range(4)]
    for name in prompts:
        entry = entries[name]
        assert (entry.kind, entry.source) == ('initializer', 'PromptUniform')
        text = entry.describe('ImageClassifier')
        assert 'PromptUniform(fan_in=192)' in text
        assert NOTE.format(True) in text
        tokens = state[name]
        assert tokens.shape == (N, 32) and tokens.abs().max() <= bound
        assert tokens.abs().max() > bound / 2  # drawn, not left at zero
    assert all(entries[n].kind == 'checkpoint' for n in base.state_dict())


def test_delta_with_the_prompts_restores_them(tmp_path):
    """Prompts and head trained on a frozen base: the delta holds just
    them, and base + delta rebuilds the model bit for bit, the ledger
    naming the delta for the prompts."""
    base = classifier(cls_backbone())
    path = str(tmp_path / 'vit.pth')
    torch.save({'state_dict': base.state_dict()}, path)
    root = dict(type='Pretrained', checkpoint=path)
    trained = classifier(cls_backbone(), vpt(False), init_cfg=root)
    for name, p in trained.named_parameters():
        p.requires_grad_('.vpt_prompt.' in name or name.startswith('head.'))
    drawn(trained)
    delta = delta_checkpoint(trained, insert=vpt(False), at_iter=2)
    assert sorted(delta['state_dict']) == [
        'backbone.layers.0.vpt_prompt.tokens', 'head.layers.head.bias',
        'head.layers.head.weight']
    delta_path = str(tmp_path / 'delta.pth')
    torch.save(delta, delta_path)
    rebuilt = classifier(cls_backbone(), vpt(False), init_cfg=dict(
        root, checkpoint=[path, delta_path]))
    want = trained.state_dict()
    got = rebuilt.state_dict()
    assert sorted(got) == sorted(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    entry = get_provenance(rebuilt).entries[
        'backbone.layers.0.vpt_prompt.tokens']
    assert entry.kind == 'checkpoint' and entry.source.endswith('delta.pth')


def test_only_the_prompts_and_the_head_train(tmp_path):
    """The backbone from a plain classifier checkpoint (``prefix=
    'backbone.'``), a new head: ``freeze='loaded'`` leaves the prompts and
    the head to the optimizer, nothing else."""
    base = classifier(cls_backbone())
    path = str(tmp_path / 'vit.pth')
    torch.save({'state_dict': base.state_dict()}, path)
    ours = classifier(cls_backbone(init_cfg=dict(
        type='Pretrained', checkpoint=path, prefix='backbone.')), vpt(True))
    optim = ProvenanceOptimWrapperConstructor(
        dict(optimizer=dict(type='AdamW', lr=1e-3)),
        dict(freeze='loaded'))(ours).optimizer
    ids = {id(p) for g in optim.param_groups for p in g['params']}
    trained = sorted(n for n, p in ours.named_parameters() if id(p) in ids)
    assert trained == sorted(
        [f'backbone.layers.{i}.vpt_prompt.tokens' for i in range(4)] +
        ['head.layers.head.bias', 'head.layers.head.weight'])
    assert sorted(n for n, p in ours.named_parameters()
                  if p.requires_grad) == trained


REFUSED = [
    ('mmpretrain', dict(type='BEiTViT', arch=ARCH, img_size=32,
                        patch_size=8), None,
     "VPT cannot prompt 'backbone' (BEiTViT): 'backbone.layers.0.attn' "
     '(BEiTAttention) has a relative position bias table of fixed size'),
    ('mmpretrain', dict(type='ViTEVA02', arch=dict(
        embed_dims=32, num_layers=2, num_heads=2, feedforward_channels=64),
        img_size=32, patch_size=8), None,
     "VPT cannot prompt 'backbone' (ViTEVA02): 'backbone' (ViTEVA02) "
     'applies rotary position embeddings over the patch grid (rope, '
     'RotaryEmbeddingFast)'),
    ('mmseg', dict(type='SwinTransformer', embed_dims=16, depths=(1, 1),
                   num_heads=(1, 2), window_size=4, strides=(4, 2),
                   out_indices=(0, 1)), r'stages\.\d+\.blocks\.\d+',
     "VPT cannot prompt 'backbone' (SwinTransformer): "
     "'backbone.stages.0.blocks.0.attn.w_msa' (WindowMSA) has a relative "
     'position bias table of fixed size'),
    ('mmseg', dict(type='MixVisionTransformer', embed_dims=16,
                   num_stages=2, num_layers=(1, 1), num_heads=(1, 2),
                   patch_sizes=(7, 3), strides=(4, 2), sr_ratios=(2, 1),
                   out_indices=(0, 1)),
     r'layers\.\d+\.1\.\d+',
     "VPT cannot prompt 'backbone' (MixVisionTransformer): "
     "'backbone.layers.0.1.0' (TransformerEncoderLayer) takes hw_shape "
     'with its tokens, which must then be its patch grid'),
]


@pytest.mark.parametrize('library,backbone,blocks,message', REFUSED)
def test_grid_bound_backbones_are_refused_at_insert_time(
        library, backbone, blocks, message):
    entry = dict(vpt(True)[0], blocks=blocks) if blocks else vpt(True)[0]
    model = dict(type='ImageClassifier', backbone=backbone) \
        if library == 'mmpretrain' else dict(
            type='EncoderDecoder', backbone=backbone, decode_head=SEG_HEAD)
    with pytest.raises(InitConfigError) as error:
        built(library, model, [entry])
    assert str(error.value).startswith(
        "insert[0] (VPT, targets='backbone'): " + message), str(error.value)


def test_targeting_a_block_and_bad_arguments_are_clear():
    init_default_scope('mmpretrain')
    cases: Dict[str, Tuple[dict, str]] = {
        'block': (dict(targets=r'backbone\.layers\.0'),
                  "VPT: 'backbone.layers.0' (TransformerEncoderLayer) has no "
                  'layers or blocks of transformer blocks: target the token '
                  "backbone that holds its blocks (e.g. targets='backbone')"),
        'prefix': (dict(prefix_tokens=2),
                   "VPT: prefix_tokens=2, but 'backbone' (VisionTransformer) "
                   'has 1 (num_extra_tokens)'),
        'shallow gaps': (dict(deep=False, blocks=r'layers\.(0|2)'),
                         'VPT: deep=False needs consecutive blocks of one '
                         "container in 'backbone' (VisionTransformer); the "
                         "blocks selected are ['layers.0', 'layers.2']"),
        'blocks typo': (dict(blocks=r'layer\.\d+'),
                        "VPT: blocks='layer\\\\.\\\\d+' matches no module of "
                        "'backbone' (VisionTransformer)"),
        'tokens': (dict(num_tokens=0),
                   'VPT: num_tokens must be an int >= 1, got 0'),
    }
    for case, (args, message) in cases.items():
        entry = dict(vpt(True)[0], **args)
        with pytest.raises(InitConfigError) as error:
            CLS_MODELS.build(dict(type='ImageClassifier',
                                  backbone=cls_backbone(), insert=[entry]))
        assert message in str(error.value), (case, str(error.value))


def test_deep_prompts_on_selected_blocks_only():
    """``blocks`` picks the deep blocks (the last two here); the others run
    as without prompts."""
    ours = drawn(classifier(cls_backbone(), vpt(
        True, blocks=r'layers\.(2|3)')))
    assert [n for n, _ in ours.named_parameters() if '.vpt_prompt.' in n] \
        == ['backbone.layers.2.vpt_prompt.tokens',
            'backbone.layers.3.vpt_prompt.tokens']
    plain = plain_copy(ours, classifier(cls_backbone()))
    x = torch.randn(2, 3, 32, 32)
    seen: Dict[str, torch.Tensor] = {}
    for name, model in (('ours', ours), ('plain', plain)):
        model.backbone.layers[1].register_forward_hook(
            lambda m, a, out, name=name: seen.setdefault(name, out))
        with torch.no_grad():
            model(x, mode='tensor')
    assert torch.equal(seen['ours'], seen['plain'])


def _configs(tmp_path, insert: Optional[list]) -> Tuple[str, str]:
    """A plain ViT classifier checkpoint and a config loading it (with
    ``insert`` when given)."""
    base = classifier(cls_backbone())
    ckpt = tmp_path / 'vit.pth'
    torch.save({'state_dict': base.state_dict()}, ckpt)
    path = tmp_path / ('vpt.py' if insert else 'plain.py')
    model = dict(type='ImageClassifier', backbone=cls_backbone(),
                 init_cfg=dict(type='Pretrained', checkpoint=str(ckpt)),
                 head=dict(type='VisionTransformerClsHead', num_classes=4,
                           in_channels=32))
    if insert:
        model['insert'] = insert
    path.write_text(f"default_scope = 'mmpretrain'\n"
                    "custom_imports = dict(imports=['mmext_init'])\n"
                    f'model = {model!r}\n')
    return str(path), str(ckpt)


def test_merge_refuses_to_fold_prompts(tmp_path, capsys):
    config, ckpt = _configs(tmp_path, vpt(True))
    status = merge_inserted.main([config, ckpt, '--out',
                                  str(tmp_path / 'merged.pth')])
    err = capsys.readouterr().err
    assert status == 2
    assert 'model.insert holds entries that cannot be folded into weights ' \
        '(not a weight change): insert[0] VPT(num_tokens=3, deep=True) at ' \
        'backbone' in err, err
    assert not (tmp_path / 'merged.pth').exists()


def test_check_reports_the_function_changed(tmp_path, capsys):
    """The prompts are attended to from step 0: ``mmext-check`` against the
    same config without them reports a change (exit 1), not a crash."""
    config, _ = _configs(tmp_path, vpt(True))
    reference, _ = _configs(tmp_path, None)
    status = check_function_preserving.main(
        [config, '--reference', reference, '--module', 'backbone',
         '--input-shape', '1', '3', '32', '32'])
    out = capsys.readouterr().out
    assert status == 1, out
    assert 'function CHANGED' in out and 'output 1 (1, 32)' in out
    worst = float(out.split('function CHANGED: max ')[1].split()[0])
    assert worst > 1e-3
