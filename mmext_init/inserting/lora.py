r"""``LoRA`` (Hu et al. 2021): a low-rank branch beside a ``nn.Linear``,
``nn.Conv2d`` (``groups=1``) or mmcv ``ConvModule`` (its ``conv``),
:math:`y = W x + b + s\, B A\, \mathrm{drop}(x)`, :math:`s = \alpha / r`.

The target keeps its name and its ``weight``/``bias``; beside them it gets
``lora_A`` (:class:`LoRADown`: for a conv, the target's kernel, stride,
padding and dilation) and ``lora_B`` (:class:`LoRAUp`, 1x1 for a conv),
each holding a ``weight`` and declaring its init in its ``init_cfg`` (A
``kaiming_uniform_(a=sqrt(5))``, B zero), ``lora_dropout`` and the float
``lora_scale``; the branch is added by :func:`lora_forward_hook`, which reads
all of them from its ``module`` argument (so ``copy.deepcopy`` and
``pickle`` give a copy using its own branch). :func:`lora_delta` gives
:math:`s\, B A` in the target weight's shape, to fold the branch into it.

Example:
    >>> import torch, torch.nn as nn
    >>> fc = nn.Linear(16, 8)
    >>> LoRA(rank=4, alpha=8).insert(fc, 'fc')
    ['lora_A', 'lora_B', 'lora_dropout']
    >>> sorted(fc.state_dict())
    ['bias', 'lora_A.weight', 'lora_B.weight', 'weight']
    >>> fc.lora_scale, fc.lora_A.weight.shape, fc.lora_B.weight.shape
    (2.0, torch.Size([4, 16]), torch.Size([8, 4]))
"""
import math
from typing import Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule

from ..matching import class_names
from .registry import INSERT_TYPES, InsertType, child_name_free

__all__ = ['LoRA', 'LoRADown', 'LoRAUp', 'lora_forward_hook', 'lora_delta',
           'lora_layer', 'LORA_ATTRS']

#: what LoRA adds to its target layer
LORA_ATTRS = ('lora_A', 'lora_B', 'lora_dropout', 'lora_scale')

Pair = Union[int, Tuple[int, int]]


class LoRADown(BaseModule):
    """LoRA's A: ``weight`` of shape (r, in) for a Linear target, (r, in, kh,
    kw) for a Conv2d (applied with the target's stride, padding, dilation
    and padding mode). Declared init: ``Kaiming`` uniform, ``a=sqrt(5)``,
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
    """LoRA's B: ``weight`` of shape (out, r), or (out, r, 1, 1) for a conv
    target. Declared init: ``Constant(val=0)``, so the branch adds exactly 0
    at step 0; the constructor gives zeros too.

    Example:
        >>> LoRAUp(2, 6, conv=True)(torch.randn(1, 2, 5, 5)).abs().sum().item()
        0.0
    """

    def __init__(self,
                 rank: int,
                 out_features: int,
                 conv: bool = False,
                 dtype: Optional[torch.dtype] = None,
                 device: Optional[torch.device] = None,
                 init_cfg: Optional[dict] = None) -> None:
        super().__init__(init_cfg=init_cfg or dict(
            type='Constant', layer='LoRAUp', val=0))
        shape = (out_features, rank) + ((1, 1) if conv else ())
        self.weight = nn.Parameter(
            torch.zeros(shape, dtype=dtype, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.dim() == 2:
            return F.linear(x, self.weight)
        return F.conv2d(x, self.weight)


def lora_forward_hook(module: nn.Module, args: Tuple,
                      output: torch.Tensor) -> torch.Tensor:
    """Forward hook of a LoRA target: ``output + lora_scale *
    lora_B(lora_A(lora_dropout(input)))``, everything read from ``module``
    (a module-level function: copies and pickles of the model use their own
    branch)."""
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


@INSERT_TYPES.register_module()
class LoRA(InsertType):
    """A LoRA branch on each target (see the module docstring).

    Args:
        rank (int): r >= 1.
        alpha (float, optional): the scale is ``alpha / rank``; defaults to
            ``rank`` (scale 1).
        dropout (float): dropout on the branch's input. Defaults to 0.
    """

    foldable = True

    def __init__(self,
                 rank: int,
                 alpha: Optional[float] = None,
                 dropout: float = 0.0) -> None:
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f'LoRA: rank must be an int >= 1, got {rank!r}')
        if not 0 <= dropout < 1:
            raise ValueError(f'LoRA: dropout must be in [0, 1), got '
                             f'{dropout!r}')
        self.rank = rank
        self.alpha = rank if alpha is None else alpha
        self.dropout = dropout

    def check(self, target: nn.Module, path: str) -> None:
        layer = lora_layer(target)
        where = f'{path!r} ({type(target).__name__})'
        if layer is not target:
            where += f'.conv ({type(layer).__name__})'
        if not isinstance(layer, (nn.Linear, nn.Conv2d)):
            raise ValueError(f'LoRA: {where} is not a supported layer: LoRA '
                             'applies to nn.Linear, nn.Conv2d and mmcv '
                             'ConvModule')
        if isinstance(layer, nn.Conv2d) and layer.groups != 1:
            raise ValueError(f'LoRA: {where} has groups={layer.groups}; '
                             'LoRA applies to convolutions with groups=1')
        for name in LORA_ATTRS:
            child_name_free(layer, name, path)

    def insert(self, target: nn.Module, path: str) -> List[str]:
        self.check(target, path)
        layer = lora_layer(target)
        kw = dict(dtype=layer.weight.dtype, device=layer.weight.device)
        if isinstance(layer, nn.Linear):
            layer.lora_A = LoRADown(layer.in_features, self.rank, **kw)
            layer.lora_B = LoRAUp(self.rank, layer.out_features, **kw)
        else:
            layer.lora_A = LoRADown(
                layer.in_channels, self.rank, tuple(layer.kernel_size),
                layer.stride, layer.padding, layer.dilation,
                layer.padding_mode,
                getattr(layer, '_reversed_padding_repeated_twice', ()), **kw)
            layer.lora_B = LoRAUp(
                self.rank, layer.out_channels, conv=True, **kw)
        layer.lora_dropout = nn.Dropout(self.dropout) if self.dropout \
            else nn.Identity()
        layer.lora_scale = self.alpha / self.rank
        layer.register_forward_hook(lora_forward_hook)
        prefix = '' if layer is target else 'conv.'
        return [prefix + n for n in LORA_ATTRS[:3]]

    def fold(self, target: nn.Module,
             path: str) -> Dict[str, Optional[torch.Tensor]]:
        """``weight + lora_delta(target)``; ``lora_A``/``lora_B`` dropped.

        Example:
            >>> fc = nn.Linear(4, 3)
            >>> lora = LoRA(rank=2)
            >>> _ = lora.insert(fc, 'fc')
            >>> sorted(lora.fold(fc, 'fc').items(), key=lambda kv: kv[0])[0]
            ('lora_A.weight', None)
        """
        layer = lora_layer(target)
        prefix = '' if layer is target else 'conv.'
        return {prefix + 'weight': layer.weight + lora_delta(layer),
                prefix + 'lora_A.weight': None,
                prefix + 'lora_B.weight': None}


def lora_delta(module: nn.Module) -> torch.Tensor:
    r"""The weight change :math:`s\, B A` of a LoRA'd layer (or
    ``ConvModule``), in the shape of its ``weight``: adding it to the weight
    and dropping the branch gives the same function (dropout aside).

    Example (folding is exact, a 3x3 stride-2 conv in float64):
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
        delta = b @ a
    else:
        delta = torch.einsum('or,rikl->oikl', b.flatten(1), a)
    return layer.lora_scale * delta
