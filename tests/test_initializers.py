"""Zero, Identity, Orthogonal, LoRA: their math, stock conventions,
registry resolution, provenance and errors."""
import math

import pytest
import torch
import torch.nn as nn
from mmengine.model import BaseModule, initialize
from mmengine.registry import WEIGHT_INITIALIZERS, DefaultScope

from mmext_init import (get_provenance, identity_init, lora_init,
                        orthogonal_init, zero_init)


@pytest.mark.parametrize('layer, shape', [
    (nn.Linear(16, 16), (4, 16)),
    (nn.Conv1d(6, 6, 3, padding=1), (2, 6, 9)),
    (nn.Conv2d(6, 6, 3, padding=2, dilation=2), (2, 6, 7, 7)),
    (nn.Conv3d(4, 4, 3, padding=1), (1, 4, 3, 5, 5)),
    (nn.Conv2d(8, 8, 3, padding=1, groups=4), (2, 8, 6, 6)),
])
def test_identity_maps_input_to_output(layer, shape):
    identity_init(layer)
    x = torch.randn(shape)
    assert torch.allclose(layer(x), x, atol=1e-6)


def test_identity_rejects_layers_that_cannot_be_identity():
    with pytest.raises(ValueError, match='Conv2d has an even kernel size'):
        identity_init(nn.Conv2d(4, 4, 2))
    with pytest.raises(ValueError, match='Conv2d has padding'):
        identity_init(nn.Conv2d(4, 4, 3))
    with pytest.raises(ValueError, match='Conv2d has stride'):
        identity_init(nn.Conv2d(4, 4, 3, stride=2, padding=1))


def test_zero_and_orthogonal():
    fc = nn.Linear(8, 8)
    zero_init(fc)
    assert torch.count_nonzero(fc.weight) == 0 and torch.count_nonzero(
        fc.bias) == 0
    wide = nn.Linear(32, 16)
    orthogonal_init(wide, gain=2.0, bias=0.5)
    w = wide.weight
    assert torch.allclose(w @ w.T, 4 * torch.eye(16), atol=1e-4)
    assert torch.all(wide.bias == 0.5)


class LoRALinear(BaseModule):
    """A frozen linear with a low-rank update ``B A``."""

    def __init__(self, dim=256, rank=64, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.base = nn.Linear(dim, dim)
        self.lora_A = nn.Linear(dim, rank, bias=False)
        self.lora_B = nn.Linear(rank, dim, bias=False)

    def forward(self, x):
        return self.base(x) + self.lora_B(self.lora_A(x))


def test_lora_product_zero_and_kaiming_variance():
    m = LoRALinear()
    lora_init(m)
    assert torch.count_nonzero(m.lora_B.weight @ m.lora_A.weight) == 0
    x = torch.randn(3, 256)
    assert torch.equal(m(x), m.base(x))
    # kaiming_uniform_(a=sqrt(5)): U(-b, b), b = sqrt(6 / ((1 + 5) fan_in))
    bound = math.sqrt(6 / (6 * 256))
    assert m.lora_A.weight.abs().max() <= bound
    assert abs(m.lora_A.weight.var().item() - bound**2 / 3) < 0.1 * bound**2
    lora_init(m, mode='gaussian')
    assert abs(m.lora_A.weight.std().item() - 1 / 64) < 0.05 / 64


def test_lora_missing_projection_names_module():
    with pytest.raises(ValueError, match="Linear has no projection 'lora_A'"):
        lora_init(nn.Linear(4, 4))


class Block(BaseModule):
    """Serial identity conv, residual adapter, a LoRA layer."""

    def __init__(self, init_cfg):
        super().__init__(init_cfg=init_cfg)
        self.serial = nn.Conv2d(8, 12, 3, padding=1)
        self.up = nn.Linear(4, 8)
        self.lora = LoRALinear(16, 4)
        self.proj = nn.Linear(16, 16)


def test_by_name_with_layer_override_bias_and_provenance():
    block = Block(init_cfg=[
        dict(type='Identity', layer='Conv2d', bias_prob=0.01),
        dict(type='Orthogonal', layer='Linear', gain=1.0,
             override=[dict(type='Zero', name='up'),
                       dict(type='LoRA', name='lora', mode='gaussian')]),
    ])
    block.init_weights()
    assert torch.count_nonzero(block.up.weight) == 0
    assert torch.allclose(block.serial.bias,
                          torch.full((12, ), -math.log(99)), atol=1e-5)
    ledger = get_provenance(block)
    serial = ledger.entries['serial.weight']
    assert (serial.source, serial.args) == ('Identity', {'bias_prob': 0.01})
    assert serial.notes == ('rectangular 12x8: identity on the first 8 '
                            'channels, zeros elsewhere', )
    assert ledger.entries['lora.lora_B.weight'].source == 'LoRA'
    assert ledger.entries['proj.weight'].source == 'Orthogonal'
    assert torch.count_nonzero(block.lora.lora_B.weight) == 0


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_registered_in_the_root_registry_for_every_scope(scope):
    __import__(f'{scope}.registry')
    DefaultScope.get_instance(f'init_{scope}', scope_name=scope)
    with DefaultScope.overwrite_default_scope(scope):
        for name in ('Zero', 'Identity', 'Orthogonal', 'LoRA', 'CopyFrom'):
            assert WEIGHT_INITIALIZERS.get(name) is not None, name
        fc = nn.Linear(4, 4)
        initialize(fc, dict(type='Zero', layer='Linear', bias=1.0))
    assert torch.count_nonzero(fc.weight) == 0 and torch.all(fc.bias == 1)
