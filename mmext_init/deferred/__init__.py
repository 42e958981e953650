"""Deferred constructor init: the engine (see :mod:`.construction`).

The public names of the engine; its modules, bottom up: :mod:`.ops` (what
an ATen op reads, writes, draws), :mod:`.state` (the engine's state,
:data:`ENGINE`), :mod:`.running` (running recorded ops), :mod:`.order`
(draw order), :mod:`.copies` (pending copies and aliases), :mod:`.plan`
(what one replay does), :mod:`.replay` (pending parameters, replaying),
:mod:`.recording` (recording), :mod:`.construction` (the build mode, which
builds defer, ``settle``), :mod:`.guards` (wrappers the plugin installs)
and :mod:`.debug` (watching replays, for tests).

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
from .construction import (ENV_VAR, Dropped, build_defers, declares_checkpoint,
                           defer_mode, deferred_construction, settle)
from .debug import observe_replays, record_of, watch_replays
from .replay import (PendingParameter, hooks_installed, is_pending,
                     materialize, pending_count)
from .state import ENGINE, EngineState

__all__ = ['deferred_construction', 'settle', 'materialize', 'pending_count',
           'is_pending', 'build_defers', 'declares_checkpoint', 'defer_mode',
           'PendingParameter', 'Dropped', 'ENV_VAR',
           'hooks_installed', 'ENGINE', 'EngineState', 'observe_replays',
           'watch_replays', 'record_of']
