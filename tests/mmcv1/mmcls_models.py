"""The mmcls models the OpenMMLab 1.x tests build (real mmcls modules)."""
from typing import List, Optional

import torch.nn as nn
from mmcls.models import build_classifier

LORA_LAST_CONV = [dict(type='LoRA', targets=r'backbone\.layer4\.1\.conv2',
                       rank=4)]


def classifier(checkpoint: Optional[str] = None,
               insert: Optional[List[dict]] = None) -> nn.Module:
    """A ResNet-18 ImageClassifier with 3 classes, its backbone loading
    ``checkpoint`` through Pretrained if given, ``insert`` applied."""
    backbone = dict(type='ResNet', depth=18)
    if checkpoint is not None:
        backbone['init_cfg'] = dict(type='Pretrained', checkpoint=checkpoint)
    cfg = dict(type='ImageClassifier', backbone=backbone,
               neck=dict(type='GlobalAveragePooling'),
               head=dict(type='LinearClsHead', num_classes=3,
                         in_channels=512))
    if insert is not None:
        cfg['insert'] = insert
    return build_classifier(cfg)
