"""The model of a config for a dry run, with its parameters and buffers on
the meta device (no memory for weights), the rest of what its constructors
compute staying real: Swin's drop-path rates are ``torch.linspace(...)``
values read back with ``.item()``, which a meta tensor cannot give. A
constructor that needs the values of its own parameters or buffers is
built on CPU instead, and the reason is returned.

Example:
    >>> import torch.nn as nn
    >>> with tensors_on_meta():
    ...     layer = nn.Linear(2, 2)
    >>> layer.weight.is_meta, layer.weight.requires_grad
    (True, True)
"""
import contextlib
from typing import Iterator, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope
from torch.nn.modules.module import (
    register_module_buffer_registration_hook,
    register_module_parameter_registration_hook)
from torch.nn.parameter import is_lazy


@contextlib.contextmanager
def tensors_on_meta() -> Iterator[None]:
    """Parameters and buffers go to the meta device as modules register
    them (torch's global registration hooks); any other tensor a
    constructor makes stays real."""

    def parameter(module: nn.Module, name: str,
                  param: Optional[nn.Parameter]) -> Optional[nn.Parameter]:
        if param is None or param.is_meta or is_lazy(param):
            return None
        return nn.Parameter(param.to('meta'), param.requires_grad)

    def buffer(module: nn.Module, name: str,
               tensor: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        if tensor is None or tensor.is_meta or is_lazy(tensor):
            return None
        return tensor.to('meta')

    hooks = [register_module_parameter_registration_hook(parameter),
             register_module_buffer_registration_hook(buffer)]
    try:
        yield
    finally:
        for hook in hooks:
            hook.remove()


def build_model(cfg: Config) -> Tuple[nn.Module, str, Optional[str]]:
    """The config's model with its tensors on the meta device, else on
    CPU; the device and, for CPU, why the meta build failed."""
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    try:
        with tensors_on_meta():
            return MODELS.build(cfg.model), 'meta', None
    except Exception as exc:  # a constructor reading its own tensors
        why = f'{type(exc).__name__}: {exc}'.splitlines()[0][:200]
        return MODELS.build(cfg.model), 'cpu', why
