"""Benchmark: a LoRA training step -- stock vs PEFT's LoRA vs ours vs ours
merged, time and peak memory, measured side by side in one run.

A step is forward, backward and an SGD step (momentum 0.9) on the
trainable parameters, on a batch of random images. The modes
(:mod:`.train_models`):

* ``stock``: the backbone without LoRA, every parameter trained;
* ``peft``: PEFT's ``inject_adapter_in_model`` with ``LoraConfig(r=8,
  lora_alpha=16, target_modules=<regex>)``, only the LoRA tensors trained;
* ``ours``: the backbone config with ``insert=[dict(type='LoRA',
  targets=<the same regex>, rank=8, alpha=16)]`` through ``MODELS.build``,
  only the inserted tensors trained;
* ``merged``: ours folded into the weights (as ``mmext-merge``): a plain
  model, every parameter trained.

Models: ``swin-t`` (mmdet's ``SwinTransformer``, LoRA on every ``qkv`` and
``proj``), ``resnet50`` (mmdet's ``ResNet``, LoRA on the 3x3 ``conv2``
convs); ``tiny`` (a 2-stage Swin of width 16) checks that the tool runs.
``--methods dora``: ours ``DoRA`` against PEFT's ``use_dora=True`` (an
error if ``DoRA`` is not registered in ``INSERT_TYPES``; ``merged`` only
where the insert type is ``foldable``).

Each measurement runs in its own fresh process
(``python -m mmext_init.tools.bench.train_child``), the modes interleaved
(stock, peft, ours, merged, stock, ...), ``--warmup`` untimed steps, then
``--steps`` timed: a process gives the median of its timed steps, the
table the median over ``--repeats`` processes. Memory is the peak RSS
growth over the process's RSS after imports (``VmHWM`` reset through
``/proc/self/clear_refs`` before the model build): what the model, its
adapters and the training steps cost (activations, gradients, momentum),
without the interpreter (~850 MB with mmdet and PEFT imported, the same in every
mode); the whole peak (``ru_maxrss``) is in the JSON and the table.

Below the table, each model is checked against the targets (``TARGETS``):
ours/PEFT step time, ours/PEFT peak RSS growth, merged/stock step time.

Usage::

    mmext-bench-train [--models swin-t resnet50] [--methods lora dora]
        [--repeats 5] [--steps 5] [--warmup 2] [--batch 2] [--size 224]
        [--threads 1] [--json PATH]

(also ``python -m mmext_init.tools.bench.train`` or ``python
tools/bench_train.py`` in a checkout; Linux only: ``/proc``.)

Example:
    >>> args = build_parser().parse_args(['--models', 'tiny'])
    >>> args.models, args.methods, args.repeats, args.threads
    (['tiny'], ['lora'], 5, 1)
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

from ..bench_init import SOURCE_ROOT, machine
from ..cli import add_json, run_tool, tool_parser
from ..merge_fold import is_foldable
from .train_models import (METHODS, MODES, TRAIN_MODELS, check_method,
                           insert_entry)

CHILD = 'mmext_init.tools.bench.train_child'
# ours/PEFT time and memory at most, merged/stock time within (1 +- x)
TARGETS = dict(time_ours_over_peft=1.05, mem_ours_over_peft=1.02,
               time_merged_over_stock=0.05)
OPTIONS = ('batch', 'size', 'rank', 'alpha', 'threads', 'warmup', 'steps')


def child(model: str, mode: str, method: str,
          args: argparse.Namespace) -> Dict[str, Any]:
    """One measurement in a fresh process (this mmext_init first on
    ``PYTHONPATH``): the child's JSON line.

    Raises:
        RuntimeError: the child failed (its stderr's last lines).
    """
    path = [SOURCE_ROOT] + [p for p in os.environ.get(
        'PYTHONPATH', '').split(os.pathsep) if p]
    env = dict(os.environ, PYTHONWARNINGS='ignore',
               PYTHONPATH=os.pathsep.join(path))
    flags = [x for o in OPTIONS for x in (f'--{o}', str(getattr(args, o)))]
    out = subprocess.run([sys.executable, '-m', CHILD, model, mode, method,
                          *flags], capture_output=True, text=True, env=env)
    if out.returncode:
        tail = '\n'.join(out.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f'{CHILD} {model} {mode} {method}: {tail}')
    return json.loads(out.stdout.strip().splitlines()[-1])


def modes_of(method: str) -> Tuple[str, ...]:
    """The modes ``method`` runs: ``merged`` where its type folds."""
    foldable = is_foldable(dict(type=METHODS[method][0]))
    return MODES if foldable else MODES[:3]


def summary(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Medians over the processes of one mode, and the runs."""
    med = {k: statistics.median(r[k] for r in runs)
           for k in ('seconds', 'base_mb', 'peak_mb', 'maxrss_mb')}
    return dict(med, growth_mb=statistics.median(
        r['peak_mb'] - r['base_mb'] for r in runs),
        params=runs[0]['params'], trainable=runs[0]['trainable'], runs=runs)


def ratios(row: Dict[str, Dict[str, Any]]) -> Dict[str, float]:
    """The ratios the targets check (merged/stock where merged ran)."""
    ours, peft = row['ours'], row['peft']
    out = dict(time_ours_over_peft=ours['seconds'] / peft['seconds'],
               mem_ours_over_peft=ours['growth_mb'] / peft['growth_mb'],
               rss_ours_over_peft=ours['maxrss_mb'] / peft['maxrss_mb'])
    if 'merged' in row:
        out['time_merged_over_stock'] = (row['merged']['seconds'] /
                                         row['stock']['seconds'])
    return out


def run(args: argparse.Namespace) -> Dict[str, Dict[str, Any]]:
    """Every (model, method): ``--repeats`` interleaved rounds of its
    modes; ``{'<model> <method>': {mode: summary, 'ratios': ...}}``."""
    results: Dict[str, Dict[str, Any]] = {}
    for model in args.models:
        for method in args.methods:
            modes = modes_of(method)
            runs: Dict[str, List[Dict]] = {m: [] for m in modes}
            for _ in range(args.repeats):  # interleaved
                for mode in modes:
                    runs[mode].append(child(model, mode, method, args))
            row: Dict[str, Any] = {m: summary(r) for m, r in runs.items()}
            row['ratios'] = ratios(row)
            row['insert'] = insert_entry(model, method, args.rank, args.alpha)
            results[f'{model} {method}'] = row
    return results


def table(results: Dict[str, Dict[str, Any]]) -> str:
    """One line per (model, method, mode)."""
    lines = [f'{"model":<16}{"mode":<8}{"step s":>8}{"growth MB":>11}'
             f'{"peak RSS MB":>13}{"params":>12}{"trainable":>11}']
    for name, row in results.items():
        for mode in MODES:
            if mode in row:
                r = row[mode]
                lines.append(
                    f'{name:<16}{mode:<8}{r["seconds"]:>8.3f}'
                    f'{r["growth_mb"]:>11.0f}{r["maxrss_mb"]:>13.0f}'
                    f'{r["params"]:>12,}{r["trainable"]:>11,}')
    return '\n'.join(lines)


def target_lines(results: Dict[str, Dict[str, Any]]) -> str:
    """Per (model, method): each ratio and its target, met or NOT met."""
    t = TARGETS
    lines = [f'targets: ours/PEFT step time <= {t["time_ours_over_peft"]:g}'
             f', ours/PEFT peak RSS growth <= {t["mem_ours_over_peft"]:g}, '
             f'merged/stock step time 1 +- {t["time_merged_over_stock"]:g}']
    for name, row in results.items():
        q = row['ratios']
        time_ok = q['time_ours_over_peft'] <= t['time_ours_over_peft']
        mem_ok = q['mem_ours_over_peft'] <= t['mem_ours_over_peft']
        text = (f'{name:<16}time ours/PEFT {q["time_ours_over_peft"]:.3f} '
                f'{verdict(time_ok)}   memory ours/PEFT '
                f'{q["mem_ours_over_peft"]:.3f} {verdict(mem_ok)} (whole '
                f'peak {q["rss_ours_over_peft"]:.3f})')
        if 'time_merged_over_stock' in q:
            merged = q['time_merged_over_stock']
            ok = abs(merged - 1) <= t['time_merged_over_stock']
            text += f'   time merged/stock {merged:.3f} {verdict(ok)}'
        else:
            text += '   merged: not run (the insert type does not fold)'
        lines.append(text)
    return '\n'.join(lines)


def verdict(met: bool) -> str:
    """``met`` or ``NOT met``."""
    return 'met' if met else 'NOT met'


def count(least: int) -> Callable[[str], int]:
    """An argparse type: an int >= ``least``.

    Example:
        >>> count(1)('3')
        3
        >>> count(1)('0')
        Traceback (most recent call last):
        argparse.ArgumentTypeError: 0 is not an integer >= 1
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = least - 1
        if value < least:
            raise argparse.ArgumentTypeError(
                f'{text} is not an integer >= {least}')
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    """The command line (every option documented in ``--help``)."""
    parser = tool_parser('mmext-bench-train', __doc__)
    parser.add_argument('--models', nargs='+', choices=sorted(TRAIN_MODELS),
                        default=['swin-t', 'resnet50'],
                        help='models to train (default: %(default)s; tiny: '
                        'a 2-stage Swin, to check that the tool runs)')
    parser.add_argument('--methods', nargs='+', choices=sorted(METHODS),
                        default=['lora'], help='adapters to compare '
                        '(default: %(default)s; dora: ours DoRA against '
                        "PEFT's use_dora=True)")
    for flag, kind, default, text in (
            ('--repeats', count(1), 5, 'fresh processes per mode, '
             'interleaved'),
            ('--steps', count(1), 5, 'timed steps per process'),
            ('--warmup', count(0), 2, 'untimed steps per process first'),
            ('--batch', count(1), 2, 'images per step'),
            ('--size', count(32), 224, 'image height and width'),
            ('--rank', count(1), 8, 'LoRA rank (ours and PEFT)'),
            ('--alpha', float, 16, 'LoRA alpha (ours and PEFT)'),
            ('--threads', count(0), 1, "torch threads per process (0: "
             "torch's default, one per core)")):
        parser.add_argument(flag, type=kind, default=default,
                            help=f'{text} (default: %(default)s)')
    add_json(parser)
    return parser


def header(args: argparse.Namespace) -> str:
    """The run's setting: machine, torch, threads, batch, rank."""
    threads = args.threads or torch.get_num_threads()
    return (f'# {machine()}, {threads} torch thread(s) per process, batch '
            f'{args.batch} x 3 x {args.size} x {args.size}, rank '
            f'{args.rank} alpha {args.alpha:g}, {args.warmup} warm-up + '
            f'{args.steps} timed steps, median of {args.repeats} processes')


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the benchmark; print the table and the targets (and JSON)."""

    def body(args: argparse.Namespace) -> Tuple[int, Dict[str, Any]]:
        for method in args.methods:
            check_method(method)
        print(header(args))
        results = run(args)
        print(table(results))
        print(target_lines(results))
        return 0, dict(machine=machine(), setting=header(args)[2:],
                       targets=TARGETS, results=results)

    return run_tool(build_parser(), argv, body)


if __name__ == '__main__':
    sys.exit(main())
