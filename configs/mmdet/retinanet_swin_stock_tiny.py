# Stock detector (no plugin, no adapters, 3 classes) for the tiny Swin
# fine-tuning config's checkpoint. Used by tools/make_tiny_data.py.
_base_ = './retinanet_swin_adapters_ft_tiny.py'
custom_imports = None
model = dict(
    backbone=dict(type='SwinTransformer', init_cfg=None),
    bbox_head=dict(num_classes=3))
