"""mmdet backbones with adapters inserted after each output stage.

The adapters live in a plain ``nn.ModuleList`` on purpose: stock MMEngine
never initializes BaseModules there (mmext_init does).

Example (config):
    >>> backbone = dict(type='ResNetWithAdapters', depth=18,
    ...                 init_cfg=dict(type='Pretrained', checkpoint='det.pth',
    ...                               prefix='backbone.'))
"""
import torch.nn as nn
from mmdet.models.backbones import ResNet, SwinTransformer
from mmdet.registry import MODELS

from .adapters import ConvAdapter, apply_adapters


@MODELS.register_module(force=True)
class ResNetWithAdapters(ResNet):
    """mmdet ``ResNet`` + one :class:`ConvAdapter` per output stage."""

    def __init__(self, adapter_reduction: int = 4, **kwargs):
        super().__init__(**kwargs)
        widths = [self.base_channels * 2**i * self.block.expansion
                  for i in range(self.num_stages)]
        self.adapters = nn.ModuleList([
            ConvAdapter(widths[i], adapter_reduction) for i in self.out_indices
        ])

    def forward(self, x):
        return tuple(apply_adapters(self.adapters, super().forward(x)))


@MODELS.register_module(force=True)
class SwinWithAdapters(SwinTransformer):
    """mmdet ``SwinTransformer`` (loads its checkpoint in its own
    ``init_weights``) + one :class:`ConvAdapter` per output stage."""

    def __init__(self, adapter_reduction: int = 4, **kwargs):
        super().__init__(**kwargs)
        self.adapters = nn.ModuleList([
            ConvAdapter(self.num_features[i], adapter_reduction)
            for i in self.out_indices
        ])

    def forward(self, x):
        return tuple(apply_adapters(self.adapters, super().forward(x)))
