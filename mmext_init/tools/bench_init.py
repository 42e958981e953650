"""Benchmark: config to initialized, pretrained model -- stock MMEngine vs
mmext_init vs the floor, measured side by side in one run.

Each configuration runs in its own fresh process, interleaved over repeats:

* ``stock``: inside ``mmext_init.stock_mmengine()`` (plugin and deferred
  construction off): ``MODELS.build(cfg)``, then ``init_weights()`` with
  ``Pretrained``;
* ``plugin``: the same with mmext_init active (deferred constructor init,
  memory-mapped checkpoint, initializer work on loaded tensors skipped);
* ``floor``: allocate the parameters without init (meta device, then
  ``to_empty``), read the checkpoint through a memory map, copy it in
  (inside ``stock_mmengine()`` too);
* ``checked``: the floor, each tensor checked for NaN/Inf while copied as
  mmext_init checks it: what any loader that refuses a non-finite
  checkpoint does at least (plugin/checked is what the plugin adds beyond
  that: planning, the ledger, the adapters' init, the report).

Models: ViT-style stacks of ``BaseModule`` blocks with TruncNormal/Constant
``init_cfg``s and small inserted adapters (Kaiming, zero-init up projection),
``Pretrained`` from a checkpoint without the adapters: ``vit-b`` (~86M
parameters), ``vit-l`` (~304M), ``vit-h`` (~632M); plus ``swin-l``, mmdet's
``SwinTransformer`` (Swin-L, ~197M), which loads in its own ``init_weights``.

Usage::

    mmext-bench [--sizes vit-b vit-l vit-h swin-l] [--repeats 3] [--json PATH]

(also ``python -m mmext_init.tools.bench_init`` or ``python
tools/bench_init.py`` in a checkout; each measurement runs in
``python -m mmext_init.tools.bench.child``, models in
:mod:`mmext_init.tools.bench.models`.)

(``--sizes vit-t``: a 2-block ViT, to check that the tool runs.)

Prints the median wall time of build + ``init_weights`` and the median peak
RSS (``ru_maxrss`` of the child, imports included) per configuration, and
the ratios stock/plugin, plugin/floor, plugin RSS / stock RSS and the same
for the growth of RSS over the start (peak minus the RSS after imports:
what the model and its checkpoint cost, without the ~300 MB interpreter),
and the bytes each process copied in through read() calls (``rchar``):
what every rank of a job reads again, where a memory map shares the page
cache.

Below the table, each size is checked against the targets
(``TARGETS``), each with the best value the same run allows a loader that
copies the weights into the model: stock/floor for the speed-up,
checked/floor (the NaN/Inf check's own cost) next to plugin/floor, and
(interpreter + one copy of the weights) / stock's peak for memory.

Example:
    >>> args = parse_args(['--sizes', 'vit-t', '--json', '-'])
    >>> args.sizes, args.repeats, args.json
    (['vit-t'], 3, '-')
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from typing import Any, Dict, List, Optional, Sequence

import torch

from mmext_init.tools.bench.models import SIZES

MODES = ('stock', 'plugin', 'floor', 'checked')
# the targets: stock/plugin at least, plugin/floor at most (by size: the
# larger models leave the fixed costs less room), RSS plugin/stock below
TARGETS = dict(stock_over_plugin=8.0, rss_plugin_over_stock=0.6)
FLOOR_TARGETS = {'vit-l': 1.10, 'vit-h': 1.10}
FLOOR_TARGET = 1.15  # the other sizes


def floor_target(size: str) -> float:
    """The plugin/floor target of ``size``.

    Example:
        >>> floor_target('vit-b'), floor_target('vit-h')
        (1.15, 1.1)
    """
    return FLOOR_TARGETS.get(size, FLOOR_TARGET)
CHILD = 'mmext_init.tools.bench.child'
# the folder holding the mmext_init package this benchmark runs
SOURCE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))


def _sub(*args: str) -> str:
    """Run the child module with ``args`` (the mmext_init of this run first
    on ``PYTHONPATH``); its last output line."""
    path = [SOURCE_ROOT] + [p for p in os.environ.get(
        'PYTHONPATH', '').split(os.pathsep) if p]
    env = dict(os.environ, PYTHONWARNINGS='ignore',
               PYTHONPATH=os.pathsep.join(path))
    out = subprocess.run([sys.executable, '-m', CHILD, *args], check=True,
                         capture_output=True, text=True, env=env)
    return out.stdout.strip().splitlines()[-1]


def available(size: str) -> bool:
    """Whether ``size`` can run (Swin-L needs mmdet)."""
    if size != 'swin-l':
        return True
    try:
        import mmdet  # noqa: F401
        return True
    except ImportError:
        return False


def run(sizes: List[str], repeats: int) -> Dict[str, Dict[str, Any]]:
    """Every size, ``repeats`` interleaved runs of each mode; per size the
    medians, the runs and the ratios."""
    results: Dict[str, Dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as folder:
        for size in sizes:
            ckpt = _sub('--write', size, folder)
            runs: Dict[str, List[Dict]] = {m: [] for m in MODES}
            for _ in range(repeats):  # interleaved
                for mode in MODES:
                    runs[mode].append(
                        json.loads(_sub('--child', mode, size, ckpt)))
            row: Dict[str, Any] = {
                m: dict(seconds=statistics.median(r['seconds'] for r in rs),
                        rss_mb=statistics.median(r['rss_mb'] for r in rs),
                        base_mb=statistics.median(r['base_mb'] for r in rs),
                        read_mb=statistics.median(r['read_mb'] for r in rs),
                        runs=rs)
                for m, rs in runs.items()
            }
            s, p, f, c = (row[m]['seconds'] for m in MODES)
            grown = {m: row[m]['rss_mb'] - row[m]['base_mb'] for m in MODES}
            row['checkpoint_mb'] = os.path.getsize(ckpt) / 2**20
            stock_rss = row['stock']['rss_mb']
            row['ratios'] = dict(stock_over_plugin=s / p,
                                 plugin_over_floor=p / f,
                                 plugin_over_checked=p / c,
                                 checked_over_floor=c / f,
                                 stock_over_floor=s / f,
                                 rss_plugin_over_stock=row['plugin']['rss_mb']
                                 / stock_rss,
                                 rss_limit_over_stock=(
                                     row['plugin']['base_mb'] +
                                     row['checkpoint_mb']) / stock_rss,
                                 grown_plugin_over_stock=grown['plugin'] /
                                 grown['stock'])
            results[size] = row
            os.remove(ckpt)
    return results


def machine() -> str:
    """Cores, CPU model, torch and Python versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next(line.split(':', 1)[1].strip() for line in f
                       if line.startswith('model name'))
    except (OSError, StopIteration):
        pass
    return (f'{os.cpu_count()} cores {cpu}, torch {torch.__version__}, '
            f'Python {platform.python_version()}')


def table(results: Dict[str, Dict[str, Any]]) -> str:
    """The results as a text table, one line per size."""
    lines = [f'{"model":<7}{"stock s":>9}{"plugin s":>10}{"floor s":>9}'
             f'{"checked s":>11}'
             f'{"stock/plugin":>14}{"plugin/floor":>14}{"plugin/checked":>16}'
             f'{"stock/floor":>13}{"stock MB":>10}'
             f'{"plugin MB":>11}{"floor MB":>10}{"RSS plugin/stock":>18}'
             f'{"growth plugin/stock":>21}{"read() MB stock/plugin":>24}']
    for size, r in results.items():
        s, p, f, c = (r[m]['seconds'] for m in MODES)
        rs, rp, rf = (r[m]['rss_mb'] for m in MODES[:3])
        q = r['ratios']
        lines.append(f'{size:<7}{s:>9.2f}{p:>10.2f}{f:>9.2f}{c:>11.2f}'
                     f'{q["stock_over_plugin"]:>14.2f}'
                     f'{q["plugin_over_floor"]:>14.2f}'
                     f'{q["plugin_over_checked"]:>16.2f}'
                     f'{q["stock_over_floor"]:>13.2f}{rs:>10.0f}{rp:>11.0f}'
                     f'{rf:>10.0f}{q["rss_plugin_over_stock"]:>18.2f}'
                     f'{q["grown_plugin_over_stock"]:>21.2f}'
                     f'{_pair(r["stock"]["read_mb"], r["plugin"]["read_mb"])}')
    return '\n'.join(lines)


def target_lines(results: Dict[str, Dict[str, Any]]) -> str:
    """One line per size: each target, met or not, with the best
    value a loader that copies the weights could reach in the same run."""
    floors = ', '.join(f'{size} {target:g}'
                       for size, target in FLOOR_TARGETS.items())
    lines = [f'targets: stock/plugin >= {TARGETS["stock_over_plugin"]:g}, '
             f'plugin/floor <= {FLOOR_TARGET:g} ({floors}), '
             f'RSS plugin/stock < {TARGETS["rss_plugin_over_stock"]:g}']
    for size, r in results.items():
        q = r['ratios']
        speed = q['stock_over_plugin'] >= TARGETS['stock_over_plugin']
        floor = q['plugin_over_floor'] <= floor_target(size)
        rss = q['rss_plugin_over_stock'] < TARGETS['rss_plugin_over_stock']
        lines.append(
            f'{size:<7}{_verdict(speed)} {q["stock_over_plugin"]:.2f} '
            f'(stock/floor {q["stock_over_floor"]:.2f})   {_verdict(floor)} '
            f'{q["plugin_over_floor"]:.2f} (checked/floor '
            f'{q["checked_over_floor"]:.2f})   {_verdict(rss)} '
            f'{q["rss_plugin_over_stock"]:.2f} (interpreter + weights '
            f'{q["rss_limit_over_stock"]:.2f})')
    return '\n'.join(lines)


def _verdict(met: bool) -> str:
    return 'met' if met else 'NOT met'


def _pair(a: float, b: float) -> str:
    return f'{f"{a:.0f} / {b:.0f}":>24}'


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line (every option documented in ``--help``)."""
    parser = argparse.ArgumentParser(
        prog='mmext-bench', description=__doc__.split('\n\n')[0])
    parser.add_argument('--sizes', nargs='+', choices=sorted(SIZES),
                        default=['vit-b', 'vit-l', 'vit-h', 'swin-l'],
                        help='models to time (vit-t: a 2-block ViT, to '
                        'check that the tool runs; swin-l needs mmdet)')
    parser.add_argument('--repeats', type=int, default=3,
                        help='interleaved runs of each mode (default: 3)')
    parser.add_argument('--json', metavar='PATH',
                        help="write the results as JSON to PATH ('-': "
                        'stdout, instead of the table)')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark; print the table and the targets (or JSON)."""
    args = parse_args(argv)
    sizes = [s for s in args.sizes if available(s)]
    results = run(sizes, args.repeats)
    if args.json:
        text = json.dumps(dict(machine=machine(), results=results), indent=1)
        if args.json == '-':
            print(text)
            return 0
        with open(args.json, 'w') as f:
            f.write(text + '\n')
    print(f'# {machine()}, median of {args.repeats}')
    print(table(results))
    print(target_lines(results))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
