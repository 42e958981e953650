"""mmseg SegFormer backbone (MiT) with adapters on its stage outputs.

Example (config):
    >>> backbone = dict(type='MiTWithAdapters', embed_dims=32,
    ...                 init_cfg=dict(type='Pretrained', checkpoint='seg.pth',
    ...                               prefix='backbone.'))
"""
import torch.nn as nn
from mmseg.models.backbones import MixVisionTransformer
from mmseg.registry import MODELS

from .adapters import ConvAdapter, apply_adapters


@MODELS.register_module(force=True)
class MiTWithAdapters(MixVisionTransformer):
    """mmseg ``MixVisionTransformer`` + one :class:`ConvAdapter` per output
    stage, in a plain ``nn.ModuleList``."""

    def __init__(self, adapter_reduction: int = 4, **kwargs):
        super().__init__(**kwargs)
        dims = [self.embed_dims * n for n in self.num_heads]
        self.adapters = nn.ModuleList([
            ConvAdapter(dims[i], adapter_reduction) for i in self.out_indices
        ])

    def forward(self, x):
        return apply_adapters(self.adapters, super().forward(x))
