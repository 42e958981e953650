"""The contract on real mmdet/mmseg backbones with inserted modules."""
import numpy as np
import pytest
import torch
import torch.nn as nn
from mmengine.config import ConfigDict
from toy_models import Adapter

from mmext_init import get_provenance
from mmext_init.errors import CheckpointError, InitConfigError

SWIN_ARGS = dict(pretrain_img_size=32, embed_dims=16, depths=(1, 1),
                 num_heads=(1, 2), strides=(4, 2), out_indices=(0, 1),
                 window_size=2)


def _randomized(module: nn.Module) -> nn.Module:
    with torch.no_grad():
        for t in module.state_dict(keep_vars=True).values():
            if t.is_floating_point():
                t.normal_()
    return module


def _runner_like_ckpt(state_dict, path, prefix='backbone.'):
    """A checkpoint shaped like a Runner's (numpy and meta next to weights)."""
    torch.save({
        'meta': {'epoch': 3, 'seed': np.int64(7), 'lr': np.float64(0.1)},
        'state_dict': {prefix + k: v.clone() for k, v in state_dict.items()},
        'message_hub': {'log_scalars': {}, 'runtime_info': {'iter': 9}},
        'optimizer': {'state': {}, 'param_groups': [{'lr': 0.1}]},
    }, path)
    return str(path)


def _swin_with_adapters(swin_cls):
    class SwinWithAdapters(swin_cls):
        """The backbone overriding init_weights, plus adapters in a ModuleList."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.adapters = nn.ModuleList([Adapter(16), Adapter(32)])

    return SwinWithAdapters


@pytest.mark.parametrize('lib', ['mmdet', 'mmseg'])
def test_swin_override_loads_and_adapters_get_declared_init(lib, tmp_path):
    if lib == 'mmdet':
        from mmdet.models.backbones import SwinTransformer
    else:
        from mmseg.models.backbones import SwinTransformer
    reference = _randomized(SwinTransformer(**SWIN_ARGS))
    sd = reference.state_dict()
    path = _runner_like_ckpt(sd, tmp_path / 'det.pth')
    model = _swin_with_adapters(SwinTransformer)(
        **SWIN_ARGS, init_cfg=ConfigDict(type='Pretrained', checkpoint=path))
    model.init_weights()
    state = model.state_dict()
    for key, value in sd.items():
        assert torch.equal(state[key], value), key
    for adapter in model.adapters:  # zero residual branch: function intact
        assert torch.count_nonzero(adapter.up.weight) == 0
        assert adapter.down.weight.std() > 0
    x = torch.randn(2, 5, 16)
    assert torch.equal(model.adapters[0](x), x)
    ledger = get_provenance(model)
    table = [k for k in sd if 'relative_position_bias_table' in k][0]
    entry = ledger.entries[table]
    assert (entry.kind, entry.source, entry.key) == (
        'checkpoint', path, 'backbone.' + table)  # as written in the file
    assert ledger.entries['adapters.1.up.weight'].source == 'Constant'
    assert ledger.entries['adapters.1.down.weight'].source == 'Kaiming'
    assert ledger.loads[0].via == 'SwinTransformer.init_weights'
    assert ledger.counts()['constructor'] == 0


def test_swin_loading_nothing_is_an_error(tmp_path):
    from mmdet.models.backbones import SwinTransformer
    sd = {'unrelated.weight': torch.zeros(2)}
    path = _runner_like_ckpt(sd, tmp_path / 'other.pth')
    model = _swin_with_adapters(SwinTransformer)(
        **SWIN_ARGS, init_cfg=ConfigDict(type='Pretrained', checkpoint=path))
    with pytest.raises(Exception, match='loaded nothing'):
        model.init_weights()


def _resnet_with_inserted_layers():
    from mmdet.models.backbones import ResNet

    class ResNetWithAdapters(ResNet):
        """mmdet ResNet + adapters in a ModuleList + a plain extra conv."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.adapters = nn.ModuleList([Adapter(64) for _ in range(2)])
            self.extra = nn.Conv2d(512, 512, 1)

    return ResNetWithAdapters


def test_resnet_from_detector_checkpoint_with_prefix(tmp_path):
    from mmdet.models.backbones import ResNet
    reference = _randomized(ResNet(depth=18))
    path = _runner_like_ckpt(reference.state_dict(), tmp_path / 'det.pth')
    model = _resnet_with_inserted_layers()(
        depth=18,
        init_cfg=dict(type='Pretrained', checkpoint=path, prefix='backbone.',
                      init_missing=dict(type='Kaiming', layer='Conv2d')))
    model.init_weights()
    state = model.state_dict()
    for key, value in reference.state_dict().items():
        assert torch.equal(state[key], value), key
    ledger = get_provenance(model)
    extra = ledger.entries['extra.weight']
    assert (extra.kind, extra.source) == ('initializer', 'Kaiming')
    assert torch.all(model.extra.bias == 0)
    assert torch.count_nonzero(model.adapters[1].up.weight) == 0
    record = ledger.loads[0]
    assert record.loaded_fraction > 0.9 and record.unexpected == []
    assert 'extra.weight' in record.missing


def test_detector_checkpoint_with_changed_classes(tmp_path):
    from test_contract import _resnet_detector
    source = _randomized(_resnet_detector())
    ckpt = source.state_dict()
    ckpt['bbox_head.retina_cls.weight'] = torch.randn(9 * 5, 32, 3, 3)
    ckpt['bbox_head.retina_cls.bias'] = torch.randn(9 * 5)
    path = _runner_like_ckpt(ckpt, tmp_path / 'det.pth', prefix='')
    model = _resnet_detector()
    model.init_cfg = dict(type='Pretrained', checkpoint=path)
    model.init_weights()
    cls_bias = model.bbox_head.retina_cls.bias
    assert torch.allclose(cls_bias, torch.full_like(cls_bias, -4.59512))
    ledger = get_provenance(model)
    mismatched = {k: (c, m) for k, c, m in ledger.loads[0].mismatched}
    assert mismatched['bbox_head.retina_cls.weight'] == (
        (45, 32, 3, 3), (3, 32, 3, 3))
    entry = ledger.entries['bbox_head.retina_cls.bias']
    assert (entry.kind, entry.declared_by) == ('initializer', 'bbox_head')
    for key, value in ckpt.items():
        if 'retina_cls' not in key:
            assert torch.equal(model.state_dict()[key], value), key


@pytest.mark.parametrize('lib', ['mmdet', 'mmseg'])
def test_swin_own_load_reports_unexpected_keys_and_honours_strict(lib,
                                                                  tmp_path):
    """Keys the backbone's own load leaves unused are in the report (as
    written in the file); ``strict=True`` fails on them, and on missing
    keys, as it does for mmext_init's own loads."""
    if lib == 'mmdet':
        from mmdet.models.backbones import SwinTransformer
    else:
        from mmseg.models.backbones import SwinTransformer
    sd = _randomized(SwinTransformer(**SWIN_ARGS)).state_dict()
    path = _runner_like_ckpt(dict(sd, **{'bogus.weight': torch.zeros(3)}),
                             tmp_path / 'det.pth')

    def build(swin_cls, **options):
        return swin_cls(**SWIN_ARGS, init_cfg=ConfigDict(
            type='Pretrained', checkpoint=path, **options))

    model = build(SwinTransformer)
    model.init_weights()
    record = get_provenance(model).loads[0]
    assert record.unexpected == ['backbone.bogus.weight']
    assert record.missing == [] and record.mismatched == []
    with pytest.raises(CheckpointError, match=r'\(Pretrained\).*strict=True '
                       r'and unexpected keys: backbone\.bogus\.weight$'):
        build(SwinTransformer, strict=True).init_weights()
    del sd['norm1.weight']  # and an inserted module: both missing
    path = _runner_like_ckpt(sd, tmp_path / 'det.pth')
    with pytest.raises(CheckpointError, match=r'strict=True and missing keys: '
                       r'norm1\.weight, adapters\.0\.down\.weight, '):
        build(_swin_with_adapters(SwinTransformer), strict=True).init_weights()
    build(_swin_with_adapters(SwinTransformer)).init_weights()  # not strict


@pytest.mark.parametrize('option', [
    dict(revise_keys=[(r'^backbone\.', '')]), dict(ignore_keys=[r'.*norm1\..*']),
    dict(use_ema=True), dict(key_map={'a': 'b'}), dict(match='suffix')])
def test_swin_own_load_refuses_options_it_would_ignore(option, tmp_path):
    """mmdet's Swin reads only ``checkpoint`` from its init_cfg: mmext_init's
    key options would be silently ignored, so they are an error."""
    from mmdet.models.backbones import SwinTransformer
    path = _runner_like_ckpt(SwinTransformer(**SWIN_ARGS).state_dict(),
                             tmp_path / 'det.pth')
    model = SwinTransformer(**SWIN_ARGS, init_cfg=ConfigDict(
        type='Pretrained', checkpoint=path, **option))
    name = next(iter(option))
    name = f'match={option[name]!r}' if name == 'match' else name
    with pytest.raises(InitConfigError, match=r'SwinTransformer\.init_weights '
                       rf'loads .* itself and ignores {name}\. Put the'):
        model.init_weights()


def test_vit_own_load_reports_shape_mismatches_and_honours_on_mismatch(
        tmp_path):
    """mmseg's ViT loads through MMEngine's ``load_state_dict``, which only
    logs a shape mismatch: the report lists it and the tensor is not
    'checkpoint'; ``on_mismatch='error'`` fails on it."""
    from mmseg.models.backbones import VisionTransformer
    args = dict(img_size=(32, 32), patch_size=8, embed_dims=32, num_layers=2,
                num_heads=2, mlp_ratio=2, out_indices=(1, ))
    sd = _randomized(VisionTransformer(**args)).state_dict()
    sd['layers.0.ln1.weight'] = torch.ones(31)
    path = _runner_like_ckpt(sd, tmp_path / 'vit.pth', prefix='')
    model = VisionTransformer(**args, init_cfg=dict(type='Pretrained',
                                                    checkpoint=path))
    model.init_weights()
    ledger = get_provenance(model)
    assert ledger.loads[0].mismatched == [('layers.0.ln1.weight', (31, ),
                                           (32, ))]
    assert ledger.entries['layers.0.ln1.weight'].kind != 'checkpoint'
    assert ledger.entries['layers.0.ln1.bias'].kind == 'checkpoint'
    model = VisionTransformer(**args, init_cfg=dict(
        type='Pretrained', checkpoint=path, on_mismatch='error'))
    with pytest.raises(CheckpointError, match=r"on_mismatch='error' and shape "
                       r'mismatches: layers\.0\.ln1\.weight checkpoint '
                       r'\(31,\) vs model \(32,\)'):
        model.init_weights()


def test_mmseg_vit_override_with_adapters(tmp_path):
    from mmseg.models.backbones import VisionTransformer

    class ViTWithAdapters(VisionTransformer):
        """mmseg ViT (loads in its own init_weights) + adapters."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.adapters = nn.Sequential(Adapter(32), Adapter(32))

    args = dict(img_size=(32, 32), patch_size=8, embed_dims=32, num_layers=2,
                num_heads=2, mlp_ratio=2, out_indices=(1, ))
    reference = _randomized(VisionTransformer(**args))
    path = _runner_like_ckpt(reference.state_dict(), tmp_path / 'vit.pth',
                             prefix='')
    model = ViTWithAdapters(**args, init_cfg=dict(type='Pretrained',
                                                  checkpoint=path))
    model.init_weights()
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert all(torch.count_nonzero(a.up.weight) == 0 for a in model.adapters)
    ledger = get_provenance(model)
    assert ledger.entries['pos_embed'].kind == 'checkpoint'
    assert ledger.entries['adapters.0.up.weight'].declared_by == 'adapters.0'
