"""mmseg SegFormer backbone (MiT) with a :class:`ConvAdapter` on each stage
output, in a plain ``nn.ModuleList`` (stock MMEngine never initializes it).

Example:
    >>> import torch, mmext_init
    >>> from mmext_init.examples.mmseg_models import MiTWithAdapters
    >>> net = MiTWithAdapters(embed_dims=32, num_layers=[1, 1, 1, 1])
    >>> net.init_weights()
    >>> [f.shape[1] for f in net(torch.randn(1, 3, 64, 64))]
    [32, 64, 128, 256]

In a config: ``backbone=dict(type='MiTWithAdapters', init_cfg=dict(
type='Pretrained', checkpoint='seg.pth', prefix='backbone.'))``.
"""
from typing import List

import torch
import torch.nn as nn
from mmseg.models.backbones import MixVisionTransformer
from mmseg.registry import MODELS

from .adapters import ConvAdapter, apply_adapters


@MODELS.register_module(force=True)
class MiTWithAdapters(MixVisionTransformer):
    """mmseg ``MixVisionTransformer`` + one :class:`ConvAdapter` per output
    stage (stage ``i`` has ``embed_dims * num_heads[i]`` channels)."""

    def __init__(self, adapter_reduction: int = 4, **kwargs) -> None:
        super().__init__(**kwargs)
        dims = [self.embed_dims * n for n in self.num_heads]
        self.adapters = nn.ModuleList([
            ConvAdapter(dims[i], adapter_reduction) for i in self.out_indices
        ])

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        return apply_adapters(self.adapters, super().forward(x))
