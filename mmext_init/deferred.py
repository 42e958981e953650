"""Deferred construction-time init (issue 6): PyTorch's constructor init
(``kaiming_uniform_`` in ``nn.Linear.reset_parameters``...) is recorded while
a model is built and replayed only for the tensors that need it.

* :func:`deferred_construction` runs a ``TorchDispatchMode`` during a build:
  an ATen op that writes a whole ``nn.Parameter`` and reads no other tensor
  (``uniform_``, ``normal_``, ``fill_``, ``zero_``, ``erfinv_``, scalar
  ``mul_``/``add_``/``clamp_``, ``eye.out``...) is recorded and skipped, the
  parameter is *pending* (its memory stays ``torch.empty``); any other op on a
  pending tensor replays its record first.
* ``Registry.build`` runs the outermost build through a registry descending
  from MMEngine's root ``MODELS`` under it (Runner, ``MODELS.build``,
  ``init_detector``). Off with ``MMEXT_INIT_DEFER=0`` and in ``stock_mmengine()``.
* :func:`settle` (init session, after planning) drops the pending tensors the
  checkpoint provides and replays the others.
* Safety net while anything is pending: a global forward pre-hook, a global
  optimizer step pre-hook, ``state_dict``/``_save_to_state_dict``,
  ``__deepcopy__`` and ``__reduce_ex__`` replay everything first; a
  ``load_state_dict`` that overwrites a pending tensor drops it; ``_apply``
  (``.to()``, ``.double()``) keeps it pending on the new tensor.

Random ops replay in record order from the generator state saved when the
first of them was deferred, so they draw what they would have drawn without
deferral, whatever ran in between; only tensors dropped because the
checkpoint provides them draw nothing (later draws shift).

Example:
    >>> with deferred_construction():
    ...     model = nn.Linear(4096, 4096)   # nothing drawn, nothing written
    >>> pending_count()
    2
    >>> materialize(model)                  # the values it would have had
"""
import contextlib
import itertools
import os
import weakref
from typing import (Any, Callable, Dict, Iterable, Iterator, List, Mapping,
                    NamedTuple, Optional, Set, Tuple)

import torch
import torch.nn as nn
from torch.nn.parameter import UninitializedTensorMixin
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ['deferred_construction', 'settle', 'materialize', 'pending_count',
           'is_pending', 'enabled', 'install', 'ENV_VAR']

ENV_VAR = 'MMEXT_INIT_DEFER'
_NEVER = frozenset({'resize_', 'resize_as_', 'set_', 'set_data', 'copy_',
                    'detach_', 'requires_grad_', 'share_memory_'})
_NO_READ = frozenset({'new_empty', 'new_empty_strided', 'new_zeros',
                      'new_ones', 'new_full', 'empty_like', 'zeros_like',
                      'ones_like', 'full_like', 'is_same_size', 'sym_size',
                      'sym_stride', 'sym_numel', 'sym_storage_offset'})
_DATA = (torch.Tensor, torch.UntypedStorage)


class _OpInfo(NamedTuple):
    write: Optional[Tuple[int, str]]  # the one argument it writes
    deferrable: bool
    no_read: bool  # a view or metadata: nothing to replay first
    gen: Optional[Tuple[int, str]]  # its Generator argument
    seeded: bool  # draws random numbers


class _Op(NamedTuple):
    seq: int
    func: Any
    args: Tuple[Any, ...]  # the target's slot holds None
    kwargs: Dict[str, Any]
    where: Tuple[int, str]
    gen: Any  # generator key of a random op, else None


class _Entry:
    """The record of one pending parameter (held weakly)."""
    __slots__ = ('ref', 'ptr', 'version', 'ops', 'like')

    def __init__(self, param: nn.Parameter, ptr: int) -> None:
        self.ref = weakref.ref(param,
                               lambda r, pid=id(param): _on_dead(pid, r))
        self.ptr, self.version = ptr, param._version  # None while recording
        self.ops: List[_Op] = []
        self.like = (param.shape, param.dtype, param.device)


_PENDING: Dict[int, _Entry] = {}  # id(param) -> entry
_BY_STORAGE: Dict[int, int] = {}  # storage data_ptr -> id(param)
_RANDOM: Dict[Any, int] = {}  # generator key -> pending random ops
_CURSOR: Dict[Any, Tuple[torch.Generator, torch.Tensor]] = {}  # key -> state
_SEQ = itertools.count()
_INFO: Dict[Any, _OpInfo] = {}
_HOOKS: Dict[str, Any] = {}
_STATE = {'depth': 0, 'replaying': 0, 'in_step': 0, 'applying': 0}


def _op_info(func: Any) -> _OpInfo:
    info = _INFO.get(func)
    if info is None:
        schema, name = func._schema, func._schema.name.split('::')[-1]
        args = list(enumerate(schema.arguments))
        writes = [(i, a.name) for i, a in args
                  if a.alias_info is not None and a.alias_info.is_write]
        gens = [(i, a.name) for i, a in args if 'Generator' in str(a.type)]
        view = not writes and bool(schema.returns) and all(
            r.alias_info is not None for r in schema.returns)
        info = _INFO[func] = _OpInfo(
            writes[0] if len(writes) == 1 else None,
            len(writes) == 1 and func.namespace == 'aten'
            and name not in _NEVER and torch.Tag.inplace_view not in func.tags,
            view or name in _NO_READ, gens[0] if gens else None,
            bool(gens) or torch.Tag.nondeterministic_seeded in func.tags)
    return info


def _arg(args: Tuple, kwargs: Dict, where: Tuple[int, str]) -> Any:
    return args[where[0]] if where[0] < len(args) else kwargs.get(where[1])


def _leaves(args: Tuple, kwargs: Dict) -> Iterator[Any]:
    """Tensors and storages among ATen arguments (flat, or in lists)."""
    for x in itertools.chain(args, kwargs.values()):
        if isinstance(x, (list, tuple)):
            yield from (y for y in x if isinstance(y, _DATA))
        elif isinstance(x, _DATA):
            yield x


def _ptr(x: Any) -> Optional[int]:
    try:
        if isinstance(x, torch.Tensor):
            return x.untyped_storage().data_ptr() or None
        if isinstance(x, torch.UntypedStorage):
            return x.data_ptr() or None
    except (RuntimeError, NotImplementedError, TypeError):
        pass
    return None


def _entry_of(x: Any) -> Optional[_Entry]:
    entry = _PENDING.get(id(x))
    if entry is None and _BY_STORAGE:
        entry = _PENDING.get(_BY_STORAGE.get(_ptr(x)))  # type: ignore
    return entry


def is_pending(t: torch.Tensor) -> bool:
    """Whether ``t`` (or the parameter it aliases) awaits its deferred init."""
    return _entry_of(t) is not None


def pending_count() -> int:
    """Number of pending parameters (all models)."""
    return len(_PENDING)


def _on_dead(pid: int, ref: weakref.ref) -> None:
    entry = _PENDING.get(pid)
    if entry is not None and entry.ref is ref:
        _forget(pid)
    try:
        _sync_hooks()
    except Exception:  # pragma: no cover - interpreter shutdown
        pass


def _forget(pid: int) -> None:
    entry = _PENDING.pop(pid, None)
    if entry is None:
        return
    if _BY_STORAGE.get(entry.ptr) == pid:
        del _BY_STORAGE[entry.ptr]
    for op in entry.ops:
        if op.gen is not None:
            _RANDOM[op.gen] -= 1


def _registrable(t: torch.Tensor) -> bool:
    return (isinstance(t, nn.Parameter)
            and not isinstance(t, UninitializedTensorMixin)
            and t.layout == torch.strided and t.device.type != 'meta'
            and t.numel() > 0 and t.storage_offset() == 0
            and t.untyped_storage().nbytes() == t.numel() * t.element_size())


def _generator(info: _OpInfo, args: Tuple, kwargs: Dict,
               device: Any) -> Tuple[Any, Optional[torch.Generator]]:
    """(key, generator object) of a random op; the object is None where its
    state is not saved (default generators of other devices)."""
    gen = _arg(args, kwargs, info.gen) if info.gen else None
    if gen is not None:
        return id(gen), gen
    kind = torch.device(device or 'cpu').type
    return ('default', kind), torch.default_generator if kind == 'cpu' \
        else None


def _try_defer(func: Any, info: _OpInfo, args: Tuple, kwargs: Dict) -> bool:
    """Record ``func`` instead of running it if it writes a whole parameter
    and reads no other tensor."""
    target = _arg(args, kwargs, info.write)
    if not isinstance(target, torch.Tensor) or sum(
            1 for _ in _leaves(args, kwargs)) != 1:
        return False
    ptr = _ptr(target)
    pid = _BY_STORAGE.get(ptr) if ptr else None
    if pid is not None and _ptr(_PENDING[pid].ref()) != ptr:
        del _BY_STORAGE[ptr]  # stale: its parameter has other storage now
        pid = None
    if pid is None:
        if ptr is None or not _registrable(target):
            return False
        pid, _PENDING[id(target)] = id(target), _Entry(target, ptr)
        _BY_STORAGE[ptr] = pid
        _sync_hooks()
    entry = _PENDING[pid]
    param = entry.ref()
    if param is None or (target.data_ptr(), target.shape, target.stride(),
                         target.dtype) != (param.data_ptr(), param.shape,
                                           param.stride(), param.dtype):
        return False  # part of it: the caller replays, then runs it
    key = None
    if info.seeded:
        key, gen = _generator(info, args, kwargs, target.device)
        if not _RANDOM.get(key):  # the state this first draw would see
            _RANDOM[key] = 0
            _CURSOR.pop(key, None)
            if gen is not None:
                _CURSOR[key] = (gen, gen.get_state())
        _RANDOM[key] += 1
    args, kwargs = list(args), dict(kwargs)
    if info.write[0] < len(args):
        args[info.write[0]] = None
    else:
        kwargs[info.write[1]] = None
    entry.ops.append(_Op(next(_SEQ), func, tuple(args), kwargs, info.write,
                         key))
    entry.version = None  # bumped after this handler: read when the build ends
    return True


def _closure(todo: Dict[int, _Entry]) -> None:
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


def _materialize(pids: Iterable[int], check_version: bool) -> None:
    """Replay the records of ``pids`` in record order, then forget them.

    A parameter whose storage was replaced (``.data = x``), or (with
    ``check_version``) that something wrote outside the record, keeps that
    value; its random ops still draw, into a scratch tensor."""
    todo = {pid: _PENDING[pid] for pid in pids if pid in _PENDING}
    if not todo:
        return
    if len(todo) < len(_PENDING):
        _closure(todo)
    ops: List[Tuple[_Op, torch.Tensor]] = []
    for pid, entry in todo.items():
        _forget(pid)
        target = entry.ref()
        if (target is None or _ptr(target) != entry.ptr
                or (check_version and entry.version is not None
                    and target._version != entry.version)):
            if all(op.gen is None for op in entry.ops):
                continue
            shape, dtype, device = entry.like
            target = torch.empty(shape, dtype=dtype, device=device)
        ops.extend((op, target) for op in entry.ops)
    ops.sort(key=lambda item: item[0].seq)
    keys = {op.gen for op, _ in ops if op.gen in _CURSOR}
    saved = {key: _CURSOR[key][0].get_state() for key in keys}
    for key in keys:
        _CURSOR[key][0].set_state(_CURSOR[key][1])
    _STATE['replaying'] += 1
    try:
        with torch.no_grad():
            for op, target in ops:
                args, kwargs = list(op.args), dict(op.kwargs)
                if op.where[0] < len(args):
                    args[op.where[0]] = target
                else:
                    kwargs[op.where[1]] = target
                op.func(*args, **kwargs)
    finally:
        _STATE['replaying'] -= 1
        for key in keys:  # nothing drew since the cursor: go on from here
            gen, cursor = _CURSOR.pop(key)
            after = gen.get_state()
            if _RANDOM.get(key):
                _CURSOR[key] = (gen, after)
            if not torch.equal(saved[key], cursor):
                gen.set_state(saved[key])
        _sync_hooks()


def materialize(module: Optional[nn.Module] = None) -> None:
    """Replay the deferred init of ``module``'s pending parameters (of all
    pending parameters if None) now, e.g. before reading raw memory.

    Example:
        >>> materialize(model)
        >>> model.fc.weight.numpy()   # .numpy()/data_ptr() are not guarded
    """
    pids = list(_PENDING) if module is None else [
        id(p) for p in module.parameters() if id(p) in _PENDING]
    _materialize(pids, check_version=True)


def _materialize_all(*_: Any) -> None:
    if _PENDING:
        _materialize(list(_PENDING), check_version=True)


def _defer_allowed() -> bool:
    from .session import current_session
    return current_session() is None


class _DeferMode(TorchDispatchMode):
    """Records whole-parameter init ops, replays before any other access."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False  # as WriteTracker: no dynamo import at start-up

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _STATE['replaying']:
            return func(*args, **kwargs)
        info = _op_info(func)
        if info.deferrable and _defer_allowed() and _try_defer(
                func, info, args, kwargs):
            return _arg(args, kwargs, info.write)
        if _PENDING and not info.no_read:
            pids = {_BY_STORAGE.get(_ptr(x)) for x in _leaves(args, kwargs)}
            if info.seeded:  # an eager draw: the deferred ones come first
                target = _arg(args, kwargs, info.write) if info.write else 0
                key, _ = _generator(
                    info, args, kwargs, target.device if isinstance(
                        target, torch.Tensor) else kwargs.get('device'))
                pids.update(pid for pid, e in _PENDING.items()
                            if any(op.gen == key for op in e.ops))
            pids.discard(None)
            if pids:
                _materialize(pids, check_version=False)  # type: ignore
        return func(*args, **kwargs)


@contextlib.contextmanager
def deferred_construction() -> Iterator[None]:
    """Defer the constructor init of the parameters built inside (nestable).

    Example:
        >>> with deferred_construction():
        ...     backbone = MyBackbone()
    """
    if _STATE['depth']:
        yield
        return
    _STATE['depth'] += 1
    try:
        with _DeferMode():
            yield
    finally:
        _STATE['depth'] -= 1
        for entry in list(_PENDING.values()):  # later writes are outside
            param = entry.ref()
            if entry.version is None and param is not None:
                entry.version = param._version


def enabled() -> bool:
    """Whether registry builds defer: ``MMEXT_INIT_DEFER`` is not ``0`` and
    ``mmext_init.stock_mmengine()`` is not in force."""
    from .session import stock_mode
    value = os.environ.get(ENV_VAR, '1').strip().lower()
    return value not in ('0', 'false', 'off', 'no') and not stock_mode()


def settle(tensors: Mapping[str, torch.Tensor], protected: Set[str]) -> None:
    """Drop the pending ``tensors`` named in ``protected`` (the checkpoint
    copy overwrites them); replay the other pending ones now.

    Example:
        >>> settle(model.state_dict(keep_vars=True), {'fc.weight'})
    """
    if not _PENDING:
        return
    dropped = {id(t) for name, t in tensors.items() if name in protected}
    for pid in dropped:
        _forget(pid)
    _materialize([id(t) for t in tensors.values() if id(t) in _PENDING],
                 check_version=True)
    _sync_hooks()


# -- safety net --------------------------------------------------------------
def _on_step(optimizer: Any, args: Any, kwargs: Any) -> None:
    _STATE['in_step'] += 1
    try:
        _materialize_all()
    finally:
        _STATE['in_step'] -= 1


def _sync_hooks() -> None:
    """The global hooks exist exactly while something is pending."""
    if not _PENDING:
        _RANDOM.clear()
        _CURSOR.clear()
    if _PENDING and not _HOOKS:
        from torch.nn.modules.module import register_module_forward_pre_hook
        from torch.optim.optimizer import register_optimizer_step_pre_hook
        _HOOKS['forward'] = register_module_forward_pre_hook(_materialize_all)
        _HOOKS['step'] = register_optimizer_step_pre_hook(_on_step)
    elif not _PENDING and _HOOKS:
        if 'forward' in _HOOKS:  # iterated over a copy: safe in the hook
            _HOOKS.pop('forward').remove()
        from torch.optim.optimizer import _global_optimizer_pre_hooks as live
        step = _HOOKS['step']  # iterated live: in the hook, only if last
        if not _STATE['in_step'] or next(reversed(live), None) == step.id:
            _HOOKS.pop('step').remove()


def _wrap_load(original: Callable) -> Callable:
    """``_load_from_state_dict``: a pending tensor copied in is dropped, a
    pending source is computed first."""

    def _load_from_state_dict(module, state_dict, prefix, *args, **kwargs):
        if not _PENDING:
            return original(module, state_dict, prefix, *args, **kwargs)
        watch = []
        for name, p in module._parameters.items():
            src = state_dict.get(prefix + name)
            if src is None:
                continue
            if id(p) in _PENDING:
                watch.append((name, p, p._version))
            entry = _entry_of(src) if isinstance(src, torch.Tensor) else None
            if entry is not None:
                _materialize([id(entry.ref())], check_version=True)
        out = original(module, state_dict, prefix, *args, **kwargs)
        for name, p, version in watch:
            if module._parameters.get(name) is p and p._version != version:
                _forget(id(p))
        _sync_hooks()
        return out

    return _load_from_state_dict


def _wrap_apply(original: Callable) -> Callable:
    """``_apply`` (``.to()``, ``.half()``...): pending stays pending on the
    converted tensor (same parameter object or a new one)."""

    def _apply(self, *args, **kwargs):
        if not _PENDING or _STATE['applying']:
            return original(self, *args, **kwargs)
        before = [(m, n, p) for m in self.modules()
                  for n, p in m._parameters.items() if id(p) in _PENDING]
        _STATE['applying'] += 1
        try:
            out = original(self, *args, **kwargs)
        finally:
            _STATE['applying'] -= 1
        for module, name, p in before:
            new, entry = module._parameters.get(name), _PENDING.get(id(p))
            if entry is None:
                continue
            del _PENDING[id(p)]
            _BY_STORAGE.pop(entry.ptr, None)
            if new is None or _ptr(new) is None:  # e.g. to meta
                _PENDING[id(p)] = entry
                _forget(id(p))
                continue
            moved = _Entry(new, _ptr(new))  # type: ignore[arg-type]
            moved.ops = entry.ops
            _PENDING[id(new)], _BY_STORAGE[moved.ptr] = moved, id(new)
        return out

    return _apply


def _wrap_read(original: Callable) -> Callable:
    """``__deepcopy__``/``__reduce_ex__`` of a pending tensor."""

    def wrapper(self, *args, **kwargs):
        if _PENDING and is_pending(self):
            _materialize_all()
        return original(self, *args, **kwargs)

    return wrapper


def _wrap_state_dict(original: Callable) -> Callable:

    def state_dict(self, *args, **kwargs):
        if _PENDING and not kwargs.get('keep_vars', args[2:3] == (True, )):
            _materialize_all()
        return original(self, *args, **kwargs)

    return state_dict


def _wrap_save(original: Callable) -> Callable:
    """``_save_to_state_dict``: MMEngine's ``get_state_dict`` calls it."""

    def _save_to_state_dict(self, destination, prefix, keep_vars, *a, **k):
        if _PENDING and not keep_vars and any(
                id(p) in _PENDING for p in self._parameters.values()):
            _materialize_all()
        return original(self, destination, prefix, keep_vars, *a, **k)

    return _save_to_state_dict


def _wrap_build(original: Callable) -> Callable:
    """``Registry.build``: the outermost model build runs deferred."""

    def build(self, cfg, *args, **kwargs):
        if _STATE['depth'] or not enabled() or not _is_model_registry(self):
            return original(self, cfg, *args, **kwargs)
        with deferred_construction():
            return original(self, cfg, *args, **kwargs)

    return build


def _is_model_registry(registry: Any) -> bool:
    from mmengine.registry import MODELS
    while registry is not None:
        if registry is MODELS:
            return True
        registry = getattr(registry, 'parent', None)
    return False


_MARK = '_mmext_deferred_original'


def _patch(owner: type, name: str, wrap: Callable[[Callable], Callable]):
    current = owner.__dict__[name]
    original = getattr(current, _MARK, current)
    wrapper = wrap(original)
    setattr(wrapper, _MARK, original)
    setattr(owner, name, wrapper)


def install() -> None:
    """Install the registry hook and the guards (idempotent, reload-safe)."""
    from mmengine.registry import Registry
    _patch(Registry, 'build', _wrap_build)
    _patch(nn.Module, '_load_from_state_dict', _wrap_load)
    _patch(nn.Module, '_apply', _wrap_apply)
    _patch(nn.Module, 'state_dict', _wrap_state_dict)
    _patch(nn.Module, '_save_to_state_dict', _wrap_save)
    for cls in (torch.Tensor, nn.Parameter):
        _patch(cls, '__deepcopy__', _wrap_read)
        _patch(cls, '__reduce_ex__', _wrap_read)
