"""The state of deferred constructor init (see :mod:`mmext_init.deferred`):
one :class:`EngineState`, :data:`ENGINE`, holds the registries of pending
parameters and recorded ops, and tells, through named context managers,
what is in progress.

Example:
    >>> len(ENGINE.pending)               # pending parameters, all models
    0
    >>> with ENGINE.replaying():          # recorded ops run as themselves
    ...     ENGINE.replay_depth, ENGINE.hold_depth
    (1, 1)
"""
import contextlib
import itertools
from typing import (Any, Callable, ContextManager, Dict, Iterator, List,
                    NamedTuple, Optional, Tuple)

import torch

from .ops import storage_ptr

__all__ = ['ENGINE', 'EngineState', 'Op', 'Observer', 'METADATA',
           'ALIAS_METADATA', 'pid_at']


class Op(NamedTuple):
    """One recorded ATen op."""
    seq: int
    func: Any
    args: Tuple[Any, ...]  # the target's slot holds None
    kwargs: Dict[str, Any]
    where: Tuple[int, str]
    gen: Any  # generator key of a random op, else None


Observer = Callable[[List[torch.Tensor], Optional[Tuple[torch.Tensor,
                                                         torch.Tensor]]],
                    None]


class EngineState:
    """Everything the engine keeps, process-wide.

    Its dicts are changed in place, never replaced (a function may hold
    one). The ``*_depth`` counters are read on the hot path (plain
    attributes); they change only through the context managers below.
    """

    def __init__(self) -> None:
        self.pending: Dict[int, Any] = {}  # id(param) -> replay.Entry
        self.by_storage: Dict[int, int] = {}  # storage data_ptr -> id(param)
        self.random: Dict[Any, int] = {}  # generator key -> pending draws
        self.ghosts: Dict[Any, int] = {}  # generator key -> those of the dead
        # generator key -> (generator, its state before the first draw)
        self.cursors: Dict[Any, Tuple[torch.Generator, torch.Tensor]] = {}
        # id(param) -> (weak ref, version): dropped, its copy still to come
        self.awaiting: Dict[int, Tuple[Any, int]] = {}
        self.hooks: Dict[str, Any] = {}  # the global forward / step hooks
        self.seq = itertools.count()  # record order (and age of copies)
        self.ghost_keys = itertools.count(-1, -1)  # never an id(): negative
        self.build_serial = 0  # the current (or last) outermost build
        # called before each replay (see debug.observe_replays)
        self.replay_observers: List[Observer] = []
        self.build_depth = 0  # building()
        self.replay_depth = 0  # replaying()
        self.apply_depth = 0  # applying()
        self.hold_depth = 0  # no_replay(), and the three above
        self.average_depth = 0  # averaging()
        self.materialize_depth = 0  # materializing()
        self.step_depth = 0  # stepping()

    @contextlib.contextmanager
    def _raised(self, *counters: str) -> Iterator[None]:
        """Each of ``counters`` one higher inside the block."""
        for name in counters:
            setattr(self, name, getattr(self, name) + 1)
        try:
            yield
        finally:
            for name in counters:
                setattr(self, name, getattr(self, name) - 1)

    def building(self) -> ContextManager[None]:
        """An outermost deferred build: a new build serial; reads replay
        nothing."""
        self.build_serial += 1
        return self._raised('build_depth', 'hold_depth')

    def replaying(self) -> ContextManager[None]:
        """Recorded ops run: every op runs as itself, nothing is recorded."""
        return self._raised('replay_depth', 'hold_depth')

    def applying(self) -> ContextManager[None]:
        """Inside ``Module._apply``: pending stays pending when converted."""
        return self._raised('apply_depth', 'hold_depth')

    def no_replay(self) -> ContextManager[None]:
        """A torch function given a pending parameter does not replay it
        (``_load_from_state_dict``, DDP's constructor)."""
        return self._raised('hold_depth')

    def averaging(self) -> ContextManager[None]:
        """Inside an averaged model's constructor: deep copies of pending
        parameters are pending copies, ``state_dict()`` gives aliases."""
        return self._raised('average_depth')

    def materializing(self) -> ContextManager[None]:
        """Inside a replay of records: ghosts dying meanwhile draw after it."""
        return self._raised('materialize_depth')

    def stepping(self) -> ContextManager[None]:
        """Inside the optimizer step pre-hook: it may remove itself only if
        it runs last."""
        return self._raised('step_depth')


ENGINE = EngineState()

# torch functions that read no values of a pending parameter
METADATA = frozenset({
    'dim', 'size', 'numel', 'nelement', 'ndimension', 'stride',
    'storage_offset', 'is_contiguous', 'element_size', 'is_floating_point',
    'is_complex', 'get_device', '__len__', 'requires_grad_', 'is_shared',
    'is_pinned', 'data_ptr', 'untyped_storage', '_is_view', 'has_names',
    'shape', 'dtype', 'device', 'requires_grad', 'grad', 'is_leaf', 'ndim',
    'names', 'layout', 'is_cuda', 'is_cpu', 'is_sparse', 'is_quantized',
    'is_meta', 'is_mkldnn', 'is_nested', '_version', 'grad_fn', 'output_nr',
    'itemsize', 'nbytes', '_base', '__class__'})
# the same for a PendingAlias, whose address is its parameter's values
ALIAS_METADATA = METADATA - {'data_ptr', 'untyped_storage'}


def pid_at(ptr: Optional[int]) -> Optional[int]:
    """Id of the pending parameter whose memory is at ``ptr``. The mapping
    of one that has other memory now (``p.data = t`` runs no op) is dropped:
    its old address may already be a new, unrelated tensor's.

    Example:
        >>> import torch
        >>> pid_at(storage_ptr(torch.zeros(2))) is None   # not pending
        True
    """
    pid = ENGINE.by_storage.get(ptr) if ptr else None
    if pid is None:
        return None
    entry = ENGINE.pending.get(pid)
    if entry is None or storage_ptr(entry.ref()) != ptr:
        del ENGINE.by_storage[ptr]  # type: ignore[arg-type]
        return None
    return pid
