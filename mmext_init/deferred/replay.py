"""The core of deferred constructor init (see :mod:`mmext_init.deferred`):
the records of pending parameters, :class:`PendingParameter` and
:class:`PendingAlias` (which replay on any read), replaying records in draw
order, and the global forward / optimizer-step hooks that exist while
anything is pending. Recording is in :mod:`.recording`.

Example:
    >>> import torch.nn as nn
    >>> from mmext_init.deferred import deferred_construction
    >>> with deferred_construction():
    ...     fc = nn.Linear(2, 2)
    >>> is_pending(fc.weight), pending_count(), hooks_installed()
    (True, 2, True)
    >>> materialize(fc)          # the values it would have had
    >>> is_pending(fc.weight), pending_count(), hooks_installed()
    (False, 0, False)
"""
import weakref
from typing import Any, Dict, Iterable, List, Optional

import torch
import torch.nn as nn
from torch.nn.modules.module import register_module_forward_pre_hook
from torch.optim import optimizer as torch_optimizer

from .copies import add_sources
from .ops import function_name, nested_values, storage_ptr
from .order import (closure, haunt, is_ghost, lone_ghosts, random_ops,
                    resume_cursors, rewind_cursors, uncount)
from .plan import ReplayPlan
from .running import poison
from .state import ALIAS_METADATA, ENGINE, METADATA, Op, pid_at

__all__ = ['Entry', 'entry_of', 'is_pending', 'pending_count',
           'PendingParameter', 'PendingAlias', 'mark', 'unmark', 'forget',
           'materialize_ids', 'materialize', 'materialize_all',
           'hooks_installed', 'sync_hooks', 'remove_global_hook']


class Entry:
    """The record of one pending parameter (held weakly)."""
    __slots__ = ('ref', 'ptr', 'version', 'ops', 'like', 'source', 'born',
                 'aliases', 'build')

    def __init__(self, param: nn.Parameter, ptr: int) -> None:
        self.ref = weakref.ref(param,
                               lambda r, pid=id(param): _on_dead(pid, r))
        self.ptr, self.version = ptr, param._version  # None while recording
        self.ops: List[Op] = []
        self.like = (param.shape, param.dtype, param.device)
        # a pending copy (see recording.copy_pending): the parameter it follows
        self.source: Optional[weakref.ref] = None
        self.born = next(ENGINE.seq)
        self.aliases: List[weakref.ref] = []  # PendingAlias views of it
        self.build = ENGINE.build_serial  # the outermost build that made it


def entry_of(x: Any) -> Optional[Entry]:
    """The record of ``x``, or of the pending parameter it aliases."""
    entry = ENGINE.pending.get(id(x))
    if entry is None and ENGINE.by_storage:
        entry = ENGINE.pending.get(pid_at(storage_ptr(x)))  # type: ignore
    return entry


def is_pending(t: torch.Tensor) -> bool:
    """Whether ``t`` (or the parameter it aliases) awaits its deferred init.

    Example:
        >>> import torch
        >>> is_pending(torch.zeros(2))
        False
    """
    return entry_of(t) is not None


def pending_count() -> int:
    """Number of pending parameters (all models)."""
    return sum(1 for pid in ENGINE.pending if not is_ghost(pid))


class PendingParameter(nn.Parameter):
    """The class of a parameter while its constructor init is deferred.

    Any torch function given it, outside a build, a replay, ``_apply``,
    ``load_state_dict`` and DDP's constructor (``ENGINE.hold_depth``),
    replays its init first (then it is an ``nn.Parameter`` again); metadata
    and addresses (``shape``, ``data_ptr()``) read no values and replay
    nothing.

    Example:
        >>> import torch.nn as nn
        >>> from mmext_init.deferred import deferred_construction
        >>> with deferred_construction():
        ...     fc = nn.Linear(2, 2)
        >>> type(fc.weight).__name__, fc.weight.shape   # no replay
        ('PendingParameter', torch.Size([2, 2]))
        >>> bool(fc.weight.isfinite().all())             # replays
        True
        >>> type(fc.weight).__name__, type(fc.bias).__name__
        ('Parameter', 'PendingParameter')
        >>> materialize(fc)
    """

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not ENGINE.hold_depth and function_name(func) not in METADATA:
            pids = [id(x) for x in nested_values(args, kwargs)
                    if type(x) is PendingParameter]
            if pids:
                materialize_ids(pids, check_version=True)
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)


class PendingAlias(torch.Tensor):
    """What ``state_dict()`` gives for a pending parameter inside an init
    session (a backbone's own ``init_weights`` reads shapes from it): reading
    its values, its address included, computes the parameter first.

    Example:
        >>> import torch.nn as nn
        >>> from mmext_init.deferred import deferred_construction
        >>> from mmext_init.deferred.recording import alias
        >>> with deferred_construction():
        ...     fc = nn.Linear(2, 2)
        >>> current = alias(fc.weight)
        >>> type(current).__name__, current.shape        # no replay
        ('PendingAlias', torch.Size([2, 2]))
        >>> bool(current.isfinite().all()), is_pending(fc.weight)  # replays
        (True, False)
        >>> materialize(fc)
    """

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        with torch._C.DisableTorchFunctionSubclass():
            if ENGINE.pending and not ENGINE.replay_depth and function_name(
                    func) not in ALIAS_METADATA:
                pids = {pid_at(storage_ptr(x))
                        for x in nested_values(args, kwargs)
                        if type(x) is PendingAlias}
                pids.discard(None)
                if pids:
                    materialize_ids(pids, check_version=True)  # type: ignore
            return func(*args, **kwargs)


def mark(param: Any) -> None:
    """Make the ``nn.Parameter`` ``param`` a :class:`PendingParameter`."""
    if type(param) is nn.Parameter:
        param.__class__ = PendingParameter


def unmark(param: Any) -> None:
    """Make the :class:`PendingParameter` ``param`` an ``nn.Parameter``."""
    if type(param) is PendingParameter:
        param.__class__ = nn.Parameter


def _on_dead(pid: int, ref: weakref.ref) -> None:
    entry = ENGINE.pending.get(pid)
    if entry is not None and entry.ref is ref:
        if any(view() is not None for view in entry.aliases):
            materialize_ids([pid], check_version=False)  # into its aliases
        elif random_ops(entry):
            haunt(pid)  # its draws stay due
        else:
            forget(pid)
    try:
        sync_hooks()
    except Exception:  # pragma: no cover - interpreter shutdown
        pass


def forget(pid: int) -> None:
    """Take ``pid``'s record out of pending, its parameter and aliases back
    to plain tensors; nothing is computed."""
    entry = ENGINE.pending.pop(pid, None)
    if entry is None:
        return
    if ENGINE.by_storage.get(entry.ptr) == pid:
        del ENGINE.by_storage[entry.ptr]
    unmark(entry.ref())
    for ref in entry.aliases:
        view = ref()
        if type(view) is PendingAlias:
            view.__class__ = torch.Tensor
    uncount(pid, entry)


def materialize_ids(pids: Iterable[int], check_version: bool) -> None:
    """Replay the records of ``pids`` (and of what must draw before them) in
    record order, then forget them; pending copies among them take their
    source's values after that. See :meth:`.ReplayPlan.add` for
    ``check_version``."""
    todo = _due(pids)
    if not todo:
        return
    try:
        with ENGINE.materializing():  # ghosts dying meanwhile draw after it
            _replay(todo, ReplayPlan(check_version))
    finally:
        sync_hooks()


def _due(pids: Iterable[int]) -> Dict[int, Entry]:
    """The pending records of ``pids``, with their pending sources and the
    records whose draws precede theirs."""
    pending = ENGINE.pending
    todo = {pid: pending[pid] for pid in pids if pid in pending}
    if todo:
        add_sources(todo)
        if len(todo) < len(pending):
            closure(todo)
    return todo


def _replay(todo: Dict[int, Entry], plan: ReplayPlan) -> None:
    saved: Dict[Any, torch.Tensor] = {}  # generator states to restore
    try:
        for pid, entry in todo.items():
            forget(pid)
            plan.add(entry)
        saved = rewind_cursors(plan.ops)
        plan.run()
    except BaseException:  # no longer pending: nothing may stay raw memory
        poison(plan.targets())
        raise
    finally:
        resume_cursors(saved)


def materialize(module: Optional[nn.Module] = None) -> None:
    """Replay the deferred init of ``module``'s pending parameters (of all
    pending parameters if None) now, e.g. before reading raw memory.

    Args:
        module (nn.Module, optional): the module whose parameters to
            compute; None: every pending parameter.

    Example:
        >>> import torch.nn as nn
        >>> from mmext_init.deferred import deferred_construction
        >>> with deferred_construction():
        ...     fc = nn.Linear(2, 2)
        >>> materialize(fc)
        >>> ptr = fc.weight.data_ptr()     # raw memory is not guarded
        >>> is_pending(fc.weight)
        False
    """
    pids = list(ENGINE.pending) if module is None else [
        id(p) for p in module.parameters() if id(p) in ENGINE.pending]
    materialize_ids(pids, check_version=True)


def materialize_all(*_: Any) -> None:
    """Replay every pending record (the global forward pre-hook)."""
    if ENGINE.pending:
        materialize_ids(list(ENGINE.pending), check_version=True)


# -- safety net --------------------------------------------------------------
def hooks_installed() -> bool:
    """Whether the global forward / optimizer-step hooks are installed
    (exactly while something is pending).

    Example:
        >>> import torch.nn as nn
        >>> from mmext_init.deferred import deferred_construction
        >>> with deferred_construction():
        ...     fc = nn.Linear(2, 2)
        >>> hooks_installed()
        True
        >>> materialize(fc)
        >>> hooks_installed()
        False
    """
    return bool(ENGINE.hooks)


def _on_step(optimizer: Any, args: Any, kwargs: Any) -> None:
    with ENGINE.stepping():
        materialize_all()


def sync_hooks() -> None:
    """The global hooks exist exactly while something is pending; ghosts
    that nothing pending follows draw now (see :mod:`.order`)."""
    if ENGINE.ghosts and not (ENGINE.replay_depth
                              or ENGINE.materialize_depth):
        ghosts = lone_ghosts()
        if ghosts:
            materialize_ids(ghosts, check_version=False)  # calls this again
            return
    hooks = ENGINE.hooks
    if not ENGINE.pending:
        ENGINE.random.clear()
        ENGINE.ghosts.clear()
        ENGINE.cursors.clear()
    if ENGINE.pending and not hooks:
        hooks['forward'] = register_module_forward_pre_hook(materialize_all)
        hooks['step'] = torch_optimizer.register_optimizer_step_pre_hook(
            _on_step)
    elif not ENGINE.pending and hooks:
        if 'forward' in hooks:  # iterated over a copy: safe in the hook
            hooks.pop('forward').remove()
        live = torch_optimizer._global_optimizer_pre_hooks
        step = hooks['step']  # iterated live: in the hook, only if last
        if not ENGINE.step_depth or next(reversed(live), None) == step.id:
            hooks.pop('step').remove()


def remove_global_hook(kind: str) -> None:
    """Remove the global ``'forward'`` (module forward pre-hook) or
    ``'step'`` (optimizer step pre-hook) hook if it is installed: for
    ``uninstall()``, after everything pending was computed (which removes
    them already; this makes sure).

    Example:
        >>> remove_global_hook('forward'); hooks_installed()
        False
    """
    hook = ENGINE.hooks.pop(kind, None)
    if hook is not None:
        hook.remove()
