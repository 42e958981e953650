"""Draw order of deferred constructor init (see :mod:`mmext_init.deferred`):
every random op recorded during a build draws, in record order, before
anything drawn after it, unless the checkpoint provides its tensor.

Two kinds of pending records are not reached through the model's tensors,
yet drew at construction without deferral:

* *ghosts*: records of parameters that died pending (mmdet's
  ``RetinaSepBNHead`` replaces the convs of levels 1.. by those of level 0;
  a module built and thrown away). :func:`haunt` keeps their random ops
  under a negative key of ``ENGINE.pending``; replayed, they draw into a
  scratch tensor. Ghosts that no live record on their generator follows any
  more are drawn at once (see :func:`lone_ghosts`).
* records of parameters the model does not hold as parameters (a module in a
  plain list): :func:`build_mates` names them, so that the init session
  replays them with the model's own.

Replays draw from each generator's *cursor*, its state before the first
pending draw (:func:`rewind_cursors`, :func:`resume_cursors`).

Example:
    >>> import torch.nn as nn
    >>> from mmext_init.deferred import deferred_construction, materialize
    >>> with deferred_construction():
    ...     fc = nn.Linear(2, 2)
    >>> len(build_mates([id(fc.weight)]))    # its build drew for both
    2
    >>> materialize(fc)
"""
from typing import Any, Dict, Iterable, List, Set, Tuple

import torch

from .state import ENGINE, Op

__all__ = ['is_ghost', 'random_ops', 'haunt', 'uncount', 'unsequence',
           'lone_ghosts', 'build_mates', 'closure', 'scratch_like',
           'rewind_cursors', 'resume_cursors']


def is_ghost(pid: int) -> bool:
    """Whether ``pid`` keys the record of a parameter that died pending.

    Example:
        >>> is_ghost(-1), is_ghost(id(object()))
        (True, False)
    """
    return pid < 0


def random_ops(entry: Any) -> bool:
    """Whether ``entry`` holds ops that draw random numbers."""
    return any(op.gen is not None for op in entry.ops)


def haunt(pid: int) -> None:
    """Keep the random ops of the dead pending parameter ``pid`` due: they
    still draw (into a scratch tensor) where they were recorded."""
    entry = ENGINE.pending.pop(pid)
    if ENGINE.by_storage.get(entry.ptr) == pid:
        del ENGINE.by_storage[entry.ptr]
    entry.ops = [op for op in entry.ops if op.gen is not None]
    entry.aliases = []
    for op in entry.ops:  # still counted in ENGINE.random
        ENGINE.ghosts[op.gen] = ENGINE.ghosts.get(op.gen, 0) + 1
    ENGINE.pending[next(ENGINE.ghost_keys)] = entry


def uncount(pid: int, entry: Any) -> None:
    """Take ``entry``'s random ops out of the pending counts."""
    for op in entry.ops:
        if op.gen is not None:
            ENGINE.random[op.gen] -= 1
            if is_ghost(pid):
                ENGINE.ghosts[op.gen] -= 1


def unsequence(pid: int) -> None:
    """Take a pending entry's random ops out of the draw sequence: replayed,
    they draw from the generator as it is then (and replaying the others no
    longer needs them)."""
    entry = ENGINE.pending[pid]
    for op in entry.ops:
        if op.gen is not None:
            ENGINE.random[op.gen] -= 1
    entry.ops = [op._replace(gen=None) for op in entry.ops]


def lone_ghosts() -> List[int]:
    """Ghosts on generators where only ghosts are pending: nothing recorded
    after them is left to draw first, so they can draw now."""
    keys = {key for key, count in ENGINE.ghosts.items()
            if count and ENGINE.random.get(key) == count}
    if not keys:
        return []
    return [pid for pid, entry in ENGINE.pending.items() if is_ghost(pid)
            and any(op.gen in keys for op in entry.ops)]


def build_mates(pids: Iterable[int]) -> List[int]:
    """Pending records with random ops from the builds that made ``pids``,
    the dead (ghosts) and the unregistered ones included: without deferral
    they drew during that build, before anything after it."""
    pending = ENGINE.pending
    builds: Set[int] = {pending[pid].build for pid in pids if pid in pending}
    if not builds:
        return []
    return [pid for pid, entry in pending.items()
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
        added = [pid for pid, entry in ENGINE.pending.items()
                 if pid not in todo
                 and any(op.seq < last.get(op.gen, -1) for op in entry.ops)]
        if not added:
            return
        todo.update((pid, ENGINE.pending[pid]) for pid in added)


def scratch_like(like: Tuple[torch.Size, torch.dtype, torch.device],
                 cache: Dict[Any, torch.Tensor]) -> torch.Tensor:
    """A tensor to draw into whose values nobody reads (one per shape, dtype
    and device in ``cache``): recorded ops write the whole tensor and read
    nothing else, so they draw the same numbers into any of them.

    Example:
        >>> import torch
        >>> cache = {}
        >>> like = (torch.Size([2]), torch.float32, torch.device('cpu'))
        >>> scratch_like(like, cache) is scratch_like(like, cache)
        True
    """
    if like not in cache:
        cache[like] = torch.empty(like[0], dtype=like[1], device=like[2])
    return cache[like]


def rewind_cursors(ops: List[Tuple[Op, torch.Tensor]]) -> Dict[Any,
                                                                torch.Tensor]:
    """Set each generator that ``ops`` draw from to its cursor; return their
    states before that, for :func:`resume_cursors`."""
    cursors = ENGINE.cursors
    saved = {key: cursors[key][0].get_state()
             for key in {op.gen for op, _ in ops if op.gen in cursors}}
    for key in saved:
        cursors[key][0].set_state(cursors[key][1])
    return saved


def resume_cursors(saved: Dict[Any, torch.Tensor]) -> None:
    """After a replay from :func:`rewind_cursors`: the cursor moves to where
    the replay left the generator (dropped if no draw is pending); a
    generator that drew nothing since its cursor goes on from there too,
    the others get their ``saved`` state back."""
    for key in saved:
        gen, cursor = ENGINE.cursors.pop(key)
        after = gen.get_state()
        if ENGINE.random.get(key):
            ENGINE.cursors[key] = (gen, after)
        if not torch.equal(saved[key], cursor):
            gen.set_state(saved[key])
