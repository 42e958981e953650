"""The example package ``mmext_init.examples`` (inserted modules the
configs use) and the example configs, on real mmdet/mmseg backbones; no
training."""
import doctest
import logging
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from mmdet.registry import MODELS as DET_MODELS
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.registry import DefaultScope, Registry
from mmseg.registry import MODELS as SEG_MODELS

import mmext_init
import mmext_init.examples
from mmext_init.examples import (ConvAdapter, adapters, mmdet_models,
                                 mmseg_models)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_SWIN = dict(pretrain_img_size=64, embed_dims=32, depths=(1, 1, 1, 1),
                 num_heads=(1, 2, 4, 8), window_size=4, out_indices=(1, 2, 3))
BACKBONES = [  # registry, adapted type, stock type, args, output channels
    (DET_MODELS, 'ResNetWithAdapters', 'ResNet',
     dict(depth=18, out_indices=(1, 2, 3)), [128, 256, 512]),
    (DET_MODELS, 'SwinWithAdapters', 'SwinTransformer', TINY_SWIN,
     [64, 128, 256]),
    (SEG_MODELS, 'MiTWithAdapters', 'MixVisionTransformer',
     dict(embed_dims=32, num_layers=[1, 1, 1, 1]), [32, 64, 128, 256]),
]
IDS = [b[1] for b in BACKBONES]


@pytest.mark.parametrize('module', [adapters, mmdet_models, mmseg_models])
def test_docstring_examples(module):
    MMLogger.get_instance('mmengine').setLevel(logging.WARNING)
    try:
        result = doctest.testmod(module, extraglobs=dict(torch=torch,
                                                         nn=nn))
    finally:
        MMLogger.get_instance('mmengine').setLevel(logging.INFO)
    assert result.attempted > 0 and result.failed == 0


def test_exports_and_registration():
    assert set(mmext_init.examples.__all__) == {'ConvAdapter',
                                                'apply_adapters'}
    assert DET_MODELS.get('ResNetWithAdapters') is \
        mmdet_models.ResNetWithAdapters
    assert DET_MODELS.get('SwinWithAdapters') is mmdet_models.SwinWithAdapters
    assert SEG_MODELS.get('MiTWithAdapters') is mmseg_models.MiTWithAdapters


def test_the_package_imports_neither_library():
    """``import mmext_init.examples`` alone leaves mmdet and mmseg out: only
    the submodule a config names imports its library."""
    code = ('import sys, mmext_init.examples; '
            "print(sorted(m for m in ('mmdet', 'mmseg') if m in sys.modules))")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                         text=True, check=True).stdout
    assert out.split('\n')[-2] == '[]'
    code = code.replace('mmext_init.examples;',
                        'mmext_init.examples.mmseg_models;')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                         text=True, check=True).stdout
    assert 'mmseg' in out.split('\n')[-2]


def test_conv_adapter_identity_after_init_not_before():
    adapter = ConvAdapter(16, reduction=4)
    x = torch.randn(2, 16, 5, 5)
    assert not torch.allclose(adapter(x), x)  # constructor default
    adapter.init_weights()
    assert adapter.down.out_channels == 4
    assert torch.equal(adapter(x), x)
    assert get_kinds(adapter) == {'down.weight': 'Kaiming',
                                  'down.bias': 'Kaiming',
                                  'up.weight': 'Zero', 'up.bias': 'Zero'}


def build(registry: Registry, cfg: dict) -> nn.Module:
    """Build in ``registry``'s scope, whatever scope earlier tests left."""
    with DefaultScope.overwrite_default_scope(registry.scope):
        return registry.build(cfg)


def get_kinds(module: nn.Module) -> dict:
    return {name: p.source for name, p in
            mmext_init.get_provenance(module).entries.items()}


@pytest.mark.parametrize('registry, adapted, stock, args, channels',
                         BACKBONES, ids=IDS)
def test_backbone_with_adapters_preserves_the_stock_function(
        registry, adapted, stock, args, channels):
    """Stock weights + initialized adapters compute exactly what the stock
    backbone computes; the adapters sit in a plain nn.ModuleList."""
    model = build(registry, dict(type=adapted, **args))
    reference = build(registry, dict(type=stock, **args))
    assert type(model.adapters) is nn.ModuleList
    assert [a.up.out_channels for a in model.adapters] == channels
    model.init_weights()
    reference.init_weights()
    missing, unexpected = model.load_state_dict(reference.state_dict(),
                                                strict=False)
    assert not unexpected
    assert {k.split('.')[0] for k in missing} == {'adapters'}
    model.eval(), reference.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        outs, expected = model(x), reference(x)
    assert [o.shape[1] for o in outs] == channels
    for out, ref in zip(outs, expected):
        assert torch.equal(out, ref)


@pytest.mark.parametrize('registry, adapted, stock, args, channels',
                         BACKBONES, ids=IDS)
def test_stock_mmengine_leaves_the_adapters_uninitialized(
        registry, adapted, stock, args, channels):
    """Why the examples exist: without mmext_init the adapters in the plain
    ModuleList never get their declared zero ``up`` init."""
    model = build(registry, dict(type=adapted, **args))
    with mmext_init.stock_mmengine():
        model.init_weights()
    assert all(torch.count_nonzero(a.up.weight) > 0 for a in model.adapters)


CONFIGS = [  # config, registry, output channels of the backbone
    ('configs/mmdet/retinanet_r50_adapters_ft.py', DET_MODELS,
     [512, 1024, 2048]),
    ('configs/mmdet/retinanet_swin_adapters_ft.py', DET_MODELS,
     [192, 384, 768]),
    ('configs/mmseg/segformer_mit_adapters_ft.py', SEG_MODELS,
     [32, 64, 160, 256]),
    ('configs/mmdet/retinanet_r18_adapters_ft_tiny.py', DET_MODELS,
     [128, 256, 512]),
    ('configs/mmdet/retinanet_swin_adapters_ft_tiny.py', DET_MODELS,
     [64, 128, 256]),
    ('configs/mmseg/segformer_mit_adapters_ft_tiny.py', SEG_MODELS,
     [32, 64, 160, 256]),
]


@pytest.mark.parametrize('config, registry, channels', CONFIGS,
                         ids=[os.path.basename(c[0]) for c in CONFIGS])
def test_example_configs_build_and_run(config, registry, channels):
    """Every example config builds (no checkpoint needed to build), its
    backbone has one adapter per used stage, and the model runs."""
    cfg = Config.fromfile(os.path.join(REPO, config))
    library = 'mmseg' if registry is SEG_MODELS else 'mmdet'
    assert cfg.custom_imports == dict(
        imports=['mmext_init', f'mmext_init.examples.{library}_models'],
        allow_failed_imports=False)
    init_cfg = cfg.model.backbone.init_cfg
    assert init_cfg.type == 'Pretrained'
    assert init_cfg.checkpoint.startswith('checkpoints/')
    model = build(registry, cfg.model).eval()
    assert [a.up.out_channels for a in model.backbone.adapters] == channels
    head = cfg.model.get('bbox_head', cfg.model.get('decode_head'))
    assert head.num_classes == 2
    with torch.no_grad():
        feats = model.extract_feat(torch.randn(1, 3, 64, 64))
    assert all(torch.isfinite(f).all() for f in feats)


TINY_CONFIGS = [c for c, _, _ in CONFIGS if c.endswith('_tiny.py')] + [
    'configs/mmdet/retinanet_r18_stock_tiny.py',
    'configs/mmdet/retinanet_swin_stock_tiny.py',
    'configs/mmseg/segformer_mit_stock_tiny.py',
]


@pytest.mark.parametrize('config', TINY_CONFIGS,
                         ids=[os.path.basename(c) for c in TINY_CONFIGS])
def test_tiny_configs_train_without_validation_and_keep_a_test_set(config):
    """4 iterations give no meaningful metric (and mmdet's COCO evaluation
    of no boxes logs an ERROR): the tiny configs do not validate, while
    tools/test.py still evaluates on their val images."""
    cfg = Config.fromfile(os.path.join(REPO, config))
    assert (cfg.val_cfg, cfg.val_dataloader, cfg.val_evaluator) == \
        (None, None, None)
    assert cfg.train_cfg == dict(type='IterBasedTrainLoop', max_iters=4)
    assert cfg.test_cfg.type == 'TestLoop'
    dataset = cfg.test_dataloader.dataset
    assert dataset.data_root.startswith('data/tiny_')
    assert 'val' in str(dataset.get('ann_file', '')) + str(dataset.data_prefix)
    assert cfg.test_evaluator.type in ('CocoMetric', 'IoUMetric')
