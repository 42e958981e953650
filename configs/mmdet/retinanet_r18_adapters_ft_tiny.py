# Tiny variant of retinanet_r50_adapters_ft.py (tests and the demo): ResNet-18,
# 128 px images, 4 iterations on CPU. Its "pretrained" detector checkpoint is
# written by a stock Runner run of retinanet_r18_stock_tiny.py (3 classes)
# through `python tools/make_tiny_data.py`; data is generated there too.
# Trains without validating (below); tools/test.py evaluates.
_base_ = './retinanet_r50_adapters_ft.py'

detector_checkpoint = 'checkpoints/retinanet_r18_stock_tiny.pth'
model = dict(
    backbone=dict(
        depth=18, frozen_stages=-1,
        init_cfg=dict(checkpoint=detector_checkpoint)),
    neck=dict(in_channels=[128, 256, 512], out_channels=64),
    bbox_head=dict(in_channels=64, feat_channels=64, stacked_convs=1))

data_root = 'data/tiny_coco/'
metainfo = dict(classes=('red', 'green'),
                palette=[(220, 20, 60), (20, 220, 60)])
img_scale = (128, 128)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                    'scale_factor')),
]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    batch_sampler=None,
    dataset=dict(data_root=data_root, metainfo=metainfo,
                 ann_file='annotations/train.json',
                 data_prefix=dict(img='train/'),
                 filter_cfg=dict(filter_empty_gt=True, min_size=4),
                 pipeline=train_pipeline))
test_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, metainfo=metainfo,
                 ann_file='annotations/val.json',
                 data_prefix=dict(img='val/'), pipeline=test_pipeline))
test_evaluator = dict(ann_file=data_root + 'annotations/val.json')
# No validation while training: after 4 iterations the detector keeps no
# box above the default score threshold, and COCO evaluation of nothing
# logs an ERROR. tools/test.py evaluates the trained checkpoint on the val
# images (with --cfg-options model.test_cfg.score_thr=0 to keep every box).
val_dataloader = None
val_evaluator = None
val_cfg = None

train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=4)
param_scheduler = [
    dict(type='ConstantLR', factor=1.0, by_epoch=False, begin=0, end=4)
]
optim_wrapper = dict(optimizer=dict(lr=0.005))
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=1),
    checkpoint=dict(type='CheckpointHook', interval=4, by_epoch=False))
log_processor = dict(by_epoch=False)
env_cfg = dict(dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)
