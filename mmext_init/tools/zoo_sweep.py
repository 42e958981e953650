"""Sweep the configs shipped with the installed mmdet, mmseg and mmpretrain
(and a timm sample), built as shipped, through mmext_init's checks (``docs/guides/zoo.md``).

Usage::

    mmext-zoo-sweep [--packages mmdet mmseg mmpretrain timm] [--only REGEX]
        [--limit N] [--all] [-j 2] [--timeout 900] [--json PATH] [--keep DIR]

(also ``python -m mmext_init.tools.zoo_sweep`` or ``python
tools/zoo_sweep.py`` in a checkout). The default packages are mmdet and
mmseg; ``timm`` is a sample of timm models through mmpretrain's
``TIMMBackbone`` in generated configs
(:mod:`~mmext_init.tools.zoo.timm_sample`). Selection: see
:mod:`~mmext_init.tools.zoo.sweep`.

Each config runs in two fresh processes, stock (mmext_init's ``__init__``
never runs: :mod:`~mmext_init.tools.zoo.stock`) then the plugin
(:mod:`~mmext_init.tools.zoo.checks`), with ``TORCH_HOME`` in the config's
temporary folder and proxies on a closed port (nothing is downloaded).
``Pretrained`` entries, ``pretrained=`` keys and ``convert_weights`` flags
are kept; each checkpoint name gets a generated file at
``$TORCH_HOME/hub/checkpoints/<basename>`` in the layout stock's loading
code takes (:mod:`~mmext_init.tools.zoo.files`). Checks
(:mod:`~mmext_init.tools.zoo.verdicts`): ``shipped`` (the tensors stock
loads from those files bit-identical in the plugin's builds and credited to
the file by the ledger), ``deferral`` (deferred vs not: bit-identical, but
for the random stream of tensors no file provides), ``vs_stock`` (deferral
off vs stock: every difference explained by the ledger),
``model_pretrained`` and ``backbone_pretrained`` (from stock's state dict),
and timings (CPU and wall time of build + ``init_weights``, plugin/stock). A
config whose stock build fails is SKIP with the reason; ``--timeout`` is the
budget of one config (both processes). Exit status 1 if any FAIL.

Example:
    >>> args = parse_args(['--packages', 'mmpretrain', '--json', 'out.json'])
    >>> args.packages, args.json, args.jobs
    (['mmpretrain'], 'out.json', 2)
"""
import argparse
import os
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Dict, List, Optional, Sequence

from mmext_init.tools.zoo.models import KNOWN_PACKAGES, PACKAGES, configs_root
from mmext_init.tools.zoo.report import (format_line, format_summary,
                                         summarize, write_json)
from mmext_init.tools.zoo.sweep import (Config, list_configs, run_config,
                                        select_configs)
from mmext_init.tools.zoo.timm_sample import write_configs

PROG = 'mmext-zoo-sweep'


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The command line (every option documented in ``--help``)."""
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__.split('\n\n')[0].replace('\n', ' '))
    parser.add_argument('--packages', nargs='+', default=list(PACKAGES),
                        choices=KNOWN_PACKAGES,
                        help='packages whose shipped configs are swept; '
                        "'timm' is the generated timm sample (default: "
                        'mmdet mmseg)')
    parser.add_argument('--only', metavar='REGEX',
                        help='keep the configs whose path below configs/, '
                        'or <package>:<path>, matches REGEX (re.search)')
    parser.add_argument('--limit', type=int, metavar='N',
                        help='keep the first N selected configs')
    parser.add_argument('--all', action='store_true',
                        help='every config, not one per family')
    parser.add_argument('-j', '--jobs', type=int, default=2,
                        help='configs run side by side (default: 2)')
    parser.add_argument('--timeout', type=float, default=900,
                        help='seconds per config, both processes '
                        '(default: 900)')
    parser.add_argument('--json', metavar='PATH',
                        help='write every result and the summary to PATH '
                        '(kept current while the sweep runs)')
    parser.add_argument('--keep', metavar='DIR',
                        help="keep each config's folder (generated files, "
                        'worker logs and JSON) in DIR')
    return parser.parse_args(argv)


def config_roots(packages: Sequence[str], scratch: str) -> Dict[str, str]:
    """``{package: configs folder}``; the timm sample's configs are written
    below ``scratch``."""
    roots = {}
    for package in packages:
        if package == 'timm':
            roots[package] = os.path.join(scratch, 'timm')
            write_configs(roots[package])
        else:
            roots[package] = configs_root(package)
    return roots


def sweep(chosen: List[Config], roots: Dict[str, str],
          args: argparse.Namespace) -> List[Dict[str, Any]]:
    """Run the chosen configs, ``args.jobs`` at a time, printing one line
    each (and keeping ``args.json`` current); the results."""
    lock, results = threading.Lock(), []
    start = time.perf_counter()

    def one(config: Config) -> None:
        try:
            result = run_config(config, roots[config[0]], args.timeout,
                                args.keep)
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
    return sorted(results, key=lambda r: (r['package'], r['config']))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the sweep; exit status 1 if any config FAILs, else 0."""
    args = parse_args(argv)
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix='zoo_configs_') as scratch:
        roots = config_roots(args.packages, scratch)
        chosen = select_configs(list_configs(roots), args.only, args.limit,
                                args.all)
        print(f'{len(chosen)} configs, -j {args.jobs}', flush=True)
        start = time.perf_counter()
        results = sweep(chosen, roots, args)
        wall = time.perf_counter() - start
    summary = summarize(results)
    print(format_summary(summary, wall), flush=True)
    if args.json:
        write_json(args.json, results, wall)
    return 1 if summary['failed'] else 0


if __name__ == '__main__':
    raise SystemExit(main())
