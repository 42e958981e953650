"""One measurement of the benchmark (:mod:`mmext_init.tools.bench_init`),
in a fresh process::

    python -m mmext_init.tools.bench.child --child MODE SIZE CHECKPOINT
    python -m mmext_init.tools.bench.child --write SIZE FOLDER

Running it imports mmext_init (the same imports in every mode); ``stock``,
``floor`` and ``checked`` (the floor with mmext_init's NaN/Inf check of each
tensor) run inside :func:`mmext_init.stock_mmengine` (plugin and deferred
construction off), ``plugin`` with mmext_init active. Prints one
JSON line (``--write``: the checkpoint's path).

Example:
    >>> sorted(measure('floor', 'vit-t', write_checkpoint('vit-t',
    ...     __import__('tempfile').mkdtemp())))
    ['base_mb', 'read_mb', 'rss_mb', 'seconds']
"""
import json
import resource
import sys
import time
from typing import Dict, List, Optional

import torch
from mmengine.logging import MMLogger

from mmext_init.plugin.patches import stock_mmengine
from mmext_init.tools.bench.models import (allocate, build, floor_copy,
                                           register, write_checkpoint)


def measure(mode: str, size: str, ckpt: str) -> Dict[str, float]:
    """One measurement in this (fresh) process."""
    if size == 'swin-l':  # mmdet is optional: imported for Swin only
        import mmdet.models  # noqa: F401
    MMLogger.get_current_instance()  # logger creation not timed
    register()
    base_mb = _current_rss_mb()
    read_before = _read_syscall_bytes()
    start = time.perf_counter()
    if mode in ('floor', 'checked'):
        with stock_mmengine():
            model = allocate(size)
            state = torch.load(ckpt, mmap=True,
                               weights_only=True)['state_dict']
            floor_copy(model, state, checked=mode == 'checked')
    elif mode == 'stock':
        with stock_mmengine():
            model = build(size, ckpt)
            model.init_weights()
    else:
        model = build(size, ckpt)
        model.init_weights()
    seconds = time.perf_counter() - start  # ``model`` is alive: freeing its
    # memory is not timed (in no mode)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    read_mb = (_read_syscall_bytes() - read_before) / 2**20
    return dict(seconds=seconds, rss_mb=rss_mb, base_mb=base_mb,
                read_mb=read_mb)


def _proc_number(path: str, field: str) -> int:
    """The number after ``field`` in a /proc file (0 where there is none)."""
    try:
        with open(path) as f:
            return next(int(line.split()[1]) for line in f
                        if line.startswith(field))
    except (OSError, StopIteration):
        return 0


def _read_syscall_bytes() -> int:
    """Bytes this process copied in through read() calls so far (``rchar``
    of /proc/self/io): a checkpoint read through a memory map adds ~0 (its
    bytes stay in the page cache, shared by every process mapping it),
    ``torch.load`` without a map adds the whole file, per process."""
    return _proc_number('/proc/self/io', 'rchar:')


def _current_rss_mb() -> float:
    """Resident memory now (the interpreter and its imports, before the
    timed part); peak RSS minus this is what building the model cost."""
    return _proc_number('/proc/self/status', 'VmRSS:') / 1024


def main(argv: Optional[List[str]] = None) -> int:
    """``--child MODE SIZE CHECKPOINT`` or ``--write SIZE FOLDER``."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ['--write']:
        print(write_checkpoint(argv[1], argv[2]))
    else:
        print(json.dumps(measure(*argv[1:4])))
    return 0


if __name__ == '__main__':
    sys.exit(main())
