"""Deferred init and copies: averaged models built before
``init_weights`` (``EMAHook``) or inside a model's constructor, aliases from
their ``state_dict()``, parameters replaced or converted while pending, and
the draw order across builds. ``nan_empty`` (conftest) makes raw memory NaN.
"""
import gc

import torch
import torch.nn as nn
from mmengine.model import BaseModule, ExponentialMovingAverage
from mmengine.registry import MODELS

from mmext_init import deferred, stock_mmengine
from mmext_init.deferred.recording import copy_pending


def deferred_linear(*shape):
    with deferred.deferred_construction():
        return nn.Linear(*shape)


def linear_pair(seed=0):
    """(stock, deferred) ``nn.Linear(8, 8)`` from the same seed."""
    torch.manual_seed(seed)
    stock = nn.Linear(8, 8)
    torch.manual_seed(seed)
    return stock, deferred_linear(8, 8)


def raw(t):
    return not torch.isfinite(t.detach()).all()


@MODELS.register_module(force=True)
class AveragesItsBackbone(BaseModule):
    """mmpretrain's MoCo/BYOL pattern: an averaged copy of the backbone
    built in the constructor (``CosineEMA(backbone)``)."""

    def __init__(self, init_cfg=None):
        super().__init__(init_cfg)
        self.backbone = nn.Linear(16, 16)
        self.target = ExponentialMovingAverage(self.backbone, momentum=0.1)
        self.head = nn.Linear(16, 4)


def test_averaged_model_built_inside_the_model(nan_empty, save_ckpt):
    """The copy is made while the backbone is still being built: it holds
    the constructor values, as without deferral; the backbone is loaded."""
    state = {'backbone.weight': torch.randn(16, 16),
             'backbone.bias': torch.randn(16)}
    path = save_ckpt(state)
    torch.manual_seed(0)
    model = MODELS.build(dict(type='AveragesItsBackbone', init_cfg=dict(
        type='Pretrained', checkpoint=path, on_missing='ignore')))
    model.init_weights()
    values = model.state_dict()
    for key, value in state.items():
        assert torch.equal(values[key], value), key
    assert not any(raw(v) for v in values.values() if v.is_floating_point())
    torch.manual_seed(0)
    with stock_mmengine():
        stock = MODELS.build(dict(type='AveragesItsBackbone')).state_dict()
    for key in ('target.module.weight', 'target.module.bias'):
        assert torch.equal(values[key], stock[key]), key


def test_alias_of_a_copy_replaced_while_pending(nan_empty):
    """``update_buffers=True`` keeps aliases of the pending copies; a copy
    replaced before anything read it leaves its alias with values."""
    stock, model = linear_pair()
    ema = ExponentialMovingAverage(nn.Sequential(model), momentum=0.1,
                                   update_buffers=True)
    weight, bias = ema.avg_parameters['0.weight'], ema.avg_parameters['0.bias']
    ema.module[0].weight = nn.Parameter(torch.zeros(8, 8))
    ema.module.load_state_dict({'0.weight': torch.ones(8, 8),
                                '0.bias': torch.ones(8)}, assign=True)
    gc.collect()
    assert type(weight) is torch.Tensor and type(bias) is torch.Tensor
    assert torch.equal(weight, stock.weight) and torch.equal(bias, stock.bias)


def test_copy_of_a_source_replaced_or_moved_away(nan_empty):
    """``.to()`` giving the source a new parameter object (the overwrite
    flag) or moving it to ``meta``: the copy never reads what is left."""
    stock, model = linear_pair()
    ema = ExponentialMovingAverage(model, momentum=0.1)
    old = model.weight  # e.g. held by an optimizer built before
    torch.__future__.set_overwrite_module_params_on_conversion(True)
    try:
        model.double()
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(False)
    assert model.weight is not old
    assert torch.equal(ema.module.weight, stock.weight)
    assert torch.equal(model.weight, stock.weight.double())

    _, model = linear_pair()
    ema = ExponentialMovingAverage(model, momentum=0.1)
    model.to('meta')
    assert not raw(ema.module.weight) and not raw(ema.module.bias)
    assert 0 < ema.module.weight.abs().max() <= 8 ** -0.5  # kaiming bound


def test_reading_a_copy_without_a_source_draws_nothing(nan_empty):
    """A copy whose source is gone runs the source's recorded init from a
    generator of its own: a read moves no global generator."""
    gone = deferred_linear(8, 8)
    orphan = copy_pending(gone.weight)
    del gone
    gc.collect()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    assert not raw(orphan.sum())
    assert torch.equal(torch.rand(3), expected)


def test_reseed_between_builds_and_conversions_keep_stock_values(nan_empty):
    """A model built after a reseed draws from the new seed even while an
    earlier one is pending; one converted while pending (``.double()``)
    holds its values as built, converted."""
    first_stock, first = linear_pair(seed=1)
    assert torch.equal(first.weight, first_stock.weight)  # bias: pending
    stock, model = linear_pair(seed=0)
    model.double()
    stock.double()
    for name, value in stock.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    assert torch.equal(first.bias, first_stock.bias)
