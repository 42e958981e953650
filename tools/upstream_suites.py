"""Run an OpenMMLab package's own tests twice, stock and with mmext_init
imported first, and fail on any outcome change not listed as intended.

Usage::

    python tools/upstream_suites.py mmseg [--source DIR] [--cache DIR]
        [--json PATH] [--timeout 1200] [-- PYTEST_ARG ...]

The tests are those of the installed version: from its sdist on the package
index (``pip download`` into ``--cache``; only ``tests/`` is kept), or from
``--source DIR``, a folder holding that version's ``tests/``. Without pytest
arguments (test files, folders, node ids, options), the package's default
selection (``DEFAULT_ARGS``) runs.

Each run is a fresh ``python -m pytest`` in its own copy of ``tests/``, next
to ``configs/`` (a link to the installed package's ``.mim/configs``, where
the repository has them) and an empty ``pytest.ini`` (so no upstream or
mmext_init configuration applies): *stock* never imports mmext_init;
*plugin* loads ``-p mmext_init_first`` (``tools/upstream_plugins``), which
imports it before collection. Both record per-test outcomes
(``upstream_outcomes.py``) and load the same harness plugins (``HARNESS``:
mmdet's tests find the installed configs). A test whose outcome differs
is a change; the changes listed in ``tools/upstream_intended.json``
(``{package: {node id: {stock, plugin, reason}}}``) are intended. Exit
status: 0 if every change is listed and every listed entry whose test ran
is observed, 1 otherwise, 2 if the tests could not be obtained or a run did
not complete.
"""
import argparse
import collections
import importlib.metadata
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from typing import Dict, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
PLUGINS = os.path.join(HERE, 'upstream_plugins')
INTENDED = os.path.join(HERE, 'upstream_intended.json')
DISTRIBUTIONS = {'mmseg': 'mmsegmentation', 'mmdet': 'mmdet',
                 'mmengine': 'mmengine'}
DEFAULT_ARGS = {  # timm's test downloads weights from the Hugging Face hub
    'mmseg': ['tests/test_models/test_backbones',
              'tests/test_models/test_heads',
              'tests/test_models/test_necks',
              'tests/test_models/test_segmentors', '--ignore',
              'tests/test_models/test_backbones/test_timm_backbone.py'],
    'mmdet': ['tests/test_models/test_backbones',
              'tests/test_models/test_necks',
              'tests/test_models/test_dense_heads',
              'tests/test_models/test_roi_heads'],
    'mmengine': ['tests/test_model', 'tests/test_registry', 'tests/test_optim',
                 'tests/test_hooks', 'tests/test_runner'],  # this order:
    # test_runner.py registers ToyModel2 for good; test_ema_hook.py's setUp
    # registers its own and fails if one is there
}
HARNESS = {  # loaded in both runs: see each module's docstring
    'mmdet': ['installed_configs'],
}
DEFAULT_CACHE = os.path.join(
    os.environ.get('XDG_CACHE_HOME', os.path.expanduser('~/.cache')),
    'mmext_init', 'upstream')


class SuiteError(RuntimeError):
    """The tests could not be obtained, or a run did not complete."""


def sdist_tests(package: str, cache: str) -> str:
    """A folder holding ``tests/`` of the installed ``package``'s sdist,
    downloaded with pip into ``cache`` the first time."""
    dist = DISTRIBUTIONS[package]
    version = importlib.metadata.version(dist)
    root = os.path.join(cache, f'{dist}-{version}')
    if os.path.isdir(os.path.join(root, 'tests')):
        return root
    downloads = os.path.join(cache, 'sdists')
    cmd = [sys.executable, '-m', 'pip', 'download', '-q', '--no-deps',
           '--no-binary', ':all:', '--no-build-isolation',
           f'{dist}=={version}', '-d', downloads]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SuiteError(f'pip could not fetch the sdist of {dist}=={version}'
                         f" ({' '.join(cmd)}):\n{proc.stderr[-3000:]}")
    archive = os.path.join(downloads, f'{dist}-{version}.tar.gz')
    if not os.path.isfile(archive):
        raise SuiteError(f'pip fetched no {archive}: {os.listdir(downloads)}')
    with tarfile.open(archive) as tar, tempfile.TemporaryDirectory(
            dir=cache) as tmp:
        prefix = f'{dist}-{version}/tests/'
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
        if not members:
            raise SuiteError(f'the sdist {archive} holds no tests/')
        tar.extractall(tmp, members=members, filter='data')
        os.replace(os.path.join(tmp, f'{dist}-{version}'), root)
    return root


def run_pytest(package: str, source: str, args: Sequence[str], work: str,
               plugin: bool, timeout: float) -> dict:
    """One run in ``work`` (a fresh copy of ``source/tests``): the recorded
    outcomes plus ``wall`` seconds and pytest's ``log`` tail."""
    shutil.copytree(os.path.join(source, 'tests'),
                    os.path.join(work, 'tests'))
    configs = os.path.join(os.path.dirname(importlib.util.find_spec(
        package).origin), '.mim', 'configs')
    if os.path.isdir(configs):
        os.symlink(configs, os.path.join(work, 'configs'))
    with open(os.path.join(work, 'pytest.ini'), 'w') as f:
        f.write('[pytest]\n')
    out = os.path.join(work, 'outcomes.json')
    first = ['-p', 'mmext_init_first'] if plugin else []
    harness = [a for name in HARNESS.get(package, []) for a in ('-p', name)]
    cmd = [sys.executable, '-m', 'pytest', *first, *harness, *args, '-q',
           '--continue-on-collection-errors', '-p', 'no:cacheprovider', '-p',
           'upstream_outcomes', '--outcomes-json', out]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [PLUGINS, os.environ.get('PYTHONPATH', '')]))
    start = time.time()
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True,
                          text=True, timeout=timeout)
    log = (proc.stdout[-4000:] + proc.stderr[-2000:]).strip()
    if proc.returncode not in (0, 1) or not os.path.isfile(out):
        raise SuiteError(f"pytest exited {proc.returncode} in {work} "
                         f"({' '.join(cmd)}):\n{log}")
    with open(out) as f:
        result = json.load(f)
    if result['mmext_init_imported'] != plugin:
        raise SuiteError(f'mmext_init imported={not plugin} expected in the '
                         f"{'plugin' if plugin else 'stock'} run ({work})")
    result.update(wall=time.time() - start, log=log)
    return result


def compare(stock: Dict[str, dict], plugin: Dict[str, dict],
            intended: Dict[str, dict]) -> Tuple[List[dict], List[str]]:
    """``(changes, stale)``: each test whose outcome differs (``intended``
    holds its reason or None), and the listed node ids whose test ran but
    did not change as listed."""
    changes, stale = [], []
    for node in sorted(set(stock) | set(plugin)):
        before = stock.get(node, {'outcome': 'absent', 'message': ''})
        after = plugin.get(node, {'outcome': 'absent', 'message': ''})
        listed = intended.get(node)
        expected = listed is not None and (listed['stock'], listed['plugin']) \
            == (before['outcome'], after['outcome'])
        if before['outcome'] != after['outcome']:
            changes.append({'test': node, 'stock': before['outcome'],
                            'plugin': after['outcome'],
                            'message': after['message'] or before['message'],
                            'reason': listed['reason'] if expected else None})
        elif listed is not None:
            stale.append(node)
    return changes, stale


def per_file(runs: Dict[str, dict]) -> Dict[str, dict]:
    """``{file: {variant: {'counts': {outcome: n}, 'seconds': s}}}``."""
    table: Dict[str, dict] = collections.defaultdict(dict)
    for variant, run in runs.items():
        for node, entry in run['tests'].items():
            row = table[node.split('::')[0]].setdefault(
                variant, {'counts': collections.Counter(), 'seconds': 0.0})
            row['counts'][entry['outcome']] += 1
            row['seconds'] += entry['duration']
    return dict(sorted(table.items()))


def report(package: str, runs: Dict[str, dict], changes: List[dict],
           stale: List[str]) -> str:
    """The text summary: per file, every change, then the tests that did
    not pass in either run (unchanged)."""
    lines = [f'{package}: stock {runs["stock"]["wall"]:.0f} s, plugin '
             f'{runs["plugin"]["wall"]:.0f} s (wall)']
    changed_files = collections.Counter(c['test'].split('::')[0]
                                        for c in changes)
    for name, row in per_file(runs).items():
        cells = [f"{v} {dict(row[v]['counts'])} {row[v]['seconds']:.1f} s"
                 for v in ('stock', 'plugin') if v in row]
        lines.append(f'  {name}: {" | ".join(cells)}; '
                     f'{changed_files[name]} changed')
    for c in changes:
        tag = f"intended: {c['reason']}" if c['reason'] else 'NOT LISTED'
        lines.append(f"CHANGE {c['test']}: {c['stock']} -> {c['plugin']} "
                     f"({tag})\n    {c['message']}")
    lines += [f'STALE {node}: listed as intended but not observed'
              for node in stale]
    changed = {c['test'] for c in changes}
    lines += [f"SAME {node}: {t['outcome']} in both\n    {t['message']}"
              for node, t in runs['stock']['tests'].items()
              if t['outcome'] != 'passed' and node not in changed]
    return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index('--') if '--' in argv else len(argv)
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0], epilog='After --: pytest '
        'arguments (test files, folders, node ids relative to the folder '
        'holding tests/, options).')
    parser.add_argument('package', choices=sorted(DISTRIBUTIONS))
    parser.add_argument('--source', help="a folder holding the installed "
                        "version's tests/ (default: its sdist)")
    parser.add_argument('--cache', default=DEFAULT_CACHE)
    parser.add_argument('--json', help='write runs and changes here')
    parser.add_argument('--timeout', type=float, default=1200,
                        help='seconds for one pytest run')
    args = parser.parse_args(argv[:cut])
    pytest_args = argv[cut + 1:] or DEFAULT_ARGS[args.package]
    with open(INTENDED) as f:
        intended = json.load(f).get(args.package, {})
    try:
        os.makedirs(args.cache, exist_ok=True)
        source = args.source or sdist_tests(args.package, args.cache)
        with tempfile.TemporaryDirectory() as tmp:
            runs = {v: run_pytest(args.package, source, pytest_args,
                                  os.path.join(tmp, v), v == 'plugin',
                                  args.timeout)
                    for v in ('stock', 'plugin')}
    except (SuiteError, subprocess.TimeoutExpired) as e:
        print(f'upstream_suites: {e}', file=sys.stderr)
        return 2
    changes, stale = compare(runs['stock']['tests'], runs['plugin']['tests'],
                             intended)
    print(report(args.package, runs, changes, stale))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump({'package': args.package, 'source': source,
                       'pytest_args': pytest_args, 'runs': runs,
                       'changes': changes, 'stale': stale,
                       'files': per_file(runs)}, f, indent=1)
    return int(any(c['reason'] is None for c in changes) or bool(stale))


if __name__ == '__main__':
    sys.exit(main())
