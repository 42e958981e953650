"""Initializers for inserted modules that keep the pretrained function at
step 0: ``Zero``, ``Identity``, ``Orthogonal`` and ``LoRA``.

Each is registered in MMEngine's root ``WEIGHT_INITIALIZERS`` (usable by name
in any ``init_cfg`` and in ``init_missing``) with the stock conventions
(``layer``, ``override``, ``bias``, ``bias_prob``), and also exists as a plain
function next to MMEngine's ``constant_init`` family.

Example (config):
    >>> init_cfg = [dict(type='Kaiming', layer='Conv2d'),
    ...             dict(type='Zero', override=dict(name='up'))]
"""
import math
from typing import Optional

import torch
import torch.nn as nn
from mmengine.model.weight_init import BaseInit
from mmengine.registry import WEIGHT_INITIALIZERS

from .tracking import add_note, provided_by_checkpoint

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _bias(module: nn.Module, value: float) -> None:
    if getattr(module, 'bias', None) is not None:
        nn.init.constant_(module.bias, value)


def zero_init(module: nn.Module, bias: float = 0) -> None:
    """Set ``module.weight`` (and ``module.bias``) to zero.

    Example:
        >>> zero_init(adapter.up)   # the residual branch adds nothing at step 0
    """
    if getattr(module, 'weight', None) is not None:
        nn.init.zeros_(module.weight)
    _bias(module, bias)


def _check_conv_identity(conv: nn.Module) -> None:
    name = type(conv).__name__
    for k, d, s in zip(conv.kernel_size, conv.dilation, conv.stride):
        if k % 2 == 0:
            raise ValueError(f'Identity: {name} has an even kernel size '
                             f'{tuple(conv.kernel_size)}, no centre tap')
        if s != 1:
            raise ValueError(f'Identity: {name} has stride '
                             f'{tuple(conv.stride)}; an identity needs 1')
    if isinstance(conv.padding, str):
        if conv.padding != 'same':
            raise ValueError(f"Identity: {name} has padding='valid', which "
                             'shrinks the output')
        return
    for k, d, p in zip(conv.kernel_size, conv.dilation, conv.padding):
        if p != d * (k // 2):
            raise ValueError(
                f'Identity: {name} has padding {tuple(conv.padding)} for '
                f'kernel {tuple(conv.kernel_size)} and dilation '
                f'{tuple(conv.dilation)}; the output would be shifted or '
                'resized')


def identity_init(module: nn.Module, bias: float = 0) -> None:
    r"""Make a Linear or Conv1d/2d/3d layer the identity map.

    ``eye`` for Linear, ``dirac`` for convolutions (groups supported). When
    in and out sizes differ, the overlapping identity is filled and the rest
    is zero, and the provenance entry says so.

    Example:
        >>> conv = nn.Conv2d(8, 8, 3, padding=1)
        >>> identity_init(conv)
        >>> x = torch.randn(1, 8, 5, 5); torch.allclose(conv(x), x)
        True
    """
    weight = module.weight
    if isinstance(module, nn.Linear):
        nn.init.eye_(weight)
        out_f, in_f = weight.shape
    elif isinstance(module, _CONV):
        _check_conv_identity(module)
        nn.init.dirac_(weight, module.groups)
        out_f = weight.shape[0] // module.groups
        in_f = weight.shape[1]
    else:
        raise ValueError(f'Identity: {type(module).__name__} is neither a '
                         'Linear nor a Conv1d/2d/3d layer')
    if out_f != in_f:
        add_note(
            weight, f'rectangular {out_f}x{in_f}: identity on the first '
            f'{min(out_f, in_f)} channels, zeros elsewhere')
    _bias(module, bias)


def orthogonal_init(module: nn.Module, gain: float = 1, bias: float = 0) -> None:
    r"""Fill ``module.weight`` with a (semi-)orthogonal matrix scaled by ``gain``
    (:func:`torch.nn.init.orthogonal_`): :math:`W W^T = \text{gain}^2 I` for
    the flattened weight when it has no more rows than columns.

    Example:
        >>> orthogonal_init(nn.Linear(16, 16), gain=2)
    """
    nn.init.orthogonal_(module.weight, gain=gain)
    _bias(module, bias)


def _lora_weight(module: nn.Module, attr: str) -> torch.Tensor:
    part = getattr(module, attr, None)
    if isinstance(part, nn.Parameter):
        return part
    if isinstance(part, nn.Module) and isinstance(
            getattr(part, 'weight', None), torch.Tensor):
        return part.weight
    raise ValueError(f'LoRA: {type(module).__name__} has no projection '
                     f'{attr!r} (a module with a weight, or a Parameter)')


def lora_init(module: nn.Module,
              a_attr: str = 'lora_A',
              b_attr: str = 'lora_B',
              mode: str = 'kaiming',
              rank: Optional[int] = None) -> None:
    r"""LoRA init: the down projection A random, the up projection B zero, so
    the low-rank update :math:`BA` is zero at step 0.

    ``mode='kaiming'``: A by ``kaiming_uniform_(a=sqrt(5))`` (PEFT's default);
    ``mode='gaussian'``: A from :math:`\mathcal{N}(0, 1/r^2)`, ``r`` the rank
    (A's first dimension unless given).

    Example:
        >>> lora_init(block.attn.qkv_lora)      # has lora_A and lora_B
    """
    if mode not in ('kaiming', 'gaussian'):
        raise ValueError(f"LoRA: mode must be 'kaiming' or 'gaussian', got "
                         f'{mode!r}')
    a = _lora_weight(module, a_attr)
    b = _lora_weight(module, b_attr)
    if mode == 'kaiming':
        nn.init.kaiming_uniform_(a, a=math.sqrt(5))
    else:
        nn.init.normal_(a, std=1.0 / (rank or a.shape[0]))
    nn.init.zeros_(b)
    for attr in (a_attr, b_attr):
        part = getattr(module, attr)
        if isinstance(part, nn.Module):
            _bias(part, 0)


class _MatchedLayerInit(BaseInit):
    """Apply ``self.init_layer`` to the matched layers like stock initializers:
    every submodule for an ``override`` entry, else those whose class (or a
    direct base class) is named in ``layer``. Layers the checkpoint provides
    entirely are skipped (nothing of this init would survive)."""
    applies_to: tuple = (nn.Module, )

    def init_layer(self, m: nn.Module) -> None:
        raise NotImplementedError

    def _matches(self, m: nn.Module) -> bool:
        names = {type(m).__name__} | {b.__name__ for b in type(m).__bases__}
        return bool(names & set(self.layer))

    def __call__(self, module: nn.Module) -> None:

        def init(m: nn.Module) -> None:
            if provided_by_checkpoint(m):
                return
            if self.wholemodule:
                if isinstance(m, self.applies_to):
                    self.init_layer(m)
            elif self._matches(m):
                self.init_layer(m)

        module.apply(init)


@WEIGHT_INITIALIZERS.register_module(name='Zero', force=True)
class ZeroInit(_MatchedLayerInit):
    """Weights and biases of the matched layers to 0 (``bias``/``bias_prob``
    set the bias instead).

    Example:
        >>> dict(type='Zero', override=dict(name='up'))
    """

    def init_layer(self, m: nn.Module) -> None:
        if isinstance(getattr(m, 'weight', None), torch.Tensor):
            zero_init(m, self.bias)


@WEIGHT_INITIALIZERS.register_module(name='Identity', force=True)
class IdentityInit(_MatchedLayerInit):
    """Matched Linear/Conv layers start as the identity (see
    :func:`identity_init`).

    Example:
        >>> dict(type='Identity', layer='Conv2d')
    """
    applies_to = (nn.Linear, ) + _CONV

    def init_layer(self, m: nn.Module) -> None:
        identity_init(m, self.bias)


@WEIGHT_INITIALIZERS.register_module(name='Orthogonal', force=True)
class OrthogonalInit(_MatchedLayerInit):
    """Orthogonal weights scaled by ``gain``, bias constant.

    Example:
        >>> dict(type='Orthogonal', gain=1.0, layer='Linear')
    """
    applies_to = (nn.Linear, ) + _CONV

    def __init__(self, gain: float = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.gain = gain

    def init_layer(self, m: nn.Module) -> None:
        orthogonal_init(m, self.gain, self.bias)


@WEIGHT_INITIALIZERS.register_module(name='LoRA', force=True)
class LoRAInit(_MatchedLayerInit):
    """LoRA modules: A random (Kaiming-uniform or Gaussian), B zero. With an
    ``override``, the named module itself must hold the projections.

    Example:
        >>> dict(type='LoRA', layer='LoRALinear', mode='gaussian')
    """

    def __init__(self,
                 a_attr: str = 'lora_A',
                 b_attr: str = 'lora_B',
                 mode: str = 'kaiming',
                 rank: Optional[int] = None,
                 **kwargs) -> None:
        super().__init__(**kwargs)
        self.a_attr, self.b_attr = a_attr, b_attr
        self.mode, self.rank = mode, rank

    def __call__(self, module: nn.Module) -> None:
        if self.wholemodule:
            self.init_layer(module)
        else:
            super().__call__(module)

    def init_layer(self, m: nn.Module) -> None:
        lora_init(m, self.a_attr, self.b_attr, self.mode, self.rank)

