# Head-only fine-tuning on the tiny RetinaNet: the backbone and
# the FPN neck both come from the detector checkpoint (Pretrained entries
# with prefix 'backbone.' and 'neck.') and are frozen, BatchNorm layers
# included (kept in eval mode, running statistics untouched; norm_eval=False
# so that it is the freezing that does it, not ResNet.train()); the
# adapters the base config inserts are frozen too, at their identity init
# (zero 'up'). Only the new bbox_head (2 classes) trains, at the base
# learning rate. 'freeze' selects by name here; the trainable report
# (log + trainable_params.json) lists what trains and what is frozen.
_base_ = './retinanet_r18_adapters_ft_tiny.py'

model = dict(
    backbone=dict(norm_eval=False),
    neck=dict(init_cfg=dict(type='Pretrained',
                            checkpoint={{_base_.detector_checkpoint}},
                            prefix='neck.')))
optim_wrapper = dict(
    constructor='ProvenanceOptimWrapperConstructor',
    paramwise_cfg=dict(freeze=dict(name=r'(backbone|neck)\..*')))
