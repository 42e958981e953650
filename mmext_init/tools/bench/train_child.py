"""One measurement of :mod:`.train` (``mmext-bench-train``), in a fresh
process: build the model of a mode (:mod:`.train_models`), then warm-up
and timed training steps (forward, ``loss = sum of mean(out ** 2)`` over
the backbone's outputs, backward, ``SGD(lr=0.01, momentum=0.9)`` step on
the trainable parameters), printing one JSON line:

* ``seconds``: the median of the timed steps;
* ``base_mb``: RSS after the imports, before the model build;
  ``peak_mb``: the peak RSS from there to the end (``VmHWM`` after
  resetting it through ``/proc/self/clear_refs``), so ``peak_mb - base_mb``
  is what the model, its adapters (PEFT computes DoRA's norms while
  injecting) and the training steps cost (activations, grads, momentum);
  ``maxrss_mb``: the process's whole peak (``ru_maxrss``);
* ``params``/``trainable``: element counts.

Every mode imports the same modules (mmdet, PEFT, mmext_init) before the
build, so the interpreter's share of the RSS is the same.

Usage (what the benchmark runs)::

    python -m mmext_init.tools.bench.train_child MODEL MODE METHOD \\
        --batch 2 --size 224 --rank 8 --alpha 16 --threads 1 \\
        --warmup 2 --steps 5

Example:
    >>> args = parse_args(['tiny', 'ours', 'lora'])
    >>> args.batch, args.size, args.threads, args.steps
    (2, 224, 1, 5)
"""
import argparse
import json
import resource
import statistics
import sys
import time
from typing import Dict, List, Optional, Sequence

import mmdet.models  # noqa: F401  (every mode pays the same imports)
import peft  # noqa: F401
import torch
import torch.nn as nn

from .train_models import MODES, TRAIN_MODELS, build


def status_mb(field: str) -> float:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS:``, ``VmHWM:``) in
    MiB.

    Raises:
        OSError: no ``/proc`` (Linux only).
    """
    with open('/proc/self/status') as f:
        return next(int(line.split()[1]) for line in f
                    if line.startswith(field)) / 1024


def reset_peak() -> None:
    """Reset the process's peak RSS (``VmHWM``) to its current RSS."""
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')


def step_seconds(model: nn.Module, x: torch.Tensor,
                 optimizer: torch.optim.Optimizer) -> float:
    """One training step; its wall time."""
    start = time.perf_counter()
    out = model(x)
    loss = sum((o * o).mean() for o in out)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def measure(args: argparse.Namespace) -> Dict[str, float]:
    """Build, warm up, time; the numbers of the module docstring."""
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    reset_peak()  # the growth counts the build (PEFT's DoRA norms) too
    base_mb = status_mb('VmRSS:')
    model = build(args.model, args.mode, args.method, args.rank, args.alpha)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.01, momentum=0.9)
    x = torch.randn(args.batch, 3, args.size, args.size)
    times: List[float] = []
    for at in range(args.warmup + args.steps):
        seconds = step_seconds(model, x, optimizer)
        if at >= args.warmup:
            times.append(seconds)
    return dict(seconds=statistics.median(times), steps=times,
                base_mb=base_mb, peak_mb=status_mb('VmHWM:'),
                maxrss_mb=resource.getrusage(
                    resource.RUSAGE_SELF).ru_maxrss / 1024,
                params=sum(p.numel() for p in model.parameters()),
                trainable=sum(p.numel() for p in trainable),
                threads=torch.get_num_threads())


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The child's command line (the benchmark passes every option)."""
    parser = argparse.ArgumentParser(
        prog='python -m mmext_init.tools.bench.train_child',
        description=__doc__.split('\n\n')[0])
    parser.add_argument('model', choices=sorted(TRAIN_MODELS),
                        help='the model to train')
    parser.add_argument('mode', choices=MODES, help='how it is adapted')
    parser.add_argument('method', choices=('lora', 'dora'),
                        help='the adapter of peft/ours')
    for flag, kind, default, text in (
            ('--batch', int, 2, 'images per step'),
            ('--size', int, 224, 'image height and width'),
            ('--rank', int, 8, 'LoRA rank'),
            ('--alpha', float, 16, 'LoRA alpha'),
            ('--threads', int, 1, "torch threads (0: torch's default)"),
            ('--warmup', int, 2, 'untimed steps first'),
            ('--steps', int, 5, 'timed steps')):
        parser.add_argument(flag, type=kind, default=default,
                            help=f'{text} (default: %(default)s)')
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Measure once; print the result as one JSON line."""
    print(json.dumps(measure(parse_args(argv))))
    return 0


if __name__ == '__main__':
    sys.exit(main())
