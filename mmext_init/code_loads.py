"""Loads that ``init_weights`` overrides perform themselves count as loaded.

While an init session runs, ``nn.Module._load_from_state_dict`` is wrapped:
a ``load_state_dict``/``load_checkpoint`` called by init code (mmdet/mmseg
Swin, mmseg ViT) becomes a tracked *checkpoint* source, so the tensors it
writes get ``checkpoint`` provenance (with their keys as written in the
file, where the tensor is still the one read from it) and are protected from
later initializers. Once copied, the source tensors give their pages back
when they were read through a map of that checkpoint (see
:mod:`.page_release`).

Example:
    >>> with tracking_code_loads(current_session):
    ...     session.init_module(root)
"""
import contextlib
import itertools
from typing import Any, Callable, Iterator

import torch
import torch.nn as nn

from .provenance import CHECKPOINT
from .safe_load import file_key
from .tracking import InitSource


@contextlib.contextmanager
def tracking_code_loads(current_session: Callable[[], Any]) -> Iterator[None]:
    """Attribute ``load_state_dict`` calls made by init code to a checkpoint."""
    original = nn.Module._load_from_state_dict
    if getattr(original, '_mmext_wrapped', False):
        yield
        return

    def _load_from_state_dict(module, state_dict, prefix, *args, **kwargs):
        session = current_session()
        tracker = session.tracker if session else None
        if tracker is None or tracker.current is None:
            return original(module, state_dict, prefix, *args, **kwargs)
        keys, file_keys = {}, {}
        persistent = itertools.chain(
            module._parameters.items(),
            ((k, v) for k, v in module._buffers.items()
             if k not in module._non_persistent_buffers_set))
        for local, tensor in persistent:
            name = tracker.name_of(tensor) if tensor is not None else None
            if name is not None and prefix + local in state_dict:
                keys[name] = key = prefix + local
                file_keys[name] = file_key(state_dict[key]) or key
        owner = session._overrides[-1] if session._overrides else module
        src = InitSource(CHECKPOINT, session.override_checkpoint(),
                         session.path_of(owner), keys=file_keys)
        with tracker.source(src):
            out = original(module, state_dict, prefix, *args, **kwargs)
        pages = session.mapped_file(src.source)
        for key in keys.values():
            if isinstance(state_dict.get(key), torch.Tensor):
                pages.release(state_dict[key])
        return out

    _load_from_state_dict._mmext_wrapped = True
    nn.Module._load_from_state_dict = _load_from_state_dict
    try:
        yield
    finally:
        nn.Module._load_from_state_dict = original
