"""Insertion works with MMEngine's ``EMAHook``. Adapters inserted
from the config (``insert=[...]``) into a tiny mmdet RetinaNet trained by a
real Runner (``freeze='loaded'``, EMA, full and delta checkpoints): the EMA
copy holds the inserted tensors, the delta holds the averages the Runner
checkpoint's ``state_dict`` holds, base + delta is that checkpoint bit for
bit, and a resumed run continues bit-exactly (CPU)."""
import copy
import os
from typing import Dict, List

import pytest
import torch
import torch.nn as nn
from mmdet.registry import MODELS
from mmengine.hooks import EMAHook
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from runner_utils import ToyModel, run_runner
from toy_models import Trunk

from mmext_init import InitConfigError, read_checkpoint
from mmext_init.checkpoint.fingerprint import tensors_hash
from retinanet_runs import model_cfg, retinanet_runner, write_backbone_ckpt

INSERT = [dict(type='Adapter', targets=r'backbone\.layer[2-4]', reduction=4)]
ADAPTERS = {f'backbone.layer{i}.adapter.{p}.{t}' for i in (2, 3, 4)
            for p in ('down', 'up') for t in ('weight', 'bias')}
ITERS = 6
EMA = dict(type='EMAHook', momentum=0.1)
DELTA = dict(type='DeltaCheckpointHook', interval=2, by_epoch=False)


def inserted_cfg(ckpt: str) -> dict:
    """The helper's detector with mmdet's own ResNet and the adapters
    inserted by the config (as retinanet_r18_adapters_insert_tiny.py)."""
    cfg = model_cfg(ckpt)
    cfg['backbone']['type'] = 'ResNet'
    cfg['insert'] = copy.deepcopy(INSERT)
    return cfg


def _run(work_dir: str, ckpt: str, **kwargs) -> Runner:
    """``ITERS`` iterations of the inserted detector with EMA, a Runner
    checkpoint and a delta every 2 iterations."""
    runner = retinanet_runner(
        work_dir, ckpt, dict(freeze='loaded'), iters=ITERS, lr=0.001,
        model=inserted_cfg(ckpt), custom_hooks=[EMA, DELTA],
        randomness=dict(seed=0),
        default_hooks=dict(logger=dict(type='LoggerHook', interval=1),
                           checkpoint=dict(type='CheckpointHook',
                                           interval=2, by_epoch=False)),
        **kwargs)
    runner.train()
    return runner


def _ema_state(runner: Runner) -> Dict[str, torch.Tensor]:
    hook = next(h for h in runner.hooks if isinstance(h, EMAHook))
    return hook.ema_model.module.state_dict()


def _same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal bytes (``-0.0`` is not ``0.0`` here, unlike ``torch.equal``)."""
    def raw(t):
        return t.detach().contiguous().reshape(-1).view(torch.uint8)

    return (a.dtype, a.shape) == (b.dtype, b.shape) and torch.equal(
        raw(a), raw(b))


def _saved(path: str) -> dict:
    return read_checkpoint(path)[0]


class Straight:
    """The uninterrupted run, its base and its files."""

    def __init__(self, folder: str) -> None:
        self.r18 = write_backbone_ckpt(os.path.join(folder, 'r18.pth'))
        self.base = os.path.join(folder, 'base.pth')
        init_default_scope('mmdet')
        model = MODELS.build(inserted_cfg(self.r18))  # as loaded, untrained
        model.init_weights()
        torch.save({'state_dict': model.state_dict()}, self.base)
        self.work_dir = os.path.join(folder, 'straight')
        runner = _run(self.work_dir, self.r18)
        self.raw = {k: v.clone() for k, v in
                    runner.model.state_dict().items()}
        self.ema = {k: v.clone() for k, v in _ema_state(runner).items()}
        self.trained = sorted(n for n, p in runner.model.named_parameters()
                              if p.requires_grad)
        for name, value in self.raw.items():
            if value.is_floating_point():
                assert torch.isfinite(value).all(), name

    def file(self, name: str) -> str:
        return os.path.join(self.work_dir, name)


@pytest.fixture(scope='module')
def straight(tmp_path_factory) -> Straight:
    return Straight(str(tmp_path_factory.mktemp('insert_ema')))


def test_ema_copy_holds_the_inserted_tensors(straight):
    assert straight.ema.keys() == straight.raw.keys()
    assert ADAPTERS <= set(straight.trained)  # inserted, new: they train
    assert not any(n.startswith('backbone.') and n not in ADAPTERS
                   for n in straight.trained)  # the loaded backbone: frozen
    for name in straight.trained:
        assert not torch.equal(straight.ema[name], straight.raw[name]), name
    frozen = [n for n in straight.raw if n not in straight.trained]
    assert len(frozen) > 100 and 'backbone.bn1.running_mean' in frozen
    for name in frozen:
        assert _same_bits(straight.ema[name], straight.raw[name]), name


@pytest.mark.parametrize('step', [2, 4, 6])
def test_delta_holds_the_averages_of_the_runner_checkpoint(straight, step):
    delta = torch.load(straight.file(f'delta_iter_{step}.pth'))
    full = _saved(straight.file(f'iter_{step}.pth'))
    assert sorted(delta['state_dict']) == straight.trained
    for name, value in delta['state_dict'].items():
        assert _same_bits(value, full['state_dict'][name]), name  # EMA
        assert not torch.equal(value,  # raw (EMAHook's swap)
                               full['ema_state_dict'][f'module.{name}']), name
    meta = delta['meta']
    assert (meta['ema'], meta['iter'], meta['base']['files']) == (
        True, step, [straight.r18])
    assert meta['insert'] == INSERT  # a Runner built from arguments too
    base = torch.load(straight.base)['state_dict']
    left_out = [k for k in base if k not in delta['state_dict']]
    assert meta['base']['tensors'] == len(left_out)
    assert meta['base']['hash'] == tensors_hash(left_out, base.get)
    assert meta['base']['hash'] == tensors_hash(left_out,
                                                full['state_dict'].get)


def test_base_plus_delta_is_the_runner_checkpoint(straight):
    delta = straight.file(f'delta_iter_{ITERS}.pth')
    cfg = inserted_cfg(straight.r18)
    cfg['init_cfg'] = dict(type='Pretrained', checkpoint=[straight.base,
                                                          delta])
    init_default_scope('mmdet')
    model = MODELS.build(cfg)
    model.init_weights()
    state = model.state_dict()
    full = _saved(straight.file(f'iter_{ITERS}.pth'))['state_dict']
    assert state.keys() == full.keys()
    for name, value in full.items():
        assert _same_bits(state[name], value), name


def _same_run(a: dict, b: dict) -> None:
    for key in ('state_dict', 'ema_state_dict'):
        assert a[key].keys() == b[key].keys()
        for name, value in a[key].items():
            assert _same_bits(value, b[key][name]), (key, name)
    opt_a, opt_b = a['optimizer'], b['optimizer']
    assert opt_a['state'].keys() == opt_b['state'].keys()
    for index, state in opt_a['state'].items():
        assert _same_bits(state['momentum_buffer'],
                          opt_b['state'][index]['momentum_buffer']), index


def test_resume_continues_bit_exactly(straight, tmp_path):
    work_dir = str(tmp_path / 'resumed_ema')
    _run(work_dir, straight.r18, resume=True,
         load_from=straight.file('iter_2.pth'))
    assert sorted(f for f in os.listdir(work_dir) if f.endswith('.pth')) == [
        'delta_iter_4.pth', 'delta_iter_6.pth', 'iter_4.pth',
        'iter_6.pth']  # resumed at 2, not trained again from 0
    full = _saved(os.path.join(work_dir, f'iter_{ITERS}.pth'))
    assert int(full['ema_state_dict']['steps']) == ITERS
    _same_run(_saved(straight.file(f'iter_{ITERS}.pth')), full)
    for step in (4, 6):
        ours = torch.load(os.path.join(work_dir, f'delta_iter_{step}.pth'))
        theirs = torch.load(straight.file(f'delta_iter_{step}.pth'))
        assert ours['meta'] == theirs['meta']
        for name, value in theirs['state_dict'].items():
            assert _same_bits(ours['state_dict'][name], value), name


def _toy(trunk: nn.Module = None) -> ToyModel:
    model = ToyModel(trunk)
    model.backbone.requires_grad_(False)
    return model


def _log(runner: Runner) -> List[str]:
    with open(os.path.join(runner.log_dir, f'{runner.timestamp}.log')) as f:
        return [line for line in f if 'DeltaCheckpointHook' in line]


def test_signed_zeros_of_frozen_tensors_keep_the_base(tmp_path):
    """MMEngine's ``lerp_`` makes a frozen ``-0.0`` ``0.0`` in the EMA copy:
    the base fingerprint is the model's, so the delta still stacks on its
    base (and base + delta equals the Runner checkpoint value for value)."""
    model = _toy()
    with torch.no_grad():
        model.backbone.fc1.weight[0] = -0.0
    base = str(tmp_path / 'base.pth')
    torch.save({'state_dict': model.state_dict()}, base)
    runner = run_runner(str(tmp_path / 'run'), model, custom_hooks=[
        EMA, dict(DELTA, interval=-1)])
    assert model.backbone.fc1.weight[0].signbit().all()
    assert not _ema_state(runner)['backbone.fc1.weight'][0].signbit().any()
    delta = str(tmp_path / 'run' / 'delta_iter_2.pth')
    fresh = ToyModel(init_cfg=dict(type='Pretrained',
                                   checkpoint=[base, delta]))
    fresh.init_weights()
    full = _saved(str(tmp_path / 'run' / 'iter_2.pth'))['state_dict']
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, full[name]), name
    assert not any('differ' in line for line in _log(runner))


def test_frozen_tensors_that_differ_in_the_ema_copy_are_named(tmp_path):
    """A frozen BatchNorm left in train mode, buffers averaged: its
    statistics differ between the model and its EMA copy."""
    trunk = Trunk()
    trunk.norm = nn.BatchNorm1d(8)
    runner = run_runner(str(tmp_path), _toy(trunk), custom_hooks=[
        dict(EMA, update_buffers=True), dict(DELTA, interval=-1)])
    warned = [line for line in _log(runner) if 'differ' in line]
    assert len(warned) == 1
    assert ('DeltaCheckpointHook: 3 tensors that do not train differ in the '
            'EMA copy (backbone.norm.running_mean, backbone.norm.running_var,'
            ' backbone.norm.num_batches_tracked)') in warned[0]


def test_delta_hook_before_the_ema_update_is_refused(tmp_path):
    with pytest.raises(InitConfigError, match='runs before EMAHook'):
        run_runner(str(tmp_path), _toy(), custom_hooks=[
            EMA, dict(DELTA, priority='HIGH')])
    assert not [f for f in os.listdir(tmp_path) if f.endswith('.pth')]
