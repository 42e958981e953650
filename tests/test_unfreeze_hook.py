"""``UnfreezeHook`` through a real MMEngine Runner (tiny mmdet RetinaNet,
backbone loaded from a generated checkpoint, SGD with momentum, a warmup and
a step schedule): the milestone, the schedule of the new groups, and resumes
across the milestone, bit-exact on CPU."""
import os
from typing import Dict

import pytest
import torch

from mmext_init import read_checkpoint
from mmext_init.errors import InitConfigError
from mmext_init.training.optim_state import OptimizerStateError
from mmext_init.training.selectors import SelectorError
from retinanet_runs import retinanet_runner, write_backbone_ckpt

BASE_LR = 0.001  # 0.01 diverges here (NaN from iteration 4)
MILESTONE = dict(at=3, by='iter', select='loaded', lr_mult=0.1)
SCHEDULE = [dict(type='LinearLR', start_factor=0.5, by_epoch=False, begin=0,
                 end=2),
            dict(type='MultiStepLR', milestones=[4], gamma=0.5,
                 by_epoch=False)]
PARAMWISE = dict(freeze='loaded', rules=[dict(select='new', lr_mult=2.0)])


@pytest.fixture(scope='module')
def backbone_ckpt(tmp_path_factory) -> str:
    return write_backbone_ckpt(
        str(tmp_path_factory.mktemp('unfreeze') / 'r18.pth'))


def _run(work_dir: str, ckpt: str, milestones=(MILESTONE, ), iters: int = 6,
         paramwise: dict = PARAMWISE, **kwargs):
    hooks = [dict(type='UnfreezeHook', milestones=list(milestones))] \
        if milestones else []
    runner = retinanet_runner(
        work_dir, ckpt, paramwise, iters=iters, custom_hooks=hooks,
        lr=BASE_LR, param_scheduler=SCHEDULE, randomness=dict(seed=0),
        default_hooks=dict(logger=dict(type='LoggerHook', interval=1),
                           checkpoint=dict(type='CheckpointHook', interval=2,
                                           by_epoch=False)), **kwargs)
    runner.train()
    return runner


def _finite(runner) -> None:
    for name, value in runner.model.state_dict().items():
        if value.is_floating_point():
            assert torch.isfinite(value).all(), name


def _saved(path: str) -> Dict[str, torch.Tensor]:
    return read_checkpoint(path)[0]


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory, backbone_ckpt):
    work_dir = str(tmp_path_factory.mktemp('unfreeze') / 'straight')
    return _run(work_dir, backbone_ckpt), work_dir


def _same_state(a: dict, b: dict) -> None:
    assert a['state_dict'].keys() == b['state_dict'].keys()
    for key, value in a['state_dict'].items():
        assert torch.equal(value, b['state_dict'][key]), key
    opt_a, opt_b = a['optimizer'], b['optimizer']
    assert [g['param_names'] for g in opt_a['param_groups']] == \
        [g['param_names'] for g in opt_b['param_groups']]
    assert [g['lr'] for g in opt_a['param_groups']] == \
        [g['lr'] for g in opt_b['param_groups']]
    for index, state in opt_a['state'].items():
        assert torch.equal(state['momentum_buffer'],
                           opt_b['state'][index]['momentum_buffer']), index


def test_milestone_unfreezes_and_follows_the_schedule(uninterrupted,
                                                      backbone_ckpt):
    runner, work_dir = uninterrupted
    _finite(runner)
    ckpt = torch.load(backbone_ckpt)['state_dict']
    at_2 = _saved(os.path.join(work_dir, 'iter_2.pth'))['state_dict']
    at_4 = _saved(os.path.join(work_dir, 'iter_4.pth'))['state_dict']
    for key, value in ckpt.items():  # frozen before the milestone
        assert torch.equal(at_2[f'backbone.{key}'], value), key
    moved = [k for k, v in ckpt.items() if not torch.equal(
        at_4[f'backbone.{k}'], v)]
    assert 'conv1.weight' in moved and 'bn1.running_mean' in moved
    model = runner.model
    assert all(p.requires_grad for p in model.parameters())
    assert model.backbone.bn1.training  # follows train() again
    groups = runner.optim_wrapper.optimizer.param_groups
    assert len(groups) >= 2
    names = {id(p): n for n, p in model.named_parameters()}
    by_name = {names[id(p)]: g for g in groups for p in g['params']}
    assert len(by_name) == len(names)  # every tensor once
    # after the warmup (x1) and the step at 4 (x0.5): all groups alike
    assert by_name['backbone.conv1.weight']['lr'] == pytest.approx(
        BASE_LR * 0.1 * 0.5)
    assert by_name['bbox_head.retina_cls.weight']['lr'] == pytest.approx(
        BASE_LR * 2 * 0.5)
    assert by_name['backbone.conv1.weight']['initial_lr'] == pytest.approx(
        BASE_LR * 0.1)
    sched_bases = runner.param_schedulers[1].base_values
    assert len(sched_bases) == len(groups)
    log = open(os.path.join(runner.log_dir,
                            f'{runner.timestamp}.log')).read()
    assert 'UnfreezeHook: at iter 3: ' in log


@pytest.mark.parametrize('start', [2, 4], ids=['before', 'after'])
def test_resume_across_the_milestone_is_bit_exact(uninterrupted,
                                                  backbone_ckpt, tmp_path,
                                                  start):
    _, straight = uninterrupted
    work_dir = str(tmp_path / f'resumed_{start}')
    _run(work_dir, backbone_ckpt, resume=True,
         load_from=os.path.join(straight, f'iter_{start}.pth'))
    # resumed, not restarted (a restart would be bit-exact too): no
    # checkpoint at or before the resume point
    saved = sorted(int(f[5:-4]) for f in os.listdir(work_dir)
                   if f.startswith('iter_') and f.endswith('.pth'))
    assert saved and min(saved) > start, saved
    _same_state(_saved(os.path.join(straight, 'iter_6.pth')),
                _saved(os.path.join(work_dir, 'iter_6.pth')))


def test_resume_with_a_split_grouping_loads_by_name(uninterrupted,
                                                    backbone_ckpt, tmp_path):
    """A rule that splits a saved group: the state still finds its
    parameters (torch would match by position and fail on the count)."""
    _, straight = uninterrupted
    split = dict(PARAMWISE, rules=PARAMWISE['rules'] + [
        dict(select=dict(name=r'bbox_head\..*'), decay_mult=1.0)])
    runner = _run(str(tmp_path / 'split'), backbone_ckpt, paramwise=split,
                  resume=True, load_from=os.path.join(straight, 'iter_4.pth'))
    assert runner.iter == 6


def test_resume_with_another_trainable_set_says_why(uninterrupted,
                                                    backbone_ckpt, tmp_path):
    _, straight = uninterrupted
    resumed = os.path.join(straight, 'iter_4.pth')
    with pytest.raises(OptimizerStateError,
                       match=r'trained then and do not now: .*backbone\.'):
        _run(str(tmp_path / 'no_hook'), backbone_ckpt, milestones=(),
             resume=True, load_from=resumed)
    other = dict(MILESTONE, at=4)
    with pytest.raises(InitConfigError, match='not among this UnfreezeHook'):
        _run(str(tmp_path / 'moved'), backbone_ckpt, milestones=(other, ),
             resume=True, load_from=resumed)


@pytest.mark.parametrize('milestone, error, match', [
    (dict(MILESTONE, by='epoch'), InitConfigError, 'iteration-based'),
    (dict(MILESTONE, select=dict(name='backbone.layer9')), SelectorError,
     'matches no parameter'),
    (dict(MILESTONE, select='new'), InitConfigError, 'train already'),
    (dict(at=1, select='loaded'), InitConfigError, 'missing by'),
], ids=['epoch', 'nothing', 'trainable', 'key'])
def test_milestone_errors_before_the_first_iteration(backbone_ckpt, tmp_path,
                                                     milestone, error, match):
    with pytest.raises(error, match=match):
        _run(str(tmp_path / 'bad'), backbone_ckpt, milestones=(milestone, ))
    assert not os.path.exists(str(tmp_path / 'bad' / 'iter_2.pth'))


@pytest.mark.parametrize('at', [2, 5], ids=['at_the_end', 'past_the_end'])
def test_milestone_at_or_past_the_end_is_a_warning(backbone_ckpt, tmp_path,
                                                   at):
    """The usual smoke test (``train_cfg.max_iters=2``) of a config whose
    milestone comes later: the run trains, the warning names the milestone
    and the end, and what it selects stays frozen."""
    milestone = dict(MILESTONE, at=at)
    # a work dir named per case: MMEngine names the logger after the work
    # dir and the second, so two runs in one second would share one log
    runner = _run(str(tmp_path / f'short_at_{at}'), backbone_ckpt,
                  milestones=(milestone, ), iters=2)
    assert runner.iter == 2
    log = open(os.path.join(runner.log_dir,
                            f'{runner.timestamp}.log')).read()
    assert (f"WARNING - UnfreezeHook milestone (at={at}, by='iter') is never "
            "reached: training stops at iter 2, so select='loaded' stays "
            'frozen for the whole run') in log
    assert 'UnfreezeHook: at iter' not in log
    assert not runner.model.backbone.conv1.weight.requires_grad
    ckpt = torch.load(backbone_ckpt)['state_dict']
    final = _saved(os.path.join(runner.work_dir, 'iter_2.pth'))['state_dict']
    assert torch.equal(final['backbone.conv1.weight'], ckpt['conv1.weight'])
