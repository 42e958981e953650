"""``tools/bench_init.py`` and ``tools/bench_copy.py`` run end to end (tiny
size, one repeat): every configuration in its own process, stock and plugin
load the same model, the plugin reads the checkpoint through a map (no read()
of its bytes), and the ratios are those of the measured values."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_runs_and_the_plugin_maps_the_checkpoint():
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'tools', 'bench_init.py'),
         '--sizes', 'vit-t', '--repeats', '1', '--json'],
        check=True, capture_output=True, text=True, cwd=ROOT, timeout=600)
    row = json.loads(out.stdout)['results']['vit-t']
    for mode in ('stock', 'plugin', 'floor'):
        assert row[mode]['seconds'] > 0 and row[mode]['rss_mb'] > 0, mode
    checkpoint_mb = row['checkpoint_mb']
    assert row['stock']['read_mb'] >= 0.9 * checkpoint_mb  # torch.load
    assert row['plugin']['read_mb'] < 0.1 * checkpoint_mb  # memory map
    ratios = row['ratios']
    assert ratios['stock_over_plugin'] == (row['stock']['seconds'] /
                                           row['plugin']['seconds'])
    assert ratios['stock_over_floor'] == (row['stock']['seconds'] /
                                          row['floor']['seconds'])
    assert ratios['rss_limit_over_stock'] == (
        (row['plugin']['base_mb'] + checkpoint_mb) / row['stock']['rss_mb'])


def test_bench_copy_runs_every_variant():
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'tools', 'bench_copy.py'),
         '--dim', '64', '--depth', '1', '--repeats', '1', '--json'],
        check=True, capture_output=True, text=True, cwd=ROOT, timeout=600)
    medians = json.loads(out.stdout)['medians']
    assert sorted(medians) == sorted(
        ('plain', 'premapped', 'premapped+fault', 'hugepages',
         'populate-src', 'check', 'check-chunked'))
    assert all(seconds > 0 for seconds in medians.values())
