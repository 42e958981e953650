"""LoRA and adapters inserted from a config entry
(``mmext_init.inserting``) into real mmdet/mmseg models: original names
kept, new tensors from their declared init, function unchanged at step 0,
the branch live after a step, copies and pickles using their own branch."""
import copy
import pickle
from typing import Dict, List, Sequence

import pytest
import torch
import torch.nn as nn
from mmcv.cnn import ConvModule
from mmdet.models.backbones import ResNet, SwinTransformer
from mmdet.registry import MODELS as MMDET_MODELS
from mmengine.config import ConfigDict
from mmengine.model import Sequential
from mmseg.models.backbones import MixVisionTransformer

import mmext_init
from mmext_init import deferred
from mmext_init.errors import InitConfigError
from mmext_init.inserting import (INSERT_TYPES, Adapter, LoRA, insert_modules,
                                  inserted_into, lora_delta)

SWIN_ARGS = dict(embed_dims=16, depths=(2, 2), num_heads=(1, 2),
                 strides=(4, 2), out_indices=(0, 1), window_size=4,
                 patch_size=4)
MIT_ARGS = dict(in_channels=3, embed_dims=8, num_stages=2, num_layers=[1, 2],
                num_heads=[1, 2], patch_sizes=[7, 3], strides=[4, 2],
                sr_ratios=[2, 1], out_indices=(0, 1))
QKV = r'.*attn\.w_msa\.qkv'
SWIN_LORA = [dict(type='LoRA', targets=QKV, rank=8, alpha=16)]
SWIN_QKVS = [f'stages.{s}.blocks.{b}.attn.w_msa.qkv' for s in (0, 1)
             for b in (0, 1)]


def _outputs(model: nn.Module, x: torch.Tensor) -> List[torch.Tensor]:
    model.eval()
    with torch.no_grad():
        out = model(x)
    return list(out) if isinstance(out, (tuple, list)) else [out]


def _same(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def _image(size: int = 32) -> torch.Tensor:
    return torch.randn(2, 3, size, size,
                       generator=torch.Generator().manual_seed(1))


def _copy_weights(plain: nn.Module, model: nn.Module, new: set) -> None:
    """Load the plain model's values; exactly the new tensors stay."""
    result = model.load_state_dict(plain.state_dict(), strict=False)
    assert set(result.missing_keys) == new and not result.unexpected_keys


def _new_names(records) -> set:
    return {n for r in records for n in r.names}


def _check_declared(model: nn.Module, records, sources: Dict[str, str]):
    """Every new tensor's ledger entry is its declared initializer:
    ``sources`` maps a name's last two parts to the init type."""
    ledger = mmext_init.get_provenance(model)
    for name in _new_names(records):
        prov = ledger.entries[name]
        assert prov.kind == 'initializer', (name, prov)
        assert prov.source == sources['.'.join(name.split('.')[-2:])], name
        assert name.startswith(prov.declared_by + '.'), (name, prov)


def test_swin_lora_keeps_names_loads_and_preserves_function(save_ckpt):
    plain = SwinTransformer(**SWIN_ARGS)
    plain.init_weights()
    # Swin's own init_weights loads the keys under 'backbone.'
    path = save_ckpt({f'backbone.{k}': v
                      for k, v in plain.state_dict().items()})
    model = SwinTransformer(**SWIN_ARGS, init_cfg=ConfigDict(
        type='Pretrained', checkpoint=path))
    records = insert_modules(model, SWIN_LORA)

    assert [r.target for r in records] == SWIN_QKVS
    assert {r.describe() for r in records} == {
        'inserted by LoRA(rank=8, alpha=16) from insert[0]'}
    new = {f'{q}.lora_{ab}.weight' for q in SWIN_QKVS for ab in 'AB'}
    assert _new_names(records) == new
    assert set(model.state_dict()) == set(plain.state_dict()) | new
    for q in SWIN_QKVS:  # whatever the constructor gave, the init decides
        nn.init.ones_(model.get_submodule(q).lora_B.weight)
    model.init_weights()

    ledger = mmext_init.get_provenance(model)
    assert all(ledger.entries[k].kind == 'checkpoint'
               for k in plain.state_dict())
    _check_declared(model, records, {'lora_A.weight': 'Kaiming',
                                     'lora_B.weight': 'Constant'})
    a = ledger.entries[f'{SWIN_QKVS[0]}.lora_A.weight']
    assert a.args == dict(a=5**0.5, mode='fan_in', nonlinearity='leaky_relu',
                          distribution='uniform')
    assert _same(_outputs(model, _image()), _outputs(plain, _image()))


def test_swin_lora_is_live_after_a_step_on_lora_only():
    model = SwinTransformer(**SWIN_ARGS)
    insert_modules(model, SWIN_LORA)
    model.init_weights()
    before = _outputs(model, _image())
    frozen = {k: v.clone() for k, v in model.state_dict().items()
              if 'lora_' not in k}
    lora = [p for n, p in model.named_parameters() if 'lora_' in n]
    for n, p in model.named_parameters():
        p.requires_grad_('lora_' in n)
    optimizer = torch.optim.SGD(lora, lr=0.1)
    model.train()
    sum(o.square().sum() for o in model(_image())).backward()
    optimizer.step()
    after = _outputs(model, _image())
    assert not any(torch.equal(x, y) for x, y in zip(before, after))
    assert all(torch.equal(model.state_dict()[k], v)
               for k, v in frozen.items())


def test_swin_lora_deepcopy_and_pickle_use_their_own_branch():
    model = SwinTransformer(**SWIN_ARGS)
    insert_modules(model, SWIN_LORA)
    model.init_weights()
    plain_out = _outputs(model, _image())  # B = 0: the plain function
    for q in SWIN_QKVS:
        nn.init.normal_(model.get_submodule(q).lora_B.weight, std=0.1)
    out = _outputs(model, _image())
    assert not _same(out, plain_out)

    twin = copy.deepcopy(model)
    assert _same(_outputs(twin, _image()), out)
    assert _same(_outputs(pickle.loads(pickle.dumps(model)), _image()), out)
    for q in SWIN_QKVS:
        nn.init.zeros_(twin.get_submodule(q).lora_B.weight)
    assert _same(_outputs(twin, _image()), plain_out)
    assert _same(_outputs(model, _image()), out)


def test_insertion_into_a_deferred_build_reads_no_value(monkeypatch):
    """Inserted right after a registry build (the config path), nothing
    pending is computed and ``init_weights`` still preserves the function."""
    monkeypatch.setenv(deferred.ENV_VAR, '1')  # no checkpoint declared
    model = MMDET_MODELS.build(dict(type='mmdet.SwinTransformer', **SWIN_ARGS))
    pending = deferred.pending_count()
    assert pending > 0
    records = insert_modules(model, SWIN_LORA)
    assert deferred.pending_count() == pending
    model.init_weights()
    plain = SwinTransformer(**SWIN_ARGS)
    result = plain.load_state_dict(model.state_dict(), strict=False)
    assert not result.missing_keys
    assert set(result.unexpected_keys) == _new_names(records)
    assert _same(_outputs(model, _image()), _outputs(plain, _image()))


def test_mit_lora_on_the_convs_mixffn_and_sr_run():
    """In mmseg's MiT attention, ``attn.attn`` is an ``nn.MultiheadAttention``
    (in_proj a raw Parameter, out_proj read without its forward): the
    convolutions that really run are the MixFFN 1x1 convs ``ffn.layers.0``
    and ``ffn.layers.4`` and the spatial reduction ``attn.sr`` (2x2,
    stride 2)."""
    plain = MixVisionTransformer(**MIT_ARGS)
    plain.init_weights()
    model = MixVisionTransformer(**MIT_ARGS)
    records = insert_modules(model, [dict(
        type='LoRA', targets=r'.*ffn\.layers\.[04]|.*attn\.sr', rank=2)])
    assert [r.target for r in records] == [
        'layers.0.1.0.attn.sr', 'layers.0.1.0.ffn.layers.0',
        'layers.0.1.0.ffn.layers.4', 'layers.1.1.0.ffn.layers.0',
        'layers.1.1.0.ffn.layers.4', 'layers.1.1.1.ffn.layers.0',
        'layers.1.1.1.ffn.layers.4']
    sr = model.get_submodule('layers.0.1.0.attn.sr')
    assert sr.lora_A.weight.shape == (2, 8, 2, 2)
    assert sr.lora_B.weight.shape == (8, 2, 1, 1)
    model.init_weights()
    _check_declared(model, records, {'lora_A.weight': 'Kaiming',
                                     'lora_B.weight': 'Constant'})
    _copy_weights(plain, model, _new_names(records))
    assert _same(_outputs(model, _image()), _outputs(plain, _image()))
    for r in records:
        nn.init.normal_(model.get_submodule(r.target).lora_B.weight)
    assert not _same(_outputs(model, _image()), _outputs(plain, _image()))


@pytest.mark.parametrize('targets, match', [
    (r'.*attn\.attn\.out_proj', 'never calls its forward'),
    (r'.*ffn\.layers\.1', r"'layers\.0\.1\.0\.ffn\.layers\.1' \(Conv2d\) "
     'has groups=32'),
])
def test_mit_lora_refuses_what_would_not_run(targets, match):
    model = MixVisionTransformer(**MIT_ARGS)
    with pytest.raises(InitConfigError, match=r'insert\[0\] \(LoRA.*' + match):
        insert_modules(model, [dict(type='LoRA', targets=targets, rank=2)])
    assert not any(inserted_into(m) for m in model.modules())


def test_resnet_adapters_on_stages():
    plain = ResNet(depth=18)
    plain.init_weights()
    model = ResNet(depth=18)
    records = insert_modules(model, [dict(type='Adapter',
                                          targets=r'layer[1-4]', reduction=4)])
    assert [model.get_submodule(r.target).adapter.channels
            for r in records] == [64, 128, 256, 512]
    assert _new_names(records) == {
        f'layer{i}.adapter.{p}.{t}' for i in range(1, 5)
        for p in ('down', 'up') for t in ('weight', 'bias')}
    assert model.layer2.adapter.down.weight.shape == (32, 128)
    nn.init.ones_(model.layer1.adapter.up.weight)  # the init decides
    model.init_weights()
    _check_declared(model, records, {
        'down.weight': 'Kaiming', 'down.bias': 'Kaiming',
        'up.weight': 'Constant', 'up.bias': 'Constant'})
    _copy_weights(plain, model, _new_names(records))
    assert _same(_outputs(model, _image()), _outputs(plain, _image()))
    # a ResLayer is an nn.Sequential: it runs the adapter as its last element
    nn.init.normal_(model.layer4.adapter.up.weight)
    out, ref = _outputs(model, _image()), _outputs(plain, _image())
    assert _same(out[:3], ref[:3]) and not torch.equal(out[3], ref[3])


@pytest.mark.parametrize('mode', ['serial', 'parallel'])
def test_adapters_on_swin_blocks_last_dim(mode):
    """Swin blocks give (N, L, C): the adapter works on the last dim."""
    plain = SwinTransformer(**SWIN_ARGS)
    plain.init_weights()
    model = SwinTransformer(**SWIN_ARGS)
    records = insert_modules(model, [dict(
        type='Adapter', targets=r'stages\.\d\.blocks\.\d', hidden=4,
        act=dict(type='GELU'), mode=mode)])
    assert [model.get_submodule(r.target).adapter.channels
            for r in records] == [16, 16, 32, 32]
    model.init_weights()
    _copy_weights(plain, model, _new_names(records))
    assert _same(_outputs(model, _image()), _outputs(plain, _image()))
    nn.init.normal_(model.stages[1].blocks[1].adapter.up.weight)
    out, ref = _outputs(model, _image()), _outputs(plain, _image())
    assert torch.equal(out[0], ref[0]) and not torch.equal(out[1], ref[1])


def test_adapter_errors_at_first_forward_name_the_target():
    model = SwinTransformer(**SWIN_ARGS)
    insert_modules(model, [dict(type='Adapter', targets=r'stages\.0',
                                reduction=2)])
    with pytest.raises(ValueError, match=r"Adapter at 'stages\.0': the "
                       'output is a tuple, not a tensor'):
        model(_image())
    model = SwinTransformer(**SWIN_ARGS)
    insert_modules(model, [dict(type='Adapter', channels=24, hidden=4,
                                targets=r'stages\.0\.blocks\.0')])
    with pytest.raises(ValueError, match=r"'stages\.0\.blocks\.0': the output"
                       ' has 16 channels on its last dim, the adapter was '
                       'built for 24'):
        model(_image())


def test_lora_on_convmodule_applies_to_its_conv():
    def build() -> nn.Module:
        return Sequential(ConvModule(3, 8, 3, padding=1,
                                     norm_cfg=dict(type='BN')))

    plain = build()
    plain.init_weights()
    model = build()
    records = insert_modules(model, [dict(type='LoRA', layer='ConvModule',
                                          rank=2, dropout=0.1)])
    assert records[0].names == ('0.conv.lora_A.weight', '0.conv.lora_B.weight')
    assert isinstance(model[0].conv.lora_dropout, nn.Dropout)
    model.init_weights()
    _check_declared(model, records, {'lora_A.weight': 'Kaiming',
                                     'lora_B.weight': 'Constant'})
    _copy_weights(plain, model, _new_names(records))
    assert _same(_outputs(model, _image(8)), _outputs(plain, _image(8)))


CONVS = [dict(in_channels=4, out_channels=6, kernel_size=1),
         dict(in_channels=4, out_channels=6, kernel_size=3, stride=2,
              padding=1),
         dict(in_channels=3, out_channels=5, kernel_size=(3, 5), dilation=2,
              padding=(2, 4), padding_mode='reflect', bias=False)]


@pytest.mark.parametrize('args', CONVS)
def test_lora_delta_folds_a_conv_exactly(args):
    conv = nn.Conv2d(**args).double()
    LoRA(rank=3, alpha=6).insert(conv, 'conv')
    nn.init.normal_(conv.lora_B.weight)
    merged = nn.Conv2d(**args).double()
    merged.load_state_dict(dict(conv.state_dict(),
                                weight=conv.weight + lora_delta(conv)),
                           strict=False)
    x = torch.randn(2, args['in_channels'], 11, 13, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(merged(x), conv(x), rtol=0, atol=1e-10)
        assert lora_delta(conv).abs().min() > 0


def test_lora_delta_folds_a_linear_exactly():
    fc = nn.Linear(12, 7).double()
    LoRA(rank=4).insert(fc, 'fc')
    nn.init.normal_(fc.lora_B.weight)
    merged = nn.Linear(12, 7).double()
    merged.load_state_dict(dict(weight=fc.weight + lora_delta(fc),
                                bias=fc.bias))
    x = torch.randn(5, 3, 12, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(merged(x), fc(x), rtol=0, atol=1e-10)


def test_entry_matching_nothing_names_it_and_the_closest_path():
    model = SwinTransformer(**SWIN_ARGS)
    with pytest.raises(InitConfigError, match=(
            r"insert\[0\] \(LoRA, targets=r'\.\*attn\\\.w_msa\\\.qvk'\) "
            r'matches no module of SwinTransformer; closest module paths: '
            r"'stages\.0\.blocks\.0\.attn\.w_msa\.qkv'")):
        insert_modules(model, [dict(type='LoRA', targets=r'.*attn\.w_msa\.qvk',
                                    rank=8)])
    with pytest.raises(InitConfigError, match=r"insert\[0\] \(LoRA, layer="
                       r"'Linaer'\) matches no .* did you mean 'Linear'"):
        insert_modules(model, [dict(type='LoRA', layer='Linaer', rank=8)])
    with pytest.raises(InitConfigError, match=r'paths match targets .* but '
                       'none is a Conv2d'):
        insert_modules(model, [dict(type='LoRA', targets=QKV, rank=8,
                                    layer='Conv2d')])
    # targets match whole paths: a searched-for fragment names its paths
    with pytest.raises(InitConfigError, match=(
            r"targets='w_msa\.qkv'\) matches no module of SwinTransformer "
            r'\(it matches only part of \d+ names, e\.g\. '
            r"'stages\.0\.blocks\.0\.attn\.w_msa\.qkv': a pattern matches "
            r"whole names, e\.g\. '\.\*w_msa\.qkv\.\*'\)$")):
        insert_modules(model, [dict(type='LoRA', targets='w_msa.qkv',
                                    rank=8)])


def test_targets_and_layer_together_select_both():
    model = SwinTransformer(**SWIN_ARGS)
    records = insert_modules(model, [dict(
        type='LoRA', targets=r'stages\.0\..*', layer='Linear', rank=2)])
    assert [r.target.split('stages.0.')[1] for r in records] == [
        'blocks.0.attn.w_msa.qkv', 'blocks.0.attn.w_msa.proj',
        'blocks.0.ffn.layers.0.0', 'blocks.0.ffn.layers.1',
        'blocks.1.attn.w_msa.qkv', 'blocks.1.attn.w_msa.proj',
        'blocks.1.ffn.layers.0.0', 'blocks.1.ffn.layers.1',
        'downsample.reduction']


def test_bad_entries_are_config_errors():
    model = SwinTransformer(**SWIN_ARGS)
    with pytest.raises(InitConfigError, match=r"insert\[0\] \(LoRA, targets="
                       r"'\.\*norm1'\): LoRA: 'stages\.0\.blocks\.0\.norm1' "
                       r'\(LayerNorm\) is not a supported layer'):
        insert_modules(model, [dict(type='LoRA', targets=r'.*norm1', rank=2)])
    with pytest.raises(InitConfigError, match=r'insert\[0\] \(Adapter, '
                       r'.*exactly one of hidden= and reduction='):
        insert_modules(model, [dict(type='Adapter', targets=QKV, hidden=4,
                                    reduction=4)])
    with pytest.raises(InitConfigError, match='rank must be an int >= 1'):
        insert_modules(model, [dict(type='LoRA', targets=QKV, rank=0)])
    with pytest.raises(InitConfigError, match="unexpected keyword.*'ranks'"):
        insert_modules(model, [dict(type='LoRA', targets=QKV, ranks=8)])
    with pytest.raises(InitConfigError, match="did you mean 'Adapter'"):
        insert_modules(model, [dict(type='adapter', targets=QKV)])
    with pytest.raises(InitConfigError, match=r"'stages' \(ModuleList\) "
                       'has no forward'):
        insert_modules(model, [dict(type='Adapter', targets='stages',
                                    hidden=2)])
    with pytest.raises(InitConfigError, match=r"'norm0' \(LayerNorm\).*"
                       'set channels='):
        insert_modules(model, [dict(type='Adapter', targets='norm0',
                                    hidden=2)])
    assert not any(inserted_into(m) for m in model.modules())


def test_second_insertion_is_an_error_and_later_entries_skip_inserted():
    model = SwinTransformer(**SWIN_ARGS)
    records = insert_modules(model, SWIN_LORA + [dict(
        type='Adapter', targets=r'.*qkv.*', channels=48, hidden=4)])
    # the Adapter entry reached the qkv layers, not their lora_A/lora_B
    assert [r.target for r in records[4:]] == SWIN_QKVS
    assert inserted_into(model.get_submodule(SWIN_QKVS[0])) == (
        'insert[0] LoRA(rank=8, alpha=16)',
        'insert[1] Adapter(channels=48, hidden=4)')
    keys = set(model.state_dict())
    with pytest.raises(InitConfigError, match=(
            r"already holds inserted modules \('stages\.0\.blocks\.0\.attn"
            r"\.w_msa\.qkv': insert\[0\] LoRA.*runs once per model")):
        insert_modules(model, SWIN_LORA)
    assert set(model.state_dict()) == keys
    with pytest.raises(InitConfigError, match='runs once per model'):
        insert_modules(copy.deepcopy(model), SWIN_LORA)


def test_registry_is_extensible():
    assert {'LoRA', 'Adapter'} <= set(INSERT_TYPES.module_dict)
    assert INSERT_TYPES.get('Adapter') is Adapter
