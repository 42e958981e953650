"""The grouped report, the JSON ledger in a real Runner's log dir, DEBUG."""
import json
import os

import pytest
import torch
from runner_utils import ToyModel, run_runner
from toy_models import TrunkWithAdapters

from mmext_init import fold_names, format_report, get_provenance
from mmext_init.provenance.report import PROVENANCE_FILE, REPORT_TITLE

STOCK_LINE = 'The value is the same before and after calling'


@pytest.mark.parametrize('names, folded', [
    (['a.0.up.weight', 'a.0.up.bias', 'a.1.up.weight', 'a.1.up.bias',
      'a.2.up.weight', 'a.2.up.bias', 'a.3.up.weight', 'a.3.up.bias'],
     ['a.{0..3}.up.{weight,bias}']),
    (['l.conv1.weight', 'l.conv2.weight', 'l.conv3.weight'],
     ['l.conv{1..3}.weight']),
    (['h.0.w', 'h.2.w', 'h.5.w'], ['h.{0,2,5}.w']),
    (['x.0.w', 'x.0.b', 'x.1.w'], ['x.0.{w,b}', 'x.1.w']),
    (['single.weight'], ['single.weight']),
])
def test_fold_names(names, folded):
    assert fold_names(names) == folded


def test_report_groups_adapters_with_folded_indices(save_ckpt):
    trunk = TrunkWithAdapters(init_cfg=dict(
        type='Pretrained', checkpoint=save_ckpt(
            {'fc1.weight': torch.zeros(8, 8)}), on_missing='ignore'))
    trunk.init_weights()
    text = format_report(get_provenance(trunk))
    assert text.startswith(REPORT_TITLE + ' for TrunkWithAdapters')
    assert ('  adapters.{0..3}.up.{weight,bias} <- Constant(val=0) from '
            'adapters.N') in text
    assert '  adapters.{0..3}.down.{weight,bias} <- Kaiming from adapters.N' \
        in text
    assert 'missing (not in checkpoint): fc1.bias' in text


def _runner_run(tmp_path, runner_ckpt, log_level='INFO'):
    trunk = TrunkWithAdapters(init_cfg=dict(
        type='Pretrained', checkpoint=runner_ckpt, prefix='backbone.'))
    runner = run_runner(str(tmp_path), ToyModel(trunk), iters=1,
                        log_level=log_level)
    log_file = os.path.join(runner.log_dir, os.path.basename(runner.log_dir)
                            + '.log')
    return runner, open(log_file).read()


def test_runner_writes_json_ledger_and_grouped_log(tmp_path, runner_ckpt):
    runner, log = _runner_run(tmp_path, runner_ckpt)
    path = os.path.join(runner.log_dir, PROVENANCE_FILE)
    data = json.load(open(path))
    ledger = get_provenance(runner.model)
    assert data['root'] == 'ToyModel'
    assert {k: v['kind'] for k, v in data['entries'].items()} == {
        k: v.kind for k, v in ledger.entries.items()}
    assert data['entries']['backbone.fc1.weight']['key'] == \
        'backbone.fc1.weight'
    assert data['loads'][0]['module'] == 'backbone'
    assert data['void_entries'] == []  # every entry touched a tensor
    assert log.count(REPORT_TITLE) == 1
    assert STOCK_LINE not in log
    assert 'backbone.adapters.{0..3}.up.{weight,bias} <- Constant(val=0)' \
        in log


def test_debug_level_logs_the_full_ledger(tmp_path, runner_ckpt):
    _, log = _runner_run(tmp_path, runner_ckpt, log_level='DEBUG')
    assert 'mmext_init: provenance ledger' in log
    assert 'backbone.adapters.3.up.bias: Constant(val=0) from ' \
        'backbone.adapters.3' in log
