# Staged unfreezing on the tiny RetinaNet: adapter tuning first
# (retinanet_r18_adapters_freeze_tiny.py: every tensor the checkpoint provides
# frozen, BatchNorm statistics kept), then from iteration 2 on (after 2 have
# completed) the last ResNet stage trains too, at a tenth of the base lr, and
# from iteration 3 on the rest of what was loaded. Each milestone adds new
# optimizer groups (the options they would have had unfrozen, times lr_mult)
# that follow the param schedulers; a resume across a milestone gives the
# weights of the uninterrupted run.
_base_ = './retinanet_r18_adapters_freeze_tiny.py'

custom_hooks = [
    dict(type='UnfreezeHook', milestones=[
        dict(at=2, by='iter', select=dict(name=r'backbone\.layer4\..*'),
             lr_mult=0.1),
        dict(at=3, by='iter', select='loaded', lr_mult=0.1),
    ]),
]
# Under DDP the model is wrapped before anything is frozen: DDP must look for
# parameters without gradients (the check before the first iteration says so).
find_unused_parameters = True
