# Tiny variant of segformer_mit_adapters_ft.py (tests and the demo): one
# layer per MiT stage, 64 px crops, BN instead of SyncBN (CPU, one process),
# 4 iterations. Its checkpoint comes from a stock Runner run of
# segformer_mit_stock_tiny.py (tools/make_tiny_data.py).
_base_ = './segformer_mit_adapters_ft.py'

segmentor_checkpoint = 'checkpoints/segformer_mit_stock_tiny.pth'
data_preprocessor = dict(size=(64, 64))
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(num_layers=[1, 1, 1, 1],
                  init_cfg=dict(checkpoint=segmentor_checkpoint)),
    decode_head=dict(channels=32, norm_cfg=dict(type='BN',
                                                requires_grad=True)))
optim_wrapper = dict(optimizer=dict(lr=0.0006))

data_root = 'data/tiny_seg/'
crop_size = (64, 64)
metainfo = dict(classes=('background', 'shape'),
                palette=[(0, 0, 0), (220, 20, 60)])
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='Resize', scale=crop_size, keep_ratio=False),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=crop_size, keep_ratio=False),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    dataset=dict(_delete_=True, type='BaseSegDataset', data_root=data_root,
                 metainfo=metainfo, img_suffix='.png', seg_map_suffix='.png',
                 data_prefix=dict(img_path='img_dir/train',
                                  seg_map_path='ann_dir/train'),
                 pipeline=train_pipeline))
test_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    dataset=dict(_delete_=True, type='BaseSegDataset', data_root=data_root,
                 metainfo=metainfo, img_suffix='.png', seg_map_suffix='.png',
                 data_prefix=dict(img_path='img_dir/val',
                                  seg_map_path='ann_dir/val'),
                 pipeline=test_pipeline))
# No validation while training (4 iterations give no meaningful mIoU);
# tools/test.py evaluates the trained checkpoint on the val images.
val_dataloader = None
val_evaluator = None
val_cfg = None

train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=4)
param_scheduler = [
    dict(type='ConstantLR', factor=1.0, by_epoch=False, begin=0, end=4)
]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=1),
    checkpoint=dict(type='CheckpointHook', interval=4, by_epoch=False))
log_processor = dict(by_epoch=False)
env_cfg = dict(dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)
