"""Sweep the configs shipped with the installed mmdet and mmseg, built as
shipped, through mmext_init's checks (README, "Zoo sweep").

Usage::

    python tools/zoo_sweep.py [--only REGEX] [--limit N] [--all] [-j 2]
        [--timeout 900] [--json PATH] [--packages mmdet mmseg] [--keep DIR]

Selection: every ``*.py`` below ``<package>/.mim/configs`` except ``_base_``
folders; the *family* is the first folder under ``configs/``. ``--only``
keeps the configs where REGEX is found (``re.search``) in the path relative
to ``configs`` or in ``<package>:<that path>``; then, unless ``--all``, one
config per family: the first in sorted order whose file name contains
neither ``_tta`` nor ``lazy`` (else the first); then ``--limit`` keeps the
first N (sorted by package and path).

Each config runs in two fresh processes (``tools/zoo_checks.py``), stock
(never imports mmext_init) then the plugin, with ``TORCH_HOME`` in the
config's temporary folder and proxies on a closed port (nothing is
downloaded). ``Pretrained`` entries, ``pretrained=`` keys and
``convert_weights`` flags are kept; each checkpoint name gets a generated
file at ``$TORCH_HOME/hub/checkpoints/<basename>`` in the layout stock's
loading code takes (``tools/zoo_files.py``). Checks (``tools/zoo_verdicts.py``):
``shipped`` (the tensors stock loads from those files bit-identical in the
plugin's builds and credited to the file by the ledger), ``deferral``
(deferred vs not: bit-identical, but for the random stream of tensors no
file provides), ``vs_stock`` (deferral off vs stock: every difference
explained by the ledger), ``model_pretrained`` and ``backbone_pretrained``
(from stock's state dict), and timings (CPU and wall time of build +
``init_weights``, plugin/stock). A config whose stock build fails is SKIP
with the reason; ``--timeout`` is the budget of one config (both
processes). Exit status 1 if any FAIL.
"""
import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from zoo_files import worker_env  # noqa: E402
from zoo_models import PACKAGES, configs_root  # noqa: E402
from zoo_verdicts import DEFER_ENV  # noqa: E402

WORKER = os.path.join(HERE, 'zoo_checks.py')
CHECKS = ('shipped', 'deferral', 'vs_stock', 'model_pretrained',
          'backbone_pretrained')
EXCLUDED_NAME_PARTS = ('_tta', 'lazy')
RATIOS = {'ratio_cpu': 'as shipped, CPU time',
          'ratio_wall': 'as shipped, wall time',
          'ratio_pretrained_cpu': 'model-level Pretrained, CPU time',
          'ratio_pretrained_wall': 'model-level Pretrained, wall time'}
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


def representative(paths: Sequence[str]) -> str:
    """First of the sorted ``paths`` whose file name has no ``_tta``/``lazy``
    (else the first).

    Example:
        >>> representative(['a/x_tta.py', 'a/y.py'])
        'a/y.py'
    """
    ordered = sorted(paths)
    for path in ordered:
        if not any(p in os.path.basename(path) for p in EXCLUDED_NAME_PARTS):
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
        chosen = {(p, representative(paths))
                  for (p, _), paths in families.items()}
        configs = [c for c in configs if (c[0], c[1]) in chosen]
    configs = sorted(configs)
    return configs[:limit] if limit is not None else configs


def _run_worker(mode: str, package: str, path: str, out: str,
                timeout: float) -> Optional[str]:
    """Run one worker process; None if it wrote its JSON, else the reason."""
    env = worker_env(out)
    env.pop(DEFER_ENV, None)  # the plugin run is "as shipped"
    with open(os.path.join(out, f'{mode}.log'), 'w') as log:
        try:
            proc = subprocess.run(
                [sys.executable, WORKER, mode, package, path, out], cwd=out,
                env=env, stdout=log, stderr=subprocess.STDOUT,
                timeout=max(timeout, 1))
        except subprocess.TimeoutExpired:
            return f'{mode} run timed out after {timeout:.0f} s'
    if proc.returncode == 0 and os.path.exists(os.path.join(out,
                                                            f'{mode}.json')):
        return None
    with open(os.path.join(out, f'{mode}.log')) as f:
        tail = [line for line in f.read().splitlines() if line.strip()]
    return (f'{mode} run exited with {proc.returncode}: '
            f'{tail[-1] if tail else "no output"}')[:400]


def run_config(config: Config, timeout: float = 900,
               keep: Optional[str] = None) -> Dict[str, Any]:
    """Run the stock and plugin workers on one config; the result dict."""
    package, rel, family = config
    path = os.path.join(configs_root(package), rel)
    result: Dict[str, Any] = dict(package=package, config=rel, family=family)
    out = tempfile.mkdtemp(prefix='zoo_', dir=keep)
    start = time.perf_counter()
    try:
        error = _run_worker('stock', package, path, out, timeout)
        stock = _read(out, 'stock') if error is None else {}
        if error is None and 'skip' not in stock:
            left = timeout - (time.perf_counter() - start)
            error = _run_worker('plugin', package, path, out, left)
        result.update(_verdict(stock, _read(out, 'plugin'), error))
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


def _verdict(stock: Dict[str, Any], plugin: Dict[str, Any],
             error: Optional[str]) -> Dict[str, Any]:
    """PASS / FAIL / SKIP with checks and timings."""
    if 'skip' in stock:
        return dict(status='SKIP', reason=stock['skip'])
    checks = plugin.get('checks', {})
    if stock.get('mmext_init_imported'):
        error = 'the stock run imported mmext_init'
    failed = [k for k, v in checks.items() if v['status'] == 'fail']
    status = 'FAIL' if error or failed or not checks else 'PASS'
    timings = dict(stock=stock.get('seconds'), plugin=plugin.get('seconds'),
                   stock_pretrained=stock.get('pretrained_seconds'),
                   plugin_pretrained=plugin.get('pretrained_seconds'))
    ratios = {f'{prefix}{clock}': _ratio(timings[f'plugin{suffix}'],
                                         timings[f'stock{suffix}'], clock)
              for prefix, suffix in (('ratio_', ''),
                                     ('ratio_pretrained_', '_pretrained'))
              for clock in ('wall', 'cpu')}
    return dict(status=status, error=error, checks=checks, timings=timings,
                **ratios, forward=stock.get('forward'),
                shipped=stock.get('shipped', {}).get('records', []),
                stock_pretrained_error=stock.get('pretrained_error'))


def _ratio(plugin: Optional[Dict[str, float]],
           stock: Optional[Dict[str, float]], clock: str) -> Optional[float]:
    if not plugin or not stock or not stock[clock]:
        return None
    return round(plugin[clock] / stock[clock], 3)


def format_line(result: Dict[str, Any]) -> str:
    """One line per config."""
    name = f"{result['package']}:{result['config']}"
    if result['status'] == 'SKIP':
        return f"SKIP  {name}  {result['reason']}"
    parts = [] if not result.get('error') else [result['error']]
    for check in CHECKS + tuple(c for c in result['checks']
                                if c not in CHECKS):  # e.g. 'build'
        info = result['checks'].get(check)
        if info is None:
            continue
        text = info['detail'] if info['status'] == 'fail' else \
            info['status'] if check not in ('vs_stock', 'shipped') \
            else info['detail']
        parts.append(f'{check}: {text}')
    t, timing = result['timings'], []
    for label, suffix in (('', ''), ('Pretrained ', '_pretrained')):
        if result.get(f'ratio{suffix}_cpu'):
            timing.append(
                f"{label}stock {t['stock' + suffix]['cpu']:.2f}s plugin "
                f"{t['plugin' + suffix]['cpu']:.2f}s cpu "
                f"x{result[f'ratio{suffix}_cpu']:.2f} "
                f"(wall x{result[f'ratio{suffix}_wall']:.2f})")
    return (f"{result['status']:5s} {name}  {' | '.join(parts)}  "
            f"[{' | '.join(timing) or 'no timing'}]")


def summarize(results: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Counts, skip reasons, failures (config, check, detail), ratios."""
    by = {s: [r for r in results if r['status'] == s]
          for s in ('PASS', 'FAIL', 'SKIP')}
    failures = []
    for r in by['FAIL']:
        bad = [(k, v['detail']) for k, v in r['checks'].items()
               if v['status'] == 'fail'] or [('run', r.get('error'))]
        failures += [dict(config=f"{r['package']}:{r['config']}", check=k,
                          detail=d) for k, d in bad]
    summary: Dict[str, Any] = dict(
        total=len(results), passed=len(by['PASS']), failed=len(by['FAIL']),
        skipped=[dict(config=f"{r['package']}:{r['config']}",
                      reason=r['reason']) for r in by['SKIP']],
        failures=failures)
    for key in RATIOS:
        timed = [(r[key], f"{r['package']}:{r['config']}") for r in results
                 if r.get(key)]
        if timed:
            summary[key] = dict(median=round(statistics.median(
                v for v, _ in timed), 3), max=max(timed)[0],
                max_config=max(timed)[1], configs=len(timed))
    return summary


def format_summary(summary: Dict[str, Any], wall: float) -> str:
    """The summary block printed after the per-config lines."""
    lines = [f"{summary['total']} configs: {summary['passed']} passed, "
             f"{summary['failed']} failed, {len(summary['skipped'])} skipped "
             f'(wall {wall / 60:.1f} min)']
    lines += [f"  skipped {s['config']}: {s['reason']}"
              for s in summary['skipped']]
    lines += [f"  FAILED {f['config']} [{f['check']}]: {f['detail']}"
              for f in summary['failures']]
    for key, label in RATIOS.items():
        if key in summary:
            s = summary[key]
            lines.append(f"  build+init_weights plugin/stock, {label}: median "
                         f"x{s['median']:.3f}, max x{s['max']:.3f} "
                         f"({s['max_config']}), {s['configs']} configs")
    for key in ('ratio_cpu', 'ratio_wall'):
        if key in summary:
            met = summary[key]['median'] <= 1.05 and \
                summary[key]['max'] <= 1.5
            lines.append(f'  overhead target (median <= 1.05, none above '
                         f"1.5), {RATIOS[key]}: {'met' if met else 'NOT met'}")
    return '\n'.join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--only', help='regex on the config path')
    parser.add_argument('--limit', type=int)
    parser.add_argument('--all', action='store_true',
                        help='every config, not one per family')
    parser.add_argument('-j', '--jobs', type=int, default=2)
    parser.add_argument('--timeout', type=float, default=900,
                        help='seconds per config (both processes)')
    parser.add_argument('--json', help='write every result here')
    parser.add_argument('--packages', nargs='+', default=list(PACKAGES))
    parser.add_argument('--keep', help='keep the per-config files in DIR')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    roots = {p: configs_root(p) for p in args.packages}
    chosen = select_configs(list_configs(roots), args.only, args.limit,
                            args.all)
    print(f'{len(chosen)} configs, -j {args.jobs}', flush=True)
    lock, results = threading.Lock(), []
    start = time.perf_counter()

    if args.keep:
        os.makedirs(args.keep, exist_ok=True)

    def one(config: Config) -> None:
        try:
            result = run_config(config, args.timeout, args.keep)
        except Exception as exc:  # one config's trouble must not end the sweep
            result = dict(package=config[0], config=config[1],
                          family=config[2], status='FAIL', checks={},
                          error=f'sweep: {type(exc).__name__}: {exc}',
                          timings={})
        with lock:
            results.append(result)
            print(format_line(result), flush=True)
            if args.json:  # kept current, so a long sweep can be read early
                write_json(args.json, results, time.perf_counter() - start)

    with ThreadPoolExecutor(max(args.jobs, 1)) as pool:
        list(pool.map(one, chosen))
    wall = time.perf_counter() - start
    results.sort(key=lambda r: (r['package'], r['config']))
    summary = summarize(results)
    print(format_summary(summary, wall), flush=True)
    if args.json:
        write_json(args.json, results, wall)
    return 1 if summary['failed'] else 0


def write_json(path: str, results: List[Dict[str, Any]], wall: float) -> None:
    """``{'wall_seconds', 'summary', 'results'}`` (results sorted)."""
    ordered = sorted(results, key=lambda r: (r['package'], r['config']))
    with open(path, 'w') as f:
        json.dump(dict(wall_seconds=round(wall, 1),
                       summary=summarize(ordered), results=ordered), f,
                  indent=1)


if __name__ == '__main__':
    sys.exit(main())
