"""The stock mmdet/mmseg train/test scripts, unchanged, on the tiny configs
(``configs/*/..._tiny.py``) with mmext_init imported through the configs'
``custom_imports``; weights are snapshotted at ``before_train``."""
import os
import subprocess
import sys
from collections import Counter
from typing import Dict

import pytest
import torch
from conftest import REPO, Run, checkpoint_state, library_script, \
    subprocess_env

pytestmark = pytest.mark.e2e

REPORT_LINE = 'mmext_init: initialization report'
STOCK_LINE = 'The value is the same before and after calling'
CASES = [  # config, library, stock checkpoint, number of adapters
    ('configs/mmdet/retinanet_r18_adapters_ft_tiny.py', 'mmdet',
     'retinanet_r18_stock_tiny.pth', 3),
    ('configs/mmdet/retinanet_swin_adapters_ft_tiny.py', 'mmdet',
     'retinanet_swin_stock_tiny.pth', 3),
    ('configs/mmseg/segformer_mit_adapters_ft_tiny.py', 'mmseg',
     'segformer_mit_stock_tiny.pth', 4),
]


def _file_value(ckpt: Dict[str, torch.Tensor], key: str) -> torch.Tensor:
    """The checkpoint tensor a ledger ``key`` names: the key as written in
    the file, also where Swin loads the checkpoint itself (and strips
    ``backbone.``)."""
    assert key in ckpt, key
    return ckpt[key]


def _check_adapters(weights: Dict[str, torch.Tensor], entries: dict,
                    count: int) -> None:
    """Inserted adapters carry their declared init: Kaiming ``down``
    (mode fan_out, ReLU gain: std sqrt(2 / out_channels) for 1x1 kernels,
    bias 0), all-zero ``up``; the ledger says so."""
    indices = {int(k.split('.')[2]) for k in weights
               if k.startswith('backbone.adapters.')}
    assert indices == set(range(count))
    for i in indices:
        prefix = f'backbone.adapters.{i}'
        for name, source in ((f'{prefix}.down.weight', 'Kaiming'),
                             (f'{prefix}.down.bias', 'Kaiming'),
                             (f'{prefix}.up.weight', 'Zero'),
                             (f'{prefix}.up.bias', 'Zero')):
            entry = entries[name]
            assert (entry['kind'], entry['source'], entry['declared_by']) == \
                ('initializer', source, prefix), (name, entry)
        assert torch.count_nonzero(weights[f'{prefix}.up.weight']) == 0
        assert torch.count_nonzero(weights[f'{prefix}.up.bias']) == 0
        assert torch.count_nonzero(weights[f'{prefix}.down.bias']) == 0
        down = weights[f'{prefix}.down.weight']
        assert down.unique().numel() > down.numel() // 2  # a real draw
        expected_std = (2 / down.shape[0])**0.5
        assert abs(down.std().item() / expected_std - 1) < 0.15, \
            (prefix, down.std().item(), expected_std)


def _check_run(run: Run, ckpt_path: str, adapters: int) -> None:
    ckpt = checkpoint_state(ckpt_path)
    weights = run.snapshots[0]
    data = run.provenance
    entries = data['entries']
    assert set(entries) == set(weights)  # every tensor, nothing else
    kinds = Counter(e['kind'] for e in entries.values())
    assert {k: n for k, n in data['counts'].items() if n} == dict(kinds)

    backbone = {k: v for k, v in ckpt.items() if k.startswith('backbone.')}
    assert len(backbone) > 50
    for key, value in backbone.items():  # bit for bit
        assert torch.equal(weights[key], value), key
    for name, weight in weights.items():
        entry = entries[name]
        assert (entry['kind'] == 'checkpoint') == (name in backbone), name
        if entry['kind'] == 'checkpoint':
            assert os.path.basename(entry['source']) == \
                os.path.basename(ckpt_path), entry
            assert torch.equal(weight, _file_value(ckpt, entry['key'])), name
        if entry['source'] == 'Zero':
            assert torch.count_nonzero(weight) == 0, name
    _check_adapters(weights, entries, adapters)

    assert run.log.count(REPORT_LINE) == 1
    assert STOCK_LINE not in run.log
    assert 'Iter(train) [4/4]' in run.log  # it trained
    assert ' - ERROR - ' not in run.log  # e.g. no evaluation of nothing


@pytest.mark.parametrize('config, library, ckpt_name, adapters', CASES,
                         ids=['retinanet_r18', 'retinanet_swin', 'segformer'])
def test_tiny_config_through_stock_train_script(train, tiny_dir, config,
                                                library, ckpt_name, adapters):
    run = train(config, library)
    _check_run(run, os.path.join(tiny_dir, 'checkpoints', ckpt_name),
               adapters)
    assert run.provenance_writes[0] == run.provenance_files


def test_distributed_two_ranks_identical_and_one_report(train, tiny_dir):
    """torchrun, 2 ranks (gloo, CPU), with LSUVInitHook on the new head:
    identical weights on both ranks, only rank 0 writes the ledger (rank 1
    never opens it for writing), LSUV in the ledger."""
    config, library, ckpt_name, adapters = CASES[0]
    run = train(config, library, nproc=2, extra_hooks=(
        "dict(type='LSUVInitHook', include=r'bbox_head\\..*'), "))
    assert len(run.snapshots) == 2
    assert run.snapshots[0].keys() == run.snapshots[1].keys()
    for key, value in run.snapshots[0].items():
        assert torch.equal(value, run.snapshots[1][key]), key
    assert len(run.provenance_files) == 1
    assert set(run.provenance_writes[0]) == set(run.provenance_files)
    assert run.provenance_writes[1] == []  # rank 1 wrote no copy
    _check_run(run, os.path.join(tiny_dir, 'checkpoints', ckpt_name),
               adapters)
    entry = run.provenance['entries']['bbox_head.retina_reg.weight']
    assert entry['notes'][0].startswith('LSUVInitHook scaled x')
    assert 'LSUVInitHook: rescaled 4 layers' in run.log


def test_mmdet_test_script_and_init_detector(train, tiny_dir):
    """The trained Runner checkpoint (unreadable by stock torch.load under
    torch >= 2.6) works with mmdet's own test.py (plugin imported by the
    config) and with init_detector (plugin imported by tests/conftest.py)."""
    config, library, _, _ = CASES[0]
    run = train(config, library)
    trained = os.path.join(run.work_dir, 'iter_4.pth')
    proc = subprocess.run(
        [sys.executable, library_script('mmdet', 'test'), run.config,
         trained, '--work-dir', os.path.join(tiny_dir, 'test_run'),
         '--cfg-options', 'model.test_cfg.score_thr=0'],  # 4 iters: low
        cwd=tiny_dir, capture_output=True, text=True, env=subprocess_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'Evaluating bbox' in proc.stdout + proc.stderr
    assert 'coco/bbox_mAP:' in proc.stdout + proc.stderr

    from mmdet.apis import inference_detector, init_detector
    model = init_detector(os.path.join(REPO, config), trained, device='cpu')
    state = checkpoint_state(trained)
    assert model.state_dict().keys() == state.keys()
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert model.dataset_meta['classes'] == ('red', 'green')
    result = inference_detector(
        model, os.path.join(tiny_dir, 'data/tiny_coco/val/val_000.jpg'))
    assert result.pred_instances.bboxes.shape[-1] == 4
    assert torch.isfinite(result.pred_instances.scores).all()
