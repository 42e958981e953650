"""mmdet's own fine-tuning recipe end to end: ``load_from`` a stock Runner's
RetinaNet checkpoint (3 classes), ``num_classes=2``, nothing in
``init_cfg``, ``freeze='loaded'``, trained by mmdet's unchanged
``tools/train.py`` on the tiny generated data. The ledger is checked against
the values the model held when training started (tests/e2e/snapshot_hook.py),
the frozen tensors against the trained ones."""
import glob
import json
import math
import os

import pytest
import torch
from conftest import Run, checkpoint_state

from mmext_init.training.report import TRAINABLE_FILE

pytestmark = pytest.mark.e2e

RECIPE = 'configs/mmdet/retinanet_r18_load_from_tiny.py'
LOAD_FROM = 'checkpoints/retinanet_r18_stock_tiny.pth'  # as the config says
NEW = ('bbox_head.retina_cls.weight', 'bbox_head.retina_cls.bias')


@pytest.fixture(scope='module')
def run(train) -> Run:
    return train(RECIPE, 'mmdet')


@pytest.fixture(scope='module')
def base(tiny_dir) -> dict:
    return checkpoint_state(os.path.join(tiny_dir, LOAD_FROM))


def test_every_ledger_entry_names_where_its_value_came_from(run, base):
    start = run.snapshots[0]
    entries = run.provenance['entries']
    assert set(entries) == set(start)
    for name, entry in entries.items():
        if name in NEW:  # skipped by strict=False: RetinaHead's own init
            assert entry['kind'] == 'initializer', (name, entry)
            assert start[name].shape[0] == 9 * 2
            continue
        assert (entry['kind'], entry['source']) == ('checkpoint',
                                                    LOAD_FROM), name
        assert 'load_from' in entry['notes']
        assert torch.equal(start[name], base[entry['key']]), name
    weight, bias = (start[n] for n in NEW)
    assert entries[NEW[0]]['source'] == 'Normal'
    assert 0.005 < float(weight.std()) < 0.02  # Normal(std=0.01)
    prior = -math.log((1 - 0.01) / 0.01)  # bias_prob=0.01
    assert torch.allclose(bias, torch.full_like(bias, prior))


def test_frozen_tensors_are_bit_identical_and_the_new_head_trains(run):
    before, after = run.snapshots[0], run.finals[0]
    moved = sorted(n for n in before if not torch.equal(before[n], after[n]))
    assert moved == sorted(NEW)


def test_the_report_groups_the_load_and_names_the_skipped_keys(run, base):
    loads = run.provenance['loads']
    assert [r['via'] for r in loads][-1] == 'load_from'
    record = loads[-1]
    assert record['mismatched'] == [
        [NEW[0], [27, 64, 3, 3], [18, 64, 3, 3]], [NEW[1], [27], [18]]]
    assert len(record['loaded']) == len(base) - 2
    assert (f'load the model root (RetinaNet) <- {LOAD_FROM} via load_from: '
            f'{len(base) - 2} loaded') in run.log
    assert (f'shape mismatch {NEW[0]}: checkpoint (27, 64, 3, 3) vs model '
            '(18, 64, 3, 3)') in run.log
    assert 'checkpoint     ' in run.log  # the grouped counts


def test_freeze_loaded_froze_exactly_what_load_from_loaded(run):
    files = glob.glob(os.path.join(run.work_dir, '**', TRAINABLE_FILE),
                      recursive=True)
    with open(files[0]) as f:
        data = json.load(f)
    trained = [n for g in data['groups'] for n in g['names']]
    assert sorted(trained) == sorted(NEW)
    loaded = [n for n, e in run.provenance['entries'].items()
              if e['kind'] == 'checkpoint']
    assert sorted(data['frozen']) == sorted(
        n for n in loaded if not n.endswith(
            ('running_mean', 'running_var', 'num_batches_tracked')))
    [source] = data['sources']
    assert (source['file'], source['via'], source['trainable']) == (
        LOAD_FROM, 'load_from', 0)
    assert source['frozen'] == len(data['frozen'])
    assert f'loaded from {LOAD_FROM} (load_from): ' in run.log
