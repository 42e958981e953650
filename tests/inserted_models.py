"""Test-only backbones with function-preserving inserted modules, for
tools/check_function_preserving.py: after each output stage a residual
:class:`Adapter` (``up`` zero via ``Zero``) and a serial 1x1 conv that starts
as the identity (declared by its own ``init_cfg``, or left to the
``Pretrained`` entry's ``init_missing`` with ``serial='plain'``).

Configs import it through ``custom_imports`` (tests/ on ``sys.path``).
"""
import torch
import torch.nn as nn
from mmdet.models.backbones import ResNet
from mmdet.registry import MODELS as DET_MODELS
from mmengine.model import BaseModule
from mmseg.models.backbones import SwinTransformer
from mmseg.registry import MODELS as SEG_MODELS


class Adapter(BaseModule):
    """``x + up(relu(down(x)))``; ``zero_up=False`` makes ``up`` Kaiming, so
    the inserted branch changes the function."""

    def __init__(self, channels: int, zero_up: bool = True) -> None:
        init_cfg = [dict(type='Kaiming', layer='Conv2d')]
        if zero_up:
            init_cfg.append(dict(type='Zero', override=dict(name='up')))
        super().__init__(init_cfg=init_cfg)
        self.down = nn.Conv2d(channels, max(channels // 4, 1), 1)
        self.up = nn.Conv2d(max(channels // 4, 1), channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(torch.relu(self.down(x)))


class SerialConv(BaseModule):
    """A 1x1 conv in series, declared ``Identity``."""

    def __init__(self, channels: int) -> None:
        super().__init__(init_cfg=dict(type='Identity', layer='Conv2d'))
        self.conv = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _insert(module: nn.Module, widths, zero_up: bool, serial: str) -> None:
    module.adapters = nn.ModuleList([Adapter(w, zero_up) for w in widths])
    module.serial = nn.ModuleList([
        SerialConv(w) if serial == 'own' else nn.Conv2d(w, w, 1)
        for w in widths
    ])


def _apply(module: nn.Module, feats):
    return tuple(
        s(a(f)) for a, s, f in zip(module.adapters, module.serial, feats))


@DET_MODELS.register_module(force=True)
class ResNetInserted(ResNet):
    """mmdet ResNet + an adapter and a serial conv per output stage."""

    def __init__(self, zero_up: bool = True, serial: str = 'own', **kwargs):
        super().__init__(**kwargs)
        _insert(self, [
            self.base_channels * 2**i * self.block.expansion
            for i in self.out_indices
        ], zero_up, serial)

    def forward(self, x):
        return _apply(self, super().forward(x))


@SEG_MODELS.register_module(force=True)
class SwinInserted(SwinTransformer):
    """mmseg Swin (loads the checkpoint in its own ``init_weights``) + an
    adapter and a serial conv per output stage."""

    def __init__(self, zero_up: bool = True, serial: str = 'own', **kwargs):
        super().__init__(**kwargs)
        _insert(self, [self.num_features[i] for i in self.out_indices],
                zero_up, serial)

    def forward(self, x):
        return _apply(self, super().forward(x))
