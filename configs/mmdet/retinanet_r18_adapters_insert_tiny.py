# Adapters after the ResNet stages from the config, no model code:
# the same detector as retinanet_r18_adapters_ft_tiny.py (whose adapters come
# from the mmext_init.examples subclass ResNetWithAdapters) with mmdet's own
# ResNet, and a bottleneck residual Adapter (reduction 4, last projection
# zero: the output is unchanged at step 0) inserted after layer2..layer4.
# Its tensors appear as backbone.layer2.adapter.{down,up}.{weight,bias}.
_base_ = './retinanet_r18_adapters_ft_tiny.py'

model = dict(
    backbone=dict(
        _delete_=True, type='ResNet', depth=18, num_stages=4,
        out_indices=(1, 2, 3), frozen_stages=-1, norm_eval=True,
        norm_cfg=dict(type='BN', requires_grad=True), style='pytorch',
        init_cfg=dict(type='Pretrained',
                      checkpoint={{_base_.detector_checkpoint}},
                      prefix='backbone.', min_loaded=0.9)),
    insert=[dict(type='Adapter', targets=r'backbone\.layer[2-4]',
                 reduction=4)])
