# Fine-tune a SegFormer (MiT-B0) segmentor checkpoint on a new dataset with a
# different number of classes, after inserting a ConvAdapter on each MiT stage
# output (in a plain nn.ModuleList). MixVisionTransformer overrides
# init_weights and, with a Pretrained init_cfg, defers to MMEngine's logic:
# mmext_init loads the backbone bit-exact (prefix='backbone.') and the
# adapters get their declared init.
_base_ = 'mmseg::segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py'
custom_imports = dict(imports=['mmext_init', 'mmext_init.examples.mmseg_models'],
                      allow_failed_imports=False)

segmentor_checkpoint = 'checkpoints/segformer_mit-b0_ade20k.pth'
model = dict(
    backbone=dict(
        type='MiTWithAdapters',
        init_cfg=dict(type='Pretrained', checkpoint=segmentor_checkpoint,
                      prefix='backbone.', min_loaded=0.9)),
    decode_head=dict(num_classes=2))
