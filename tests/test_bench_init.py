"""``tools/bench_init.py`` (``mmext-bench``) and ``tools/bench_copy.py`` run
end to end (tiny size, one repeat): every configuration in its own process, the plugin reads
the checkpoint through a map (no read() of its bytes); and the four modes
the benchmark times (stock, plugin, floor, checked floor) load the same
tensors."""
import json
import os
import subprocess
import sys

import pytest
import torch

import mmext_init
from mmext_init.loading.copy import CHUNK
from mmext_init.tools.bench import models as bench

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_runs_and_the_plugin_maps_the_checkpoint(tmp_path):
    out = tmp_path / 'bench.json'
    subprocess.run(
        [sys.executable, os.path.join(ROOT, 'tools', 'bench_init.py'),
         '--sizes', 'vit-t', '--repeats', '1', '--json', str(out)],
        check=True, capture_output=True, text=True, cwd=ROOT, timeout=600)
    row = json.loads(out.read_text())['results']['vit-t']
    checkpoint_mb = row['checkpoint_mb']
    assert row['stock']['read_mb'] >= 0.9 * checkpoint_mb  # torch.load
    assert row['plugin']['read_mb'] < 0.1 * checkpoint_mb  # memory map
    for mode in ('stock', 'plugin', 'floor', 'checked'):  # imports first
        assert row[mode]['rss_mb'] >= row[mode]['base_mb'], mode
    assert len(row['stock']['runs']) == 1  # --repeats 1


def test_the_modes_measure_the_same_load(tmp_path):
    """What the benchmark compares is one load: stock, plugin, floor and
    checked floor give every checkpoint tensor the file's value, and the
    plugin's ledger has exactly those from the file and the adapters from
    their declared init. A mode that loaded less would make its time meaningless."""
    path = bench.write_checkpoint('vit-t', str(tmp_path))
    state = torch.load(path, weights_only=True)['state_dict']
    torch.manual_seed(0)
    with mmext_init.stock_mmengine():
        stock = bench.build('vit-t', path)
        stock.init_weights()
    torch.manual_seed(0)
    plugin = bench.build('vit-t', path)
    plugin.init_weights()
    floor, checked = bench.allocate('vit-t'), bench.allocate('vit-t')
    bench.floor_copy(floor, state)
    bench.floor_copy(checked, state, checked=True)
    for model in (stock, plugin, floor, checked):
        for key, value in state.items():
            assert torch.equal(model.state_dict()[key], value), key
    adapters = [k for k in plugin.state_dict() if k.startswith('adapters.')]
    assert adapters and set(adapters) | set(state) == set(
        plugin.state_dict())
    entries = mmext_init.get_provenance(plugin).entries
    assert {k for k, e in entries.items() if e.kind == 'checkpoint'} == \
        set(state)
    assert {entries[k].kind for k in adapters} == {'initializer'}
    assert not plugin.adapters[0].up.weight.any()  # its Constant(val=0)


def test_the_checked_floor_refuses_a_non_finite_tensor(tmp_path):
    """The checked floor does the plugin's check: a NaN deep in a tensor
    larger than one checked chunk is found."""
    model = torch.nn.Linear(CHUNK, 2, bias=False)
    weight = torch.zeros(2, CHUNK)
    weight[1, -1] = float('nan')
    with pytest.raises(ValueError, match='weight holds NaN'):
        bench.floor_copy(model, dict(weight=weight), checked=True)
    bench.floor_copy(model, dict(weight=weight))  # the floor: no check
    assert model.weight.isnan().sum() == 1


def test_bench_copy_runs_every_variant():
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, 'tools', 'bench_copy.py'),
         '--dim', '64', '--depth', '1', '--repeats', '1', '--json', '-'],
        check=True, capture_output=True, text=True, cwd=ROOT, timeout=600)
    medians = json.loads(out.stdout)['medians']
    assert sorted(medians) == sorted(
        ('plain', 'premapped', 'premapped+fault', 'hugepages',
         'populate-src', 'check', 'check-chunked'))
    assert all(seconds > 0 for seconds in medians.values())  # timed
