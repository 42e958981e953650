"""mmseg's own model tests, as shipped in its sdist, run stock and with
mmext_init imported first (tools/upstream_suites.py): no outcome may change
beyond tools/upstream_intended.json, and the zoo guide (docs/guides/zoo.md) lists every entry of it.

The sdist is fetched with pip (a package index is needed the first time;
the tool caches the tests); failing to fetch it fails the test.
"""
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, 'tools'))
TOOL = os.path.join(REPO, 'tools', 'upstream_suites.py')
INTENDED = os.path.join(REPO, 'tools', 'upstream_intended.json')
OUTCOMES = {'passed', 'failed', 'skipped', 'xfailed', 'xpassed', 'error',
            'collect-error', 'absent'}
# mmseg's init tests that once broke with mmext_init (its errors were not
# the stock FileNotFoundError/TypeError); they must pass in both runs
INIT_TESTS = ('test_mit.py::test_mit_init', 'test_vit.py::test_vit_init',
              'test_beit.py::test_beit_init', 'test_mae.py::test_mae_init',
              'test_twins.py::test_pcpvt_init', 'test_twins.py::test_svt_init')

from upstream_suites import compare  # noqa: E402  (tools/ is on sys.path)


@pytest.mark.e2e
def test_mmseg_suite_unchanged(tmp_path):
    out = tmp_path / 'mmseg.json'
    proc = subprocess.run([sys.executable, TOOL, 'mmseg', '--json', str(out)],
                          capture_output=True, text=True, timeout=2700)
    log = proc.stdout[-8000:] + proc.stderr[-4000:]
    assert proc.returncode != 2, f'the suite did not run:\n{log}'
    assert proc.returncode == 0, f'unlisted outcome changes:\n{log}'
    with open(out) as f:
        result = json.load(f)
    runs = result['runs']
    passed = [n for n, t in runs['stock']['tests'].items()
              if t['outcome'] == 'passed']
    assert len(passed) >= 100, f'only {len(passed)} stock tests passed:\n{log}'
    for name in INIT_TESTS:
        node = f'tests/test_models/test_backbones/{name}'
        for variant in ('stock', 'plugin'):
            assert runs[variant]['tests'][node]['outcome'] == 'passed', (
                variant, node, log)


def test_compare_flags_unlisted_and_stale():
    ok = {'outcome': 'passed', 'message': ''}
    bad = {'outcome': 'failed', 'message': 'AssertionError'}
    stock = {'a': ok, 'b': ok, 'c': ok, 'd': ok}
    plugin = {'a': ok, 'b': bad, 'c': bad, 'd': ok}
    intended = {'c': {'stock': 'passed', 'plugin': 'failed', 'reason': 'why'},
                'd': {'stock': 'passed', 'plugin': 'failed', 'reason': 'x'},
                'gone': {'stock': 'passed', 'plugin': 'failed', 'reason': 'y'}}
    changes, stale = compare(stock, plugin, intended)
    assert [(c['test'], c['reason']) for c in changes] == [
        ('b', None), ('c', 'why')]
    assert stale == ['d']  # ran, listed, unchanged; 'gone' did not run
    changes, _ = compare(stock, {**plugin, 'c': {'outcome': 'skipped',
                                                 'message': ''}}, intended)
    assert changes[1]['reason'] is None  # changed, but not as listed


def test_zoo_guide_lists_intended_changes():
    with open(INTENDED) as f:
        intended = json.load(f)
    with open(os.path.join(REPO, 'docs', 'guides', 'zoo.md')) as f:
        guide = f.read()
    section = guide.split('\n## Upstream test suites\n')[1].split('\n## ')[0]
    assert set(intended) == {'mmseg', 'mmdet', 'mmengine'}
    for package, entries in intended.items():
        for node, entry in entries.items():
            assert f'`{node}`' in section, (package, node)
            assert entry['reason'], (package, node)
            assert {entry['stock'], entry['plugin']} <= OUTCOMES, node
            assert entry['stock'] != entry['plugin'], node
