"""The safety net of deferred constructor init (see
:mod:`mmext_init.deferred`).

While a parameter is pending, the places that could read or lose it without
a torch function call on it are wrapped:

* ``Registry.build`` of a model registry: the outermost build is deferred
  (when :func:`~.construction.build_defers` says so);
* ``Module._load_from_state_dict``: a pending tensor the state dict
  overwrites is dropped; a pending source is computed first;
* ``Module._apply`` (``.to()``, ``.double()``): pending stays pending on the
  converted tensor;
* ``state_dict``/``_save_to_state_dict`` (MMEngine's ``get_state_dict``),
  ``__deepcopy__`` and ``__reduce_ex__`` (``torch.save``) compute all
  pending values first;
* ``BaseAveragedModel.__init__`` (``EMAHook`` builds it before
  ``init_weights``): its deep copy of a pending parameter is a pending copy
  and its ``state_dict()`` gives aliases (see
  :mod:`mmext_init.deferred.copies`);
* ``DistributedDataParallel.__init__``: rank 0's broadcast of raw memory does
  not count as a write; pending parameters stay pending on every rank.

The wrappers are applied by the plugin's patch table
(:mod:`mmext_init.plugin.patches`); ``_load_from_state_dict`` goes through
:func:`guard_load` from the plugin's one wrapper of it.

Example:
    >>> import mmext_init, torch.nn as nn
    >>> from mmext_init.deferred import deferred_construction, is_pending
    >>> with deferred_construction():
    ...     fc = nn.Linear(2, 2)
    >>> sd = fc.state_dict()         # guarded: computed before the copy
    >>> is_pending(fc.weight)
    False
"""
from typing import Any, Callable, Dict

import torch
import torch.nn as nn
from mmengine.registry import MODELS

from ..context import current_session
from .construction import build_defers, deferred_construction
from .copies import retarget
from .ops import storage_ptr
from .recording import alias, copy_pending
from .replay import (Entry, entry_of, forget, is_pending, mark,
                     materialize_all, materialize_ids, sync_hooks, unmark)
from .state import ENGINE

__all__ = ['guard_load', 'wrap_apply', 'wrap_read', 'wrap_deepcopy',
           'wrap_averaged_init', 'wrap_state_dict', 'wrap_save',
           'wrap_ddp_init', 'wrap_build']


def guard_load(module: nn.Module, state_dict: Dict[str, Any], prefix: str,
               load: Callable[[], Any]) -> Any:
    """Run ``load`` (one ``_load_from_state_dict`` call on ``module``): a
    pending tensor it copies into is dropped, a pending source is computed
    first. Called by the plugin's ``_load_from_state_dict`` wrapper."""
    if not ENGINE.pending:
        return load()
    watch = []
    for name, p in module._parameters.items():
        src = state_dict.get(prefix + name)
        if src is None:
            continue
        if id(p) in ENGINE.pending:
            watch.append((name, p, p._version))
        entry = entry_of(src) if isinstance(src, torch.Tensor) else None
        if entry is not None:
            materialize_ids([id(entry.ref())], check_version=True)
    with ENGINE.no_replay():
        out = load()
    for name, p, version in watch:
        if module._parameters.get(name) is p and p._version != version:
            forget(id(p))
    sync_hooks()
    return out


def wrap_apply(original: Callable) -> Callable:
    """``_apply`` (``.to()``, ``.half()``...): pending stays pending on the
    converted tensor (same parameter object or a new one)."""

    def _apply(self, *args, **kwargs):
        if not ENGINE.pending or ENGINE.apply_depth:
            return original(self, *args, **kwargs)
        pending = ENGINE.pending
        before = [(m, n, p) for m in self.modules()
                  for n, p in m._parameters.items() if id(p) in pending]
        viewed = [id(p) for _, _, p in before if any(
            ref() is not None for ref in pending[id(p)].aliases)]
        if viewed:  # an alias would be left on the old memory: compute now
            materialize_ids(viewed, check_version=True)
        with ENGINE.applying():
            out = original(self, *args, **kwargs)
        for module, name, p in before:
            _follow(p, module._parameters.get(name))
        return out

    return _apply


def _follow(p: nn.Parameter, new: Any) -> None:
    """The record of the pending ``p`` goes to ``new``, what ``_apply`` made
    of it (``p`` itself, converted in place, or a new parameter)."""
    entry = ENGINE.pending.get(id(p))
    if entry is None:
        return
    if new is None or storage_ptr(new) is None:  # e.g. to meta
        forget(id(p))
        retarget(p, None)
        return
    if new is not p:
        retarget(p, new)
    del ENGINE.pending[id(p)]
    ENGINE.by_storage.pop(entry.ptr, None)
    if new is not p:
        unmark(p)
    moved = Entry(new, storage_ptr(new))  # type: ignore[arg-type]
    moved.ops, moved.source = entry.ops, entry.source
    moved.born, moved.aliases = entry.born, entry.aliases
    moved.build = entry.build  # its build's draws replay with it
    moved.like = entry.like  # as built: replayed so, then converted
    ENGINE.pending[id(new)], ENGINE.by_storage[moved.ptr] = moved, id(new)
    mark(new)


def wrap_read(original: Callable) -> Callable:
    """``__deepcopy__``/``__reduce_ex__`` of a pending tensor."""

    def wrapper(self, *args, **kwargs):
        if ENGINE.pending and is_pending(self):
            materialize_all()
        return original(self, *args, **kwargs)

    return wrapper


def wrap_deepcopy(original: Callable) -> Callable:
    """``Parameter.__deepcopy__``: a pending copy inside an averaged model's
    constructor, else all pending values are computed first."""

    def __deepcopy__(self, memo):
        pending = ENGINE.pending
        if (ENGINE.average_depth and id(self) in pending
                and pending[id(self)].version is not None  # built
                and id(self) not in memo):
            memo[id(self)] = copy_pending(self)
            return memo[id(self)]
        if pending and is_pending(self):
            materialize_all()
        return original(self, memo)

    return __deepcopy__


def wrap_averaged_init(original: Callable) -> Callable:
    """``BaseAveragedModel.__init__`` (``EMAHook``'s averaged model)."""

    def __init__(self, *args, **kwargs):
        with ENGINE.averaging():
            return original(self, *args, **kwargs)

    return __init__


def _aliasing() -> bool:
    """Whether ``state_dict()`` gives pending parameters as aliases: inside
    an init session or an averaged model's constructor."""
    return bool(ENGINE.average_depth) or current_session() is not None


def wrap_state_dict(original: Callable) -> Callable:

    def state_dict(self, *args, **kwargs):
        if ENGINE.pending and not kwargs.get('keep_vars', args[2:3] == (
                True, )) and not _aliasing():
            materialize_all()
        return original(self, *args, **kwargs)

    return state_dict


def wrap_save(original: Callable) -> Callable:
    """``_save_to_state_dict`` (MMEngine's ``get_state_dict`` calls it): all
    pending values are computed first; inside an init session (a backbone's
    own ``init_weights`` reading shapes) or an averaged model's constructor,
    pending parameters are given as :class:`PendingAlias` instead."""

    def _save_to_state_dict(self, destination, prefix, keep_vars, *a, **k):
        pending = ENGINE.pending
        if not pending or keep_vars or not any(
                id(p) in pending for p in self._parameters.values()):
            return original(self, destination, prefix, keep_vars, *a, **k)
        if not _aliasing():
            materialize_all()
            return original(self, destination, prefix, keep_vars, *a, **k)
        out = original(self, destination, prefix, True, *a, **k)
        for owned in (self._parameters, self._buffers):
            for name, t in owned.items():
                if t is not None and destination.get(prefix + name) is t:
                    destination[prefix + name] = alias(t)
        return out

    return _save_to_state_dict


def wrap_ddp_init(original: Callable) -> Callable:
    """``DistributedDataParallel.__init__`` broadcasts rank 0's memory into
    the other ranks' parameters: pending ones stay pending on every rank
    (each replays the same records from the same seed, and MMEngine's Runner
    broadcasts again after ``init_weights``)."""

    def __init__(self, module, *args, **kwargs):
        records = ENGINE.pending
        pending = [(p, records[id(p)]) for p in module.parameters()
                   if id(p) in records] if isinstance(module,
                                                      nn.Module) else []
        with ENGINE.no_replay():
            out = original(self, module, *args, **kwargs)
        for p, entry in pending:
            if records.get(id(p)) is entry:  # the broadcast is no outside
                entry.version = p._version  # write: its values get replaced
        return out

    return __init__


def wrap_build(original: Callable) -> Callable:
    """``Registry.build``: the outermost model build runs deferred when
    :func:`~.construction.build_defers` says so."""

    def build(self, cfg, *args, **kwargs):
        if ENGINE.build_depth or not is_model_registry(
                self) or not build_defers(cfg):
            return original(self, cfg, *args, **kwargs)
        with deferred_construction():
            return original(self, cfg, *args, **kwargs)

    return build


def is_model_registry(registry: Any) -> bool:
    """Whether ``registry`` is MMEngine's ``MODELS`` or a child of it."""
    while registry is not None:
        if registry is MODELS:
            return True
        registry = getattr(registry, 'parent', None)
    return False
