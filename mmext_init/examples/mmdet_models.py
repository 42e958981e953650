"""mmdet backbones with a :class:`ConvAdapter` after each output stage.

The adapters live in a plain ``nn.ModuleList`` on purpose: stock MMEngine
never initializes BaseModules there (mmext_init does). One adapter per entry
of ``out_indices``, so every adapter is used (DDP needs no
``find_unused_parameters``).

Example:
    >>> import torch, mmext_init
    >>> from mmext_init.examples.mmdet_models import ResNetWithAdapters
    >>> net = ResNetWithAdapters(depth=18, out_indices=(1, 2, 3))
    >>> net.init_weights()
    >>> [f.shape[1] for f in net(torch.randn(1, 3, 64, 64))]
    [128, 256, 512]

In a config: ``backbone=dict(type='ResNetWithAdapters', depth=50,
init_cfg=dict(type='Pretrained', checkpoint='det.pth', prefix='backbone.'))``.
"""
from typing import Tuple

import torch
import torch.nn as nn
from mmdet.models.backbones import ResNet, SwinTransformer
from mmdet.registry import MODELS

from .adapters import ConvAdapter, apply_adapters


@MODELS.register_module(force=True)
class ResNetWithAdapters(ResNet):
    """mmdet ``ResNet`` + one :class:`ConvAdapter` per output stage."""

    def __init__(self, adapter_reduction: int = 4, **kwargs) -> None:
        super().__init__(**kwargs)
        widths = [self.base_channels * 2**i * self.block.expansion
                  for i in range(self.num_stages)]
        self.adapters = nn.ModuleList([
            ConvAdapter(widths[i], adapter_reduction) for i in self.out_indices
        ])

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return tuple(apply_adapters(self.adapters, super().forward(x)))


@MODELS.register_module(force=True)
class SwinWithAdapters(SwinTransformer):
    """mmdet ``SwinTransformer`` (which loads its checkpoint in its own
    ``init_weights``) + one :class:`ConvAdapter` per output stage, applied to
    the NCHW stage outputs."""

    def __init__(self, adapter_reduction: int = 4, **kwargs) -> None:
        super().__init__(**kwargs)
        self.adapters = nn.ModuleList([
            ConvAdapter(self.num_features[i], adapter_reduction)
            for i in self.out_indices
        ])

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        return tuple(apply_adapters(self.adapters, super().forward(x)))
