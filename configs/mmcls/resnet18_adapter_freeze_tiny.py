# OpenMMLab 1.x (mmcv 1.x, mmcls 0.x): fine-tune a ResNet-18 classifier with
# adapters inserted after its last two blocks, through mmcls's unchanged
# tools/train.py. The backbone loads its checkpoint through Pretrained; the
# adapters get their declared init (down Kaiming, up zero) instead of being
# skipped as stock mmcv 1.x skips everything below a Pretrained module; the
# tensors the checkpoint provides are frozen, the adapters and the head train
# (the adapters at 10x the lr). The init report and the trainable report go
# to the log. Data: tools/make_tiny_data.py-style generated images in
# data/tiny_cls/{train,val}/<class>/*.png (the e2e test writes them to a
# temporary folder and points data.*.data_prefix there).
custom_imports = dict(imports=['mmext_init'], allow_failed_imports=False)

pretrained = 'checkpoints/resnet18_tiny_cls.pth'
model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='ResNet',
        depth=18,
        num_stages=4,
        out_indices=(3, ),
        style='pytorch',
        init_cfg=dict(type='Pretrained', checkpoint=pretrained,
                      prefix='backbone.')),
    neck=dict(type='GlobalAveragePooling'),
    head=dict(
        type='LinearClsHead',
        num_classes=2,
        in_channels=512,
        loss=dict(type='CrossEntropyLoss', loss_weight=1.0),
        topk=(1, )),
    insert=[dict(type='Adapter', targets=r'backbone\.layer4\.[01]',
                 reduction=8)])

img_norm_cfg = dict(
    mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', size=(32, 32)),
    dict(type='Normalize', **img_norm_cfg),
    dict(type='ImageToTensor', keys=['img']),
    dict(type='ToTensor', keys=['gt_label']),
    dict(type='Collect', keys=['img', 'gt_label'])
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', size=(32, 32)),
    dict(type='Normalize', **img_norm_cfg),
    dict(type='ImageToTensor', keys=['img']),
    dict(type='Collect', keys=['img'])
]
data_root = 'data/tiny_cls'
classes = ['dark', 'light']
data = dict(
    samples_per_gpu=4,
    workers_per_gpu=0,
    persistent_workers=False,
    train=dict(type='CustomDataset', data_prefix=f'{data_root}/train',
               classes=classes, pipeline=train_pipeline),
    val=dict(type='CustomDataset', data_prefix=f'{data_root}/val',
             classes=classes, pipeline=test_pipeline),
    test=dict(type='CustomDataset', data_prefix=f'{data_root}/val',
              classes=classes, pipeline=test_pipeline))
evaluation = dict(interval=1, metric='accuracy', metric_options=dict(topk=(1, )),
                  save_best='auto')

optimizer = dict(
    type='SGD', lr=0.01, momentum=0.9, weight_decay=1e-4,
    constructor='ProvenanceOptimizerConstructor',
    paramwise_cfg=dict(freeze='loaded',
                       rules=[dict(select=dict(insert_type='Adapter'),
                                   lr_mult=10.0)]))
optimizer_config = dict(grad_clip=None)
lr_config = dict(policy='step', step=[2])
runner = dict(type='EpochBasedRunner', max_epochs=2)

checkpoint_config = dict(interval=1)
log_config = dict(interval=1, hooks=[dict(type='TextLoggerHook')])
dist_params = dict(backend='gloo')
log_level = 'INFO'
load_from = None
resume_from = None
workflow = [('train', 1)]
