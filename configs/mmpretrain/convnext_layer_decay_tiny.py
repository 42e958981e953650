# Full fine-tuning of mmpretrain's own ConvNeXt with layer decay from
# ProvenanceOptimWrapperConstructor (no per-backbone depth table): the tiny
# ConvNeXt of convnext_stock_tiny.py loaded from its stock Runner checkpoint
# (prefix 'backbone.'), a new head for the 4 classes of the fine-tuning set
# trained at 10x. The depths come from the module structure: the stem
# `downsample_layers.0` and every later `downsample_layers.i` is a block,
# ordered with stage i before `stages.i.0`: downsample_layers.0 (depth 1),
# stages.0.0, downsample_layers.1, stages.1.0, ..., stages.3.0 (depth 9):
# N = 9 here (4 downsample layers, 5 blocks) and the final norm `norm3` is
# at N + 1; the lr of depth d is base lr * 0.7 ** (N + 1 - d) (mmpretrain's
# own table puts the stem at 0 and groups stages coarsely). Only the loaded
# backbone is decayed (select), so the head keeps its 10x; norms have no
# weight decay. `tools/match_checkpoint.py CONFIG --optim` shows each
# group's depth before training.
_base_ = './convnext_stock_tiny.py'
custom_imports = dict(imports=['mmext_init'], allow_failed_imports=False)

model = dict(
    backbone=dict(init_cfg=dict(
        type='Pretrained', checkpoint='checkpoints/convnext_stock_tiny.pth',
        prefix='backbone.')),
    head=dict(num_classes=4))
data_preprocessor = dict(num_classes=4)
train_dataloader = dict(dataset=dict(data_prefix='train'))
optim_wrapper = dict(
    constructor='ProvenanceOptimWrapperConstructor',
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        rules=[dict(select='new', lr_mult=10.0)],
        layer_decay=dict(
            rate=0.7,
            select=dict(name=r'backbone\..*', provenance='checkpoint'))))
