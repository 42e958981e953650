"""Deferred constructor init: the engine (see :mod:`.construction`).

The public names of the engine; its modules, bottom up: :mod:`.ops` (what
an ATen op reads, writes, draws), :mod:`.state` (the engine's state),
:mod:`.order` (draw order), :mod:`.copies` (pending copies and aliases),
:mod:`.replay` (recording and replaying), :mod:`.construction` (the build
mode and ``settle``) and :mod:`.guards` (wrappers the plugin installs).

Example:
    >>> import torch.nn as nn
    >>> with deferred_construction():
    ...     fc = nn.Linear(256, 256)
    >>> is_pending(fc.weight), pending_count()
    (True, 2)
    >>> materialize(fc)
    >>> is_pending(fc.weight)
    False
"""
from .construction import (ENV_VAR, Dropped, deferred_construction, enabled,
                           settle)
from .replay import (PendingParameter, hooks_installed, is_pending,
                     materialize, pending_count)

__all__ = ['deferred_construction', 'settle', 'materialize', 'pending_count',
           'is_pending', 'enabled', 'PendingParameter', 'Dropped', 'ENV_VAR',
           'hooks_installed']
