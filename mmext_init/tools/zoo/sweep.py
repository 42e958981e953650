"""Running the zoo sweep: which shipped configs, and one config's two
worker processes (stock, then the plugin) in a temporary folder.

Selection: every ``*.py`` below a package's ``configs`` root except
``_base_`` folders; the *family* is the first folder under ``configs/``.
``--only`` keeps the configs where REGEX is found (``re.search``) in the path
relative to ``configs`` or in ``<package>:<that path>``; then, unless
``--all``, one config per family: the first in sorted order whose file name
contains neither ``_tta`` nor ``lazy`` and does not start with ``_`` (for
mmpretrain, the family's own configs before its ``benchmarks/`` and
``deploy/`` subfolders); then ``--limit`` keeps the first N.

The workers run with ``sys.executable``, the mmext_init of this sweep first
on ``PYTHONPATH``, ``TORCH_HOME`` in the config's folder and the network
closed (:func:`~mmext_init.tools.zoo.files.worker_env`).

Example:
    >>> select_configs([('mmdet', 'a/x.py', 'a'), ('mmdet', 'a/y.py', 'a')])
    [('mmdet', 'a/x.py', 'a')]
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from mmext_init.tools.zoo.files import worker_env
from mmext_init.tools.zoo.report import outcome
from mmext_init.tools.zoo.stock import STOCK_BOOT, ZOO_PACKAGE
from mmext_init.tools.zoo.verdicts import DEFER_ENV

EXCLUDED_NAME_PARTS = ('_tta', 'lazy')
SHALLOW_FIRST = ('mmpretrain',)  # a family's own configs before benchmarks/
# the folder holding the mmext_init package this sweep runs
SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.dirname(os.path.abspath(__file__)))))
Config = Tuple[str, str, str]  # (package, path relative to configs, family)


def list_configs(roots: Dict[str, str]) -> List[Config]:
    """Every config below each package's ``configs`` root, sorted; files in
    ``_base_`` folders and directly in the root are left out."""
    found = []
    for package, root in sorted(roots.items()):
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d != '_base_']
            for name in files:
                rel = os.path.relpath(os.path.join(folder, name), root)
                parts = rel.split(os.sep)
                if name.endswith('.py') and len(parts) > 1:
                    found.append((package, '/'.join(parts), parts[0]))
    return sorted(found)


def representative(paths: Sequence[str], shallow_first: bool = False) -> str:
    """First of the sorted ``paths`` whose file name has no ``_tta``/``lazy``
    and does not start with ``_`` (else the first); with ``shallow_first``, the configs directly in the
    family folder come before those in its subfolders (mmpretrain's
    ``benchmarks/``, ``deploy/``).

    Example:
        >>> representative(['a/x_tta.py', 'a/y.py'])
        'a/y.py'
        >>> representative(['a/benchmarks/b.py', 'a/m.py'], shallow_first=True)
        'a/m.py'
    """
    ordered = sorted(paths, key=lambda p: (shallow_first and p.count('/'), p))
    for path in ordered:
        name = os.path.basename(path)
        if not name.startswith('_') and not any(
                p in name for p in EXCLUDED_NAME_PARTS):
            return path
    return ordered[0]


def select_configs(configs: List[Config], only: Optional[str] = None,
                   limit: Optional[int] = None,
                   every: bool = False) -> List[Config]:
    """Apply ``--only``, one per family (unless ``every``), ``--limit``."""
    if only:
        rx = re.compile(only)
        configs = [c for c in configs
                   if rx.search(c[1]) or rx.search(f'{c[0]}:{c[1]}')]
    if not every:
        families: Dict[Tuple[str, str], List[str]] = {}
        for package, rel, family in configs:
            families.setdefault((package, family), []).append(rel)
        chosen = {(p, representative(paths, p in SHALLOW_FIRST))
                  for (p, _), paths in families.items()}
        configs = [c for c in configs if (c[0], c[1]) in chosen]
    configs = sorted(configs)
    return configs[:limit] if limit is not None else configs


def worker_command(mode: str, package: str, path: str,
                   out: str) -> List[str]:
    """The command of one worker process: the stock one through
    :data:`~mmext_init.tools.zoo.stock.STOCK_BOOT` (mmext_init's
    ``__init__`` never runs), the plugin one as ``-m``.

    Example:
        >>> worker_command('plugin', 'mmdet', 'x.py', '/o')[1:3]
        ['-m', 'mmext_init.tools.zoo.checks']
    """
    if mode == 'stock':
        return [sys.executable, '-c', STOCK_BOOT, package, path, out]
    return [sys.executable, '-m', f'{ZOO_PACKAGE}.checks', package, path, out]


def run_worker(mode: str, package: str, path: str, out: str,
               timeout: float) -> Optional[str]:
    """Run one worker process; None if it wrote its JSON, else the reason."""
    env = worker_env(out)
    env.pop(DEFER_ENV, None)  # the plugin run is "as shipped"
    env['PYTHONPATH'] = os.pathsep.join(
        [SOURCE_ROOT] + [p for p in env.get('PYTHONPATH', '').split(
            os.pathsep) if p])
    with open(os.path.join(out, f'{mode}.log'), 'w') as log:
        try:
            proc = subprocess.run(
                worker_command(mode, package, path, out), cwd=out, env=env,
                stdout=log, stderr=subprocess.STDOUT, timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            return f'{mode} run timed out after {timeout:.0f} s'
    if proc.returncode == 0 and os.path.exists(os.path.join(out,
                                                            f'{mode}.json')):
        return None
    with open(os.path.join(out, f'{mode}.log')) as f:
        tail = [line for line in f.read().splitlines() if line.strip()]
    return (f'{mode} run exited with {proc.returncode}: '
            f'{tail[-1] if tail else "no output"}')[:400]


def run_config(config: Config, root: str, timeout: float = 900,
               keep: Optional[str] = None) -> Dict[str, Any]:
    """Run the stock and plugin workers on one config (``rel`` below
    ``root``); the result dict (:func:`~mmext_init.tools.zoo.report.outcome`
    gives its verdict)."""
    package, rel, family = config
    path = os.path.join(root, rel)
    result: Dict[str, Any] = dict(package=package, config=rel, family=family)
    out = tempfile.mkdtemp(prefix='zoo_', dir=keep)
    start = time.perf_counter()
    try:
        error = run_worker('stock', package, path, out, timeout)
        stock = _read(out, 'stock') if error is None else {}
        if error is None and 'skip' not in stock:
            left = timeout - (time.perf_counter() - start)
            error = run_worker('plugin', package, path, out, left)
        result.update(outcome(stock, _read(out, 'plugin'), error))
    finally:
        result['wall_seconds'] = round(time.perf_counter() - start, 1)
        if keep is None:
            shutil.rmtree(out, ignore_errors=True)
        else:
            result['kept'] = out
    return result


def _read(out: str, mode: str) -> Dict[str, Any]:
    path = os.path.join(out, f'{mode}.json')
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


