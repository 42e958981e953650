"""Draw order of deferred constructor init (see :mod:`.deferred`): every
random op recorded during a build draws, in record order, before anything
drawn after it, unless the checkpoint provides its tensor.

Two kinds of pending records are not reached through the model's tensors,
yet drew at construction without deferral (issue 13):

* *ghosts*: records of parameters that died pending (mmdet's
  ``RetinaSepBNHead`` replaces the convs of levels 1.. by those of level 0;
  a module built and thrown away). :func:`haunt` keeps their random ops
  under a negative key of ``_PENDING``; replayed, they draw into a scratch
  tensor. Ghosts that no live record on their generator follows any more
  are drawn at once (see :func:`lone_ghosts`).
* records of parameters the model does not hold as parameters (a module in a
  plain list): :func:`build_mates` names them, so that the init session
  replays them with the model's own.

Example:
    >>> closure(todo)             # adds what must draw before ``todo``
    >>> haunt(pid)                # its parameter died, its draws stay due
"""
import itertools
from typing import Any, Dict, Iterable, List, Set, Tuple

import torch

from .state import _BY_STORAGE, _GHOSTS, _PENDING, _RANDOM

_GHOST_KEYS = itertools.count(-1, -1)  # never an id(): ids are positive


def is_ghost(pid: int) -> bool:
    """Whether ``pid`` keys the record of a parameter that died pending."""
    return pid < 0


def random_ops(entry: Any) -> bool:
    """Whether ``entry`` holds ops that draw random numbers."""
    return any(op.gen is not None for op in entry.ops)


def haunt(pid: int) -> None:
    """Keep the random ops of the dead pending parameter ``pid`` due: they
    still draw (into a scratch tensor) where they were recorded."""
    entry = _PENDING.pop(pid)
    if _BY_STORAGE.get(entry.ptr) == pid:
        del _BY_STORAGE[entry.ptr]
    entry.ops = [op for op in entry.ops if op.gen is not None]
    entry.aliases = []
    for op in entry.ops:  # still counted in _RANDOM
        _GHOSTS[op.gen] = _GHOSTS.get(op.gen, 0) + 1
    _PENDING[next(_GHOST_KEYS)] = entry


def uncount(pid: int, entry: Any) -> None:
    """Take ``entry``'s random ops out of the pending counts."""
    for op in entry.ops:
        if op.gen is not None:
            _RANDOM[op.gen] -= 1
            if is_ghost(pid):
                _GHOSTS[op.gen] -= 1


def lone_ghosts() -> List[int]:
    """Ghosts on generators where only ghosts are pending: nothing recorded
    after them is left to draw first, so they can draw now."""
    keys = {key for key, count in _GHOSTS.items()
            if count and _RANDOM.get(key) == count}
    if not keys:
        return []
    return [pid for pid, entry in _PENDING.items() if is_ghost(pid)
            and any(op.gen in keys for op in entry.ops)]


def build_mates(pids: Iterable[int]) -> List[int]:
    """Pending records with random ops from the builds that made ``pids``,
    the dead (ghosts) and the unregistered ones included: without deferral
    they drew during that build, before anything after it."""
    builds: Set[int] = {_PENDING[pid].build for pid in pids if pid in _PENDING}
    if not builds:
        return []
    return [pid for pid, entry in _PENDING.items()
            if entry.build in builds and random_ops(entry)]


def closure(todo: Dict[int, Any]) -> None:
    """Add the entries whose random ops precede, on the same generator, a
    random op of ``todo``: a replay always covers a prefix of the draws."""
    while True:
        last: Dict[Any, int] = {}
        for entry in todo.values():
            for op in entry.ops:
                if op.gen is not None:
                    last[op.gen] = max(last.get(op.gen, -1), op.seq)
        added = [pid for pid, entry in _PENDING.items() if pid not in todo
                 and any(op.seq < last.get(op.gen, -1) for op in entry.ops)]
        if not added:
            return
        todo.update((pid, _PENDING[pid]) for pid in added)


def scratch_like(like: Tuple[torch.Size, torch.dtype, torch.device],
            cache: Dict[Any, torch.Tensor]) -> torch.Tensor:
    """A tensor to draw into whose values nobody reads (one per shape, dtype
    and device in ``cache``): recorded ops write the whole tensor and read
    nothing else, so they draw the same numbers into any of them."""
    if like not in cache:
        cache[like] = torch.empty(like[0], dtype=like[1], device=like[2])
    return cache[like]
