"""Deferred constructor init: nothing uninitialized ever escapes,
loaded values stay bit-exact, the rest matches the non-deferred path.

Uninitialized memory is made visible: ``torch.empty`` returns NaN under
``fill_uninitialized_memory`` (fixture ``nan_empty``), so any pending tensor
reaching a checked place shows up as NaN.
"""
import copy
import gc
import io
import math

import pytest
import torch
import torch.nn as nn
import torch.utils.deterministic
from mmengine.model import BaseModule
from mmengine.registry import MODELS

from toy_models import tiny_retinanet_cfg as retinanet_cfg

from mmext_init import deferred, get_provenance, stock_mmengine
from mmext_init.deferred.recording import copy_pending


@pytest.fixture(autouse=True)
def always_defer(monkeypatch):
    """These tests are about the deferral engine: every model build defers
    (``MMEXT_INIT_DEFER=1``), with or without a declared checkpoint."""
    monkeypatch.setenv(deferred.ENV_VAR, '1')


class Block(BaseModule):

    def __init__(self, dim):
        super().__init__(init_cfg=[
            dict(type='TruncNormal', std=0.02, layer='Linear'),
            dict(type='Constant', val=1, layer='LayerNorm')])
        self.norm, self.fc = nn.LayerNorm(dim), nn.Linear(dim, dim)

    def forward(self, x):
        return self.fc(self.norm(x))


class Adapter(BaseModule):

    def __init__(self, dim):
        super().__init__(init_cfg=[
            dict(type='Kaiming', layer='Linear'),
            dict(type='Constant', val=0, override=dict(name='up'))])
        self.down, self.up = nn.Linear(dim, 8), nn.Linear(8, dim)

    def forward(self, x):
        return self.up(self.down(x))


@MODELS.register_module(force=True)
class DeferToyViT(BaseModule):
    """A ViT with every construction pattern the mode must get right."""

    def __init__(self, dim=32, depth=2, init_cfg=None):
        super().__init__(init_cfg)
        self.patch_embed = nn.Conv2d(3, dim, 4, 4)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.empty(1, 5, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)  # uniform_, erfinv_...
        self.register_buffer('noise', torch.randn(dim))  # eager draw
        self.embed = nn.Embedding(10, dim, padding_idx=0)  # partial write
        self.head = nn.Linear(dim, 3)  # no declared init: constructor
        self.head_copy = nn.Parameter(self.head.weight.detach().clone())
        self.offsets = nn.Linear(dim, 4)
        self.offsets.bias.data = torch.arange(4.)  # like mmcv's MSDA
        # reads above replay what came before them (draw order); below,
        # nothing is read: all of it stays pending
        self.blocks = nn.ModuleList([Block(dim) for _ in range(depth)])
        self.adapters = nn.ModuleList([Adapter(dim) for _ in range(depth)])
        self.gamma = nn.Parameter(torch.ones(dim))
        with torch.no_grad():
            self.gamma.mul_(0.1)  # depends on the value before

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], 1)
        x = x + self.pos_embed
        for block, adapter in zip(self.blocks, self.adapters):
            x = block(x) + adapter(x)
        x = x * self.gamma + self.embed.weight[1]
        return (self.head(x[:, 0]) + self.offsets(x[:, 0]).sum() +
                self.head_copy.sum())


VIT_IN = (2, 3, 8, 8)


def rand(*shape, dtype=torch.float32):
    """Inputs from their own generator: a draw from the global one between
    build and replay would shift the replayed values (documented)."""
    return torch.rand(*shape, dtype=dtype,
                      generator=torch.Generator().manual_seed(1))


def build_det(cfg):
    from mmdet.registry import MODELS as DET_MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    return DET_MODELS.build(cfg)


def build_retinanet(**init):
    return build_det(retinanet_cfg(**init))


def retinanet_forward(model):
    return model(rand(1, 3, 64, 64), mode='tensor')


def own_pending(model):
    return [n for n, p in model.named_parameters() if deferred.is_pending(p)]


def assert_all_finite(tensors):
    bad = [n for n, t in tensors.items()
           if t.is_floating_point() and not torch.isfinite(t).all()]
    assert not bad, f'not finite: {bad}'


def build_pair(build, seed=0, monkeypatch=None):
    """(deferred, reference) builds with the same seed; the reference with
    deferral off (``MMEXT_INIT_DEFER=0``), built first: nothing may draw
    from the global generator between a deferred build and its replay."""
    monkeypatch.setenv(deferred.ENV_VAR, '0')
    torch.manual_seed(seed)
    reference = build()
    monkeypatch.setenv(deferred.ENV_VAR, '1')
    assert not own_pending(reference)
    torch.manual_seed(seed)
    model = build()
    assert own_pending(model), 'nothing deferred: the test would prove nothing'
    return model, reference


def vit_ckpt(save_ckpt, dim=32):
    """A trunk checkpoint: no adapters, head or offsets."""
    torch.manual_seed(123)
    with stock_mmengine():
        source = MODELS.build(dict(type='DeferToyViT', dim=dim))
    state = {k: v for k, v in source.state_dict().items()
             if not k.startswith(('adapters.', 'head', 'offsets.'))}
    return save_ckpt(state), state


# (a) init_weights with Pretrained --------------------------------------------
def test_vit_pretrained_loads_bit_exact_and_inits_the_rest(nan_empty,
                                                           save_ckpt):
    path, state = vit_ckpt(save_ckpt)
    model = MODELS.build(dict(type='DeferToyViT', init_cfg=dict(
        type='Pretrained', checkpoint=path, on_missing='ignore')))
    assert deferred.is_pending(model.blocks[0].fc.weight)
    model.init_weights()
    values = model.state_dict()
    for key, value in state.items():
        assert torch.equal(values[key], value), key
    assert_all_finite(values)
    assert torch.count_nonzero(model.adapters[0].up.weight) == 0
    down = model.adapters[1].down.weight  # Kaiming(fan_out): std sqrt(2/8)
    assert abs(down.std().item() - math.sqrt(2 / 8)) < 0.1
    bound = 1 / math.sqrt(32)  # constructor default: kaiming_uniform(a=5**.5)
    assert model.head.weight.abs().max() <= bound
    assert torch.equal(model.offsets.bias, torch.arange(4.))
    ledger = get_provenance(model)
    assert ledger.entries['head.weight'].kind == 'constructor'
    assert ledger.entries['blocks.0.fc.weight'].kind == 'checkpoint'
    assert torch.isfinite(model(rand(*VIT_IN))).all()


def test_retinanet_pretrained_backbone_bit_exact(nan_empty, save_ckpt):
    with stock_mmengine():
        source = build_retinanet()
    state = {f'backbone.{k}': v for k, v in
             source.backbone.state_dict().items()}
    path = save_ckpt(state)
    model = build_retinanet(init_cfg=dict(
        type='Pretrained', checkpoint=path, prefix='backbone.'))
    assert deferred.is_pending(model.backbone.conv1.weight)
    model.init_weights()
    values = model.backbone.state_dict()
    for key, value in state.items():
        assert torch.equal(values[key[len('backbone.'):]], value), key
    assert_all_finite(model.state_dict())
    cls = model.bbox_head.retina_cls  # Normal(std=0.01, bias_prob=0.01)
    assert abs(cls.weight.std().item() - 0.01) < 0.003
    assert torch.allclose(cls.bias, torch.full_like(cls.bias,
                                                    -math.log(99)))
    assert all(torch.isfinite(t).all() for t in retinanet_forward(model)[0])


# (b) no init_weights: a forward computes the constructor values ------------
@pytest.mark.parametrize('which', ['vit', 'retinanet'])
def test_forward_without_init_gives_the_constructor_values(
        which, nan_empty, monkeypatch):
    if which == 'vit':
        build = lambda: MODELS.build(dict(type='DeferToyViT'))  # noqa: E731
        forward = lambda m: m(rand(*VIT_IN))  # noqa: E731
    else:
        build, forward = build_retinanet, retinanet_forward
    model, reference = build_pair(build, monkeypatch=monkeypatch)
    out = forward(model.eval())  # eval: BN statistics stay as built
    outs = out if isinstance(out, tuple) else (out, )
    assert all(torch.isfinite(t).all() for o in outs
               for t in (o if isinstance(o, (list, tuple)) else [o]))
    assert not own_pending(model)
    ours, theirs = model.state_dict(), reference.state_dict()
    for key in theirs:  # same seed, same draw order: bit-identical
        assert torch.equal(ours[key], theirs[key]), key


# (c) load_checkpoint / init_detector, then forward -------------------------
def test_load_checkpoint_then_forward_keeps_loaded_values(nan_empty,
                                                          save_ckpt):
    from mmengine.runner import load_checkpoint
    with stock_mmengine():
        source = build_retinanet()
    state = {k: v for k, v in source.state_dict().items()
             if not k.startswith('bbox_head.retina_cls')}
    path = save_ckpt(state)
    model = build_retinanet()
    load_checkpoint(model, path, map_location='cpu')
    assert own_pending(model) == ['bbox_head.retina_cls.weight',
                                  'bbox_head.retina_cls.bias']
    retinanet_forward(model.eval())
    values = model.state_dict()
    for key, value in state.items():
        assert torch.equal(values[key], value), key
    assert_all_finite(values)


def test_init_detector_then_forward(nan_empty, save_ckpt):
    from mmdet.apis import init_detector
    from mmengine.config import Config
    with stock_mmengine():
        source = build_retinanet()
    state = {k: v for k, v in source.state_dict().items()
             if not k.startswith('bbox_head.retina_cls')}
    model = init_detector(Config(dict(model=retinanet_cfg())),
                          save_ckpt(state), palette='random', device='cpu')
    assert own_pending(model) == ['bbox_head.retina_cls.weight',
                                  'bbox_head.retina_cls.bias']
    outs = retinanet_forward(model)  # init_detector set eval()
    assert all(torch.isfinite(t).all() for level in outs for t in level)
    values = model.state_dict()
    for key, value in state.items():
        assert torch.equal(values[key], value), key
    assert_all_finite(values)


# (d) deep copies before init (EMAHook deep-copies the model) ---------------
def test_deepcopy_before_init_copies_computed_values(nan_empty, monkeypatch):
    model, reference = build_pair(lambda: MODELS.build(dict(
        type='DeferToyViT')), monkeypatch=monkeypatch)
    clone = copy.deepcopy(model)
    assert not own_pending(model) and not own_pending(clone)
    for key, value in reference.state_dict().items():
        assert torch.equal(clone.state_dict()[key], value), key
        assert torch.equal(model.state_dict()[key], value), key


def build_ema(model, update_buffers):
    return MODELS.build(dict(type='ExponentialMovingAverage', momentum=0.1,
                             update_buffers=update_buffers),
                        default_args=dict(model=model))


@pytest.mark.parametrize('update_buffers', [False, True])
def test_ema_copies_stay_pending_until_read(update_buffers, nan_empty,
                                            monkeypatch):
    """EMAHook builds its averaged model before ``init_weights``: the copy
    computes nothing, and reading it gives the constructor values."""
    model, reference = build_pair(lambda: MODELS.build(dict(
        type='DeferToyViT')), monkeypatch=monkeypatch)
    pending = own_pending(model)
    ema = build_ema(model, update_buffers)
    assert own_pending(model) == pending
    assert own_pending(ema.module) == pending
    aliases = {k: v for k, v in ema.avg_parameters.items() if k in pending}
    if update_buffers:  # state_dict() in the constructor: aliases
        assert {type(v).__name__ for v in aliases.values()} == {
            'PendingAlias'}
    values = ema.module.state_dict()
    assert not own_pending(model) and not own_pending(ema.module)
    for key, value in reference.state_dict().items():
        assert torch.equal(values[key], value), key
        assert torch.equal(model.state_dict()[key], value), key
    for key, view in aliases.items():  # plain tensors again, same values
        assert type(view) in (torch.Tensor, nn.Parameter), key
        assert torch.equal(view, reference.state_dict()[key]), key


def test_ema_aliases_of_a_model_moved_before_the_read(nan_empty,
                                                      monkeypatch):
    """``update_buffers=True`` keeps aliases from ``state_dict()``; moving
    the copies (``.double()``) before anything is read leaves each alias
    with the values, not with the old memory."""
    model, reference = build_pair(lambda: MODELS.build(dict(
        type='DeferToyViT')), monkeypatch=monkeypatch)
    ema = build_ema(model, update_buffers=True)
    pending = own_pending(ema.module)
    ema.module.double()
    for key, value in reference.state_dict().items():
        view = ema.avg_parameters[key]
        assert view.dtype == value.dtype and torch.equal(view, value), key
        if key in pending:
            assert ema.module.state_dict()[key].dtype == torch.float64


@pytest.mark.parametrize('update_buffers', [False, True])
def test_ema_built_before_pretrained_init_keeps_the_saving(
        update_buffers, nan_empty, save_ckpt, spy_replays):
    """The tensors the checkpoint provides are never computed, in the model
    or its EMA copy; a copy of a pending tensor then holds the model's
    values (of the others, a copy of the value then, as without deferral)."""
    path, state = vit_ckpt(save_ckpt)
    model = MODELS.build(dict(type='DeferToyViT', init_cfg=dict(
        type='Pretrained', checkpoint=path, on_missing='ignore')))
    params = dict(model.named_parameters())
    loaded = {id(params[k]) for k in state
              if k in params and deferred.is_pending(params[k])}
    assert loaded, 'nothing deferred: the test would prove nothing'
    replayed = spy_replays()
    pending = own_pending(model)
    before = {k: v.detach().clone()  # not pending: reads nothing raw
              for k, v in model.state_dict(keep_vars=True).items()
              if k not in pending}
    ema = build_ema(model, update_buffers)
    model.init_weights()
    values = ema.module.state_dict()  # the copies are read now
    assert not replayed & loaded
    assert not own_pending(ema.module)
    for key, value in model.state_dict().items():
        expected = before.get(key, value)
        assert torch.equal(values[key], expected), key
    assert {k for k in state if k in pending} and all(
        torch.equal(values[k], state[k]) for k in state if k in pending)
    assert_all_finite(values)


def test_copy_of_a_tensor_without_values_runs_its_init(nan_empty):
    """A pending copy whose source was dropped for a checkpoint copy still
    to come, or is gone, runs the source's recorded init instead."""
    with deferred.deferred_construction():
        fc = nn.Linear(64, 64)
    awaiting = copy_pending(fc.weight)
    deferred.settle({'weight': fc.weight, 'bias': fc.bias}, {'weight'})
    assert not deferred.is_pending(fc.weight)  # its memory: still raw
    with deferred.deferred_construction():
        gone = nn.Linear(64, 64)
    orphan = copy_pending(gone.weight)
    del gone
    gc.collect()
    for twin in (awaiting, orphan):
        assert deferred.is_pending(twin)
        values = twin.detach().clone()  # a read: runs kaiming_uniform_
        assert type(twin) is nn.Parameter
        assert torch.isfinite(values).all()
        assert 0 < values.abs().max() <= 1 / 8  # bound 1/sqrt(fan_in)
    fc.weight.data.fill_(1.0)  # what the checkpoint copy would do


# (e) state_dict / get_state_dict / save / optimizer step before init --------
@pytest.mark.parametrize('read', ['state_dict', 'get_state_dict', 'save',
                                  'save_module', 'step'])
def test_reads_before_init_see_computed_values(read, nan_empty, monkeypatch):
    model, reference = build_pair(lambda: MODELS.build(dict(
        type='DeferToyViT')), monkeypatch=monkeypatch)
    if read == 'state_dict':
        values = model.state_dict()
    elif read == 'get_state_dict':
        from mmengine.runner.checkpoint import get_state_dict
        values = get_state_dict(model)
    elif read in ('save', 'save_module'):
        buf = io.BytesIO()
        torch.save(model.state_dict() if read == 'save' else model, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        values = loaded if read == 'save' else loaded.state_dict()
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        for p in model.parameters():
            p.grad = torch.zeros_like(p)  # p - 0.5 * 0 reads p
        optimizer.step()
        values = model.state_dict()
    assert not own_pending(model) and not deferred.hooks_installed()
    for key, value in reference.state_dict().items():
        assert torch.equal(values[key], value), key


# values match the non-accelerated path --------------------------------------
def test_without_pretrained_values_identical_to_no_deferral(monkeypatch):
    """Same seed, same values, with a reseed between build and init too
    (deferred draws use the generator state saved at the build)."""
    for build in (lambda: MODELS.build(dict(type='DeferToyViT')),
                  build_retinanet):
        model, reference = build_pair(build, seed=3, monkeypatch=monkeypatch)
        torch.manual_seed(5)
        model.init_weights()
        torch.manual_seed(5)
        reference.init_weights()
        theirs = reference.state_dict()
        for key, value in model.state_dict().items():
            assert torch.equal(value, theirs[key]), key


def test_retinanet_without_pretrained_identical_to_stock(monkeypatch):
    """Contract 5 through a registry build (the model is stock-reachable)."""
    model, reference = build_pair(build_retinanet, seed=3,
                                  monkeypatch=monkeypatch)
    torch.manual_seed(5)
    model.init_weights()
    torch.manual_seed(5)
    with stock_mmengine():
        reference.init_weights()
    theirs = reference.state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(value, theirs[key]), key


def test_with_pretrained_same_loads_constants_and_distributions(
        save_ckpt, monkeypatch):
    path, _ = vit_ckpt(save_ckpt, dim=256)
    cfg = dict(type='DeferToyViT', dim=256, init_cfg=dict(
        type='Pretrained', checkpoint=path, on_missing='ignore'))

    def build_and_init():  # one stream, as in a Runner
        torch.manual_seed(0)
        model = MODELS.build(cfg)
        model.init_weights()
        return model

    monkeypatch.setenv(deferred.ENV_VAR, '0')
    reference = build_and_init()
    monkeypatch.setenv(deferred.ENV_VAR, '1')
    model = build_and_init()
    ours, theirs = model.state_dict(), reference.state_dict()
    ledger = get_provenance(model)
    assert ledger.to_dict() == get_provenance(reference).to_dict()
    # equal: loaded, constants, values computed during construction (head
    # is read by head_copy) or replayed before any dropped draw (offsets)
    for key, entry in ledger.entries.items():
        if entry.kind == 'checkpoint' or key.startswith(
                ('adapters.0.up', 'gamma', 'offsets', 'head')):
            assert torch.equal(ours[key], theirs[key]), key
    # the dropped (loaded) tensors drew nothing: later draws shift
    # (documented), with the same distributions
    for key in ('adapters.0.down.weight', 'adapters.1.down.weight'):
        assert not torch.equal(ours[key], theirs[key])
        a, b = ours[key], theirs[key]
        assert abs(a.std() / b.std() - 1) < 0.15, key
        # means of two samples: 5 standard errors apart at most
        assert abs(a.mean() - b.mean()) < 5 * b.std() * (2 / b.numel())**.5


# switches, guards, bookkeeping --------------------------------------------
class EagerDrawBetween(nn.Module):

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(16, 16)
        self.register_buffer('noise', torch.randn(16))  # replays `a` first
        self.b = nn.Linear(16, 16)
        self.c = nn.Linear(16, 16)
        self.c_copy = self.c.weight.detach().clone()  # replays b and c


def test_reads_during_construction_keep_the_draw_order():
    torch.manual_seed(0)
    reference = EagerDrawBetween()
    torch.manual_seed(0)
    with deferred.deferred_construction():
        model = EagerDrawBetween()
        assert own_pending(model) == ['c.bias']  # drawn after c.weight
        model.d = nn.Linear(16, 16)
    assert own_pending(model) == ['c.bias', 'd.weight', 'd.bias']
    assert torch.equal(model.noise, reference.noise)
    assert torch.equal(model.c_copy, reference.c.weight)
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_switches_turn_deferral_off(monkeypatch):
    with stock_mmengine():
        assert not own_pending(MODELS.build(dict(type='DeferToyViT')))
    monkeypatch.setenv(deferred.ENV_VAR, '0')
    assert not own_pending(MODELS.build(dict(type='DeferToyViT')))
    monkeypatch.setenv(deferred.ENV_VAR, '1')
    assert own_pending(MODELS.build(dict(type='DeferToyViT')))
    assert not own_pending(DeferToyViT())  # a direct call is not a build
    monkeypatch.setenv(deferred.ENV_VAR, 'sometimes')
    with pytest.raises(ValueError, match="MMEXT_INIT_DEFER='sometimes'"):
        MODELS.build(dict(type='DeferToyViT'))


PRETRAINED = dict(type='Pretrained', checkpoint='vit.pth')


@pytest.mark.parametrize('cfg, defers', [
    (dict(type='DeferToyViT'), False),
    (dict(type='DeferToyViT', init_cfg=PRETRAINED), True),
    (dict(type='DeferToyViT', init_cfg=[dict(type='Kaiming'), PRETRAINED]),
     True),
    (dict(type='DeferToyViT', init_cfg=dict(type='mmengine.Pretrained',
                                            checkpoint='vit.pth')), True),
    (retinanet_cfg(), False),
    (dict(retinanet_cfg(), backbone=dict(retinanet_cfg()['backbone'],
                                         init_cfg=PRETRAINED)), True),
    (dict(retinanet_cfg(), pretrained='r18.pth'), True),
    (dict(retinanet_cfg(), pretrained=None), False),
    (dict(retinanet_cfg(), teacher_ckpt='teacher.pth'), True),
], ids=['none', 'model', 'list', 'scoped', 'retinanet', 'backbone',
        'pretrained_key', 'pretrained_none', 'teacher_ckpt'])
def test_auto_defers_a_build_that_declares_a_checkpoint(monkeypatch, cfg,
                                                         defers):
    """By default (``auto``) only a config that declares a checkpoint
    defers: elsewhere every pending tensor would be replayed at
    ``init_weights`` and the recording would only cost time."""
    monkeypatch.delenv(deferred.ENV_VAR)
    assert deferred.defer_mode() == 'auto'
    assert deferred.declares_checkpoint(cfg) is defers
    cfg = copy.deepcopy(cfg)
    for key in ('pretrained', 'teacher_ckpt'):  # the classes take no such key
        cfg.pop(key, None)
    build = build_det if cfg['type'] == 'RetinaNet' else MODELS.build
    if not defers:
        assert not own_pending(build(cfg))
    monkeypatch.setenv(deferred.ENV_VAR, '1')
    assert own_pending(build(cfg))


def test_write_after_build_is_kept(nan_empty, monkeypatch):
    model, reference = build_pair(lambda: MODELS.build(dict(
        type='DeferToyViT')), monkeypatch=monkeypatch)
    nn.init.zeros_(model.head.weight)  # outside any init_weights
    model(rand(*VIT_IN))
    assert torch.count_nonzero(model.head.weight) == 0
    # its draws still happened: the tensors after it match the reference
    assert torch.equal(model.offsets.weight, reference.offsets.weight)


def test_memory_left_by_a_data_swap_is_not_the_parameter(nan_empty):
    """``p.data = t`` in a constructor gives a pending parameter other memory
    without running an op: a tensor on its old memory (freed, the address of
    the next allocation) is not the parameter: reading it during a build
    computes nothing pending."""
    model = MODELS.build(dict(type='DeferToyViT'))
    bias = model.blocks[0].fc.bias
    old = bias.untyped_storage()
    with deferred.deferred_construction():  # as in the constructor
        bias.data = torch.zeros(bias.shape)
        pending = own_pending(model)
        assert 'blocks.0.fc.bias' in pending
        torch.empty(0).set_(old).sum()
    assert own_pending(model) == pending
    model(rand(*VIT_IN))  # the swapped values stay, the rest is computed
    assert torch.count_nonzero(model.blocks[0].fc.bias) == 0
    assert_all_finite(model.state_dict())


def test_to_dtype_before_init_keeps_deferral(nan_empty):
    model = MODELS.build(dict(type='DeferToyViT')).double()
    assert own_pending(model)
    model(rand(*VIT_IN, dtype=torch.float64))
    assert model.blocks[0].fc.weight.dtype == torch.float64
    assert_all_finite(model.state_dict())
    assert torch.allclose(model.gamma, torch.full_like(model.gamma, 0.1))


def test_hooks_exist_only_while_something_is_pending():
    from torch.nn.modules.module import _global_forward_pre_hooks
    from torch.optim.optimizer import _global_optimizer_pre_hooks
    forward, step = len(_global_forward_pre_hooks), len(
        _global_optimizer_pre_hooks)
    model = MODELS.build(dict(type='DeferToyViT'))
    assert len(_global_forward_pre_hooks) == forward + 1
    assert len(_global_optimizer_pre_hooks) == step + 1
    del model
    gc.collect()  # the registry holds models weakly
    assert deferred.pending_count() == 0
    assert len(_global_forward_pre_hooks) == forward
    assert len(_global_optimizer_pre_hooks) == step


def test_partial_load_state_dict_drops_only_what_it_overwrote(nan_empty):
    model = MODELS.build(dict(type='DeferToyViT'))
    head = {'weight': torch.ones(3, 32)}
    model.head.load_state_dict(head, strict=False)
    assert not deferred.is_pending(model.head.weight)
    assert deferred.is_pending(model.head.bias)
    model(rand(*VIT_IN))
    assert torch.equal(model.head.weight, head['weight'])
    assert torch.isfinite(model.head.bias).all()
