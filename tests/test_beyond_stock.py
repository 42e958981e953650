"""Modules stock MMEngine's recursion never reaches (BaseModules below a
plain torch container) get their declared init from mmext_init, and the
ledger says so (``beyond_stock``, a report section). On two mmpretrain
self-supervised configs as shipped, every tensor that differs from a stock
build lies in, or is initialized after, such a module:

* MoCo v2: the momentum encoder ``encoder_k`` is a ``CosineEMA`` (a plain
  ``nn.Module``) around a copy of the backbone: stock leaves the copy at its
  constructor values, mmext_init gives it the backbone's declared
  ``Kaiming`` (MMEngine's averaged model copies the online encoder at its
  first update, so training is the same);
* CAE: ``CAENeck`` keeps its decoder layers in an ``nn.ModuleList``; their
  ``init_weights`` draws, then ``CAENeck.init_weights`` redraws every
  ``Linear``, from a random stream those draws moved.
"""
import os

import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope
from mmpretrain.registry import MODELS

import mmext_init
from mmext_init.provenance.report import BEYOND_TITLE, format_report

CONFIGS = os.path.join(os.path.dirname(__import__('mmpretrain').__file__),
                       '.mim', 'configs')


def build(cfg) -> torch.nn.Module:
    init_default_scope('mmpretrain')
    torch.manual_seed(0)
    model = MODELS.build(cfg)
    model.init_weights()
    return model


def differing(cfg) -> tuple:
    """(plugin model, names whose values differ from a stock build)."""
    with mmext_init.stock_mmengine():
        stock = build(cfg).state_dict()
    model = build(cfg)
    ours = model.state_dict()
    assert list(ours) == list(stock)
    return model, [n for n in ours if not torch.equal(ours[n], stock[n])]


def test_mocov2_momentum_encoder(tmp_path):
    cfg = Config.fromfile(os.path.join(
        CONFIGS, 'mocov2', 'mocov2_resnet50_8xb32-coslr-200e_in1k.py')).model
    model, diffs = differing(cfg)
    ledger = mmext_init.get_provenance(model)
    assert ledger.beyond_stock == ['encoder_k.module.0']
    assert diffs and all(n.startswith('encoder_k.module.0.') for n in diffs)
    for name in diffs:
        entry = ledger.entries[name]
        assert (entry.source, entry.declared_by) == ('Kaiming',
                                                     'encoder_k.module.0')
    text = format_report(ledger)
    assert f'{BEYOND_TITLE}\n  encoder_k.module.0' in text
    assert ledger.to_dict()['beyond_stock'] == ['encoder_k.module.0']


def test_cae_neck_decoders(tmp_path, monkeypatch):
    path = os.path.join(
        CONFIGS, 'cae', 'cae_beit-base-p16_8xb256-amp-coslr-300e_in1k.py')
    cfg = Config.fromfile(path).model
    url = cfg.target_generator.init_cfg.checkpoint  # as shipped: a URL
    cache = tmp_path / 'hub' / 'checkpoints'
    cache.mkdir(parents=True)
    with mmext_init.stock_mmengine():  # the DALL-E encoder's own layout
        init_default_scope('mmpretrain')
        generator = MODELS.build(dict(cfg.target_generator, init_cfg=None))
    torch.save(generator.state_dict(), cache / os.path.basename(url))
    monkeypatch.setenv('TORCH_HOME', str(tmp_path))
    model, diffs = differing(cfg)
    ledger = mmext_init.get_provenance(model)
    assert ledger.beyond_stock == [f'neck.decoders.{i}' for i in range(4)]
    assert diffs and all(n.startswith('neck.') for n in diffs)
    assert {ledger.entries[n].kind for n in diffs} == {'init_weights'}
    generator_keys = [n for n in model.state_dict()
                      if n.startswith('target_generator.')]
    assert all(ledger.entries[n].source == url for n in generator_keys)
