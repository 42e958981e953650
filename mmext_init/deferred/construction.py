"""Deferred construction-time init: PyTorch's constructor init
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
  ``init_detector``) under it when its config declares a checkpoint, or
  always, or never (``MMEXT_INIT_DEFER``, :func:`build_defers`). Deferral
  pays only where a checkpoint overwrites what the constructor wrote;
  elsewhere ``init_weights()`` replays every pending tensor and the
  recording is pure overhead (x2-x3 build + init time on CGNet or ERFNet).
  So by default (``auto``) a build defers when its config declares a
  checkpoint (:func:`declares_checkpoint`); ``MMEXT_INIT_DEFER=1``
  (``always``) defers every build (a model loaded by ``load_checkpoint``
  after a build without a declared checkpoint: ``init_detector``), as does
  :func:`deferred_construction`; ``0`` (``off``) and
  ``mmext_init.stock_mmengine()`` never.
* :func:`settle` (init session, after planning) drops the pending tensors the
  checkpoint provides and replays the others.
* A pending parameter's class is :class:`PendingParameter`: any torch
  function reading it after the build (``print``, ``sum``, a functional
  call, an initializer of stock MMEngine) replays its init first.
* While anything is pending, a global forward pre-hook and a global
  optimizer step pre-hook replay everything first; :mod:`.guards`
  covers the paths that read memory without a torch function call
  (``state_dict``, ``deepcopy``, ``torch.save``, DDP) or must keep a tensor
  pending (``load_state_dict``, ``.to()``).
* Not guarded: raw memory reached through ``data_ptr()`` or
  ``untyped_storage()`` (call :func:`materialize` first).

Random ops replay in record order from the generator state saved when the
first of them was deferred, so they draw what they would have drawn without
deferral, whatever ran in between; only tensors dropped because the
checkpoint provides them draw nothing (later draws shift). Parameters that
die pending, or that the model does not hold, still draw, in their place
(:mod:`.order`).

Example:
    >>> import torch.nn as nn
    >>> with deferred_construction():
    ...     model = nn.Linear(1024, 1024)   # nothing drawn, nothing written
    >>> pending_count()
    2
    >>> materialize(model)                  # the values it would have had
    >>> pending_count()
    0
"""
import contextlib
import os
import weakref
from typing import Any, Iterator, List, Mapping, Optional, Set, Tuple

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..context import current_session, stock_mode
from .copies import awaiting, copied_sources
from .ops import arg, generator_of, leaves, op_info, storage_ptr
from .order import build_mates, unsequence
from .recording import try_defer
from .replay import (PendingParameter, forget, is_pending, materialize,
                     materialize_ids, pending_count, sync_hooks)
from .running import run_ops
from .state import ENGINE, Op, pid_at

__all__ = ['deferred_construction', 'settle', 'materialize', 'pending_count',
           'is_pending', 'PendingParameter', 'Dropped', 'ENV_VAR',
           'defer_mode', 'declares_checkpoint', 'build_defers']


def _defer_allowed() -> bool:
    return current_session() is None


class _DeferMode(TorchDispatchMode):
    """Records whole-parameter init ops, replays before any other access."""

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        return False  # as WriteTracker: no dynamo import at start-up

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if ENGINE.replay_depth:
            return func(*args, **kwargs)
        info = op_info(func)
        if info.deferrable and _defer_allowed() and try_defer(
                func, info, args, kwargs):
            return arg(args, kwargs, info.write)
        pending = ENGINE.pending
        if pending and not info.no_read:
            pids = {pid_at(storage_ptr(x)) for x in leaves(args, kwargs)}
            if info.seeded:  # an eager draw: the deferred ones come first
                target = arg(args, kwargs, info.write) if info.write else 0
                key, _ = generator_of(
                    info, args, kwargs, target.device if isinstance(
                        target, torch.Tensor) else kwargs.get('device'))
                pids.update(pid for pid, e in pending.items()
                            if any(op.gen == key for op in e.ops))
            pids.discard(None)
            if pids:
                materialize_ids(pids, check_version=False)  # type: ignore
        return func(*args, **kwargs)


@contextlib.contextmanager
def deferred_construction() -> Iterator[None]:
    """Defer the constructor init of the parameters built inside (nestable).

    Example:
        >>> import torch.nn as nn
        >>> with deferred_construction():
        ...     fc = nn.Linear(2, 2)
        >>> is_pending(fc.weight), is_pending(fc.bias)
        (True, True)
        >>> materialize(fc)
    """
    if ENGINE.build_depth:
        yield
        return
    try:
        with ENGINE.building(), _DeferMode():
            yield
    finally:
        for entry in list(ENGINE.pending.values()):  # later writes: outside
            param = entry.ref()
            if entry.version is None and param is not None:
                entry.version = param._version


class Dropped:
    """Pending parameters :func:`settle` dropped because the checkpoint was
    to provide them. If the copy never comes (the init session failed),
    :meth:`refill` runs their constructor init, so no uninitialized memory
    survives an error (values from the generator's current state)."""

    def __init__(self) -> None:
        self.items: List[Tuple[weakref.ref, int, List[Op]]] = []

    def unwritten(self) -> Set[int]:
        """Ids of the dropped tensors not written since: their memory is
        as allocated (untouched, for a large one)."""
        alive = ((ref(), version) for ref, version, _ in self.items)
        return {id(t) for t, version in alive
                if t is not None and t._version == version}

    def refill(self, also: Tuple[torch.Tensor, ...] = ()) -> int:
        """Run the init of those not written since (and of those in
        ``also``, e.g. spoiled by a failed copy); return how many.

        Example:
            >>> import torch.nn as nn
            >>> with deferred_construction():
            ...     fc = nn.Linear(2, 2)
            >>> dropped = settle(dict(fc.named_parameters()), {'weight'})
            >>> dropped.refill()          # the checkpoint copy failed
            1
            >>> bool(fc.weight.isfinite().all())
            True
        """
        ops: List[Tuple[Op, torch.Tensor]] = []
        for ref, version, recorded in self.items:
            target = ref()
            if target is not None and (target._version == version or any(
                    target is t for t in also)):
                ops.extend((op, target) for op in recorded)
        self.items.clear()
        run_ops(sorted(ops, key=lambda item: item[0].seq))
        return len({id(t) for _, t in ops})


def settle(tensors: Mapping[str, torch.Tensor],
           protected: Set[str],
           later: Set[str] = frozenset()) -> Dropped:
    """Drop the pending ``tensors`` named in ``protected`` (the checkpoint
    copy overwrites them); replay the other pending ones now, except those
    named in ``later`` (below a module whose own ``init_weights`` may load
    them): they stay pending, and draw when they are replayed. The random
    draws recorded in the same builds for tensors not among ``tensors``
    (dead, or not registered as parameters) are replayed too: without
    deferral they came before anything drawn after the build.

    Example:
        >>> import torch.nn as nn
        >>> with deferred_construction():
        ...     fc = nn.Linear(2, 2)
        >>> dropped = settle(dict(fc.named_parameters()), {'weight'})
        >>> is_pending(fc.weight), is_pending(fc.bias), len(dropped.items)
        (False, False, 1)
    """
    dropped = Dropped()
    pending = ENGINE.pending
    if not pending:
        return dropped
    named = {id(t) for t in tensors.values()}
    mates = [pid for pid in build_mates(named) if pid not in named]
    followed = copied_sources()
    for name, t in tensors.items():
        entry = pending.get(id(t)) if name in protected else None
        if entry is not None:
            dropped.items.append((entry.ref, t._version, entry.ops))
            forget(id(t))
            if id(t) in followed:
                awaiting(t)
        elif name in later and id(t) in pending:
            unsequence(id(t))
    materialize_ids([id(t) for name, t in tensors.items()
                     if id(t) in pending and name not in later] + mates,
                    check_version=True)
    sync_hooks()
    return dropped


ENV_VAR = 'MMEXT_INIT_DEFER'
_MODES = {'auto': 'auto', '': 'auto',
          '1': 'always', 'always': 'always', 'true': 'always', 'on': 'always',
          'yes': 'always',
          '0': 'off', 'off': 'off', 'false': 'off', 'no': 'off'}
_CHECKPOINT_KEYS = ('pretrained', 'checkpoint')
_CHECKPOINT_SUFFIXES = ('_ckpt', '_checkpoint', '_pretrained')


def defer_mode(value: Optional[str] = None) -> str:
    """``'auto'``, ``'always'`` or ``'off'``: ``value``, else
    ``MMEXT_INIT_DEFER`` (``off`` inside ``stock_mmengine()``).

    Example:
        >>> defer_mode('1'), defer_mode('auto'), defer_mode('0')
        ('always', 'auto', 'off')
        >>> defer_mode('sometimes')
        Traceback (most recent call last):
        ValueError: MMEXT_INIT_DEFER='sometimes': expected auto, 1 (always) or 0 (off)
    """
    if value is None:
        value = os.environ.get(ENV_VAR, 'auto')
    value = value.strip().lower()
    if value not in _MODES:
        raise ValueError(f'{ENV_VAR}={value!r}: expected auto, 1 (always) '
                         'or 0 (off)')
    return 'off' if stock_mode() else _MODES[value]


def _names_a_file(value: Any) -> bool:
    if isinstance(value, (list, tuple)):
        return any(_names_a_file(v) for v in value)
    return isinstance(value, str) and bool(value.strip())


def _checkpoint_key(key: Any) -> bool:
    return isinstance(key, str) and (key in _CHECKPOINT_KEYS
                                     or key.endswith(_CHECKPOINT_SUFFIXES))


def _is_pretrained_type(kind: Any) -> bool:
    if isinstance(kind, type):
        kind = kind.__name__
    return isinstance(kind, str) and kind.split('.')[-1] in (
        'Pretrained', 'PretrainedInit')


def declares_checkpoint(cfg: Any) -> bool:
    """Whether the (model) config ``cfg`` declares a checkpoint to load, at
    any depth: an entry of type ``Pretrained``, or a ``pretrained``,
    ``checkpoint``, ``*_ckpt``, ``*_checkpoint`` or ``*_pretrained`` key
    naming a file (mmseg's ``pretrained=``, a distillation
    ``teacher_ckpt``).

    Example:
        >>> declares_checkpoint(dict(type='RetinaNet', backbone=dict(
        ...     type='ResNet', init_cfg=dict(type='Pretrained',
        ...                                  checkpoint='r50.pth'))))
        True
        >>> declares_checkpoint(dict(type='EncoderDecoder', pretrained=None,
        ...                          backbone=dict(type='MiT')))
        False
    """
    if isinstance(cfg, dict):
        if _is_pretrained_type(cfg.get('type')):
            return True
        return any((_checkpoint_key(key) and _names_a_file(value))
                   or declares_checkpoint(value)
                   for key, value in cfg.items())
    if isinstance(cfg, (list, tuple)):
        return any(declares_checkpoint(item) for item in cfg)
    return False


def build_defers(cfg: Any) -> bool:
    """Whether a model build from ``cfg`` runs deferred: ``always``, or
    ``auto`` (the default) and ``cfg`` declares a checkpoint (below)."""
    mode = defer_mode()
    return mode == 'always' or (mode == 'auto' and declares_checkpoint(cfg))
