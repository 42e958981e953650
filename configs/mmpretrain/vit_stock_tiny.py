# Stock mmpretrain classifier (no plugin): a very small ViT (embed_dims 32,
# 4 layers, 32 px images in 8 px patches) trained a few iterations on the
# 2 "pretraining" classes of the tiny classification set (data/tiny_cls,
# tools/make_tiny_data.py). tools/make_tiny_data.py runs it through
# mmpretrain's own tools/train.py; its last checkpoint is
# checkpoints/vit_stock_tiny.pth, the "pretrained" classifier that
# vit_lora_ft_tiny.py fine-tunes. The data, schedule and runtime settings
# here are shared by the fine-tuning configs.
_base_ = 'mmpretrain::_base_/default_runtime.py'

data_root = 'data/tiny_cls'
model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='VisionTransformer',
        arch=dict(embed_dims=32, num_layers=4, num_heads=2,
                  feedforward_channels=64),
        img_size=32,
        patch_size=8),
    neck=None,
    head=dict(
        type='VisionTransformerClsHead',
        num_classes=2,
        in_channels=32,
        loss=dict(type='CrossEntropyLoss')))
data_preprocessor = dict(
    num_classes=2,
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    to_rgb=True)
pipeline = [dict(type='LoadImageFromFile'), dict(type='PackInputs')]
train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(type='CustomDataset', data_root=data_root,
                 data_prefix='pretrain', pipeline=pipeline))
test_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(type='CustomDataset', data_root=data_root,
                 data_prefix='val', pipeline=pipeline))
test_evaluator = dict(type='Accuracy', topk=(1, ))
test_cfg = dict(type='TestLoop')
# No validation while training: after a few iterations no metric means
# anything; mmpretrain's tools/test.py evaluates a checkpoint on `val`.
val_dataloader = None
val_evaluator = None
val_cfg = None

optim_wrapper = dict(
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05))
param_scheduler = []
train_cfg = dict(type='IterBasedTrainLoop', max_iters=4)
log_processor = dict(by_epoch=False)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=1),
    checkpoint=dict(type='CheckpointHook', interval=4, by_epoch=False))
env_cfg = dict(dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)
