"""The zoo sweep (mmext_init.tools.zoo_sweep): selection, the timm
sample, the command line, the stock worker, what stock reaches, check 3's
explanation rule and the summary (the files for configs as shipped:
test_zoo_files.py; the sweep itself runs in tests/e2e/test_zoo.py)."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.model import BaseModule

import mmext_init
from mmext_init.tools.zoo.models import (bit_equal, configs_root,
                                         differing, state_of, stock_reach)
from mmext_init.tools.zoo.report import (format_line, format_summary,
                                         summarize)
from mmext_init.tools.zoo.stock import STOCK_BOOT
from mmext_init.tools.zoo.sweep import (SOURCE_ROOT, list_configs,
                                        select_configs, worker_command)
from mmext_init.tools.zoo.timm_sample import TIMM_SAMPLE, write_configs
from mmext_init.tools.zoo.urls import checkpoint_url, find_refs
from mmext_init.tools.zoo.verdicts import check_vs_stock
from mmext_init.tools.zoo_sweep import parse_args
from toy_models import Adapter


def _tree(root, names):
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text('model = dict(type="X")\n')
    return str(root)


@pytest.fixture
def configs(tmp_path):
    det = _tree(tmp_path / 'det', [
        '_base_/models/x.py', 'top.py', 'htc/htc_x101_tta.py',
        'htc/htc_r50.py', 'htc/sub/htc_a.py', 'yolo/yolov3_lazy.py',
        'yolo/yolov3_tta.py'])
    seg = _tree(tmp_path / 'seg', ['htc/b.py', 'vit/vit_a.py'])
    return list_configs({'mmdet': det, 'mmseg': seg})


def test_listing_skips_base_and_root_files(configs):
    assert ('mmdet', 'htc/sub/htc_a.py', 'htc') in configs
    assert not [c for c in configs if '_base_' in c[1] or c[1] == 'top.py']


def test_one_per_family_prefers_names_without_tta_or_lazy(configs):
    chosen = select_configs(configs)
    assert [(p, rel) for p, rel, _ in chosen] == [
        ('mmdet', 'htc/htc_r50.py'), ('mmdet', 'yolo/yolov3_lazy.py'),
        ('mmseg', 'htc/b.py'), ('mmseg', 'vit/vit_a.py')]


def test_only_limit_and_all(configs):
    only = select_configs(configs, only=r'^mmdet:htc/htc_x101_tta\.py$')
    assert [c[1] for c in only] == ['htc/htc_x101_tta.py']
    assert [c[1] for c in select_configs(configs, only='^vit/')] == \
        ['vit/vit_a.py']
    assert len(select_configs(configs, every=True)) == 7
    assert len(select_configs(configs, limit=3)) == 3


class _Head(BaseModule):

    def __init__(self):
        super().__init__(init_cfg=dict(type='Normal', layer='Linear', std=.5))
        self.fc = nn.Linear(8, 8)


class _Override(BaseModule):
    """An override that never calls ``super()``: its children are never
    reached by stock's recursion."""

    def __init__(self):
        super().__init__()
        self.inner = _Head()

    def init_weights(self):
        nn.init.zeros_(self.inner.fc.bias)


class _Root(BaseModule):

    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(8, 8)
        self.blocks = nn.ModuleList([Adapter(8)])
        self.head = _Head()
        self.custom = _Override()


def _stock_and_plugin():
    with mmext_init.stock_mmengine():
        torch.manual_seed(0)
        stock = _Root()
        stock.init_weights()
    torch.manual_seed(0)
    plugin = _Root()
    plugin.init_weights()
    return stock, plugin


def test_stock_reach_follows_mmengine_recursion():
    stock, _ = _stock_and_plugin()
    called, body_ran = stock_reach(stock)
    assert body_ran == {'', 'head'}
    assert called == {'', 'head', 'custom'}  # blocks.0 sits in a ModuleList


def test_vs_stock_explains_unreached_and_shifted_stream():
    stock, plugin = _stock_and_plugin()
    called, body_ran = stock_reach(stock)
    info = dict(called=sorted(called), body_ran=sorted(body_ran))
    ledger = mmext_init.get_provenance(plugin)
    ours, theirs = (state_of(plugin), None), (state_of(stock), None)
    result = check_vs_stock(ours, theirs, ledger, plugin, info)
    assert result['status'] == 'pass', result
    # blocks.0 (ModuleList) and custom.inner (below an override): unreached;
    # head.fc.weight: Normal drawn after blocks.0's Kaiming draws.
    assert result['counts'] == {'unreached': 5, 'rng-shift': 1,
                                'skipped-draws': 0, 'unexplained': 0}
    assert result['unreached_modules'] == ['blocks.0', 'custom.inner']


def test_vs_stock_fails_on_unexplained_difference():
    stock, plugin = _stock_and_plugin()
    called, body_ran = stock_reach(stock)
    ledger = mmext_init.get_provenance(plugin)
    theirs = state_of(stock)
    theirs['stem.weight'] = theirs['stem.weight'] + 1  # constructor default
    reached = dict(called=sorted(called | {'blocks.0', 'custom.inner'}),
                   body_ran=sorted(body_ran | {'blocks.0', 'custom.inner'}))
    result = check_vs_stock((state_of(plugin), None), (theirs, None), ledger,
                            plugin, reached)
    assert result['status'] == 'fail'
    assert result['unexplained'][0] == 'stem.weight'
    # claimed reached: neither their own values nor the shift is explained
    assert {'blocks.0.down.weight', 'custom.inner.fc.weight',
            'head.fc.weight'} <= set(result['unexplained'])


def test_bit_equal_sees_nan_payload_and_sign_of_zero():
    assert bit_equal(torch.tensor([float('nan')]), torch.tensor([float('nan')]))
    assert not bit_equal(torch.tensor([0.0]), torch.tensor([-0.0]))
    assert differing({'a': torch.ones(2)}, {'a': torch.ones(2), 'b': 1}) == \
        ['b']


def _result(config, status, **extra):
    base = dict(package='mmdet', config=config, family=config.split('/')[0],
                status=status, checks={}, timings={})
    base.update(extra)
    return base


def _timed(plugin_cpu):
    return dict(timings=dict(stock=dict(wall=1.0, cpu=1.0),
                             plugin=dict(wall=3.0, cpu=plugin_cpu)),
                ratio_cpu=plugin_cpu, ratio_wall=3.0)


def test_summary_lists_failures_skips_and_ratios():
    fail = {'status': 'fail', 'detail': '74 of 300 tensors differ'}
    results = [
        _result('a/a.py', 'PASS', checks={
            'vs_stock': {'status': 'pass', 'detail': '0 explained'}},
            **_timed(1.0)),
        _result('b/b.py', 'FAIL', checks={'deferral': fail}, **_timed(2.0)),
        _result('c/c.py', 'SKIP', reason='ImportError: no timm'),
        _result('d/d.py', 'FAIL', error='plugin run timed out after 9 s'),
    ]
    summary = summarize(results)
    assert (summary['passed'], summary['failed']) == (1, 2)
    assert summary['skipped'] == [dict(config='mmdet:c/c.py',
                                       reason='ImportError: no timm')]
    assert summary['failures'] == [
        dict(config='mmdet:b/b.py', check='deferral',
             detail='74 of 300 tensors differ'),
        dict(config='mmdet:d/d.py', check='run',
             detail='plugin run timed out after 9 s')]
    assert summary['ratio_cpu'] == dict(median=1.5, max=2.0,
                                        max_config='mmdet:b/b.py', configs=2)
    text = format_summary(summary, 120)
    assert 'NOT met' in text and 'FAILED mmdet:b/b.py [deferral]' in text
    assert format_line(results[1]) == (
        'FAIL  mmdet:b/b.py  deferral: 74 of 300 tensors differ  '
        '[stock 1.00s plugin 2.00s cpu x2.00 (wall x3.00)]')


def test_line_shows_a_failed_plugin_build():
    result = _result('e/e.py', 'FAIL', checks={'build': {
        'status': 'fail', 'detail': 'plugin build: KeyError: x'}})
    assert 'build: plugin build: KeyError: x' in format_line(result)


def test_mmpretrain_family_configs_come_before_benchmarks(tmp_path):
    root = _tree(tmp_path / 'pre', [
        'mocov2/benchmarks/resnet50_linear.py', 'mocov2/mocov2_r50.py',
        'resnest/_randaug_policies.py', 'resnest/resnest101.py'])
    chosen = select_configs(list_configs({'mmpretrain': root}))
    assert [c[1] for c in chosen] == ['mocov2/mocov2_r50.py',
                                      'resnest/resnest101.py']
    det = _tree(tmp_path / 'det', ['glip/sub/a.py', 'glip/z.py'])
    assert [c[1] for c in select_configs(list_configs({'mmdet': det}))] == \
        ['glip/sub/a.py']  # mmdet and mmseg keep the sorted order


def test_timm_sample_configs(tmp_path):
    paths = write_configs(str(tmp_path))
    assert sorted(paths) == sorted(TIMM_SAMPLE)
    chosen = select_configs(list_configs({'timm': str(tmp_path)}))
    assert len(chosen) == len(TIMM_SAMPLE)
    cfg = Config.fromfile(paths['vit_tiny_patch16_224'])
    backbone = cfg.model.backbone
    assert (backbone.type, backbone.pretrained) == ('TIMMBackbone', False)
    ref, = find_refs(cfg.model)
    assert ref.module_path == ('backbone', ) and ref.kind == 'init_cfg'
    assert checkpoint_url(ref.name).endswith('/vit_tiny_patch16_224.pth')


def test_every_option_is_documented_and_json_takes_a_path():
    parser_args = parse_args(['--json', 'out.json', '--packages', 'timm'])
    assert (parser_args.json, parser_args.packages) == ('out.json', ['timm'])
    out = subprocess.run([sys.executable, '-m', 'mmext_init.tools.zoo_sweep',
                          '--help'], capture_output=True, text=True,
                         check=True).stdout
    for option in ('--packages', '--only', '--limit', '--all', '--jobs',
                   '--timeout', '--json PATH', '--keep DIR'):
        assert option in out, option
    with pytest.raises(SystemExit):
        parse_args(['--packages', 'mmocr'])


def test_stock_worker_never_runs_the_package_init(tmp_path):
    """The stock worker, started as the sweep starts it, builds a shipped
    config with mmext_init's ``__init__`` never run (nothing patched)."""
    config = os.path.join(configs_root('mmpretrain'), 'lenet',
                          'lenet5_mnist.py')
    command = worker_command('stock', 'mmpretrain', config, str(tmp_path))
    assert command[1:3] == ['-c', STOCK_BOOT]
    env = dict(os.environ, PYTHONPATH=SOURCE_ROOT)
    subprocess.run(command, cwd=tmp_path, env=env, check=True, timeout=600,
                   capture_output=True)
    with open(tmp_path / 'stock.json') as f:
        stock = json.load(f)
    assert 'skip' not in stock and stock['mmext_init_imported'] is False
    assert stock['tensors'] > 0 and (tmp_path / 'stock.pth').exists()
    assert worker_command('plugin', 'mmpretrain', config, '.')[1:3] == [
        '-m', 'mmext_init.tools.zoo.checks']
