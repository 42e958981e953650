"""Recording an op instead of running it (see :mod:`mmext_init.deferred`),
and the pending stand-ins the guards hand out: aliases of pending parameters
(:func:`alias`) and pending copies (:func:`copy_pending`).

Example:
    >>> import torch, torch.nn as nn
    >>> from mmext_init.deferred import deferred_construction, materialize
    >>> with deferred_construction():
    ...     fc = nn.Linear(2, 2)
    >>> [op.func.__name__ for op in ENGINE.pending[id(fc.bias)].ops]
    ['uniform_.default']
    >>> materialize(fc)
"""
import weakref
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn as nn

from .ops import OpInfo, arg, generator_of, leaves, storage_ptr
from .replay import (Entry, PendingAlias, PendingParameter, mark,
                     materialize_ids, sync_hooks)
from .state import ENGINE, Op, pid_at

__all__ = ['try_defer', 'alias', 'copy_pending']


def _registrable(t: torch.Tensor) -> bool:
    return (type(t) in (nn.Parameter, PendingParameter)  # not subclasses
            and t.layout == torch.strided and t.device.type != 'meta'
            and t.numel() > 0 and t.storage_offset() == 0
            and t.untyped_storage().nbytes() == t.numel() * t.element_size())


def try_defer(func: Any, info: OpInfo, args: Tuple, kwargs: Dict) -> bool:
    """Record ``func`` instead of running it if it writes a whole parameter
    and reads no other tensor; return whether it did (one function: it runs
    for every deferrable op of a build)."""
    target = arg(args, kwargs, info.write)
    if not isinstance(target, torch.Tensor) or sum(
            1 for _ in leaves(args, kwargs)) != 1:
        return False
    key, gen = None, None
    if info.seeded:  # one generator lookup for the order check and the record
        key, gen = generator_of(info, args, kwargs, target.device)
        _keep_draw_order(key, gen)
    ptr = storage_ptr(target)
    pid = pid_at(ptr)
    if pid is None:
        if ptr is None or not _registrable(target):
            return False
        pid, ENGINE.pending[id(target)] = id(target), Entry(target, ptr)
        ENGINE.by_storage[ptr] = pid
        mark(target)
        sync_hooks()
    entry = ENGINE.pending[pid]
    param = entry.ref()
    if entry.source is not None:
        return False  # a pending copy: the caller fills it, then runs it
    if param is None or (target.data_ptr(), target.shape, target.stride(),
                         target.dtype) != (param.data_ptr(), param.shape,
                                           param.stride(), param.dtype):
        return False  # part of it: the caller replays, then runs it
    if info.seeded:
        if not ENGINE.random.get(key):  # the state this first draw would see
            ENGINE.random[key] = 0
            ENGINE.cursors.pop(key, None)
            if gen is not None:
                ENGINE.cursors[key] = (gen, gen.get_state())
        ENGINE.random[key] += 1
    args, kwargs = list(args), dict(kwargs)
    if info.write[0] < len(args):
        args[info.write[0]] = None
    else:
        kwargs[info.write[1]] = None
    entry.ops.append(Op(next(ENGINE.seq), func, tuple(args), kwargs,
                        info.write, key))
    entry.version = None  # bumped after this handler: read when the build ends
    return True


def _keep_draw_order(key: Any, gen: Optional[torch.Generator]) -> None:
    """Recorded draws replay from the cursor as one sequence; a new one joins
    it only if the generator has not moved since (a reseed between two
    builds, a draw in between): else what is pending is replayed first."""
    if ENGINE.random.get(key) and gen is not None and key in ENGINE.cursors \
            and not torch.equal(gen.get_state(), ENGINE.cursors[key][1]):
        materialize_ids([pid for pid, e in ENGINE.pending.items()
                         if any(op.gen == key for op in e.ops)],
                        check_version=True)


def alias(param: nn.Parameter) -> torch.Tensor:
    """``param.detach()``; a :class:`.PendingAlias` if ``param`` is pending
    (a plain tensor again, holding the values, once they are computed).

    Example:
        >>> import torch
        >>> type(alias(torch.nn.Parameter(torch.zeros(2)))).__name__
        'Tensor'
    """
    entry = ENGINE.pending.get(id(param))
    if entry is None:
        return param.detach()
    with torch._C.DisableTorchFunctionSubclass():
        out = param.detach()
    out.__class__ = PendingAlias
    entry.aliases.append(weakref.ref(out))
    return out


def copy_pending(param: nn.Parameter) -> nn.Parameter:
    """A pending copy of the pending ``param`` that reads nothing now: when
    first read it takes ``param``'s values (computing them first if
    ``param`` is still pending), or runs ``param``'s recorded init if
    ``param`` is gone or its values are not there yet (dropped for a
    checkpoint copy still to come).

    Example:
        >>> import torch, torch.nn as nn
        >>> from mmext_init.deferred import (deferred_construction, is_pending,
        ...                                  materialize)
        >>> with deferred_construction():
        ...     fc = nn.Linear(2, 2)
        >>> ema_weight = copy_pending(fc.weight)     # nothing computed
        >>> is_pending(ema_weight), is_pending(fc.weight)
        (True, True)
        >>> torch.equal(ema_weight, fc.weight)       # fc.weight's values
        True
        >>> materialize(fc)
    """
    entry = ENGINE.pending[id(param)]
    with torch._C.DisableTorchFunctionSubclass():  # metadata only
        shape, dtype, device = param.shape, param.dtype, param.device
    copy = nn.Parameter(torch.empty(shape, dtype=dtype, device=device),
                        param.requires_grad)
    ptr = storage_ptr(copy)
    new = ENGINE.pending[id(copy)] = Entry(copy, ptr)  # type: ignore[arg-type]
    ENGINE.by_storage[ptr] = id(copy)  # type: ignore[index]
    new.source = weakref.ref(param)
    new.ops = [op._replace(gen=None) for op in entry.ops]  # if no source
    mark(copy)
    sync_hooks()
    return copy
