"""Zero, Identity, Orthogonal, LoRAPair: their math, the stock conventions
(``layer``, ``override``, ``bias``, ``bias_prob`` as for ``Constant``),
registry resolution under mmdet/mmseg scopes, provenance and errors."""
import copy
import logging
import math

import pytest
import torch
import torch.nn as nn
from mmengine.logging import MMLogger
from mmengine.model import BaseModule, initialize
from mmengine.model.weight_init import bias_init_with_prob
from mmengine.registry import WEIGHT_INITIALIZERS, DefaultScope

import mmext_init
from mmext_init import (InitConfigError, get_provenance, identity_init,
                        lora_pair_init, orthogonal_init, zero_init)
from mmext_init.initializers.layer_types import (IdentityInit, LoRAPairInit,
                                                 OrthogonalInit, ZeroInit)

NEW_TYPES = {'Zero': ZeroInit, 'Identity': IdentityInit,
             'Orthogonal': OrthogonalInit, 'LoRAPair': LoRAPairInit}


# -- Identity ---------------------------------------------------------------
@pytest.mark.parametrize('layer, shape', [
    (nn.Linear(16, 16), (4, 16)),
    (nn.Conv1d(6, 6, 3, padding=1), (2, 6, 9)),
    (nn.Conv2d(6, 6, 3, padding=2, dilation=2), (2, 6, 7, 7)),
    (nn.Conv2d(6, 6, 5, padding='same'), (2, 6, 7, 7)),
    (nn.Conv2d(6, 6, 1, padding='valid'), (2, 6, 7, 7)),
    (nn.Conv2d(6, 6, (1, 3), padding=(0, 1), padding_mode='reflect'),
     (2, 6, 5, 5)),
    (nn.Conv3d(4, 4, 3, padding=1), (1, 4, 3, 5, 5)),
    (nn.Conv2d(8, 8, 3, padding=1, groups=4), (2, 8, 6, 6)),
    (nn.Conv2d(8, 8, 3, padding=1, groups=8), (2, 8, 6, 6)),  # depthwise
])
def test_identity_maps_input_to_output(layer, shape):
    identity_init(layer)
    x = torch.randn(shape)
    assert torch.allclose(layer(x), x, atol=1e-6)
    assert torch.count_nonzero(layer.bias) == 0


def test_identity_rectangular_fills_the_overlap_and_zeros():
    x = torch.randn(3, 8)
    wide_out = nn.Linear(8, 12)
    identity_init(wide_out)
    y = wide_out(x)
    assert torch.equal(y[:, :8], x) and torch.count_nonzero(y[:, 8:]) == 0
    narrow_out = nn.Linear(12, 8)
    identity_init(narrow_out)
    x12 = torch.randn(3, 12)
    assert torch.equal(narrow_out(x12), x12[:, :8])
    # groups=2: out 3 / in 2 per group; out channel 3g+d = in channel 2g+d
    conv = nn.Conv2d(4, 6, 3, padding=1, groups=2)
    identity_init(conv)
    x = torch.randn(1, 4, 5, 5)
    y = conv(x)
    assert torch.allclose(y[:, [0, 1, 3, 4]], x, atol=1e-6)
    assert torch.count_nonzero(y[:, [2, 5]]) == 0


@pytest.mark.parametrize('layer, reason', [
    (nn.Conv2d(4, 4, 2), r'Conv2d\(4, 4, kernel_size=\(2, 2\).* even kernel'),
    (nn.Conv1d(4, 4, 4, padding='same'), 'Conv1d.* even kernel'),
    (nn.Conv2d(4, 4, 3), r'Conv2d.* padding \(0, 0\)'),
    (nn.Conv2d(4, 4, 3, padding='valid'), "Conv2d.* padding 'valid'"),
    (nn.Conv2d(4, 4, 3, padding=1, dilation=2), r'Conv2d.* dilation \(2, 2\)'),
    (nn.Conv3d(4, 4, 3, stride=2, padding=1), 'Conv3d.* stride'),
    (nn.BatchNorm2d(4), 'BatchNorm2d.* neither a Linear nor'),
    (nn.ConvTranspose2d(4, 4, 3, padding=1), 'ConvTranspose2d.* neither'),
])
def test_identity_rejects_layers_that_cannot_be_identity(layer, reason):
    with pytest.raises(ValueError, match='Identity: ' + reason):
        identity_init(layer)


# -- Zero, Orthogonal ---------------------------------------------------------
def test_zero_is_exactly_zero():
    for layer in (nn.Linear(8, 8), nn.Conv2d(4, 8, 3), nn.BatchNorm2d(8)):
        zero_init(layer)
        assert torch.count_nonzero(layer.weight) == 0
        assert torch.count_nonzero(layer.bias) == 0
    up = nn.Conv2d(4, 8, 1)
    zero_init(up, bias=0.5)
    assert torch.count_nonzero(up.weight) == 0 and torch.all(up.bias == 0.5)
    zero_init(nn.ReLU())  # nothing to fill: left alone, as constant_init


def test_orthogonal_gram_is_gain_squared_identity():
    wide = nn.Linear(32, 16)
    orthogonal_init(wide, gain=2.0, bias=0.5)
    w = wide.weight
    assert torch.allclose(w @ w.T, 4 * torch.eye(16), atol=1e-4)
    assert torch.all(wide.bias == 0.5)
    tall = nn.Linear(8, 24)
    orthogonal_init(tall, gain=0.5)
    assert torch.allclose(tall.weight.T @ tall.weight, 0.25 * torch.eye(8),
                          atol=1e-5)
    conv = nn.Conv2d(8, 16, 3)  # flattened 16 x 72
    orthogonal_init(conv)
    flat = conv.weight.flatten(1)
    assert torch.allclose(flat @ flat.T, torch.eye(16), atol=1e-5)
    with pytest.raises(ValueError, match=r'Orthogonal: LayerNorm.*\(8,\)'):
        orthogonal_init(nn.LayerNorm(8))
    with pytest.raises(ValueError, match=r'Orthogonal: ReLU\(\) needs a'):
        orthogonal_init(nn.ReLU())


# -- LoRA ---------------------------------------------------------------------
class LoRALinear(BaseModule):
    """A frozen linear with a low-rank update ``B A``."""

    def __init__(self, dim=256, rank=64, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.base = nn.Linear(dim, dim)
        self.lora_A = nn.Linear(dim, rank, bias=False)
        self.lora_B = nn.Linear(rank, dim, bias=False)

    def forward(self, x):
        return self.base(x) + self.lora_B(self.lora_A(x))


class ParamLoRA(nn.Module):
    """loralib-style projections held as Parameters, custom names."""

    def __init__(self, dim=32, rank=4):
        super().__init__()
        self.down = nn.Parameter(torch.randn(rank, dim))
        self.up = nn.Parameter(torch.randn(dim, rank))


def test_lora_product_zero_and_kaiming_uniform_variance():
    m = LoRALinear(dim=1024, rank=512)  # A: 512 x 1024, 524288 samples
    lora_pair_init(m)
    assert torch.count_nonzero(m.lora_B.weight) == 0
    assert torch.count_nonzero(m.lora_B.weight @ m.lora_A.weight) == 0
    x = torch.randn(3, 1024)
    assert torch.equal(m(x), m.base(x))
    # kaiming_uniform_(a=sqrt(5)): U(-b, b), b = sqrt(6 / ((1 + 5) fan_in))
    bound = 1 / math.sqrt(1024)
    a = m.lora_A.weight
    assert a.abs().max() <= bound and a.abs().max() > 0.99 * bound
    # var = b^2 / 3; its sampling std error is ~0.1 % here
    assert a.var().item() == pytest.approx(bound**2 / 3, rel=0.02)
    assert abs(a.mean().item()) < 0.01 * bound


@pytest.mark.parametrize('rank', [16, 64])
def test_lora_gaussian_std_is_one_over_rank(rank):
    """r is the rank of the pair (A's first dimension), as an insert's
    ``rank``: there is no second meaning to give."""
    m = LoRALinear(dim=512, rank=rank)
    lora_pair_init(m, mode='gaussian')
    assert m.lora_A.weight.std().item() == pytest.approx(1 / rank, rel=0.02)
    assert torch.count_nonzero(m.lora_B.weight) == 0
    with pytest.raises(TypeError, match='rank'):
        WEIGHT_INITIALIZERS.build(dict(type='LoRAPair', rank=rank))


def test_the_former_init_type_name_lora_names_the_new_one():
    """``LoRA`` is the insert type; in an ``init_cfg`` it is an error
    naming ``LoRAPair`` (no alias: one name, one meaning)."""
    assert 'LoRA' not in WEIGHT_INITIALIZERS.module_dict
    lora = LoRALinear(16, 4)
    lora.init_cfg = dict(type='LoRA', mode='gaussian')
    with pytest.raises(InitConfigError, match=(
            r"^init_cfg of the model root \(LoRALinear\) \(LoRA\): init "
            r"type 'LoRA' is now named 'LoRAPair' \('LoRA' is the insert "
            r"type of a model's insert=\[dict\(type='LoRA', \.\.\.\)\]\)$")):
        lora.init_weights()


def test_lora_parameters_and_conv_projections():
    p = ParamLoRA()
    lora_pair_init(p, a_attr='down', b_attr='up')
    assert torch.count_nonzero(p.up) == 0
    assert p.down.abs().max() <= 1 / math.sqrt(32)
    conv = nn.Module()  # PEFT's Conv2d LoRA: A = kxk conv, B = 1x1 conv
    conv.lora_A = nn.Conv2d(8, 2, 3, padding=1)
    conv.lora_B = nn.Conv2d(2, 8, 1)
    lora_pair_init(conv)
    out = conv.lora_B(conv.lora_A(torch.randn(1, 8, 5, 5)))
    assert torch.count_nonzero(out) == 0
    assert torch.count_nonzero(conv.lora_A.bias) == 0


def test_lora_errors_name_module_and_attribute():
    with pytest.raises(ValueError, match="Linear has no projection 'lora_A'"):
        lora_pair_init(nn.Linear(4, 4))
    with pytest.raises(ValueError,
                       match="ParamLoRA has no projection 'lora_B'"):
        lora_pair_init(ParamLoRA(), a_attr='down')
    with pytest.raises(ValueError, match="mode must be 'kaiming' or"):
        lora_pair_init(LoRALinear(8, 2), mode='xavier')
    with pytest.raises(ValueError, match="mode must be 'kaiming' or"):
        WEIGHT_INITIALIZERS.build(dict(type='LoRAPair', mode='normal'))
    with pytest.raises(ValueError, match='bias/bias_prob do not apply'):
        WEIGHT_INITIALIZERS.build(dict(type='LoRAPair', bias_prob=0.01))


def test_lora_layer_filter_skips_others_and_requires_projections_on_match():
    model = nn.Sequential(LoRALinear(16, 4), nn.Linear(16, 16))
    before = model[1].weight.clone()
    initialize(model, dict(type='LoRAPair', layer='LoRALinear'))
    assert torch.count_nonzero(model[0].lora_B.weight) == 0
    assert torch.equal(model[1].weight, before)  # not the target: untouched
    with pytest.raises(ValueError, match="Linear has no projection 'lora_A'"):
        initialize(model, dict(type='LoRAPair', layer='Linear'))
    # override: every LoRA module under the named one; none is an error
    nested = nn.Module()
    nested.block = nn.Sequential(LoRALinear(8, 2), LoRALinear(8, 2))
    nested.head = nn.Linear(8, 8)
    initialize(nested, dict(type='LoRAPair', override=dict(name='block')))
    assert all(torch.count_nonzero(m.lora_B.weight) == 0 for m in nested.block)
    with pytest.raises(ValueError, match=r"neither Linear\(.*\) nor any "
                       "module under it has both projections 'lora_A'"):
        initialize(nested, dict(type='LoRAPair', override=dict(name='head')))


# -- stock conventions, compared with Constant -------------------------------
class Net(BaseModule):

    def __init__(self, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.body = nn.Sequential(nn.Conv1d(8, 8, 1), nn.BatchNorm2d(8))
        self.head = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
        self.reg = nn.Conv2d(8, 8, 1)


def _filled_net(init_cfg=None) -> Net:
    net = Net(init_cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(7.0)
    return net


def _init(cfg, driver):
    net = _filled_net(cfg if driver == 'init_weights' else None)
    if driver == 'init_weights':
        net.init_weights()  # mmext_init's patched BaseModule.init_weights
    else:
        initialize(net, cfg)  # MMEngine's own driver
    return net


def _written(net):
    return {k for k, v in net.named_parameters() if not torch.all(v == 7.0)}


CONVENTIONS = [
    dict(layer='Conv2d'),
    dict(layer=['Conv1d', 'Linear']),
    dict(layer='_ConvNd'),  # a direct base class name matches, as in stock
    dict(layer='Conv2d', override=dict(name='head')),  # inherits the args
    dict(override=[dict(name='head'), dict(name='reg')]),
    dict(layer='Linear', bias=2.0),
    dict(layer='Conv2d', bias_prob=0.01),
    dict(layer='Conv2d', override=dict(name='head', type='Zero', bias=3.0)),
    dict(override=dict(name='body'), bias=1.0),  # Conv1d and BatchNorm2d
]


@pytest.mark.parametrize('driver', ['initialize', 'init_weights'])
@pytest.mark.parametrize('args', CONVENTIONS)
def test_zero_matches_constant_zero_exactly(args, driver):
    zero = _init(dict(type='Zero', **args), driver)
    const = _init(dict(type='Constant', val=0, **copy.deepcopy(args)), driver)
    assert _written(zero), 'the config selects nothing: vacuous'
    for (name, a), b in zip(zero.state_dict().items(),
                            const.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize('driver', ['initialize', 'init_weights'])
@pytest.mark.parametrize('args', CONVENTIONS[:6])
@pytest.mark.parametrize('init_type', ['Identity', 'Orthogonal'])
def test_identity_and_orthogonal_select_the_layers_constant_selects(
        init_type, args, driver):
    ours = _init(dict(type=init_type, **args), driver)
    const = _init(dict(type='Constant', val=0.5, **{'bias': 0.5, **args}),
                  driver)
    assert _written(ours) == _written(const) != set()
    for name, value in ours.state_dict().items():
        if name.endswith('bias') and name in _written(ours):
            assert torch.all(value == args.get('bias', 0)), name


def test_bias_prob_and_override_on_layers_of_another_kind():
    net = _filled_net()
    initialize(net, dict(type='Identity', layer='Linear', bias_prob=0.01))
    assert torch.allclose(net.head[0].bias,
                          torch.full((8, ), bias_init_with_prob(0.01)))
    # an override covers the layers it can initialize: body's BatchNorm2d
    # has no identity or orthogonal form and keeps its values
    for init_type in ('Identity', 'Orthogonal'):
        net = _filled_net()
        initialize(net, dict(type=init_type, override=dict(name='body')))
        assert _written(net) == {'body.0.weight', 'body.0.bias'}
    with pytest.raises(ValueError, match='Identity: BatchNorm2d.* neither'):
        initialize(net.body, dict(type='Identity', override=dict(name='1')))
    with pytest.raises(ValueError, match='Orthogonal: BatchNorm2d.*'):
        initialize(net.body, dict(type='Orthogonal', override=dict(name='1')))
    with pytest.raises(ValueError, match='Identity: Conv2d.* even kernel'):
        initialize(nn.Sequential(nn.Conv2d(4, 4, 2)),
                   dict(type='Identity', layer='Conv2d'))


def test_stock_init_weights_logs_our_init_info(tmp_path):
    """Under stock MMEngine, ``_params_init_info`` (the per-parameter init
    log) is updated like the stock initializers do."""
    net = LoRALinear(8, 2, init_cfg=[
        dict(type='Orthogonal', gain=2.0, layer='Linear'),
        dict(type='Zero', override=dict(name='lora_B'))
    ])
    logger = MMLogger.get_current_instance()
    handler = logging.FileHandler(tmp_path / 'init.log')
    logger.addHandler(handler)
    try:
        with mmext_init.stock_mmengine():
            net.init_weights()
    finally:
        logger.removeHandler(handler)
        handler.close()
    log = (tmp_path / 'init.log').read_text()
    assert 'base.weight - torch.Size([8, 8]): \nOrthogonalInit: gain=2.0' \
        in log
    assert 'lora_B.weight - torch.Size([8, 2]): \nZeroInit: bias=0' in log
    assert torch.count_nonzero(net.lora_B.weight) == 0


# -- registry -----------------------------------------------------------------
def test_built_by_name_from_the_root_registry():
    for name, cls in NEW_TYPES.items():
        assert WEIGHT_INITIALIZERS.module_dict[name] is cls
    fc = nn.Linear(6, 6)
    init = WEIGHT_INITIALIZERS.build(dict(type='Identity', layer='Linear'))
    assert isinstance(init, IdentityInit) and init.layer == ['Linear']
    init(fc)
    assert torch.equal(fc.weight, torch.eye(6))


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_every_type_resolves_under_downstream_scopes(scope):
    child = __import__(f'{scope}.registry',
                       fromlist=['WEIGHT_INITIALIZERS']).WEIGHT_INITIALIZERS
    with DefaultScope.overwrite_default_scope(scope):
        assert DefaultScope.get_current_instance().scope_name == scope
        for name, cls in NEW_TYPES.items():
            assert WEIGHT_INITIALIZERS.get(name) is cls, name
            assert isinstance(child.build(dict(type=name)), cls), name
        model = nn.ModuleDict(dict(zero=nn.Linear(4, 4),
                                   eye=nn.Conv2d(4, 4, 3, padding=1),
                                   orth=nn.Linear(8, 4),
                                   lora=LoRALinear(8, 2)))
        initialize(model, [
            dict(type='Zero', override=dict(name='zero'), bias=1.0),
            dict(type='Identity', override=dict(name='eye')),
            dict(type='Orthogonal', override=dict(name='orth'), gain=3.0),
            dict(type='LoRAPair', layer='LoRALinear', mode='gaussian'),
        ])
    assert torch.count_nonzero(model.zero.weight) == 0
    assert torch.all(model.zero.bias == 1)
    x = torch.randn(1, 4, 5, 5)
    assert torch.allclose(model.eye(x), x, atol=1e-6)
    w = model.orth.weight
    assert torch.allclose(w @ w.T, 9 * torch.eye(4), atol=1e-4)
    assert torch.count_nonzero(model.lora.lora_B.weight) == 0


# -- provenance (mmext_init's init_weights) ----------------------------------
class Block(BaseModule):
    """Serial identity conv, residual adapter, a LoRA layer."""

    def __init__(self, init_cfg):
        super().__init__(init_cfg=init_cfg)
        self.serial = nn.Conv2d(8, 12, 3, padding=1)
        self.grouped = nn.Conv2d(4, 6, 1, groups=2)
        self.up = nn.Linear(4, 8)
        self.lora = LoRALinear(16, 4)
        self.proj = nn.Linear(16, 16)


def test_provenance_records_type_args_and_notes():
    block = Block(init_cfg=[
        dict(type='Identity', layer='Conv2d', bias_prob=0.01),
        dict(type='Orthogonal', layer='Linear', gain=1.0,
             override=[dict(type='Zero', name='up'),
                       dict(type='LoRAPair', name='lora', mode='gaussian')]),
    ])
    block.init_weights()
    assert torch.count_nonzero(block.up.weight) == 0
    assert torch.allclose(block.serial.bias,
                          torch.full((12, ), -math.log(99)), atol=1e-5)
    entries = get_provenance(block).entries
    serial = entries['serial.weight']
    assert (serial.kind, serial.source) == ('initializer', 'Identity')
    assert serial.args == {'bias_prob': 0.01}
    assert serial.notes == ('rectangular: identity on the first 8 channels, '
                            'zeros elsewhere', )
    assert entries['grouped.weight'].notes == (
        'rectangular: identity on the first 2 channels of each of the 2 '
        'groups, zeros elsewhere', )
    assert entries['serial.bias'].notes == ()
    assert (entries['up.weight'].kind, entries['up.weight'].source) == (
        'initializer', 'Zero')
    assert entries['lora.lora_B.weight'].source == 'LoRAPair'
    assert entries['lora.lora_A.weight'].args == {'mode': 'gaussian'}
    assert entries['proj.weight'].source == 'Orthogonal'
    assert entries['lora.base.weight'].source == 'Orthogonal'
    assert torch.count_nonzero(block.lora.lora_B.weight) == 0


def test_layers_the_checkpoint_provides_are_not_rejected(save_ckpt):
    """An even-kernel conv cannot be the identity, but when the checkpoint
    provides it the Identity entry must neither fail nor count."""
    class Inserted(BaseModule):

        def __init__(self, init_cfg=None):
            super().__init__(init_cfg=init_cfg)
            self.pretrained = nn.Conv2d(4, 4, 2)
            self.serial = nn.Conv2d(4, 4, 1)

    source = Inserted()
    ckpt = save_ckpt({k: v for k, v in source.state_dict().items()
                      if k.startswith('pretrained.')})
    model = Inserted(init_cfg=[dict(type='Identity', layer='Conv2d'),
                               dict(type='Pretrained', checkpoint=ckpt)])
    model.init_weights()
    entries = get_provenance(model).entries
    assert entries['pretrained.weight'].kind == 'checkpoint'
    assert torch.equal(model.pretrained.weight, source.pretrained.weight)
    assert entries['serial.weight'].source == 'Identity'
    assert torch.equal(model.serial.weight.flatten(), torch.eye(4).flatten())
