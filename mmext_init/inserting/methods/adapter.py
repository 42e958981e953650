r"""``Adapter`` (Houlsby et al. 2019): a bottleneck residual after each
target's output, :math:`y = o + \mathrm{up}(\mathrm{act}(\mathrm{down}(x)))`
with :math:`x = o` (``mode='serial'``) or the target's input
(``mode='parallel'``), on the channel dim (1 for (N, C, H, W) outputs, the
last one for (..., C) outputs).

It is a :class:`BottleneckAdapter` child named ``adapter`` of the target
(``<target>.adapter.down.weight``...), whose ``init_cfg`` declares
``down`` Kaiming (fan in) and ``up`` all zero, so the target's output is
unchanged at step 0. It runs from :func:`adapter_forward_hook`; a target
that is a plain ``nn.Sequential`` (a ResNet stage) runs it as its last
element instead (serial mode only), since a Sequential calls every child.

Example:
    >>> import torch, torch.nn as nn
    >>> conv = nn.Conv2d(8, 16, 3, padding=1)
    >>> Adapter(reduction=4).insert(conv, 'conv')
    ['adapter']
    >>> sorted(conv.adapter.state_dict())
    ['down.bias', 'down.weight', 'up.bias', 'up.weight']
    >>> tuple(conv.adapter.down.weight.shape)
    (4, 16)
"""
import math
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmengine.registry import MODELS

from ..registry import (INSERT_TYPES, InsertType, child_name_free,
                        is_switched_off)

__all__ = ['Adapter', 'BottleneckAdapter', 'AdapterProjection',
           'adapter_forward_hook', 'infer_channels', 'build_activation']

MODES = ('serial', 'parallel')


def build_activation(cfg: dict) -> nn.Module:
    """An activation from an MMEngine/mmcv cfg (``dict(type='GELU')``): a
    type of MMEngine's ``MODELS`` (mmcv registers its activations there),
    else of ``torch.nn``.

    Example:
        >>> build_activation(dict(type='LeakyReLU', negative_slope=0.2))
        LeakyReLU(negative_slope=0.2)
    """
    cfg = dict(cfg)
    name = cfg.pop('type', None)
    cls = name if isinstance(name, type) else (
        MODELS.get(name) or getattr(nn, name, None)) if name else None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f'Adapter: act type {name!r} is no activation of '
                         'MMEngine/mmcv MODELS or torch.nn')
    return cls(**cfg)


class AdapterProjection(nn.Module):
    """A linear map on the last dim, ``weight`` (out, in) and ``bias`` (its
    init is the adapter's ``init_cfg``; the constructor gives ``down``
    ``nn.Linear``'s weight init and zero biases, ``up`` zeros).

    Example:
        >>> AdapterProjection(4, 2)(torch.randn(3, 4)).shape
        torch.Size([3, 2])
    """

    def __init__(self, in_features: int, out_features: int,
                 zero: bool = False, **kw) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(out_features, in_features,
                                               **kw))
        self.bias = nn.Parameter(torch.zeros(out_features, **kw))
        if not zero:
            nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class BottleneckAdapter(BaseModule):
    """``out + up(act(down(x)))`` on ``channels`` channels, ``x = out``
    unless given; ``target`` (the target's path) names it in errors.

    Example:
        >>> adapter = BottleneckAdapter(8, 2, target='neck')
        >>> adapter(torch.randn(2, 5))
        Traceback (most recent call last):
        ValueError: Adapter at 'neck': the output has 5 channels on its last dim, the adapter was built for 8 (set channels= in the insert entry)
    """

    def __init__(self, channels: int, hidden: int,
                 act: Optional[dict] = None, mode: str = 'serial',
                 target: str = '', init_cfg: Optional[List[dict]] = None,
                 **kw) -> None:
        super().__init__(init_cfg=init_cfg or [
            dict(type='Kaiming', mode='fan_in', override=dict(name='down')),
            dict(type='Constant', val=0, override=dict(name='up'))])
        self.channels, self.mode, self.target = channels, mode, target
        self.down = AdapterProjection(channels, hidden, **kw)
        self.act = build_activation(act or dict(type='ReLU'))
        self.up = AdapterProjection(hidden, channels, zero=True, **kw)

    def _check(self, t: object, what: str) -> int:
        """The channel dim of tensor ``t`` (the target's ``what``)."""
        where = f'Adapter at {self.target!r}'
        if not isinstance(t, torch.Tensor):
            raise ValueError(f'{where}: the {what} is a {type(t).__name__}, '
                             'not a tensor; target a module returning one')
        dim = 1 if t.dim() == 4 else -1
        if t.dim() == 0 or t.shape[dim] != self.channels:
            got = t.shape[dim] if t.dim() else 'no'
            name = 'dim 1' if dim == 1 else 'its last dim'
            raise ValueError(f'{where}: the {what} has {got} channels on '
                             f'{name}, the adapter was built for '
                             f'{self.channels} (set channels= in the insert '
                             'entry)')
        return dim

    def forward(self, out: torch.Tensor,
                x: Optional[torch.Tensor] = None) -> torch.Tensor:
        if is_switched_off(self):  # its insert set (also in a Sequential)
            return out
        self._check(out, 'output')
        dim = self._check(out if x is None else x, 'input')
        h = (out if x is None else x).movedim(dim, -1)
        delta = self.up(self.act(self.down(h))).movedim(-1, dim)
        if delta.shape != out.shape:
            raise ValueError(f'Adapter at {self.target!r}: input '
                             f'{tuple(delta.shape)} and output '
                             f'{tuple(out.shape)} differ in shape; '
                             "mode='parallel' needs equal shapes")
        return out + delta


def adapter_forward_hook(module: nn.Module, args: Tuple,
                         output: torch.Tensor) -> torch.Tensor:
    """Forward hook of an Adapter target: ``module.adapter(output)``, in
    parallel mode with the target's first input (everything read from
    ``module``: copies and pickles of the model use their own adapter)."""
    adapter = module.adapter
    if adapter.mode == 'parallel':
        if not args:
            raise ValueError(f'Adapter at {adapter.target!r}: '
                             "mode='parallel' needs a positional input")
        return adapter(output, args[0])
    return adapter(output)


def infer_channels(target: nn.Module) -> Optional[int]:
    """``out_features``/``out_channels`` of ``target``, else of the last
    ``nn.Linear``/``nn.Conv2d`` registered under it; None if none.

    Example:
        >>> infer_channels(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(),
        ...                              nn.Conv2d(8, 32, 1)))
        32
    """
    for attr in ('out_features', 'out_channels'):
        if isinstance(getattr(target, attr, None), int):
            return getattr(target, attr)
    last = None
    for module in target.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            last = module
    return None if last is None else getattr(
        last, 'out_features', getattr(last, 'out_channels', None))


def _runs_children(target: nn.Module) -> bool:
    """Whether ``target`` is a Sequential with torch's own forward."""
    return isinstance(target, nn.Sequential) and \
        type(target).forward is nn.Sequential.forward


@INSERT_TYPES.register_module()
class Adapter(InsertType):
    """A :class:`BottleneckAdapter` after each target.

    Args:
        hidden (int, optional): bottleneck width.
        reduction (int, optional): or ``hidden = channels // reduction``
            (give exactly one of the two).
        act (dict): activation cfg. Defaults to ``dict(type='ReLU')``.
        mode (str): ``'serial'`` (on the output) or ``'parallel'`` (on the
            input, added to the output).
        channels (int, optional): inferred by :func:`infer_channels`.
    """

    def __init__(self, hidden: Optional[int] = None,
                 reduction: Optional[int] = None, act: Optional[dict] = None,
                 mode: str = 'serial', channels: Optional[int] = None) -> None:
        if (hidden is None) == (reduction is None):
            raise ValueError('Adapter: give exactly one of hidden= and '
                             f'reduction= (got hidden={hidden!r}, '
                             f'reduction={reduction!r})')
        for name, value in (('hidden', hidden), ('reduction', reduction),
                            ('channels', channels)):
            if value is not None and (not isinstance(value, int)
                                      or isinstance(value, bool) or value < 1):
                raise ValueError(f'Adapter: {name} must be an int >= 1, got '
                                 f'{value!r}')
        if mode not in MODES:
            raise ValueError(f"Adapter: mode must be 'serial' or 'parallel', "
                             f'got {mode!r}')
        self.act = dict(act or dict(type='ReLU'))
        build_activation(self.act)
        self.hidden, self.reduction = hidden, reduction
        self.mode, self.channels = mode, channels

    def _sizes(self, target: nn.Module, path: str) -> Tuple[int, int]:
        where = f'{path!r} ({type(target).__name__})'
        channels = self.channels or infer_channels(target)
        if channels is None:
            raise ValueError(f'Adapter: cannot infer the channels of {where} '
                             '(no out_features/out_channels, no Linear or '
                             'Conv2d under it): set channels=')
        hidden = self.hidden or channels // self.reduction
        if hidden < 1:
            raise ValueError(f'Adapter: {where} has {channels} channels, '
                             f'fewer than reduction={self.reduction}')
        return channels, hidden

    def check(self, target: nn.Module, path: str) -> None:
        where = f'{path!r} ({type(target).__name__})'
        if isinstance(target, nn.Sequential) and not _runs_children(target):
            raise ValueError(f'Adapter: {where} is a Sequential with its own '
                             'forward (it may or may not run an added '
                             'child): target its blocks or its parent')
        if _runs_children(target) and self.mode == 'parallel':
            raise ValueError(f"Adapter: mode='parallel' cannot target the "
                             f'Sequential {where} (it runs every child, the '
                             'adapter on the output only): target its blocks')
        if type(target).forward is nn.Module.forward:
            raise ValueError(f'Adapter: {where} has no forward (a container '
                             'such as ModuleList): target its elements')
        child_name_free(target, 'adapter', path)
        self._sizes(target, path)

    def insert(self, target: nn.Module, path: str) -> List[str]:
        self.check(target, path)
        channels, hidden = self._sizes(target, path)
        weight = next(target.parameters(), None)
        kw = {} if weight is None else dict(dtype=weight.dtype,
                                            device=weight.device)
        target.add_module('adapter', BottleneckAdapter(
            channels, hidden, self.act, self.mode, path, **kw))
        if not _runs_children(target):
            target.register_forward_hook(adapter_forward_hook)
        return ['adapter']
