"""Test-only backbones with function-preserving inserted modules: residual
adapters (zero ``up``) and serial 1x1 convs (declared ``Identity``)."""
import torch.nn as nn
from mmdet.models.backbones import ResNet
from mmdet.registry import MODELS as DET_MODELS
from mmseg.models.backbones import SwinTransformer
from mmseg.registry import MODELS as SEG_MODELS

from mmext_examples import ConvAdapter


def _inserted(widths, zero_up=True):
    adapters = []
    for w in widths:
        adapter = ConvAdapter(w)
        if not zero_up:
            adapter.init_cfg = dict(type='Kaiming', layer='Conv2d')
        adapters.append(adapter)
    serial = [nn.Conv2d(w, w, 1) for w in widths]
    return nn.ModuleList(adapters), nn.ModuleList(serial)


def _apply(self, feats):
    return tuple(s(a(f)) for a, s, f in zip(self.adapters, self.serial, feats))


@DET_MODELS.register_module(force=True)
class ResNetInserted(ResNet):
    """mmdet ResNet + adapter and serial conv per stage."""

    def __init__(self, zero_up=True, **kwargs):
        super().__init__(**kwargs)
        widths = [64 * 2**i * self.block.expansion for i in self.out_indices]
        self.adapters, self.serial = _inserted(widths, zero_up)

    def forward(self, x):
        return _apply(self, super().forward(x))


@SEG_MODELS.register_module(force=True)
class SwinInserted(SwinTransformer):
    """mmseg Swin (loads in its own init_weights) + adapters and serial
    convs per stage."""

    def __init__(self, zero_up=True, **kwargs):
        super().__init__(**kwargs)
        widths = [self.num_features[i] for i in self.out_indices]
        self.adapters, self.serial = _inserted(widths, zero_up)

    def forward(self, x):
        return _apply(self, super().forward(x))
