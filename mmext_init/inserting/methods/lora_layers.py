r"""LoRA's layers: :class:`LoRADown` (A), :class:`LoRAUp` (B), the forward
hook :func:`lora_forward_hook` that adds the branch
:math:`s\, B A\, \mathrm{drop}(x)` to a target's output, :func:`lora_layer`
(the layer LoRA applies to) and :func:`lora_delta`, the branch as a weight
change. The insert type that uses them is :class:`~.lora.LoRA`.

Example:
    >>> import torch, torch.nn as nn
    >>> a, b = LoRADown(16, 4), LoRAUp(4, 8)
    >>> a.weight.shape, b.weight.shape, b(a(torch.randn(2, 16))).abs().sum()
    (torch.Size([4, 16]), torch.Size([8, 4]), tensor(0., grad_fn=<SumBackward0>))
"""
import math
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule

from ...matching import class_names
from ..registry import is_switched_off

__all__ = ['LoRADown', 'LoRAUp', 'lora_forward_hook', 'lora_delta',
           'lora_layer', 'LORA_ATTRS']

#: what LoRA adds to its target layer
LORA_ATTRS = ('lora_A', 'lora_B', 'lora_dropout', 'lora_scale')

Pair = Union[int, Tuple[int, int]]


class LoRADown(BaseModule):
    """LoRA's A: ``weight`` of shape (r, in) for a Linear target, (r, in, kh,
    kw) for a Conv2d (applied with the target's stride, padding, dilation
    and padding mode, over all input channels even for a grouped target,
    as PEFT builds it). Declared init: ``Kaiming`` uniform, ``a=sqrt(5)``,
    fan in (PEFT's and ``nn.Linear``'s default); the constructor draws the
    same.

    Example:
        >>> a = LoRADown(8, 2, kernel_size=(3, 3), padding=(1, 1))
        >>> a(torch.randn(1, 8, 5, 5)).shape
        torch.Size([1, 2, 5, 5])
    """

    def __init__(self,
                 in_features: int,
                 rank: int,
                 kernel_size: Optional[Tuple[int, int]] = None,
                 stride: Pair = 1,
                 padding: Union[Pair, str] = 0,
                 dilation: Pair = 1,
                 padding_mode: str = 'zeros',
                 reversed_padding: Tuple[int, ...] = (),
                 dtype: Optional[torch.dtype] = None,
                 device: Optional[torch.device] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg or dict(
            type='Kaiming', layer='LoRADown', a=math.sqrt(5),
            mode='fan_in', nonlinearity='leaky_relu',
            distribution='uniform'))
        shape = (rank, in_features) + tuple(kernel_size or ())
        self.weight = nn.Parameter(
            torch.empty(shape, dtype=dtype, device=device))
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.padding_mode = padding_mode
        self.reversed_padding = tuple(reversed_padding)
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.dim() == 2:
            return F.linear(x, self.weight)
        padding = self.padding
        if self.padding_mode != 'zeros':
            x = F.pad(x, self.reversed_padding, mode=self.padding_mode)
            padding = 0
        return F.conv2d(x, self.weight, None, self.stride, padding,
                        self.dilation)


class LoRAUp(BaseModule):
    """LoRA's B: ``weight`` of shape (out, r), or (out, r / groups, 1, 1)
    for a conv target with ``groups`` groups (a grouped 1x1 conv, as PEFT
    builds it). Declared init: ``Constant(val=0)``, so the branch adds
    exactly 0 at step 0; the constructor gives zeros too.

    Example:
        >>> LoRAUp(2, 6, conv=True)(torch.randn(1, 2, 5, 5)).abs().sum().item()
        0.0
        >>> LoRAUp(4, 6, conv=True, groups=2).weight.shape
        torch.Size([6, 2, 1, 1])
    """

    def __init__(self,
                 rank: int,
                 out_features: int,
                 conv: bool = False,
                 dtype: Optional[torch.dtype] = None,
                 device: Optional[torch.device] = None,
                 init_cfg: Optional[dict] = None,
                 groups: int = 1) -> None:
        super().__init__(init_cfg=init_cfg or dict(
            type='Constant', layer='LoRAUp', val=0))
        shape = (out_features, rank // groups) + ((1, 1) if conv else ())
        self.weight = nn.Parameter(
            torch.zeros(shape, dtype=dtype, device=device))
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.dim() == 2:
            return F.linear(x, self.weight)
        return F.conv2d(x, self.weight, groups=self.groups)


def lora_forward_hook(module: nn.Module, args: Tuple,
                      output: torch.Tensor) -> torch.Tensor:
    """Forward hook of a LoRA target: ``output + lora_scale *
    lora_B(lora_A(lora_dropout(input)))``, everything read from ``module``
    (a module-level function: copies and pickles of the model use their own
    branch); ``output`` as it is while the insert set is switched off."""
    if is_switched_off(module.lora_A):
        return output
    x = module.lora_dropout(args[0])
    return output + module.lora_scale * module.lora_B(module.lora_A(x))


def lora_layer(module: nn.Module) -> nn.Module:
    """The layer LoRA applies to: ``module`` itself, or the ``conv`` of an
    mmcv ``ConvModule`` (recognized by class name: mmcv stays optional).

    Example:
        >>> fc = nn.Linear(2, 2)
        >>> lora_layer(fc) is fc
        True
    """
    if 'ConvModule' in class_names(module) and \
            isinstance(getattr(module, 'conv', None), nn.Module):
        return module.conv
    return module


def lora_delta(module: nn.Module) -> torch.Tensor:
    r"""The weight change :math:`s\, B A` of a LoRA'd layer (or
    ``ConvModule``, or the packed q/k/v of an ``nn.MultiheadAttention``), in
    the shape of its ``weight``: adding it to the weight and dropping the
    branch gives the same function (dropout aside).

    Raises:
        ValueError: for a grouped conv, whose branch (A over all input
            channels) is no grouped weight.

    Example (folding is exact, a 3x3 stride-2 conv in float64):
        >>> from mmext_init.inserting import LoRA
        >>> conv = nn.Conv2d(4, 6, 3, stride=2, padding=1).double()
        >>> _ = LoRA(rank=2, alpha=4).insert(conv, 'conv')
        >>> _ = nn.init.normal_(conv.lora_B.weight)  # as after training
        >>> merged = nn.Conv2d(4, 6, 3, stride=2, padding=1).double()
        >>> merged.load_state_dict(dict(
        ...     weight=conv.weight + lora_delta(conv), bias=conv.bias))
        <All keys matched successfully>
        >>> x = torch.randn(2, 4, 9, 9, dtype=torch.float64)
        >>> torch.allclose(merged(x), conv(x), rtol=0, atol=1e-10)
        True
    """
    layer = lora_layer(module)
    a, b = layer.lora_A.weight, layer.lora_B.weight
    if a.dim() == 2:
        return layer.lora_scale * (b @ a)
    if getattr(layer.lora_B, 'groups', 1) != 1:
        raise ValueError(
            f'{type(layer).__name__} with groups={layer.lora_B.groups}: its '
            'LoRA branch (A over all input channels, B grouped, as PEFT '
            'builds it) mixes channels across groups, so it is no weight of '
            'the grouped conv and cannot be folded into it (PEFT refuses '
            'the same merge, peft#2403)')
    return layer.lora_scale * torch.einsum('or,rikl->oikl', b.flatten(1), a)
