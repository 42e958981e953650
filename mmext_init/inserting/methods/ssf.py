r"""``SSF`` (Lian et al. 2022, "Scaling & Shifting Your Features"): a learned
per-channel scale :math:`\gamma` and shift :math:`\beta` after a layer,
:math:`y = \gamma \odot f(x) + \beta`, on the channel dim of its output: the
last dim for ``nn.Linear`` and ``nn.LayerNorm``, dim 1 for ``nn.Conv2d`` and
BatchNorm (``_BatchNorm``: ``BatchNorm1d/2d/3d``, ``SyncBatchNorm``).

Each target gets a child ``ssf`` (:class:`SSFScaleShift`: ``ssf.scale``,
``ssf.shift``) run by :func:`ssf_forward_hook`. Its declared init is the
init type ``ScaleShift`` (:class:`ScaleShiftInit`): by default the identity
(scale ones, shift zeros), so the model's function is unchanged at step 0
(``mmext-check`` passes); ``init='paper'`` draws as the paper's code does,
scale ~ N(1, 0.02) and shift ~ N(0, 0.02), which changes the function at
step 0.

SSF is linear in the target's output, so ``mmext-merge`` folds it
(:meth:`SSF.fold`): :math:`W' = \mathrm{diag}(\gamma) W`,
:math:`b' = \gamma b + \beta` (a norm's affine weight and bias likewise). A
target without a bias (a ``bias=False`` conv, a norm without affine) has no
tensor to take the shift: target the BatchNorm after such a conv instead.

Example:
    >>> import torch, torch.nn as nn
    >>> conv = nn.Conv2d(3, 4, 3)
    >>> SSF().insert(conv, 'conv')
    ['ssf']
    >>> sorted(conv.state_dict())
    ['bias', 'ssf.scale', 'ssf.shift', 'weight']
    >>> x = torch.randn(2, 3, 6, 6)
    >>> torch.equal(conv(x), nn.functional.conv2d(x, conv.weight, conv.bias))
    True
"""
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.model import BaseModule
from mmengine.registry import WEIGHT_INITIALIZERS
from torch.nn.modules.batchnorm import _BatchNorm

from ...errors import InitConfigError
from ..registry import (INSERT_TYPES, InsertType, child_name_free,
                        is_switched_off)

__all__ = ['SSF', 'SSFScaleShift', 'ScaleShiftInit', 'ssf_forward_hook',
           'ssf_channel_dim', 'INITS']

#: ``init=`` of an SSF entry: its ``ScaleShift`` std
INITS = {'identity': 0.0, 'paper': 0.02}

SUPPORTED = (nn.Linear, nn.Conv2d, _BatchNorm, nn.LayerNorm)


def ssf_channel_dim(layer: nn.Module) -> int:
    """The channel dim of ``layer``'s output SSF acts on: -1 for
    ``nn.Linear``/``nn.LayerNorm``, 1 for ``nn.Conv2d``/BatchNorm.

    Example:
        >>> [ssf_channel_dim(m) for m in (nn.BatchNorm2d(3), nn.LayerNorm(3))]
        [1, -1]
    """
    return -1 if isinstance(layer, (nn.Linear, nn.LayerNorm)) else 1


def channels_of(layer: nn.Module) -> int:
    """The output channels of a supported layer."""
    if isinstance(layer, nn.Linear):
        return layer.out_features
    if isinstance(layer, nn.Conv2d):
        return layer.out_channels
    if isinstance(layer, nn.LayerNorm):
        return layer.normalized_shape[-1]
    return layer.num_features


class SSFScaleShift(BaseModule):
    """SSF's ``scale`` and ``shift``, each of shape (channels,), on
    ``dim`` of a tensor; declared init ``ScaleShift`` with ``std`` (0: the
    identity). The constructor gives the identity; ``target`` (the target's
    path) names it in errors.

    Example:
        >>> ssf = SSFScaleShift(3, dim=1)
        >>> ssf(torch.ones(2, 3, 4)).sum().item()
        24.0
    """

    def __init__(self, channels: int, dim: int, std: float = 0.0,
                 target: str = '', init_cfg: Optional[dict] = None,
                 **kw) -> None:
        super().__init__(
            init_cfg=init_cfg or dict(type='ScaleShift', std=std))
        self.dim, self.target = dim, target
        self.scale = nn.Parameter(torch.ones(channels, **kw))
        self.shift = nn.Parameter(torch.zeros(channels, **kw))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dim = self.dim if self.dim >= 0 else x.dim() + self.dim
        if x.dim() <= dim or x.shape[dim] != self.scale.numel():
            got = x.shape[dim] if x.dim() > dim else 'no'
            raise ValueError(f'SSF at {self.target!r}: the output has {got} '
                             f'channels on dim {self.dim}, SSF was built for '
                             f'{self.scale.numel()}')
        shape = (-1, ) + (1, ) * (x.dim() - dim - 1)
        return x * self.scale.view(shape) + self.shift.view(shape)


def ssf_forward_hook(module: nn.Module, args: Tuple,
                     output: torch.Tensor) -> torch.Tensor:
    """Forward hook of an SSF target: ``module.ssf(output)`` (read from
    ``module``: copies and pickles use their own); ``output`` as it is
    while the insert set is switched off."""
    if is_switched_off(module.ssf):
        return output
    return module.ssf(output)


@WEIGHT_INITIALIZERS.register_module(name='ScaleShift', force=True)
class ScaleShiftInit:
    """Init type ``ScaleShift`` of :class:`SSFScaleShift` (every one under
    the module it applies to): ``scale`` ~ N(1, std), ``shift`` ~ N(0, std);
    ``std=0`` (the default) gives exactly ones and zeros.

    Raises:
        InitConfigError: a negative ``std``, ``layer``, an unknown argument,
            or no ``SSFScaleShift`` under the module.

    Example:
        >>> ssf = SSFScaleShift(4, dim=-1)
        >>> ScaleShiftInit(std=0.02)(ssf)
        >>> bool((ssf.scale != 1).all()), bool((ssf.shift != 0).all())
        (True, True)
    """

    #: an init_cfg entry without ``override`` applies to its own module
    applies_to_declaring_module = True

    def __init__(self, std: float = 0.0, layer=None, **unused) -> None:
        if layer or unused or not std >= 0:
            raise InitConfigError(
                'ScaleShift takes std >= 0 only (applied to the SSFScaleShift '
                f'declaring it), got std={std!r}' +
                (f', {sorted(unused) + (["layer"] if layer else [])}'
                 if layer or unused else ''))
        self.std = float(std)
        self.wholemodule = False

    def __call__(self, module: nn.Module) -> None:
        found = [m for m in module.modules() if isinstance(m, SSFScaleShift)]
        if not found:
            raise InitConfigError(
                f'ScaleShift: {type(module).__name__} holds no SSFScaleShift '
                '(it initializes SSF scales and shifts)')
        with torch.no_grad():
            for ssf in found:
                if self.std:
                    nn.init.normal_(ssf.scale, mean=1.0, std=self.std)
                    nn.init.normal_(ssf.shift, mean=0.0, std=self.std)
                else:
                    nn.init.ones_(ssf.scale)
                    nn.init.zeros_(ssf.shift)


@INSERT_TYPES.register_module()
class SSF(InsertType):
    """An SSF scale and shift after each target (see the module docstring).

    Args:
        init (str): ``'identity'`` (default: scale 1, shift 0, the function
            unchanged at step 0) or ``'paper'`` (the paper's draws, scale
            ~ N(1, 0.02), shift ~ N(0, 0.02)).

    Example:
        >>> bn = nn.BatchNorm2d(4)
        >>> SSF(init='paper').insert(bn, 'neck.bn')
        ['ssf']
        >>> bn.ssf.init_cfg
        {'type': 'ScaleShift', 'std': 0.02}
    """

    foldable = True

    def __init__(self, init: str = 'identity') -> None:
        if init not in INITS:
            raise ValueError(f"SSF: init must be 'identity' or 'paper', got "
                             f'{init!r}')
        self.init = init

    def check(self, target: nn.Module, path: str) -> None:
        where = f'{path!r} ({type(target).__name__})'
        if not isinstance(target, SUPPORTED):
            raise ValueError(f'SSF: {where} is not a supported layer: SSF '
                             'follows nn.Linear, nn.Conv2d, BatchNorm and '
                             'nn.LayerNorm')
        if isinstance(target, nn.LayerNorm) and \
                type(target).forward is not nn.LayerNorm.forward:
            raise ValueError(f'SSF: {where} overrides LayerNorm.forward (its '
                             'channel dim may not be the last): not '
                             'supported')
        child_name_free(target, 'ssf', path)

    def insert(self, target: nn.Module, path: str) -> List[str]:
        self.check(target, path)
        tensor = next(target.parameters(), None)
        kw = {} if tensor is None else dict(dtype=tensor.dtype,
                                            device=tensor.device)
        target.add_module('ssf', SSFScaleShift(
            channels_of(target), ssf_channel_dim(target), INITS[self.init],
            path, **kw))
        target.register_forward_hook(ssf_forward_hook)
        return ['ssf']

    def fold(self, target: nn.Module,
             path: str) -> Dict[str, Optional[torch.Tensor]]:
        """``weight`` scaled per output channel, ``bias = scale * bias +
        shift``; ``ssf`` dropped.

        Raises:
            ValueError: naming ``path``, if the target has no bias (or no
                affine weight) to fold into.

        Example:
            >>> fc = nn.Linear(2, 3, bias=False)
            >>> _ = SSF().insert(fc, 'head.fc')
            >>> SSF().fold(fc, 'head.fc')
            Traceback (most recent call last):
            ValueError: SSF at 'head.fc' (Linear): no bias to fold the shift into; target a layer with a bias, e.g. the BatchNorm after a conv with bias=False
        """
        weight, bias = target.weight, target.bias
        if weight is None or bias is None:
            what = 'bias' if weight is not None else 'affine weight and bias'
            raise ValueError(
                f'SSF at {path!r} ({type(target).__name__}): no {what} to '
                'fold the shift into; target a layer with a bias, e.g. the '
                'BatchNorm after a conv with bias=False')
        scale, shift = target.ssf.scale, target.ssf.shift
        if isinstance(target, nn.LayerNorm):
            column = scale  # broadcast on the last dim
        else:
            column = scale.view((-1, ) + (1, ) * (weight.dim() - 1))
        return {'weight': weight * column, 'bias': scale * bias + shift,
                'ssf.scale': None, 'ssf.shift': None}
