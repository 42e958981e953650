# LoRA on grouped convs: the depthwise 7x7 convs of mmpretrain's own ConvNeXt
# (groups = channels), from the config, no model code. The tiny ConvNeXt of
# convnext_stock_tiny.py loads from its stock Runner checkpoint (prefix
# 'backbone.'), a new head serves the 4 classes of the fine-tuning set, and
# everything loaded is frozen: the LoRA branches and the head train, at 10x
# the base learning rate. As in PEFT, A is a 7x7 conv over all input channels
# and B a grouped 1x1 conv with the target's groups, so the rank must be a
# multiple of them: one entry per stage, rank = its channels (16, 32; another
# rank is an error naming the conv and its groups). Only the first two stages
# are adapted: on a depthwise conv A has rank x channels x 49 elements, more
# than the conv itself, so wider stages cost more than they save. The branch
# mixes channels across the conv's groups, so it is no grouped weight change:
# mmext-merge refuses to fold it (naming the conv); deploy with the plugin.
_base_ = './convnext_stock_tiny.py'
custom_imports = dict(imports=['mmext_init'], allow_failed_imports=False)

model = dict(
    backbone=dict(init_cfg=dict(
        type='Pretrained', checkpoint='checkpoints/convnext_stock_tiny.pth',
        prefix='backbone.')),
    head=dict(num_classes=4),
    insert=[
        dict(type='LoRA', targets=r'backbone\.stages\.0\.\d+\.depthwise_conv',
             rank=16),
        dict(type='LoRA', targets=r'backbone\.stages\.1\.\d+\.depthwise_conv',
             rank=32),
    ])
data_preprocessor = dict(num_classes=4)
train_dataloader = dict(dataset=dict(data_prefix='train'))
optim_wrapper = dict(
    constructor='ProvenanceOptimWrapperConstructor',
    paramwise_cfg=dict(freeze='loaded',
                       rules=[dict(select='new', lr_mult=10.0)]))
