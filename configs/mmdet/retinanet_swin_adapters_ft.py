# Fine-tune a RetinaNet-Swin-T detector checkpoint after inserting a
# ConvAdapter after each Swin stage. SwinTransformer overrides init_weights
# and loads the checkpoint itself (taking the 'backbone.' keys of a detector
# checkpoint); stock MMEngine then never initializes the inserted adapters.
# With mmext_init the Swin load is recorded, checked (it must load something)
# and the adapters get their declared init afterwards without touching it.
_base_ = 'mmdet::swin/retinanet_swin-t-p4-w7_fpn_1x_coco.py'
custom_imports = dict(imports=['mmext_init', 'mmext_init.examples.mmdet_models'],
                      allow_failed_imports=False)

detector_checkpoint = 'checkpoints/retinanet_swin-t-p4-w7_fpn_1x_coco.pth'
model = dict(
    backbone=dict(
        type='SwinWithAdapters',
        convert_weights=False,  # an mmdet detector checkpoint, mmdet naming
        init_cfg=dict(type='Pretrained', checkpoint=detector_checkpoint)),
    bbox_head=dict(num_classes=2))
