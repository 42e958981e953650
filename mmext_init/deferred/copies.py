"""Pending copies and aliases of pending parameters (see :mod:`.deferred`).

MMEngine's averaged models (``EMAHook``) deep-copy the model before
``init_weights``. Inside their constructor a pending parameter's copy is
pending too (:func:`.recording.copy_pending`): it costs nothing until
read, then takes the original's values, computed first if the original is
still pending. If the original is gone, or its values are not there yet
(dropped by the init session for a checkpoint copy still to come, see
:func:`awaiting`), the copy runs the original's recorded init instead.

Example:
    >>> import torch.nn as nn
    >>> from mmext_init.deferred import (deferred_construction, is_pending,
    ...                                  materialize)
    >>> from mmext_init.deferred.recording import copy_pending
    >>> with deferred_construction():
    ...     fc = nn.Linear(2, 2)
    >>> twin = copy_pending(fc.weight)        # nothing computed
    >>> is_pending(fc.weight), is_pending(twin)
    (True, True)
    >>> bool((twin == fc.weight).all())       # computed, then copied
    True
    >>> materialize(fc)
"""
import weakref
from typing import Any, Dict, List, Optional, Set, Tuple

import torch

from .ops import storage_ptr
from .running import run_ops
from .state import ENGINE

__all__ = ['awaiting', 'copied_sources', 'retarget', 'add_sources',
           'fill_copies', 'moved_alias', 'fill_views']


def awaiting(param: torch.Tensor) -> None:
    """Note that ``param``'s memory holds no values (dropped for a checkpoint
    copy still to come, or left behind by ``.to()``): until it is written, a
    pending copy of it does not copy that memory.

    Example:
        >>> import torch
        >>> weight = torch.nn.Parameter(torch.empty(2))
        >>> awaiting(weight)             # done by deferred.settle
        >>> ENGINE.awaiting[id(weight)][1] == weight._version
        True
    """
    key = id(param)

    def gone(ref: weakref.ref) -> None:
        if ENGINE.awaiting.get(key, (None, ))[0] is ref:
            del ENGINE.awaiting[key]

    ENGINE.awaiting[key] = (weakref.ref(param, gone), param._version)


def copied_sources() -> Set[int]:
    """Ids of the parameters that pending copies follow.

    Example:
        >>> import torch.nn as nn
        >>> from mmext_init.deferred import deferred_construction, materialize
        >>> from mmext_init.deferred.recording import copy_pending
        >>> with deferred_construction():
        ...     fc = nn.Linear(2, 2)
        >>> twin = copy_pending(fc.weight)
        >>> id(fc.weight) in copied_sources(), id(fc.bias) in copied_sources()
        (True, False)
        >>> materialize()
    """
    return {id(e.source()) for e in ENGINE.pending.values()
            if e.source is not None and e.source() is not None}


def retarget(old: torch.Tensor, new: Optional[torch.Tensor]) -> None:
    """Copies following ``old`` follow ``new`` (``.to()`` made a new
    parameter); with no ``new``, ``old`` holds no values for them."""
    followers = [e for e in ENGINE.pending.values()
                 if e.source is not None and e.source() is old]
    for entry in followers:
        if new is not None:
            entry.source = weakref.ref(new)
    if followers and new is None:
        awaiting(old)


def add_sources(todo: Dict[int, Any]) -> None:
    """Add to ``todo`` (id -> entry) the pending sources of its copies."""
    new = list(todo.values())
    while new:
        sources = [e.source() for e in new if e.source is not None]
        pending = ENGINE.pending
        found = {id(s): pending[id(s)] for s in sources
                 if s is not None and id(s) in pending and id(s) not in todo}
        todo.update(found)
        new = list(found.values())


def _has_values(source: Optional[torch.Tensor]) -> bool:
    if source is None or id(source) in ENGINE.pending:
        return False
    ref, version = ENGINE.awaiting.get(id(source), (None, None))
    return not (ref is not None and ref() is source
                and source._version == version)


def fill_copies(copies: List[Tuple[Any, torch.Tensor]]) -> None:
    """Pending copies (entry, target) take their source's values, oldest
    first (a copy of a copy after its source), else run the recorded init
    from a generator of their own (a read draws nothing from the global
    generators)."""
    for entry, target in sorted(copies, key=lambda item: item[0].born):
        source = entry.source()
        if _has_values(source) and source.shape == target.shape:
            run_ops([], copy=(source, target))
            continue
        cuda = [target.device.index or 0] if target.is_cuda else []
        with torch.random.fork_rng(devices=cuda):
            seed = (torch.initial_seed() + entry.born) % 2**63
            torch.default_generator.manual_seed(seed)
            if cuda:
                torch.cuda.manual_seed(seed)
            run_ops([(op, target) for op in entry.ops])


def moved_alias(ref: weakref.ref,
                target: torch.Tensor) -> Optional[torch.Tensor]:
    """The alias behind ``ref`` if it lives on other memory than its
    parameter ``target`` now (moved or replaced while pending), else None.

    Example:
        >>> import torch
        >>> weight = torch.zeros(2)
        >>> view = weight.detach()
        >>> moved_alias(weakref.ref(view), weight) is None   # same memory
        True
        >>> moved_alias(weakref.ref(view), weight.double()) is view
        True
    """
    view = ref()
    if view is None or storage_ptr(view) == storage_ptr(target):
        return None
    return view


def fill_views(views: List[Tuple[weakref.ref, torch.Tensor]]) -> None:
    """Aliases on other memory than their parameter now (it was moved or
    replaced while pending) get its values too."""
    for ref, target in views:
        view = moved_alias(ref, target)
        if view is not None and view.shape == target.shape:
            run_ops([], copy=(target, view))
