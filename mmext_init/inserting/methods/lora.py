r"""``LoRA`` (Hu et al. 2021): a low-rank branch beside a ``nn.Linear``,
``nn.Conv2d`` (grouped too) or mmcv ``ConvModule`` (its ``conv``),
:math:`y = W x + b + s\, B A\, \mathrm{drop}(x)`, :math:`s = \alpha / r`
(rsLoRA, Kalajdzievski 2023, ``use_rslora=True``: :math:`\alpha/\sqrt{r}`),
and a low-rank change of an ``nn.MultiheadAttention``'s q/k/v and output
projections (:mod:`.lora_mha`).

The target keeps its name and its ``weight``/``bias``; beside them it gets
``lora_A`` (:class:`~.lora_layers.LoRADown`: for a conv, the target's
kernel, stride, padding and dilation) and ``lora_B``
(:class:`~.lora_layers.LoRAUp`, 1x1 for a conv, with the target's
``groups``: the rank must then be a multiple of them, as in PEFT), each
holding a ``weight`` and declaring its init in its ``init_cfg`` (A
``kaiming_uniform_(a=sqrt(5))``, B zero), ``lora_dropout`` and the float
``lora_scale``; the branch is added by
:func:`~.lora_layers.lora_forward_hook`, which reads all of them from its
``module`` argument (so ``copy.deepcopy`` and ``pickle`` give a copy using
its own branch). :func:`~.lora_layers.lora_delta` gives :math:`s\, B A` in
the target weight's shape, to fold the branch into it. With the same A and
B, outputs are those of HF PEFT's ``LoraConfig`` bit for bit.

Example:
    >>> import torch, torch.nn as nn
    >>> fc = nn.Linear(16, 8)
    >>> LoRA(rank=4, alpha=8).insert(fc, 'fc')
    ['lora_A', 'lora_B', 'lora_dropout']
    >>> sorted(fc.state_dict())
    ['bias', 'lora_A.weight', 'lora_B.weight', 'weight']
    >>> fc.lora_scale, fc.lora_A.weight.shape, fc.lora_B.weight.shape
    (2.0, torch.Size([4, 16]), torch.Size([8, 4]))
    >>> LoRA(rank=4, alpha=8, use_rslora=True).scale
    4.0
"""
import math
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from .lora_layers import (LORA_ATTRS, LoRADown, LoRAUp, lora_delta,
                          lora_forward_hook, lora_layer)
from .lora_mha import MHA_PARTS, check_mha, fold_mha, insert_mha
from ..registry import INSERT_TYPES, InsertType, child_name_free

__all__ = ['LoRA', 'LoRADown', 'LoRAUp', 'lora_forward_hook', 'lora_delta',
           'lora_layer', 'LORA_ATTRS']


def _where(target: nn.Module, layer: nn.Module, path: str) -> str:
    """How messages name a target: ``'path' (Class)``, plus ``.conv``."""
    where = f'{path!r} ({type(target).__name__})'
    if layer is not target:
        where += f'.conv ({type(layer).__name__})'
    return where


@INSERT_TYPES.register_module()
class LoRA(InsertType):
    """A LoRA branch on each target (see the module docstring).

    Args:
        rank (int): r >= 1 (a multiple of ``groups`` on a grouped conv).
        alpha (float, optional): the scale is ``alpha / rank``; defaults to
            ``rank`` (scale 1).
        dropout (float): dropout on the branch's input. Defaults to 0 (and
            must be 0 on an ``nn.MultiheadAttention``).
        use_rslora (bool): rsLoRA's scale ``alpha / sqrt(rank)`` (PEFT's
            name). Defaults to False.
        mha_parts (sequence of str): on an ``nn.MultiheadAttention``, which
            projections change: ``'in_proj'`` (the packed q/k/v) and/or
            ``'out_proj'``. Defaults to both (as PEFT).
    """

    foldable = True
    #: the forward hook that adds the branch (a module-level function:
    #: copies and pickles of the model keep working); DoRA has its own
    forward_hook = staticmethod(lora_forward_hook)

    def __init__(self,
                 rank: int,
                 alpha: Optional[float] = None,
                 dropout: float = 0.0,
                 use_rslora: bool = False,
                 mha_parts: Sequence[str] = MHA_PARTS) -> None:
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f'LoRA: rank must be an int >= 1, got {rank!r}')
        if not 0 <= dropout < 1:
            raise ValueError(f'LoRA: dropout must be in [0, 1), got '
                             f'{dropout!r}')
        if not isinstance(use_rslora, bool):
            raise ValueError(f'LoRA: use_rslora must be True or False, got '
                             f'{use_rslora!r}')
        parts = [mha_parts] if isinstance(mha_parts, str) else mha_parts
        if not parts or any(p not in MHA_PARTS for p in parts):
            raise ValueError(f'LoRA: mha_parts must name some of '
                             f'{MHA_PARTS}, got {mha_parts!r}')
        self.rank = rank
        self.alpha = rank if alpha is None else alpha
        self.dropout = dropout
        self.mha_parts = tuple(parts)
        self.scale = self.alpha / (math.sqrt(rank) if use_rslora else rank)

    def check(self, target: nn.Module, path: str) -> None:
        if isinstance(target, nn.MultiheadAttention):
            check_mha(target, path, self.dropout, self.mha_parts)
            return
        layer = lora_layer(target)
        where = _where(target, layer, path)
        if not isinstance(layer, (nn.Linear, nn.Conv2d)):
            raise ValueError(f'LoRA: {where} is not a supported layer: LoRA '
                             'applies to nn.Linear, nn.Conv2d, mmcv '
                             'ConvModule and nn.MultiheadAttention')
        if isinstance(layer, nn.Conv2d) and self.rank % layer.groups:
            raise ValueError(
                f'LoRA: {where} has groups={layer.groups}: on a grouped '
                'conv the rank must be a multiple of groups (as in PEFT; B '
                f'is a grouped 1x1 conv), got rank={self.rank}')
        for name in LORA_ATTRS:
            child_name_free(layer, name, path)

    def insert(self, target: nn.Module, path: str) -> List[str]:
        self.check(target, path)
        if isinstance(target, nn.MultiheadAttention):
            return insert_mha(target, path, self.rank, self.scale,
                              self.mha_parts)
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
            layer.lora_B = LoRAUp(self.rank, layer.out_channels, conv=True,
                                  groups=layer.groups, **kw)
        layer.lora_dropout = nn.Dropout(self.dropout) if self.dropout \
            else nn.Identity()
        layer.lora_scale = self.scale
        layer.register_forward_hook(self.forward_hook)
        prefix = '' if layer is target else 'conv.'
        return [prefix + n for n in LORA_ATTRS[:3]]

    def fold(self, target: nn.Module,
             path: str) -> Dict[str, Optional[torch.Tensor]]:
        """``weight + lora_delta(target)``; ``lora_A``/``lora_B`` dropped
        (on an ``nn.MultiheadAttention``: ``in_proj_weight`` and
        ``out_proj.weight``, each delta added once).

        Raises:
            ValueError: naming ``path``, for a grouped conv (see
                :func:`~.lora_layers.lora_delta`).

        Example:
            >>> fc = nn.Linear(4, 3)
            >>> lora = LoRA(rank=2)
            >>> _ = lora.insert(fc, 'fc')
            >>> sorted(lora.fold(fc, 'fc').items(), key=lambda kv: kv[0])[0]
            ('lora_A.weight', None)
        """
        if isinstance(target, nn.MultiheadAttention):
            return fold_mha(target)
        layer = lora_layer(target)
        try:
            delta = lora_delta(layer)
        except ValueError as error:
            raise ValueError(f'LoRA: {_where(target, layer, path)}: '
                             f'{error}') from error
        prefix = '' if layer is target else 'conv.'
        return {prefix + 'weight': layer.weight + delta,
                prefix + 'lora_A.weight': None,
                prefix + 'lora_B.weight': None}
