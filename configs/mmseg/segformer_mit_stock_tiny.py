# Stock segmentor (no plugin, no adapters, 3 classes) for the tiny SegFormer
# fine-tuning config's checkpoint. Used by tools/make_tiny_data.py.
_base_ = './segformer_mit_adapters_ft_tiny.py'
custom_imports = None
model = dict(
    backbone=dict(type='MixVisionTransformer', init_cfg=None),
    decode_head=dict(num_classes=3))
