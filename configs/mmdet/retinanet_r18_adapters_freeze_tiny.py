# Adapter tuning on the tiny RetinaNet: every tensor the
# checkpoint provides is frozen (its BatchNorm layers stay in eval mode), the
# inserted adapters, the neck and the head train; new parameters at 10x the
# learning rate, no weight decay on norms. The selection comes from the load
# plan of the backbone's Pretrained entry and is checked against the ledger
# once init_weights() has run; the trainable report goes to the log and to
# trainable_params.json next to init_provenance.json.
# norm_eval=False (mmdet's RetinaNet sets True): with True, ResNet.train()
# would put every backbone BatchNorm in eval mode by itself; here it is the
# freezing that keeps the frozen BatchNorm layers' running statistics still
# (tests/e2e/test_training_policies.py checks them bit for bit).
_base_ = './retinanet_r18_adapters_ft_tiny.py'

model = dict(backbone=dict(norm_eval=False))
optim_wrapper = dict(
    constructor='ProvenanceOptimWrapperConstructor',
    paramwise_cfg=dict(
        freeze='loaded',
        norm_decay_mult=0.0,
        rules=[dict(select='new', lr_mult=10.0)]))
