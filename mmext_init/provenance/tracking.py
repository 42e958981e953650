"""Exact write tracking during ``init_weights``.

A :class:`WriteTracker` is a ``TorchDispatchMode`` that sees every mutating
ATen op (``normal_``, ``copy_``, ``fill_``, ``eye.out`` ...) while an init
*source* is active. For each op on a parameter or persistent buffer of the
model it

* records which source wrote it (an initializer, an ``init_weights``
  override, or a checkpoint load done by such an override) -- exact
  provenance, whatever API the init code used (``nn.init``, ``.data.normal_``);
* skips the op when the tensor is *protected* (the checkpoint will provide it),
  so no initializer work is spent on values the checkpoint overwrites.

Example:
    >>> import torch.nn as nn
    >>> head = nn.Linear(2, 2)
    >>> tracker = WriteTracker(dict(head.named_parameters()))
    >>> with tracker.source(InitSource('initializer', 'Zero', 'head')):
    ...     _ = nn.init.zeros_(head.weight)
    >>> tracker.written['weight'].source
    'Zero'
"""
import contextlib
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional, Set, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..aten import op_schema
from .ledger import CHECKPOINT, Provenance, VoidEntry

__all__ = [
    'InitSource', 'WriteTracker', 'add_note', 'active_tracker',
    'count_skipped_layer', 'provided_by_checkpoint'
]

_ACTIVE: List['WriteTracker'] = []


@dataclass
class InitSource:
    """Who is writing right now; becomes the :class:`Provenance` of what it writes.

    ``keys`` maps tensor names to checkpoint keys for load sources. The
    counters say what it did: ``writes`` to model tensors, ``skipped`` writes
    (and whole layers) because the checkpoint provides them, ``scheduled``
    tensors it will write later (``CopyFrom`` after the checkpoint copy).
    """
    kind: str
    source: str
    declared_by: Optional[str] = None
    args: Optional[Mapping[str, Any]] = None
    keys: Dict[str, str] = field(default_factory=dict)
    note: Optional[str] = None
    writes: int = field(default=0, compare=False)
    skipped: int = field(default=0, compare=False)
    scheduled: int = field(default=0, compare=False)

    @property
    def touched(self) -> bool:
        """Whether it wrote, skipped or scheduled anything."""
        return bool(self.writes or self.skipped or self.scheduled)

    @property
    def is_load(self) -> bool:
        return self.kind == CHECKPOINT

    def provenance(self, name: str) -> Provenance:
        return Provenance(self.kind, self.source, self.declared_by,
                          self.keys.get(name), self.args,
                          (self.note, ) if self.note else ())


class WriteTracker(TorchDispatchMode):
    """Records and filters writes to the named tensors of one model."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # Init code is never compiled. Returning False keeps torch from
        # wrapping __torch_dispatch__ in torch._dynamo.disable, whose first
        # call imports dynamo/sympy (~1 s of start-up, measured).
        return False

    def __init__(self, named_tensors: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        # storage pointer -> [(first byte, end byte, name)]
        self._where: Dict[int, List[Tuple[int, int, str]]] = {}
        self._tensors: Dict[str, torch.Tensor] = {}  # name -> the tensor
        for name, t in named_tensors.items():
            self.track(name, t)
        self.protected: Set[str] = set()
        self.written: Dict[str, Provenance] = {}
        self.loaded_by_code: Dict[str, InitSource] = {}
        self.skipped_ops = 0  # writes skipped: the checkpoint provides them
        self.skipped_calls = 0  # initializer calls not run at all, same cause
        self.sequence = 0  # number of records so far
        self.void_entries: List[VoidEntry] = []  # entries that did nothing
        self.written_at: Dict[str, int] = {}  # name -> sequence of its record
        self._pending_notes: Dict[str, List[str]] = {}
        self._sources: List[InitSource] = []

    # -- tensor identity -------------------------------------------------
    def track(self, name: str, t: torch.Tensor) -> None:
        self._tensors[name] = t
        if t.numel() == 0 or t.device.type == 'meta':
            return
        start = t.data_ptr()
        entries = self._where.setdefault(t.untyped_storage().data_ptr(), [])
        if not any(s == start for s, _, _ in entries):  # tied: first name wins
            entries.append((start, start + t.numel() * t.element_size(), name))

    def name_of(self, t: torch.Tensor) -> Optional[str]:
        """Model name of the tensor ``t`` is (a view of), or None.

        A tensor whose storage was replaced (``param.data = new``, as
        mmcv's ``MultiScaleDeformableAttention.init_weights`` does) left
        its old address in the map, which may now hold another tensor's new
        storage: a name whose tensor no longer holds the storage found
        refreshes the map.

        Example:
            >>> import torch.nn as nn
            >>> a, b = nn.Linear(2, 2), nn.Linear(2, 2)
            >>> tracker = WriteTracker({'a': a.bias, 'b': b.bias})
            >>> old = a.bias.data
            >>> a.bias.data = torch.zeros(2)
            >>> b.bias.data = old  # b's new storage is where a's was
            >>> tracker.name_of(b.bias), tracker.name_of(a.bias)
            ('b', 'a')
        """
        if not isinstance(t, torch.Tensor) or t.device.type == 'meta':
            return None
        try:
            storage = t.untyped_storage().data_ptr()
        except (RuntimeError, NotImplementedError):
            return None
        name = self._lookup(storage, t)
        if name is not None and not self._holds(name, storage):
            name = self._refreshed(storage, t)
        return name

    def _lookup(self, storage: int, t: torch.Tensor) -> Optional[str]:
        ptr = t.data_ptr()
        for start, end, name in self._where.get(storage, ()):
            if start <= ptr < end or (t.numel() == 0 and ptr == start):
                return name
        return None

    def _holds(self, name: str, storage: int) -> bool:
        """Whether the tensor named ``name`` still lives in ``storage``."""
        return self._tensors[name].untyped_storage().data_ptr() == storage

    def _refreshed(self, storage: int, t: torch.Tensor) -> Optional[str]:
        """Rebuild the map from the tensors as they are now; look up again."""
        self._where = {}
        for name, tensor in self._tensors.items():
            self.track(name, tensor)
        return self._lookup(storage, t)

    # -- sources -----------------------------------------------------------
    @contextlib.contextmanager
    def source(self, src: InitSource) -> Iterator[InitSource]:
        """Attribute writes inside the block to ``src`` (sources nest)."""
        self._sources.append(src)
        outermost = len(self._sources) == 1
        if outermost:
            _ACTIVE.append(self)
            self.__enter__()
        try:
            yield src
        finally:
            self._sources.pop()
            if outermost:
                self.__exit__(None, None, None)
                _ACTIVE.remove(self)

    @property
    def current(self) -> Optional[InitSource]:
        return self._sources[-1] if self._sources else None

    def record(self, name: str, prov: Provenance) -> None:
        """Set the provenance of ``name`` (applies pending notes)."""
        for note in self._pending_notes.pop(name, ()):
            prov = prov.with_note(note)
        self.written[name] = prov
        self.sequence += 1
        self.written_at[name] = self.sequence

    def note(self, t: torch.Tensor, text: str) -> None:
        name = self.name_of(t)
        if name is None:
            return
        if name in self.written:
            self.written[name] = self.written[name].with_note(text)
        else:
            self._pending_notes.setdefault(name, []).append(text)

    # -- the dispatch hook -------------------------------------------------
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        src = self.current
        writes = op_schema(func).writes if src is not None else ()
        if not writes:
            return func(*args, **kwargs)
        targets = [
            args[i] if i < len(args) else kwargs.get(n) for i, n in writes
        ]
        names = [self.name_of(t) for t in targets]
        if (not src.is_load and names
                and all(n is not None and n in self.protected
                        for n in names)):
            self.skipped_ops += 1
            src.skipped += 1
            return targets[0] if len(targets) == 1 else tuple(targets)
        out = func(*args, **kwargs)
        for name in names:
            if name is None:
                continue
            src.writes += 1
            self.record(name, src.provenance(name))
            if src.is_load:
                self.protected.add(name)
                self.loaded_by_code[name] = src
        return out


def active_tracker() -> Optional[WriteTracker]:
    """The tracker of the ``init_weights`` call in progress, if any."""
    return _ACTIVE[-1] if _ACTIVE else None


def provided_by_checkpoint(module: torch.nn.Module) -> bool:
    """Whether every direct parameter of ``module`` comes from a checkpoint
    in the ``init_weights`` call in progress (initializers may skip it, and
    must not reject it: its own values are never used).

    Example:
        >>> import torch.nn as nn
        >>> conv = nn.Conv2d(1, 1, 1)
        >>> provided_by_checkpoint(conv)    # outside init_weights
        False
        >>> tracker = WriteTracker(dict(conv.named_parameters()))
        >>> tracker.protected.update({'weight', 'bias'})
        >>> with tracker.source(InitSource('initializer', 'Kaiming', '')):
        ...     provided_by_checkpoint(conv)
        True
    """
    tracker = active_tracker()
    params = list(module.parameters(recurse=False))
    if tracker is None or not params:
        return False
    return all(tracker.name_of(p) in tracker.protected for p in params)


def count_skipped_layer() -> None:
    """Tell the source running now that it left out a layer the checkpoint
    provides (:func:`provided_by_checkpoint`): its entry did its work, the
    checkpoint made it moot. No-op outside ``init_weights``.

    Example:
        >>> src = InitSource('initializer', 'Kaiming', '')
        >>> with WriteTracker({}).source(src):
        ...     count_skipped_layer()
        >>> src.skipped
        1
    """
    tracker = active_tracker()
    if tracker is not None and tracker.current is not None:
        tracker.current.skipped += 1


def add_note(tensor: torch.Tensor, note: str) -> None:
    """Attach ``note`` to the provenance entry of ``tensor``.

    Initializers call it to explain something a reader of the report must
    know (e.g. a rectangular identity). No-op outside ``init_weights``.

    Args:
        tensor (torch.Tensor): a parameter or buffer being initialized.
        note (str): the text (a repeated note is recorded once).

    Example:
        >>> import torch.nn as nn
        >>> fc = nn.Linear(2, 2)
        >>> tracker = WriteTracker(dict(fc.named_parameters()))
        >>> with tracker.source(InitSource('initializer', 'Eye', 'fc')):
        ...     _ = nn.init.eye_(fc.weight)
        ...     add_note(fc.weight, 'identity')
        >>> tracker.written['weight'].notes
        ('identity',)
    """
    tracker = active_tracker()
    if tracker is not None:
        tracker.note(tensor, note)
