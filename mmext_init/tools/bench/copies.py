"""Benchmark: ways to copy a memory-mapped checkpoint into fresh parameters.

What the floor of :mod:`mmext_init.tools.bench_init` spends its time on, and whether a
loader that copies could do better. Each variant runs in its own fresh
process (interleaved over repeats) on a checkpoint of ViT-shaped tensors:

* ``plain``: ``dst.copy_(src)`` into untouched memory (the floor's copy);
* ``premapped``: the same after the kernel mapped the destination
  (``MADV_POPULATE_WRITE``, not timed): the copy alone, without first-touch
  page faults;
* ``premapped+fault``: the same with the populate call timed;
* ``hugepages``: destination advised ``MADV_HUGEPAGE`` before the copy;
* ``populate-src``: the file's pages mapped first (``MADV_POPULATE_READ``,
  timed), then copied;
* ``check``: the copy, then a NaN/Inf check of each tensor (as mmext_init);
* ``check-chunked``: copy and check 1 MiB at a time, the check reading
  what the copy left in cache.

Usage::

    python -m mmext_init.tools.bench.copies [--dim 768 --depth 12]
        [--repeats 5] [--json PATH]

(``python tools/bench_copy.py`` in a checkout.)

Prints the median seconds of each variant and its ratio to ``plain``.
Linux only (``madvise``).

Example:
    >>> len(shapes(8, 2)), shapes(8, 2)[4]
    (24, (24, 8))
"""
import argparse
import ctypes
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence

import torch


VARIANTS = ('plain', 'premapped', 'premapped+fault', 'hugepages',
            'populate-src', 'check', 'check-chunked')
_ADVICE = dict(hugepage=14, populate_read=22, populate_write=23)
_CHUNK = 1 << 18  # elements (1 MiB of float32)


@functools.lru_cache(maxsize=None)
def libc_madvise() -> Any:
    """libc's ``madvise(addr, length, advice)`` (errno kept)."""
    function = ctypes.CDLL(None, use_errno=True).madvise
    function.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    function.restype = ctypes.c_int
    return function


def shapes(dim: int, depth: int) -> List[tuple]:
    """Tensor shapes of a ViT-style stack of ``depth`` blocks."""
    block = [(dim, ), (dim, ), (dim, ), (dim, ), (3 * dim, dim), (3 * dim, ),
             (dim, dim), (dim, ), (4 * dim, dim), (4 * dim, ), (dim, 4 * dim),
             (dim, )]
    return block * depth


def _advise(t: torch.Tensor, advice: str) -> None:
    """``madvise`` the whole pages of ``t``'s memory (errors are raised)."""
    page = os.sysconf('SC_PAGE_SIZE')
    start = t.data_ptr()
    lo = -(-start // page) * page
    hi = (start + t.numel() * t.element_size()) // page * page
    if hi > lo and libc_madvise()(lo, hi - lo, _ADVICE[advice]) != 0:
        raise OSError(ctypes.get_errno(), f'madvise {advice}')


def _finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t.sum()))


def child(variant: str, path: str) -> float:
    """Seconds the timed part of ``variant`` took in this fresh process."""
    state = torch.load(path, mmap=True, weights_only=True)
    src = [state[k] for k in sorted(state, key=int)]
    dst = [torch.empty_like(s) for s in src]
    libc_madvise()  # looked up before the clock starts
    if variant == 'premapped':
        for d in dst:
            _advise(d, 'populate_write')
    start = time.perf_counter()
    for s, d in zip(src, dst):
        if variant == 'premapped+fault':
            _advise(d, 'populate_write')
        elif variant == 'hugepages':
            _advise(d, 'hugepage')
        elif variant == 'populate-src':
            _advise(s, 'populate_read')
        if variant == 'check-chunked':
            flat_d, flat_s = d.view(-1), s.view(-1)
            for at in range(0, flat_d.numel(), _CHUNK):
                piece = flat_d[at:at + _CHUNK]
                piece.copy_(flat_s[at:at + _CHUNK])
                if not _finite(piece):
                    raise ValueError('not finite')
            continue
        d.copy_(s)
        if variant == 'check' and not _finite(d):
            raise ValueError('not finite')
    return time.perf_counter() - start


def run(dim: int, depth: int, repeats: int) -> Dict[str, List[float]]:
    """Seconds of every variant, ``repeats`` interleaved fresh runs."""
    times: Dict[str, List[float]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, 'weights.pth')
        torch.save({str(i): torch.randn(s)
                    for i, s in enumerate(shapes(dim, depth))}, path)
        for _ in range(repeats):  # interleaved
            for variant in VARIANTS:
                out = subprocess.run(
                    [sys.executable, '-m', 'mmext_init.tools.bench.copies',
                     '--child', variant, path],
                    check=True, capture_output=True, text=True)
                times[variant].append(float(out.stdout.split()[-1]))
    return times


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the copy benchmark; print the medians (or JSON)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == '--child':
        print(child(argv[1], argv[2]))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--dim', type=int, default=768,
                        help='width of the ViT-shaped tensors (default: 768)')
    parser.add_argument('--depth', type=int, default=12,
                        help='number of blocks (default: 12)')
    parser.add_argument('--repeats', type=int, default=5,
                        help='interleaved runs of each variant (default: 5)')
    parser.add_argument('--json', metavar='PATH',
                        help="write the medians and runs as JSON to PATH "
                        "('-': stdout, instead of the table)")
    args = parser.parse_args(argv)
    times = run(args.dim, args.depth, args.repeats)
    medians = {v: statistics.median(t) for v, t in times.items()}
    if args.json:
        text = json.dumps(dict(medians=medians, runs=times), indent=1)
        if args.json == '-':
            print(text)
            return 0
        with open(args.json, 'w') as f:
            f.write(text + '\n')
    numel = sum(torch.Size(s).numel() for s in shapes(args.dim, args.depth))
    mb = numel * 4 / 2**20  # float32
    print(f'# {mb:.0f} MB in {12 * args.depth} tensors, median of '
          f'{args.repeats}, each variant in a fresh process')
    print(f'{"variant":<17}{"seconds":>9}{"/ plain":>9}')
    for v in VARIANTS:
        ratio = medians[v] / medians['plain']
        print(f'{v:<17}{medians[v]:>9.3f}{ratio:>9.2f}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
