"""The shared state of deferred constructor init (see :mod:`.deferred`): the
registries of pending parameters and recorded ops, the mode counters, and
:func:`_run`, which replays recorded ops.

Example:
    >>> from mmext_init.deferred_state import _PENDING
    >>> len(_PENDING)           # pending parameters, all models
    0
"""
import itertools
import weakref
from typing import (Any, Dict, Iterable, List, NamedTuple, Optional,
                    Tuple)

import torch

from .ops import storage_ptr

_SEQ = itertools.count()  # record order (and the age of pending copies)


class _Op(NamedTuple):
    seq: int
    func: Any
    args: Tuple[Any, ...]  # the target's slot holds None
    kwargs: Dict[str, Any]
    where: Tuple[int, str]
    gen: Any  # generator key of a random op, else None


_PENDING: Dict[int, Any] = {}  # id(param) -> deferred_replay._Entry
_BY_STORAGE: Dict[int, int] = {}  # storage data_ptr -> id(param)
_RANDOM: Dict[Any, int] = {}  # generator key -> pending random ops
_GHOSTS: Dict[Any, int] = {}  # generator key -> those of dead parameters
_CURSOR: Dict[Any, Tuple[torch.Generator, torch.Tensor]] = {}  # key -> state
_AWAITING: Dict[int, Tuple[weakref.ref, int]] = {}  # dropped, copy to come
_HOOKS: Dict[str, Any] = {}
# depth: builds in progress; replaying/applying/loading/wrapping/averaging:
# inside a replay, ``Module._apply``, ``_load_from_state_dict``, DDP's
# constructor, MMEngine's ``BaseAveragedModel`` constructor; materializing:
# inside ``_materialize``; build: serial number of the current (or last)
# outermost build
_STATE = {'depth': 0, 'replaying': 0, 'in_step': 0, 'applying': 0,
          'loading': 0, 'wrapping': 0, 'averaging': 0, 'materializing': 0,
          'build': 0}
# torch functions that read no values of a pending parameter
_METADATA = frozenset({
    'dim', 'size', 'numel', 'nelement', 'ndimension', 'stride',
    'storage_offset', 'is_contiguous', 'element_size', 'is_floating_point',
    'is_complex', 'get_device', '__len__', 'requires_grad_', 'is_shared',
    'is_pinned', 'data_ptr', 'untyped_storage', '_is_view', 'has_names',
    'shape', 'dtype', 'device', 'requires_grad', 'grad', 'is_leaf', 'ndim',
    'names', 'layout', 'is_cuda', 'is_cpu', 'is_sparse', 'is_quantized',
    'is_meta', 'is_mkldnn', 'is_nested', '_version', 'grad_fn', 'output_nr',
    'itemsize', 'nbytes', '_base', '__class__'})
_ALIAS_METADATA = _METADATA - {'data_ptr', 'untyped_storage'}


def _pid_at(ptr: Optional[int]) -> Optional[int]:
    """Id of the pending parameter whose memory is at ``ptr``. The mapping
    of one that has other memory now (``p.data = t`` runs no op) is dropped:
    its old address may already be a new, unrelated tensor's.

    Example:
        >>> _pid_at(storage_ptr(model.fc.weight)) == id(model.fc.weight)
        True
    """
    pid = _BY_STORAGE.get(ptr) if ptr else None
    if pid is None:
        return None
    entry = _PENDING.get(pid)
    if entry is None or storage_ptr(entry.ref()) != ptr:
        del _BY_STORAGE[ptr]  # type: ignore[arg-type]
        return None
    return pid


def _run(ops: List[Tuple[_Op, torch.Tensor]],
         copy: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> None:
    """Run recorded ops, each on its target (or ``copy``: (src, dst)). If
    one fails, every target is poisoned (:func:`_poison`) before the error
    propagates."""
    _STATE['replaying'] += 1
    try:
        with torch.no_grad():
            if copy is not None:
                with torch._C.DisableTorchFunctionSubclass():
                    copy[1].copy_(copy[0])
            for op, target in ops:
                args, kwargs = list(op.args), dict(op.kwargs)
                if op.where[0] < len(args):
                    args[op.where[0]] = target
                else:
                    kwargs[op.where[1]] = target
                op.func(*args, **kwargs)
    except BaseException:
        _poison([t for _, t in ops] + ([copy[1]] if copy else []))
        raise
    finally:
        _STATE['replaying'] -= 1


def _poison(tensors: Iterable[Optional[torch.Tensor]]) -> None:
    """NaN (0 in integer tensors) in each of ``tensors`` (None skipped): what
    a replay that failed midway (an interrupt, out of memory) was to compute
    holds no uninitialized memory that a forward pass, an optimizer step or
    a saved checkpoint could take for values.

    Example:
        >>> _poison([weight])
        >>> bool(weight.isnan().all())
        True
    """
    _STATE['replaying'] += 1
    try:
        with torch.no_grad(), torch._C.DisableTorchFunctionSubclass():
            for t in tensors:
                if t is not None:
                    t.fill_(float('nan') if t.is_floating_point()
                            or t.is_complex() else 0)
    finally:
        _STATE['replaying'] -= 1
