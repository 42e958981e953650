# Fine-tune a RetinaNet-R50 detector checkpoint on a new dataset with a
# different number of classes, after inserting a residual ConvAdapter after
# each ResNet stage (in a plain nn.ModuleList: stock MMEngine never
# initializes those). The backbone is taken from the detector checkpoint
# (prefix='backbone.'), bit-exact; adapters get their declared init (Kaiming
# down, zero up: the pretrained function is intact at step 0); the new head
# keeps RetinaHead's own init.
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'
custom_imports = dict(imports=['mmext_init', 'mmext_init.examples.mmdet_models'],
                      allow_failed_imports=False)

detector_checkpoint = 'checkpoints/retinanet_r50_fpn_1x_coco.pth'
model = dict(
    backbone=dict(
        type='ResNetWithAdapters',
        adapter_reduction=4,
        out_indices=(1, 2, 3),  # the stages FPN uses: no unused adapter
        init_cfg=dict(type='Pretrained', checkpoint=detector_checkpoint,
                      prefix='backbone.', min_loaded=0.9)),
    neck=dict(in_channels=[512, 1024, 2048], start_level=0),
    bbox_head=dict(num_classes=2))
