"""A tiny mmdet RetinaNet trained in-process by a real MMEngine Runner: its
ResNet-18 backbone (with inserted adapters, ``ResNetInserted``) loads a
generated checkpoint, data are a few generated images."""
import os
from typing import Any, Dict, List, Optional

import torch
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmengine.dataset import pseudo_collate
from mmengine.registry import init_default_scope
from mmengine.runner import Runner
from mmengine.structures import InstanceData
from torch.utils.data import DataLoader

import inserted_models  # noqa: F401  (registers ResNetInserted)
from toy_models import tiny_retinanet_cfg


def sample(i: int) -> Dict[str, Any]:
    """One 64x64 image with one box (deterministic in ``i``)."""
    data = DetDataSample(metainfo=dict(
        img_shape=(64, 64), ori_shape=(64, 64), pad_shape=(64, 64),
        scale_factor=(1.0, 1.0), batch_input_shape=(64, 64)))
    data.gt_instances = InstanceData(
        bboxes=torch.tensor([[4.0 + i, 8.0, 40.0, 44.0 - i]]),
        labels=torch.tensor([i % 3]))
    gen = torch.Generator().manual_seed(i)
    return dict(inputs=torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8,
                                     generator=gen), data_samples=data)


def write_backbone_ckpt(path: str) -> str:
    """A 'pretrained' ResNet-18 (BN statistics not at their defaults)."""
    init_default_scope('mmdet')
    backbone = MODELS.build(dict(type='ResNet', depth=18))
    backbone.init_weights()
    state = backbone.state_dict()
    for key, value in state.items():
        if key.endswith(('running_mean', 'running_var')):
            state[key] = value + torch.rand_like(value)
    torch.save({'state_dict': state}, path)
    return path


def model_cfg(ckpt: str) -> Dict[str, Any]:
    """The detector config: adapters inserted, backbone from ``ckpt``."""
    cfg = tiny_retinanet_cfg(init_cfg=dict(type='Pretrained',
                                           checkpoint=ckpt))
    cfg['backbone']['type'] = 'ResNetInserted'
    cfg['train_cfg'] = dict(
        assigner=dict(type='MaxIoUAssigner', pos_iou_thr=0.5, neg_iou_thr=0.4,
                      min_pos_iou=0, ignore_iof_thr=-1),
        sampler=dict(type='PseudoSampler'), allowed_border=-1, pos_weight=-1,
        debug=False)
    return cfg


def retinanet_runner(work_dir: str, ckpt: str, paramwise_cfg: dict,
                     iters: int = 3, custom_hooks: List[dict] = (),
                     lr: float = 0.01, model: Optional[dict] = None,
                     **kwargs: Any) -> Runner:
    """A Runner training the detector (``model``, default
    :func:`model_cfg`) ``iters`` SGD iterations with
    ``ProvenanceOptimWrapperConstructor`` (no checkpoint unless
    ``default_hooks`` in ``kwargs`` says so)."""
    data = [sample(i) for i in range(4)]
    options = dict(
        default_hooks=dict(logger=dict(type='LoggerHook', interval=1),
                           checkpoint=None),
        default_scope='mmdet', experiment_name=os.path.basename(work_dir))
    options.update(kwargs)
    return Runner(
        model=model or model_cfg(ckpt), work_dir=work_dir,
        train_dataloader=DataLoader(data, batch_size=2,
                                    collate_fn=pseudo_collate),
        optim_wrapper=dict(
            constructor='ProvenanceOptimWrapperConstructor',
            optimizer=dict(type='SGD', lr=lr, momentum=0.9,
                           weight_decay=1e-4),
            paramwise_cfg=paramwise_cfg),
        train_cfg=dict(by_epoch=False, max_iters=iters),
        custom_hooks=list(custom_hooks), **options)
