# Full fine-tuning of the tiny RetinaNet: nothing is frozen; new
# parameters (the inserted adapters, the neck, the head) train at 10x the
# base learning rate, and layer decay (rate 0.8) scales the learning rate of
# the pretrained backbone by depth: the stem (conv1/bn1) at depth 0, the
# residual blocks layer1.0 ... layer4.1 at 1..8, so the lr of depth d is
# base lr * 0.8 ** (9 - d) (the depths come from the module structure; the
# trainable report gives each group's depth). The adapters are left out of
# the layer decay on purpose: named adapters.{0,1,2} (0-based) next to
# layer1..layer4 (1-based), they would be ordered by their own number and
# land before layer1 (depths 1, 4, 7), not after the stage they follow.
# norm_eval=False: the BatchNorm layers train too and their running
# statistics adapt (with 2 images per GPU, keep mmdet's norm_eval=True or
# use SyncBN on real data).
_base_ = './retinanet_r18_adapters_ft_tiny.py'

model = dict(backbone=dict(norm_eval=False))
optim_wrapper = dict(
    constructor='ProvenanceOptimWrapperConstructor',
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        rules=[dict(select='new', lr_mult=10.0)],
        layer_decay=dict(
            rate=0.8,
            select=dict(name=r'backbone\..*', provenance='checkpoint'))))
