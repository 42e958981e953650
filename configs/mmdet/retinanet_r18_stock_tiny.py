# The stock detector (no plugin, no adapters, 3 classes) whose Runner
# checkpoint plays the part of a zoo checkpoint for the tiny fine-tuning
# configs. Used by tools/make_tiny_data.py; trains without mmext_init.
_base_ = './retinanet_r18_adapters_ft_tiny.py'
custom_imports = None
model = dict(
    backbone=dict(_delete_=True, type='ResNet', depth=18, num_stages=4,
                  out_indices=(1, 2, 3), frozen_stages=-1,
                  norm_cfg=dict(type='BN', requires_grad=True),
                  norm_eval=True, style='pytorch', init_cfg=None),
    bbox_head=dict(num_classes=3))
