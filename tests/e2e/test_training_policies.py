"""The training policies of the tiny RetinaNet configs, end to end
(``ProvenanceOptimWrapperConstructor``: freeze / rules / layer_decay)
trained by mmdet's own, unchanged ``tools/train.py``; the weights and
buffers are compared between ``before_train`` and ``after_train``
(tests/e2e/snapshot_hook.py), the optimizer's real parameter groups are read
from ``trainable_params.json`` and checked against numbers computed from
the config."""
import os
import re
import subprocess
from typing import Dict, List, Set

import pytest
import torch
from conftest import (REPO, Run, checkpoint_state, subprocess_env,
                      train_command)
from mmengine.config import Config

from mmext_init import read_checkpoint
from mmext_init.training.report import TRAINABLE_TITLE

pytestmark = pytest.mark.e2e

LIBRARY = 'mmdet'
STOCK_FT = 'configs/mmdet/retinanet_r18_adapters_ft_tiny.py'  # no policy
FREEZE = 'configs/mmdet/retinanet_r18_adapters_freeze_tiny.py'
HEAD_ONLY = 'configs/mmdet/retinanet_r18_head_only_tiny.py'
FULL_FT = 'configs/mmdet/retinanet_r18_full_ft_decay_tiny.py'
SWIN_FT = 'configs/mmdet/retinanet_swin_adapters_ft_tiny.py'
BN_STATS = ('.running_mean', '.running_var', '.num_batches_tracked')
BLOCK = re.compile(r'^backbone\.layer(\d+)\.(\d+)\.')


def _config(path: str) -> Config:
    return Config.fromfile(os.path.join(REPO, path),
                           import_custom_modules=False)


def _trainable(run: Run) -> dict:
    """The run's ``trainable_params.json``, in the log dir."""
    assert os.path.dirname(run.trainable_file) == \
        os.path.dirname(run.provenance_files[0])  # next to the ledger
    return run.trainable


def _group_of(data: dict) -> Dict[str, dict]:
    """Parameter name -> its optimizer group in the JSON (each name once)."""
    out: Dict[str, dict] = {}
    for group in data['groups']:
        for name in group['names']:
            assert name not in out, name
            out[name] = group
    return out


def _momentum(run: Run, data: dict) -> Dict[str, torch.Tensor]:
    """Parameter name -> SGD momentum buffer in the optimizer state of the
    run's last checkpoint (``iter_4.pth``), whose param_groups must be the
    JSON's (same sizes and lrs, in order; names mapped by that order)."""
    ckpt, _ = read_checkpoint(os.path.join(run.work_dir, 'iter_4.pth'))
    saved = ckpt['optimizer']
    assert [(len(g['params']), g['lr']) for g in saved['param_groups']] == \
        [(len(g['names']), g['lr']) for g in data['groups']]
    indices = [i for g in saved['param_groups'] for i in g['params']]
    names = [n for g in data['groups'] for n in g['names']]
    return {n: saved['state'][i]['momentum_buffer']
            for n, i in zip(names, indices)}


def _params_and_buffers(run: Run, data: dict) -> List[Set[str]]:
    """The parameter names (trainable + frozen, from the JSON) and the rest
    of the state_dict: RetinaNet's only buffers are BatchNorm statistics."""
    params = set(_group_of(data)) | set(data['frozen'])
    assert not set(_group_of(data)) & set(data['frozen'])
    buffers = set(run.snapshots[0]) - params
    assert params <= set(run.snapshots[0])
    assert buffers and all(b.endswith(BN_STATS) for b in buffers), buffers
    return [params, buffers]


def _unchanged(run: Run, names) -> List[str]:
    before, after = run.snapshots[0], run.finals[0]
    assert before.keys() == after.keys()
    return sorted(n for n in names if torch.equal(before[n], after[n]))


def _backbone_bn_stats(run: Run) -> List[str]:
    """The backbone's BatchNorm buffers: R18 has 20 BN layers (stem 1,
    2 per block x 8, 3 downsample) x 3 buffers."""
    names = sorted(n for n in run.snapshots[0]
                   if n.startswith('backbone.') and n.endswith(BN_STATS))
    assert len(names) == 60, len(names)
    return names


def _check_started(run: Run) -> None:
    assert 'Iter(train) [4/4]' in run.log
    assert ' - ERROR - ' not in run.log
    assert run.log.count(TRAINABLE_TITLE + ' of RetinaNet') == 1


def test_adapter_tuning_freezes_what_the_checkpoint_gave(train):
    """freeze='loaded', rules new x10: every checkpoint tensor (parameters
    and the frozen BatchNorm layers' running statistics, with
    norm_eval=False) bit-identical after training; adapters, neck and head
    trained, at base lr x 10 in the optimizer."""
    run = train(FREEZE, LIBRARY)
    _check_started(run)
    data = _trainable(run)
    params, buffers = _params_and_buffers(run, data)
    entries = run.provenance['entries']
    loaded = {n for n, e in entries.items() if e['kind'] == 'checkpoint'}
    # the ledger and the report agree on what the checkpoint provided
    assert set(data['frozen']) == loaded & params
    assert loaded - params == set(_backbone_bn_stats(run)) == buffers
    assert all(n.startswith('backbone.') and '.adapters.' not in n
               for n in loaded)
    assert len(data['frozen']) == 60  # R18: 20 convs, 20 BN x 2
    assert data['counts']['checkpoint']['trainable']['tensors'] == 0

    assert _unchanged(run, loaded) == sorted(loaded)  # params and BN stats
    stats = _backbone_bn_stats(run)  # see test_bn_statistics_move_...
    assert _unchanged(run, stats) == stats
    trained = sorted(params - loaded)
    assert {n.split('.')[0] for n in trained} == \
        {'backbone', 'neck', 'bbox_head'}
    adapters = [n for n in trained if n.startswith('backbone.adapters.')]
    assert len(adapters) == 12  # 3 adapters x down/up x weight/bias
    assert all(n.startswith('backbone.adapters.') or
               not n.startswith('backbone.') for n in trained)
    assert _unchanged(run, trained) == []  # adapters, neck, head all moved

    cfg = _config(FREEZE)
    base_lr = cfg.optim_wrapper.optimizer.lr
    rule, = cfg.optim_wrapper.paramwise_cfg.rules
    assert rule.select == 'new'
    group_of = _group_of(data)
    assert set(group_of) == set(trained)
    assert set(_momentum(run, data)) == set(trained)  # nothing frozen in it
    for name in trained:
        assert group_of[name]['lr'] == pytest.approx(
            base_lr * rule.lr_mult, rel=1e-12), name
        assert group_of[name]['depth'] == []


def test_bn_statistics_move_when_not_frozen(train):
    """The BatchNorm assertion above is not vacuous: with nothing frozen and
    norm_eval=False (the full fine-tuning config) 4 iterations move every
    backbone BN statistic; with mmdet's norm_eval=True (the stock adapter
    config, no policy) ResNet.train() alone keeps them still, which is why
    the freeze config sets norm_eval=False."""
    moved = train(FULL_FT, LIBRARY)
    stats = _backbone_bn_stats(moved)
    assert _unchanged(moved, stats) == []
    tracked = [n for n in stats if n.endswith('.num_batches_tracked')]
    for name in tracked:
        assert moved.finals[0][name] - moved.snapshots[0][name] == 4, name
    still = train(STOCK_FT, LIBRARY)
    assert _unchanged(still, stats) == stats
    assert _config(STOCK_FT).model.backbone.norm_eval is True
    assert _config(FREEZE).model.backbone.norm_eval is False


def test_head_only(train, tiny_dir):
    """freeze backbone and neck (both from the detector checkpoint): every
    tensor outside bbox_head bit-identical after training, the neck equal to
    the checkpoint's, every head parameter trained at the base lr."""
    run = train(HEAD_ONLY, LIBRARY)
    _check_started(run)
    data = _trainable(run)
    params, _ = _params_and_buffers(run, data)
    outside = [n for n in run.snapshots[0] if not n.startswith('bbox_head.')]
    head = sorted(n for n in params if n.startswith('bbox_head.'))
    assert _unchanged(run, outside) == sorted(outside)
    assert head and _unchanged(run, head) == []
    assert set(data['frozen']) == params - set(head)
    assert set(_group_of(data)) == set(head)

    ckpt = checkpoint_state(os.path.join(tiny_dir, 'checkpoints',
                                         'retinanet_r18_stock_tiny.pth'))
    neck = [n for n in run.snapshots[0] if n.startswith('neck.')]
    assert neck
    for name in neck:
        assert torch.equal(run.finals[0][name], ckpt[name]), name
        assert run.provenance['entries'][name]['kind'] == 'checkpoint'

    base_lr = _config(HEAD_ONLY).optim_wrapper.optimizer.lr
    assert [g['lr'] for g in data['groups']] == [base_lr]
    assert set(_momentum(run, data)) == set(head)


def test_full_fine_tuning_with_layer_decay(train):
    """Nothing frozen, new x10, layer decay over the loaded backbone: the
    optimizer's lr of each backbone parameter is base * rate ** (N + 1 -
    depth), the depths those an OpenMMLab user expects of a ResNet (stem
    0, blocks layer1.0 ... layer4.1 at 1..N in order), every new parameter
    at base x 10; every parameter trains (a non-zero momentum buffer) and
    moves, except where 4 steps stay below float32 resolution: the blocks'
    bn1.weight (about 1.0, spacing 6e-8) get updates of about 1e-9, the
    stock checkpoint's residual branches ending in a near-zero bn2.weight
    (mmdet's zero_init_residual)."""
    run = train(FULL_FT, LIBRARY)
    _check_started(run)
    data = _trainable(run)
    params, _ = _params_and_buffers(run, data)
    assert data['frozen'] == []
    group_of = _group_of(data)
    momentum = _momentum(run, data)
    assert set(momentum) == params
    assert [n for n, b in momentum.items() if not b.any()] == []
    still = _unchanged(run, params)
    assert all(re.match(r'^backbone\.layer\d\.\d\.bn1\.weight$', n)
               for n in still), still
    for name in still:  # one step's update is below half the spacing
        weight = run.snapshots[0][name]
        spacing = torch.nextafter(weight, weight + 1) - weight
        update = group_of[name]['lr'] * momentum[name].abs()
        assert (update < spacing / 2).all(), name

    cfg = _config(FULL_FT).optim_wrapper
    base_lr, paramwise = cfg.optimizer.lr, cfg.paramwise_cfg
    rate = paramwise.layer_decay.rate
    rule, = paramwise.rules
    assert rule.select == 'new'
    entries = run.provenance['entries']
    loaded = {n for n in params if entries[n]['kind'] == 'checkpoint'}
    decayed = {n for n, g in group_of.items() if g['depth']}
    assert decayed == loaded
    for name in params - loaded:  # adapters, neck, head
        assert group_of[name]['depth'] == []
        assert group_of[name]['lr'] == pytest.approx(
            base_lr * rule.lr_mult, rel=1e-12), name

    depth = {}
    for name in decayed:
        group_depths = group_of[name]['depth']
        assert len(group_depths) == 1, group_of[name]  # one depth per lr
        depth[name] = group_depths[0]
    blocks = sorted({tuple(map(int, BLOCK.match(n).groups()))
                     for n in decayed if BLOCK.match(n)})
    n_blocks = len(blocks)  # N, from the JSON's names
    assert n_blocks == 8
    for name, d in depth.items():
        found = BLOCK.match(name)
        expected = blocks.index(tuple(map(int, found.groups()))) + 1 \
            if found else 0
        if not found:
            assert re.match(r'^backbone\.(conv1|bn1)\.', name), name
        assert d == expected, (name, d, expected)
        assert group_of[name]['lr'] == pytest.approx(
            base_lr * rate**(n_blocks + 1 - d), rel=1e-12), name
    assert max(depth.values()) == n_blocks  # nothing after layer4 (N + 1)


UNFREEZE = 'configs/mmdet/retinanet_r18_adapters_unfreeze_tiny.py'


def _unfreeze_hooks() -> str:
    """The config's own custom_hooks, for the derived config (which sets
    ``custom_hooks`` to add the snapshot hook)."""
    hooks = _config(UNFREEZE).custom_hooks
    assert [h['type'] for h in hooks] == ['UnfreezeHook']
    return ''.join(f'{h.to_dict()!r}, ' for h in hooks)


def test_unfreeze_two_ranks(train):
    """torchrun, 2 ranks (gloo, CPU DDP with find_unused_parameters):
    the milestones unfreeze layer4, then everything loaded; both ranks end
    identical and every loaded tensor is in the optimizer with momentum."""
    run = train(UNFREEZE, LIBRARY, nproc=2, extra_hooks=_unfreeze_hooks(),
                find_unused=True)
    for before, after in zip(run.snapshots[0], run.snapshots[1]):
        assert before == after
    for key, value in run.finals[0].items():  # the parameters: DDP keeps
        if not key.endswith(BN_STATS):  # buffers per rank (no broadcast)
            assert torch.equal(value, run.finals[1][key]), key
    assert 'UnfreezeHook: at iter 2: 15 tensors' in run.log
    assert 'UnfreezeHook: at iter 3: 45 tensors' in run.log
    loaded = {k for k, e in run.provenance['entries'].items()
              if e['kind'] == 'checkpoint' and not k.endswith(BN_STATS)}
    assert len(loaded) == 60  # parameters; and 60 BatchNorm buffers
    ckpt, _ = read_checkpoint(os.path.join(run.work_dir, 'iter_4.pth'))
    groups = ckpt['optimizer']['param_groups']
    index = {n: i for g in groups for n, i in zip(g['param_names'],
                                                  g['params'])}
    assert loaded <= set(index)
    state = ckpt['optimizer']['state']
    for name in loaded:
        assert state[index[name]]['momentum_buffer'].abs().sum() > 0, name
    moved = [k for k in loaded if k.startswith('backbone.layer4.')
             and not torch.equal(run.snapshots[0][k], run.finals[0][k])]
    assert len(moved) >= 10, moved  # some updates are below float32 spacing
    conv1 = 'backbone.conv1.weight'  # unfrozen for the last iteration only
    assert not torch.equal(run.snapshots[0][conv1], run.finals[0][conv1])


def test_frozen_ddp_without_find_unused_parameters_says_what_to_set(
        tiny_dir):
    cmd, _, _ = train_command(tiny_dir, FREEZE, LIBRARY, 'ddp_no_unused',
                              nproc=2)
    proc = subprocess.run(cmd, cwd=tiny_dir, env=subprocess_env(), text=True,
                          capture_output=True)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert 'find_unused_parameters=True' in out and \
        'model_wrapper_cfg' in out, out[-3000:]


def test_freeze_loaded_on_swin_which_loads_itself(train, tiny_dir):
    """Swin loads its checkpoint in its own init_weights: the prediction
    the optimizer is built from (the Pretrained plan) must still be what
    the ledger records, or training stops before the first iteration."""
    config = os.path.join(tiny_dir, 'swin_freeze_loaded.py')
    with open(config, 'w') as f:
        f.write(f"_base_ = {os.path.join(REPO, SWIN_FT)!r}\n"
                "optim_wrapper = dict(constructor="
                "'ProvenanceOptimWrapperConstructor', "
                "paramwise_cfg=dict(freeze='loaded'))\n")
    run = train(config, LIBRARY)
    _check_started(run)
    data = _trainable(run)
    params = set(_group_of(data)) | set(data['frozen'])
    loaded = sorted(k for k, e in run.provenance['entries'].items()
                    if e['kind'] == 'checkpoint' and k in params)
    assert len(loaded) > 20 and all(k.startswith('backbone.') for k in loaded)
    assert sorted(data['frozen']) == loaded
    assert _unchanged(run, loaded) == loaded
    adapters = [k for k in run.snapshots[0] if '.adapters.' in k]
    assert adapters and not _unchanged(run, adapters)
