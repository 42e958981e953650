"""Freezing: ``requires_grad=False``, and normalization layers whose
parameters are all frozen kept in eval mode, so their running statistics do
not move. ``model.train()`` does not undo it: a forward pre-hook puts such a
layer back in eval mode before each call (``lr=0`` is not freezing).

Example:
    >>> import torch, torch.nn as nn
    >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    >>> frozen = freeze_params(net, [net[1].weight, net[1].bias])
    >>> frozen
    ['1']
    >>> _ = net.train()(torch.randn(4, 2))
    >>> net[1].running_mean.abs().sum().item(), net[1].weight.requires_grad
    (0.0, False)
    >>> unfreeze_params(net, [net[1].weight, net[1].bias])
    >>> _ = net.train()(torch.randn(4, 2))
    >>> net[1].running_mean.abs().sum().item() > 0, net[1].training
    (True, True)
"""
from typing import Any, Iterable, List

import torch.nn as nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

_HANDLE = '_mmext_frozen_norm'
NORMS = (_BatchNorm, _InstanceNorm, nn.GroupNorm, nn.LayerNorm)


def keep_eval(module: nn.Module, args: Any) -> None:
    """Forward pre-hook of a frozen norm layer: eval mode."""
    module.training = False


def frozen_norms(root: nn.Module) -> List[str]:
    """Paths of the norm layers of ``root`` kept in eval mode."""
    return [n for n, m in root.named_modules() if _HANDLE in m.__dict__]


def freeze_params(root: nn.Module,
                  params: Iterable[nn.Parameter]) -> List[str]:
    """``requires_grad=False`` on ``params``; returns the paths of the norm
    layers now all frozen (kept in eval mode from now on)."""
    for p in params:
        p.requires_grad_(False)
    done = []
    for path, module in root.named_modules():
        own = list(module.parameters(recurse=False))
        if (isinstance(module, NORMS) and own and _HANDLE not in
                module.__dict__ and not any(p.requires_grad for p in own)):
            module.__dict__[_HANDLE] = module.register_forward_pre_hook(
                keep_eval)
            module.train(False)
            done.append(path)
    return done


def unfreeze_params(root: nn.Module, params: Iterable[nn.Parameter]) -> None:
    """``requires_grad=True`` on ``params``; their norm layers follow
    ``train()``/``eval()`` again (and take the root's mode now)."""
    for p in params:
        p.requires_grad_(True)
    for module in root.modules():
        handle = module.__dict__.get(_HANDLE)
        if handle is not None and any(
                p.requires_grad for p in module.parameters(recurse=False)):
            handle.remove()
            del module.__dict__[_HANDLE]
            module.training = root.training
