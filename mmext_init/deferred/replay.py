"""The engine of deferred constructor init (see :mod:`.deferred`): the
registry of pending parameters, recording an op instead of running it,
replaying records in draw order, :class:`PendingParameter` (replays on any
read), pending copies and aliases (:mod:`.deferred_copies`) and the global
forward / optimizer-step hooks that exist while anything is pending.

Example:
    >>> is_pending(model.fc.weight), pending_count()
    (True, 2)
    >>> materialize(model)          # the values it would have had
"""
import weakref
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn

from .copies import add_sources, fill_copies, fill_views, moved_alias
from .ops import (OpInfo, arg, function_name, generator_of, leaves,
                           nested_values, storage_ptr)
from .order import (closure, haunt, is_ghost, lone_ghosts,
                             random_ops, scratch_like, uncount)
from .state import (_ALIAS_METADATA, _BY_STORAGE, _CURSOR, _GHOSTS,
                             _HOOKS, _METADATA, _PENDING, _RANDOM, _SEQ,
                             _STATE, _Op, _pid_at, _poison, _run)


class _Entry:
    """The record of one pending parameter (held weakly)."""
    __slots__ = ('ref', 'ptr', 'version', 'ops', 'like', 'source', 'born',
                 'aliases', 'build')

    def __init__(self, param: nn.Parameter, ptr: int) -> None:
        self.ref = weakref.ref(param,
                               lambda r, pid=id(param): _on_dead(pid, r))
        self.ptr, self.version = ptr, param._version  # None while recording
        self.ops: List[_Op] = []
        self.like = (param.shape, param.dtype, param.device)
        # a pending copy (see copy_pending): the parameter it follows
        self.source: Optional[weakref.ref] = None
        self.born = next(_SEQ)
        self.aliases: List[weakref.ref] = []  # PendingAlias views of it
        self.build = _STATE['build']  # the outermost build that made it


def _entry_of(x: Any) -> Optional[_Entry]:
    entry = _PENDING.get(id(x))
    if entry is None and _BY_STORAGE:
        entry = _PENDING.get(_pid_at(storage_ptr(x)))  # type: ignore
    return entry


def is_pending(t: torch.Tensor) -> bool:
    """Whether ``t`` (or the parameter it aliases) awaits its deferred init."""
    return _entry_of(t) is not None


def pending_count() -> int:
    """Number of pending parameters (all models)."""
    return sum(1 for pid in _PENDING if not is_ghost(pid))


class PendingParameter(nn.Parameter):
    """The class of a parameter while its constructor init is deferred.

    Any torch function given it, outside the build, ``_apply``,
    ``load_state_dict`` and DDP's constructor, replays its init first (then it is an
    ``nn.Parameter`` again); metadata and addresses (``shape``,
    ``data_ptr()``) read no values and replay nothing.

    Example:
        >>> type(model.fc.weight).__name__        # built, init deferred
        'PendingParameter'
        >>> print(model.fc.weight.sum())           # replays: real values
        >>> type(model.fc.weight).__name__
        'Parameter'
    """

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not (_STATE['depth'] or _STATE['replaying'] or _STATE['applying']
                or _STATE['loading'] or _STATE['wrapping']
                ) and function_name(func) not in _METADATA:
            pids = [id(x) for x in nested_values(args, kwargs)
                    if type(x) is PendingParameter]
            if pids:
                _materialize(pids, check_version=True)
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)


class PendingAlias(torch.Tensor):
    """What ``state_dict()`` gives for a pending parameter inside an init
    session (a backbone's own ``init_weights`` reads shapes from it): reading
    its values, its address included, computes the parameter first.

    Example:
        >>> current = backbone.state_dict()['layers.0.blocks.0.attn.w']
        >>> current.shape          # no replay
        >>> current.sum()          # replays the parameter it aliases
    """

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        with torch._C.DisableTorchFunctionSubclass():
            if _PENDING and not _STATE['replaying'] and function_name(
                    func) not in _ALIAS_METADATA:
                pids = {_pid_at(storage_ptr(x))
                        for x in nested_values(args, kwargs)
                        if type(x) is PendingAlias}
                pids.discard(None)
                if pids:
                    _materialize(pids, check_version=True)
            return func(*args, **kwargs)


def alias(param: nn.Parameter) -> torch.Tensor:
    """``param.detach()``; a :class:`PendingAlias` if ``param`` is pending
    (a plain tensor again, holding the values, once they are computed)."""
    entry = _PENDING.get(id(param))
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
        >>> ema_weight = copy_pending(model.fc.weight)   # nothing computed
        >>> ema_weight.sum()          # model.fc.weight's values, copied
    """
    entry = _PENDING[id(param)]
    with torch._C.DisableTorchFunctionSubclass():  # metadata only
        shape, dtype, device = param.shape, param.dtype, param.device
    copy = nn.Parameter(torch.empty(shape, dtype=dtype, device=device),
                        param.requires_grad)
    ptr = storage_ptr(copy)
    new = _PENDING[id(copy)] = _Entry(copy, ptr)  # type: ignore[arg-type]
    _BY_STORAGE[ptr] = id(copy)  # type: ignore[index]
    new.source = weakref.ref(param)
    new.ops = [op._replace(gen=None) for op in entry.ops]  # if no source
    _mark(copy)
    _sync_hooks()
    return copy


def _mark(param: Any) -> None:
    if type(param) is nn.Parameter:
        param.__class__ = PendingParameter


def _unmark(param: Any) -> None:
    if type(param) is PendingParameter:
        param.__class__ = nn.Parameter


def _on_dead(pid: int, ref: weakref.ref) -> None:
    entry = _PENDING.get(pid)
    if entry is not None and entry.ref is ref:
        if any(view() is not None for view in entry.aliases):
            _materialize([pid], check_version=False)  # into its aliases
        elif random_ops(entry):
            haunt(pid)  # its draws stay due
        else:
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
    _unmark(entry.ref())
    for ref in entry.aliases:
        view = ref()
        if type(view) is PendingAlias:
            view.__class__ = torch.Tensor
    uncount(pid, entry)


def _unsequence(pid: int) -> None:
    """Take a pending entry's random ops out of the draw sequence: replayed,
    they draw from the generator as it is then (and replaying the others no
    longer needs them)."""
    entry = _PENDING[pid]
    for op in entry.ops:
        if op.gen is not None:
            _RANDOM[op.gen] -= 1
    entry.ops = [op._replace(gen=None) for op in entry.ops]


def _registrable(t: torch.Tensor) -> bool:
    return (type(t) in (nn.Parameter, PendingParameter)  # not subclasses
            and t.layout == torch.strided and t.device.type != 'meta'
            and t.numel() > 0 and t.storage_offset() == 0
            and t.untyped_storage().nbytes() == t.numel() * t.element_size())


def _try_defer(func: Any, info: OpInfo, args: Tuple, kwargs: Dict) -> bool:
    """Record ``func`` instead of running it if it writes a whole parameter
    and reads no other tensor."""
    target = arg(args, kwargs, info.write)
    if not isinstance(target, torch.Tensor) or sum(
            1 for _ in leaves(args, kwargs)) != 1:
        return False
    key, gen = None, None
    if info.seeded:  # one generator lookup for the order check and the record
        key, gen = generator_of(info, args, kwargs, target.device)
        _keep_draw_order(key, gen)
    ptr = storage_ptr(target)
    pid = _pid_at(ptr)
    if pid is None:
        if ptr is None or not _registrable(target):
            return False
        pid, _PENDING[id(target)] = id(target), _Entry(target, ptr)
        _BY_STORAGE[ptr] = pid
        _mark(target)
        _sync_hooks()
    entry = _PENDING[pid]
    param = entry.ref()
    if entry.source is not None:
        return False  # a pending copy: the caller fills it, then runs it
    if param is None or (target.data_ptr(), target.shape, target.stride(),
                         target.dtype) != (param.data_ptr(), param.shape,
                                           param.stride(), param.dtype):
        return False  # part of it: the caller replays, then runs it
    if info.seeded:
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


def _keep_draw_order(key: Any, gen: Optional[torch.Generator]) -> None:
    """Recorded draws replay from the cursor as one sequence; a new one joins
    it only if the generator has not moved since (a reseed between two
    builds, a draw in between): else what is pending is replayed first."""
    if _RANDOM.get(key) and gen is not None and key in _CURSOR and (
            not torch.equal(gen.get_state(), _CURSOR[key][1])):
        _materialize([pid for pid, e in _PENDING.items()
                      if any(op.gen == key for op in e.ops)],
                     check_version=True)


def _materialize(pids: Iterable[int], check_version: bool) -> None:
    """Replay the records of ``pids`` in record order, then forget them;
    pending copies among them take their source's values after that.

    A parameter whose storage was replaced (``.data = x``), or (with
    ``check_version``) that something wrote outside the record, keeps that
    value; its random ops still draw, into a scratch tensor."""
    todo = {pid: _PENDING[pid] for pid in pids if pid in _PENDING}
    if not todo:
        return
    add_sources(todo)
    if len(todo) < len(_PENDING):
        closure(todo)
    ops: List[Tuple[_Op, torch.Tensor]] = []
    copies: List[Tuple[_Entry, torch.Tensor]] = []
    views: List[Tuple[weakref.ref, torch.Tensor]] = []
    converted: List[Tuple[torch.Tensor, torch.Tensor]] = []
    saved: Dict[Any, torch.Tensor] = {}  # generator states to restore
    scratches: Dict[Any, torch.Tensor] = {}  # to draw values nobody reads
    _STATE['materializing'] += 1  # ghosts dying meanwhile draw after this
    try:
        for pid, entry in todo.items():
            _forget(pid)
            target = entry.ref()
            if target is None:  # died pending: its aliases take the values
                target = next((v for v in (r() for r in entry.aliases)
                               if v is not None), None)
            if target is not None:  # its aliases get the values it ends with
                views.extend((ref, target) for ref in entry.aliases)
            if (target is None or storage_ptr(target) != entry.ptr
                    or (check_version and entry.version is not None
                        and target._version != entry.version)):
                if not random_ops(entry):
                    continue
                target = scratch_like(entry.like, scratches)
            elif entry.source is None and (target.shape, target.dtype,
                                           target.device) != entry.like:
                # converted while pending (.double(), .cuda()): computed as
                # built, then converted, as without deferral (ops such as
                # mul_ start from its values, converted back)
                converted.append((target, target))  # the scratch comes next
                scratch = torch.empty(entry.like[0], dtype=entry.like[1],
                                      device=entry.like[2])
                _run([], copy=(target, scratch))
                converted[-1] = (scratch, target)
                target = scratch
            if entry.source is not None:
                copies.append((entry, target))
            else:
                ops.extend((op, target) for op in entry.ops)
        ops.sort(key=lambda item: item[0].seq)
        saved = {key: _CURSOR[key][0].get_state()
                 for key in {op.gen for op, _ in ops if op.gen in _CURSOR}}
        for key in saved:
            _CURSOR[key][0].set_state(_CURSOR[key][1])
        _run(ops)
        for scratch, target in converted:
            _run([], copy=(scratch, target))
        fill_copies(copies)
        fill_views(views)
    except BaseException:  # no longer pending: nothing may stay raw memory
        _poison([t for _, t in ops] + [t for _, t in converted] +
                [t for _, t in copies] + [moved_alias(*v) for v in views])
        raise
    finally:
        try:
            for key in saved:  # nothing drew since the cursor: go on from here
                gen, cursor = _CURSOR.pop(key)
                after = gen.get_state()
                if _RANDOM.get(key):
                    _CURSOR[key] = (gen, after)
                if not torch.equal(saved[key], cursor):
                    gen.set_state(saved[key])
        finally:
            _STATE['materializing'] -= 1
        _sync_hooks()


def hooks_installed() -> bool:
    """Whether the global forward / optimizer-step hooks are installed
    (exactly while something is pending)."""
    return bool(_HOOKS)


def materialize(module: Optional[nn.Module] = None) -> None:
    """Replay the deferred init of ``module``'s pending parameters (of all
    pending parameters if None) now, e.g. before reading raw memory.

    Example:
        >>> materialize(model)
        >>> ptr = model.fc.weight.data_ptr()   # raw memory is not guarded
    """
    pids = list(_PENDING) if module is None else [
        id(p) for p in module.parameters() if id(p) in _PENDING]
    _materialize(pids, check_version=True)


def _materialize_all(*_: Any) -> None:
    if _PENDING:
        _materialize(list(_PENDING), check_version=True)


# -- safety net --------------------------------------------------------------
def _on_step(optimizer: Any, args: Any, kwargs: Any) -> None:
    _STATE['in_step'] += 1
    try:
        _materialize_all()
    finally:
        _STATE['in_step'] -= 1


def _sync_hooks() -> None:
    """The global hooks exist exactly while something is pending; ghosts
    that nothing pending follows draw now (see :mod:`.deferred_order`)."""
    if _GHOSTS and not (_STATE['replaying'] or _STATE['materializing']):
        ghosts = lone_ghosts()
        if ghosts:
            _materialize(ghosts, check_version=False)  # calls this again
            return
    if not _PENDING:
        _RANDOM.clear()
        _GHOSTS.clear()
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
