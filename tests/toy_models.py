"""Small real MMEngine modules used by the contract tests."""
import torch.nn as nn
from mmengine.model import BaseModule


class Adapter(BaseModule):
    """Residual adapter: ``x + up(down(x))``; ``up`` zero by its init_cfg."""

    def __init__(self, dim: int = 8, init_cfg=None):
        super().__init__(init_cfg=init_cfg or [
            dict(type='Kaiming', layer='Linear'),
            dict(type='Constant', val=0, override=dict(name='up'))
        ])
        self.down = nn.Linear(dim, dim // 2)
        self.up = nn.Linear(dim // 2, dim)

    def forward(self, x):
        return x + self.up(self.down(x))


class Trunk(BaseModule):
    """A 'pretrained' trunk: two linears and a norm."""

    def __init__(self, dim: int = 8, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.fc1 = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.fc2 = nn.Linear(dim, dim)


class TrunkWithAdapters(Trunk):
    """The trunk plus inserted modules: adapters in a plain ModuleList, a
    BaseModule in a plain Sequential and a ModuleDict, and a plain Linear."""

    def __init__(self, dim: int = 8, init_cfg=None):
        super().__init__(dim, init_cfg)
        self.adapters = nn.ModuleList([Adapter(dim) for _ in range(4)])
        self.seq = nn.Sequential(nn.ReLU(), Adapter(dim))
        self.named = nn.ModuleDict({'extra': Adapter(dim)})
        self.plain = nn.Linear(dim, dim)


class Model(BaseModule):
    """A root holding a backbone and a head, like a detector."""

    def __init__(self, backbone: nn.Module, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.backbone = backbone
        self.head = nn.Linear(8, 3)


class SelfInit(BaseModule):
    """A module whose own init_weights override is its declared init."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def init_weights(self):
        nn.init.constant_(self.fc.weight, 3.0)
        self.fc.bias.data.fill_(-1.0)  # through .data: must still be tracked


def tiny_retinanet_cfg(**backbone):
    """A small mmdet RetinaNet (ResNet-18, 3 classes); ``backbone`` adds to
    the backbone's config (e.g. ``init_cfg``)."""
    return dict(
        type='RetinaNet',
        data_preprocessor=dict(type='DetDataPreprocessor'),
        backbone=dict(type='ResNet', depth=18, num_stages=4,
                      out_indices=(1, 2, 3), norm_eval=False, **backbone),
        neck=dict(type='FPN', in_channels=[128, 256, 512], out_channels=32,
                  start_level=0, add_extra_convs='on_input', num_outs=3),
        bbox_head=dict(
            type='RetinaHead', num_classes=3, in_channels=32,
            stacked_convs=1, feat_channels=32,
            anchor_generator=dict(type='AnchorGenerator', octave_base_scale=4,
                                  scales_per_octave=1, ratios=[1.0],
                                  strides=[8, 16, 32]),
            bbox_coder=dict(type='DeltaXYWHBBoxCoder'),
            loss_cls=dict(type='FocalLoss', use_sigmoid=True),
            loss_bbox=dict(type='L1Loss')))
