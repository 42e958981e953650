"""Named insert sets (an entry's ``name``): each method's modules switched
off leave the model computing exactly what it computes without them, and
on again exactly what it computed with them (real mmpretrain, mmseg and
mmdet models; LoRA on Linear, grouped conv, ConvModule and
``nn.MultiheadAttention``, DoRA, SSF, Adapter in a hook and in a
Sequential, deep and shallow VPT); two sets switch independently; copies
keep the switches; the ``insert_set`` selector; the ledger's notes; one
delta per set, stacked in any order on its base, and refused on another
base; ``mmext-merge --set`` merging one set alone."""
import copy
import os
import pickle
from typing import Callable, List, Tuple

import pytest
import torch
import torch.nn as nn
from mmdet.registry import MODELS as DET_MODELS
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.registry import init_default_scope
from mmpretrain.registry import MODELS as CLS_MODELS
from mmseg.registry import MODELS as SEG_MODELS

from mmext_init import enable_insert_sets, get_provenance, insert_sets
from mmext_init.errors import CheckpointError, InitConfigError
from mmext_init.hooks.delta_checkpoint import insert_set_of, set_deltas
from mmext_init.inserting import insert_modules
from mmext_init.tools import check_function_preserving as cfp
from mmext_init.tools import merge_inserted as merge_tool
from mmext_init.training.selectors import ParamTable, SelectorError, select
from test_dora import tiny_dir  # noqa: F401 (a fixture)

MMLogger.get_current_instance()  # its stdout: not a capsys stream

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETS_CONFIG = os.path.join(REPO, 'configs', 'mmpretrain',
                           'vit_lora_sets_tiny.py')
ARCH = dict(embed_dims=32, num_layers=4, num_heads=2, feedforward_channels=64)
QKV = r'backbone\.layers\.\d+\.attn\.qkv'
MLP = r'backbone\.layers\.\d+\.ffn\.layers\.1'


def vit_cfg(**extra) -> dict:
    """An mmpretrain ViT classifier (4 blocks, 4 classes), plus ``extra``."""
    return dict(type='ImageClassifier',
                backbone=dict(type='VisionTransformer', arch=ARCH,
                              img_size=32, patch_size=8),
                head=dict(type='VisionTransformerClsHead', num_classes=4,
                          in_channels=32), **extra)


def vit() -> Tuple[nn.Module, List[torch.Tensor]]:
    """The ViT classifier of :func:`vit_cfg` and an image batch."""
    init_default_scope('mmpretrain')
    return CLS_MODELS.build(vit_cfg()), [torch.randn(2, 3, 32, 32)]


def convnext() -> Tuple[nn.Module, List[torch.Tensor]]:
    """An mmpretrain ConvNeXt (depthwise convs: groups = channels)."""
    model = CLS_MODELS.build(dict(
        type='mmpretrain.ConvNeXt', gap_before_final_norm=True,
        arch=dict(depths=[1, 1], channels=[16, 32]), out_indices=(1, )))
    return model, [torch.randn(2, 3, 32, 32)]


def mit() -> Tuple[nn.Module, List[torch.Tensor]]:
    """mmseg's MixVisionTransformer (attention: nn.MultiheadAttention)."""
    model = SEG_MODELS.build(dict(
        type='mmseg.MixVisionTransformer', in_channels=3, embed_dims=8,
        num_stages=2, num_layers=[1, 2], num_heads=[1, 2],
        patch_sizes=[7, 3], strides=[4, 2], sr_ratios=[2, 1],
        out_indices=(0, 1)))
    return model, [torch.randn(2, 3, 32, 32)]


def resnet() -> Tuple[nn.Module, List[torch.Tensor]]:
    """mmdet's ResNet-18 (stages: Sequential ResLayers)."""
    model = DET_MODELS.build(dict(type='mmdet.ResNet', depth=18,
                                  out_indices=(0, 1)))
    return model, [torch.randn(1, 3, 32, 32)]


def fpn() -> Tuple[nn.Module, List[torch.Tensor]]:
    """mmdet's FPN (its convs: mmcv ConvModules) and two feature maps."""
    model = DET_MODELS.build(dict(type='mmdet.FPN', in_channels=[8, 16],
                                  out_channels=8, num_outs=2))
    return model, [[torch.randn(1, 8, 8, 8), torch.randn(1, 16, 4, 4)]]


CASES = {
    'lora_linear': (vit, dict(type='LoRA', targets=QKV, rank=4)),
    'lora_grouped_conv': (convnext, dict(
        type='LoRA', targets=r'stages\.0\.\d+\.depthwise_conv', rank=16)),
    'lora_convmodule': (fpn, dict(type='LoRA', targets=r'fpn_convs\.\d+',
                                  rank=2)),
    'lora_mha': (mit, dict(type='LoRA', targets=r'.*attn\.attn', rank=2)),
    'dora': (vit, dict(type='DoRA', targets=QKV, rank=4)),
    'ssf': (vit, dict(type='SSF',
                      targets=r'backbone\.layers\.\d+\.(ln1|attn\.qkv)')),
    'adapter_hook': (vit, dict(type='Adapter', mode='parallel',
                               targets=r'backbone\.layers\.\d+\.attn\.proj',
                               reduction=4)),
    'adapter_in_sequential': (resnet, dict(type='Adapter', targets='layer1',
                                           reduction=4)),
    'lora_conv': (resnet, dict(type='LoRA', targets=r'layer2\.\d+\.conv2',
                               rank=4)),
    'vpt_deep': (vit, dict(type='VPT', targets='backbone', num_tokens=3)),
    'vpt_shallow': (vit, dict(type='VPT', targets='backbone', num_tokens=3,
                              deep=False)),
}


def outputs(model: nn.Module, inputs: List) -> List[torch.Tensor]:
    """The output tensors of ``model(*inputs)`` in eval mode, flattened."""
    model.eval()
    with torch.no_grad():
        out = model(*inputs)
    out = out if isinstance(out, (tuple, list)) else [out]
    return [t for t in out if isinstance(t, torch.Tensor)]


def same(a: List[torch.Tensor], b: List[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def drawn(model: nn.Module, records) -> None:
    """Every inserted tensor drawn, as after training (scales near 1)."""
    with torch.no_grad():
        for record in records:
            for name in record.names:
                tensor = model.get_parameter(name)
                if name.endswith(('.scale', 'magnitude_vector.weight')):
                    tensor.uniform_(0.5, 1.5)
                else:
                    tensor.normal_(0, 0.5)


def inserted(build: Callable, entries: List[dict]):
    """The model of ``build``, a plain copy and the inserted one, with its
    inserted tensors drawn; and the input."""
    torch.manual_seed(0)
    plain, inputs = build()
    model = copy.deepcopy(plain)
    drawn(model, insert_modules(model, entries))
    return plain, model, inputs


@pytest.mark.parametrize('case', CASES)
def test_switched_off_set_computes_the_plain_model(case):
    build, entry = CASES[case]
    plain, model, inputs = inserted(build, [dict(entry, name='extra')])
    with_set = outputs(model, inputs)
    assert not same(with_set, outputs(plain, inputs))  # the set acts
    assert enable_insert_sets(model, ()) == ('extra', )
    assert insert_sets(model) == {'extra': False}
    assert same(outputs(model, inputs), outputs(plain, inputs))
    assert enable_insert_sets(model, 'extra') == ()
    assert same(outputs(model, inputs), with_set)


def two_sets() -> List[dict]:
    return [dict(type='LoRA', name='attn', targets=QKV, rank=4),
            dict(type='SSF', name='mlp', targets=MLP)]


def test_two_sets_switch_independently():
    """Only 'attn' running = the model built with the 'attn' entry alone
    (same tensors); only 'mlp' = the one with 'mlp' alone."""
    plain, model, inputs = inserted(vit, two_sets())
    state = model.state_dict()
    for name, entry in zip(('attn', 'mlp'), two_sets()):
        alone = copy.deepcopy(plain)
        insert_modules(alone, [entry])
        alone.load_state_dict({k: state[k] for k in alone.state_dict()})
        enable_insert_sets(model, [name])
        assert same(outputs(model, inputs), outputs(alone, inputs)), name
        assert insert_sets(model) == {'attn': name == 'attn',
                                      'mlp': name == 'mlp'}


def test_copies_and_pickles_keep_the_switches():
    plain, model, inputs = inserted(vit, two_sets())
    with_both = outputs(model, inputs)
    enable_insert_sets(model, ())
    for copied in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert insert_sets(copied) == {'attn': False, 'mlp': False}
        assert same(outputs(copied, inputs), outputs(plain, inputs))
        enable_insert_sets(copied, ['attn', 'mlp'])
        assert same(outputs(copied, inputs), with_both)
    assert insert_sets(model) == {'attn': False, 'mlp': False}


def test_names_and_switches_fail_clearly():
    plain, _ = vit()
    with pytest.raises(InitConfigError, match=r"insert\[0\] \(LoRA, "
                       r".*name='2nd' is no insert set name"):
        insert_modules(copy.deepcopy(plain), [dict(type='LoRA', rank=2,
                                                   targets=QKV, name='2nd')])
    with pytest.raises(InitConfigError) as error:
        insert_modules(copy.deepcopy(plain), [
            dict(type='LoRA', name='a', targets=QKV, rank=2),
            dict(type='LoRA', name='b', targets=QKV, rank=2)])
    assert ("already has an attribute 'lora_A' (from insert[0] "
            'LoRA(rank=2): the modules of every insert set keep their '
            "type's names, so two entries of one type cannot insert into "
            'one layer; target other layers)') in str(error.value)
    _, model, _ = inserted(vit, two_sets())
    with pytest.raises(InitConfigError, match=r"'atn' is no insert set of "
                       r"ImageClassifier \(its sets: attn, mlp\); did you "
                       r"mean 'attn'\?"):
        enable_insert_sets(model, ['mlp', 'atn'])
    assert insert_sets(model) == {'attn': True, 'mlp': True}  # unchanged
    with pytest.raises(InitConfigError, match='holds no module inserted'):
        enable_insert_sets(plain, ())


def built_with_sets() -> nn.Module:
    """The ViT classifier built with the two sets from its config (the
    ledger's notes), initialized."""
    init_default_scope('mmpretrain')
    model = CLS_MODELS.build(vit_cfg(insert=two_sets()))
    model.init_weights()
    return model


def test_selector_and_ledger_name_the_set():
    model = built_with_sets()
    table = ParamTable.build(model, {})
    chosen = [p.name for p in select(dict(insert_set='mlp'), table)]
    assert chosen == [f'backbone.layers.{i}.ffn.layers.1.ssf.{t}'
                      for i in range(4) for t in ('scale', 'shift')]
    with pytest.raises(SelectorError, match=r"insert_set='default' matches "
                       r"none \(the insert sets: attn, mlp\)"):
        select(dict(insert_set='default'), table)
    notes = get_provenance(model).entries[
        'backbone.layers.0.attn.qkv.lora_A.weight'].notes
    assert "inserted by LoRA(rank=4) from insert[0] of set 'attn'" in notes


def trained_with_sets() -> Tuple[nn.Module, dict]:
    """The two-set ViT 'after training': the loaded part frozen, the sets
    and the head drawn; and the plain base state (no inserted tensor)."""
    model = built_with_sets()
    inserted_names = set(insert_set_of(model))
    base = {k: v.clone() for k, v in model.state_dict().items()
            if k not in inserted_names}
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.requires_grad = name in inserted_names or name.startswith(
                'head.')
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)
    return model, base


def rebuilt(files: List[str]) -> nn.Module:
    model = CLS_MODELS.build(vit_cfg(
        insert=two_sets(), init_cfg=dict(type='Pretrained', checkpoint=files)))
    model.init_weights()
    return model


def test_one_delta_per_set_stacks_on_its_base(tmp_path):
    model, base = trained_with_sets()
    deltas = set_deltas(model, two_sets())
    assert set(deltas) == {None, 'attn', 'mlp'}
    state = model.state_dict()
    held = {key: sorted(d['state_dict']) for key, d in deltas.items()}
    assert held[None] == sorted(k for k in state if k.startswith('head.'))
    assert all('.attn.qkv.lora_' in k for k in held['attn'])
    assert len(held['attn']) == 8 and len(held['mlp']) == 8
    assert all('.ssf.' in k for k in held['mlp'])
    files = {'base': str(tmp_path / 'base.pth')}
    torch.save({'state_dict': base}, files['base'])
    for key, delta in deltas.items():
        files[key or 'rest'] = str(tmp_path / f'{key or "rest"}.pth')
        assert delta['meta']['set'] == key
        torch.save(delta, files[key or 'rest'])
    for order in (['attn', 'mlp'], ['mlp', 'attn']):
        loaded = rebuilt([files['base'], files['rest']] +
                         [files[k] for k in order]).state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in state.items())
    one = rebuilt([files['base'], files['rest'], files['attn']])
    loaded = one.state_dict()
    for key in held['attn'] + held[None]:
        assert torch.equal(loaded[key], state[key]), key
    ledger = get_provenance(one).entries
    scale = 'backbone.layers.0.ffn.layers.1.ssf.scale'
    assert ledger[scale].kind == 'initializer'  # 'mlp': its declared init
    assert torch.equal(loaded[scale], torch.ones_like(loaded[scale]))
    assert ledger[held['attn'][0]].source == files['attn']
    with pytest.raises(CheckpointError, match='was trained from another '
                       'base than'):
        rebuilt([files['base'], files['attn']])  # the trained head missing


def test_merge_tool_merges_one_set(tiny_dir, tmp_path,  # noqa: F811
                                   monkeypatch, capsys):
    """vit_lora_sets_tiny.py with both sets drawn: ``--set attn`` folds
    'attn' into the qkv weights, leaves 'mlp' out, and proves it against
    the inserted model with 'mlp' switched off."""
    monkeypatch.chdir(tiny_dir)
    torch.manual_seed(3)
    model, _ = cfp.build_initialized(Config.fromfile(SETS_CONFIG))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if '.lora_' in name:
                p.add_(0.05 * torch.randn_like(p))
    ckpt, out = str(tmp_path / 'trained.pth'), str(tmp_path / 'merged.pth')
    torch.save({'state_dict': model.state_dict()}, ckpt)
    assert merge_tool.main([SETS_CONFIG, ckpt, '--out', out, '--set', 'attn',
                            '--module', 'tensor', '--input-shape', '2', '3',
                            '32', '32']) == 0
    text = capsys.readouterr().out
    assert ('insert sets merged: attn; the others switched off and left '
            'out') in text
    assert ("folded 4 LoRA branches of insert[0] LoRA(rank=4, alpha=8) into "
            'the weights of backbone.layers.{0..3}.attn.qkv') in text
    saved = torch.load(out, weights_only=True)
    merged, trained = saved['state_dict'], model.state_dict()
    assert not [k for k in merged if '.lora_' in k]
    assert saved['meta']['sets'] == ['attn'] and saved['meta']['insert'] == []
    mlp = 'backbone.layers.0.ffn.layers.1.weight'
    qkv = 'backbone.layers.0.attn.qkv.weight'
    assert torch.equal(merged[mlp], trained[mlp])
    assert not torch.equal(merged[qkv], trained[qkv])
    assert merge_tool.main([SETS_CONFIG, ckpt, '--out', out, '--set',
                            'atn']) == 2
    assert ("--set atn: " in capsys.readouterr().err)
