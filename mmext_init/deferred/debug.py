"""Looking into the engine, for tests and debugging: which tensors replays
compute (:func:`watch_replays`), a hook before each replay
(:func:`observe_replays`) and the record of a pending tensor
(:func:`record_of`).

Example:
    >>> import torch.nn as nn
    >>> from mmext_init.deferred import deferred_construction, materialize
    >>> with deferred_construction():
    ...     fc = nn.Linear(2, 2)
    >>> with watch_replays() as replayed:
    ...     materialize(fc)
    >>> replayed == {id(fc.weight), id(fc.bias)}
    True
"""
import contextlib
from typing import Any, Iterator, Optional, Set

import torch

from ..context import pushed
from .replay import entry_of
from .state import ENGINE, Observer

__all__ = ['observe_replays', 'watch_replays', 'record_of']


@contextlib.contextmanager
def observe_replays(observer: Observer) -> Iterator[Observer]:
    """Inside the block, ``observer(targets, copy)`` runs before each replay:
    ``targets`` are the tensors whose recorded ops run, ``copy`` the
    (source, destination) pair copied first, or None. An observer that
    raises stops the replay, which poisons what it was to compute.

    Example:
        >>> import torch.nn as nn
        >>> from mmext_init.deferred import deferred_construction, materialize
        >>> with deferred_construction():
        ...     fc = nn.Linear(2, 2)
        >>> seen = []
        >>> with observe_replays(lambda targets, copy: seen.append(
        ...         len(targets))):
        ...     materialize(fc)
        >>> seen                    # one replay, of two recorded ops
        [2]
    """
    with pushed(ENGINE.replay_observers, observer):
        yield observer


@contextlib.contextmanager
def watch_replays() -> Iterator[Set[int]]:
    """A set, filled inside the block with the ids of the tensors whose
    recorded init runs (see the module's example)."""
    replayed: Set[int] = set()

    def watch(targets: Any, copy: Any) -> None:
        replayed.update(id(t) for t in targets)

    with observe_replays(watch):
        yield replayed


def record_of(t: torch.Tensor) -> Optional[Any]:
    """The record of the pending ``t`` (or of the parameter it aliases), or
    None: its ``ops`` (recorded, in order), ``version``, ``build``...

    Example:
        >>> import torch.nn as nn
        >>> from mmext_init.deferred import deferred_construction, materialize
        >>> with deferred_construction():
        ...     fc = nn.Linear(2, 2)
        >>> [op.func.__name__ for op in record_of(fc.weight).ops]
        ['uniform_.default']
        >>> materialize(fc)
        >>> record_of(fc.weight) is None
        True
    """
    return entry_of(t)
