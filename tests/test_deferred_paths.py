"""Deferred constructor init on the remaining paths: arbitrary reads after
the build, stock MMEngine's ``init_weights``, DDP, a failing session, and a
real ``Runner`` (built from a config dict, ``EMAHook``, ``Pretrained``).

``nan_empty`` (conftest) makes uninitialized memory NaN.
"""
import os

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from mmengine.config import ConfigDict
from mmengine.model import BaseModel, BaseModule
from mmengine.registry import MODELS
from test_deferred import (VIT_IN, assert_all_finite, build_pair, own_pending,
                           rand, vit_ckpt)

import mmext_init
from mmext_init import CheckpointError, deferred, get_provenance
from mmext_init.loading import copy as copy_module


@pytest.fixture(autouse=True)
def always_defer(monkeypatch):
    """Tests of the deferral engine: every model build defers."""
    monkeypatch.setenv(deferred.ENV_VAR, '1')


def build_vit():
    return MODELS.build(dict(type='DeferToyViT'))


READS = {
    'sum': lambda p: p.sum(),
    'count_nonzero': torch.count_nonzero,
    'str': lambda p: str(p),
    'functional': lambda p: F.linear(torch.ones(1, p.shape[1]), p),
    'numpy': lambda p: p.detach().numpy().copy(),
    'clone': lambda p: p.clone(),
    'data': lambda p: p.data.sum(),
    'stack': lambda p: torch.stack([p, p]),
}


@pytest.mark.parametrize('read', sorted(READS))
def test_any_read_after_the_build_computes_the_values_first(
        read, nan_empty, monkeypatch):
    model, reference = build_pair(build_vit, monkeypatch=monkeypatch)
    weight = model.blocks[1].fc.weight
    assert type(weight) is deferred.PendingParameter
    assert weight.shape == (32, 32) and weight.dtype == torch.float32
    assert deferred.is_pending(weight)  # metadata reads nothing
    READS[read](weight)
    assert type(weight) is nn.Parameter and not deferred.is_pending(weight)
    assert torch.equal(weight, reference.blocks[1].fc.weight)
    # replay covers a prefix of the draws: everything drawn before it too
    assert torch.equal(model.blocks[0].fc.weight,
                       reference.blocks[0].fc.weight)


def test_stock_init_weights_after_a_deferred_build(nan_empty, monkeypatch):
    """Stock MMEngine never initializes adapters held in a plain ModuleList:
    they keep (real) constructor values, never raw memory."""
    model, reference = build_pair(build_vit, monkeypatch=monkeypatch)
    with mmext_init.stock_mmengine():
        model.init_weights()
        reference.init_weights()
    assert not own_pending(model)
    assert_all_finite(model.state_dict())
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


@pytest.fixture
def process_group(tmp_path):
    dist.init_process_group('gloo', init_method=f'file://{tmp_path}/pg',
                            rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def test_ddp_wrap_keeps_pending_and_values_come_right(
        nan_empty, monkeypatch, process_group):
    """DDP's broadcast at wrap time does not count as a write: the
    parameters stay pending (no constructor init on any rank) and compute
    the reference values at the first forward."""
    from mmengine.model import MMDistributedDataParallel
    model, reference = build_pair(build_vit, monkeypatch=monkeypatch)
    before = own_pending(model)
    wrapped = MMDistributedDataParallel(module=model)
    assert own_pending(wrapped.module) == before
    with torch.no_grad():
        wrapped.module(rand(*VIT_IN))
    assert not own_pending(model)
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_failed_session_leaves_no_raw_memory(nan_empty, save_ckpt):
    """The copy fails on a NaN tensor after the loaded tensors' constructor
    init was dropped: they get it after all."""
    path, state = vit_ckpt(save_ckpt)
    state['blocks.1.fc.weight'] = torch.full_like(state['blocks.1.fc.weight'],
                                                  float('nan'))
    bad = save_ckpt(state)
    model = MODELS.build(dict(type='DeferToyViT', init_cfg=dict(
        type='Pretrained', checkpoint=bad, on_missing='ignore')))
    assert deferred.is_pending(model.blocks[1].fc.weight)
    with pytest.raises(CheckpointError, match='NaN or Inf'):
        model.init_weights()
    assert not own_pending(model)
    assert_all_finite(model.state_dict())


@pytest.mark.parametrize('chunk', [64, 1 << 20])
def test_failed_load_is_never_half_loaded(nan_empty, save_ckpt, monkeypatch,
                                          chunk):
    """Tensors nothing wrote yet are checked while copied, a chunk at a time
    (64 elements: the bad tensor fails in a later chunk, its first ones
    written): when one fails, every tensor the load wrote, and the bad one,
    gets its constructor init back; none keeps the checkpoint's values."""
    monkeypatch.setattr(copy_module, 'CHUNK', chunk)
    path, state = vit_ckpt(save_ckpt)
    big = sorted(k for k, v in state.items() if v.numel() > 64)
    bad_key = 'blocks.1.fc.weight'  # copied after blocks.0's, in chunks
    bad = state[bad_key].clone()
    bad.view(-1)[-1] = float('inf')
    model = MODELS.build(dict(type='DeferToyViT', init_cfg=dict(
        type='Pretrained', checkpoint=save_ckpt(dict(state, **{bad_key: bad})),
        on_missing='ignore')))
    pending = [k for k in big if deferred.is_pending(model.get_parameter(k))]
    assert pending == ['blocks.0.fc.weight', bad_key]
    assert state[bad_key].numel() > 64
    with pytest.raises(CheckpointError, match=f"{bad_key}' holds NaN"):
        model.init_weights()
    assert not own_pending(model)
    assert_all_finite(model.state_dict())
    loaded = [k for k in big if torch.equal(model.state_dict()[k], state[k])]
    assert loaded == []


def test_replay_interrupted_midway_leaves_no_raw_memory():
    """An interrupt (Ctrl-C, out of memory) in the middle of a replay: the
    error propagates and every tensor that replay was computing holds NaN,
    not raw memory that a forward pass or a checkpoint could take for
    values (without ``nan_empty``: raw memory stays raw)."""
    torch.manual_seed(0)
    model = build_vit()
    names = own_pending(model)
    params = dict(model.named_parameters())
    entries = sorted((deferred.record_of(params[n]) for n in names),
                     key=lambda entry: entry.ops[0].seq)
    assert len(entries) > 2

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    middle = entries[len(entries) // 2]  # replayed after others, before some
    middle.ops[0] = middle.ops[0]._replace(func=interrupt)
    with pytest.raises(KeyboardInterrupt):
        deferred.materialize(model)
    assert not own_pending(model)
    # given other memory in the constructor (``.data = ...``): kept
    assert torch.equal(params['offsets.bias'], torch.arange(4.))
    raw = [n for n in names
           if n != 'offsets.bias' and not params[n].isnan().all()]
    assert not raw, f'neither computed nor poisoned: {raw}'


def test_conversion_interrupted_leaves_no_raw_memory():
    """The same for parameters converted while pending (``.double()``),
    interrupted while their values are computed as built: those taken out
    of pending are NaN, the others stay pending and compute later."""
    torch.manual_seed(0)
    model = build_vit().double()
    names = own_pending(model)

    def interrupted(targets, copy):
        if copy is not None:  # computing a converted parameter as built
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt), deferred.observe_replays(
            interrupted):
        deferred.materialize(model)
    params = dict(model.named_parameters())
    left = own_pending(model)
    taken = [n for n in names if n not in left and n != 'offsets.bias']
    assert taken and left, 'the interrupt came too early or too late'
    raw = [n for n in taken if not params[n].isnan().all()]
    assert not raw, f'neither computed nor poisoned: {raw}'
    deferred.materialize(model)
    assert_all_finite({n: params[n] for n in left})


@MODELS.register_module(force=True)
class DeferToyTrainee(BaseModel):
    """``DeferToyViT`` as a Runner-trainable model."""

    def __init__(self, backbone, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.backbone = MODELS.build(backbone)

    def forward(self, inputs, data_samples=None, mode='tensor'):
        out = self.backbone(inputs)
        return {'loss': out.pow(2).mean()} if mode == 'loss' else out


@pytest.mark.parametrize('update_buffers', [False, True])
def test_runner_built_model_with_ema_and_pretrained(update_buffers, nan_empty,
                                                    save_ckpt, tmp_path,
                                                    spy_replays):
    """The Runner builds the model (deferred), moves it (``.to``), EMAHook
    deep-copies it before ``init_weights``: what the checkpoint provides is
    never computed, in the model or the EMA copy, which ends up holding the
    loaded values (lr=0 keeps values to check)."""
    from mmengine.runner import Runner
    from torch.utils.data import DataLoader

    path, state = vit_ckpt(save_ckpt)
    data = [{'inputs': rand(*VIT_IN[1:])} for _ in range(4)]
    runner = Runner(
        model=dict(type='DeferToyTrainee', backbone=dict(
            type='DeferToyViT', init_cfg=dict(
                type='Pretrained', checkpoint=path, on_missing='ignore'))),
        work_dir=str(tmp_path / 'work'),
        train_dataloader=DataLoader(data, batch_size=2),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.0)),
        train_cfg=dict(by_epoch=False, max_iters=2),
        custom_hooks=[dict(type='EMAHook', momentum=0.5,
                           update_buffers=update_buffers)],
        default_hooks=dict(checkpoint=dict(type='CheckpointHook',
                                           interval=2, by_epoch=False)),
        default_scope='mmengine',
        experiment_name=f'defer_{os.getpid()}_{id(tmp_path)}')
    assert own_pending(runner.model)  # built from the dict: deferred
    params = dict(runner.model.backbone.named_parameters())
    loaded = {id(params[k]) for k in state
              if k in params and deferred.is_pending(params[k])}
    assert loaded
    replayed = spy_replays()
    runner.train()
    assert not replayed & loaded
    values = runner.model.backbone.state_dict()
    for key, value in state.items():
        assert torch.equal(values[key], value), key
    assert_all_finite(runner.model.state_dict())
    ema = runner.hooks[[type(h).__name__ for h in runner.hooks].index(
        'EMAHook')].ema_model
    ema_values = ema.module.backbone.state_dict()
    for key, value in state.items():
        if key in params:  # buffers: averaged only with update_buffers
            assert torch.equal(ema_values[key], value), key
    assert_all_finite(ema.state_dict())
    saved = torch.load(tmp_path / 'work' / 'iter_2.pth', weights_only=False)
    assert_all_finite(saved['state_dict'])


def test_backbone_loading_itself_replays_only_what_it_did_not_load(
        nan_empty, tmp_path, spy_replays):
    """mmdet's Swin loads the checkpoint in its own ``init_weights`` and
    reads ``self.state_dict()`` first: the tensors it loads are never
    computed (their constructor init is dropped), the rest is."""
    from mmdet.models.backbones import SwinTransformer
    from test_backbones import (SWIN_ARGS, _randomized, _runner_like_ckpt,
                                _swin_with_adapters)
    sd = _randomized(SwinTransformer(**SWIN_ARGS)).state_dict()
    left_out = 'norm1.weight'  # an output norm the checkpoint lacks
    path = _runner_like_ckpt({k: v for k, v in sd.items() if k != left_out},
                             tmp_path / 'det.pth')
    with deferred.deferred_construction():
        model = _swin_with_adapters(SwinTransformer)(**SWIN_ARGS, init_cfg=(
            ConfigDict(type='Pretrained', checkpoint=path)))
    params = dict(model.named_parameters())
    loaded = {id(params[k]) for k in sd if k in params and k != left_out}
    assert loaded & {id(p) for n, p in params.items()
                     if deferred.is_pending(p)}, 'nothing deferred'
    replayed = spy_replays()
    model.init_weights()
    assert not replayed & loaded
    assert id(params[left_out]) in replayed
    state = model.state_dict()
    for key, value in sd.items():
        if key != left_out:
            assert torch.equal(state[key], value), key
    assert_all_finite(state)
    assert not own_pending(model)
    for adapter in model.adapters:
        assert torch.count_nonzero(adapter.up.weight) == 0
    assert get_provenance(model).entries[left_out].kind == 'constructor'


@MODELS.register_module(force=True)
class ReadsItsStateThenLoads(BaseModule):
    """An ``init_weights`` override that reads values from
    ``self.state_dict()`` before loading part of the checkpoint itself."""

    def __init__(self, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.fc = nn.Linear(8, 8)

    def init_weights(self):
        self.seen = self.state_dict()['fc.weight'] * 1  # a read, in session
        ckpt = torch.load(self.init_cfg['checkpoint'], weights_only=True)
        self.load_state_dict({'fc.bias': ckpt['state_dict']['fc.bias']},
                             strict=False)


def test_reading_state_dict_inside_its_own_init_computes_values(
        nan_empty, save_ckpt, monkeypatch):
    path = save_ckpt({'fc.bias': torch.arange(8.)})
    cfg = dict(type='ReadsItsStateThenLoads',
               init_cfg=dict(type='Pretrained', checkpoint=path))
    model, reference = build_pair(lambda: MODELS.build(cfg),
                                  monkeypatch=monkeypatch)
    assert deferred.is_pending(model.fc.weight)
    model.init_weights()
    assert torch.equal(model.seen, reference.fc.weight)
    assert torch.equal(model.fc.weight, reference.fc.weight)
    assert torch.equal(model.fc.bias, torch.arange(8.))
