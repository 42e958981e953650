# LoRA fine-tuning of mmpretrain's own ViT from the config, no model code:
# the tiny ViT of vit_stock_tiny.py loaded from its stock Runner checkpoint
# (checkpoints/vit_stock_tiny.pth, prefix 'backbone.'), rank-4 LoRA branches
# inserted beside every attention's fused qkv projection, and a new head for
# the 4 classes of the fine-tuning set (the checkpoint's head had 2).
# Original names do not change (`backbone.layers.N.attn.qkv.weight` loads
# from the checkpoint; `...qkv.lora_A.weight`/`lora_B.weight` sit beside it,
# A Kaiming-uniform, B zero). Everything the checkpoint provides is frozen:
# the LoRA branches and the head train, at 10x the base learning rate.
_base_ = './vit_stock_tiny.py'
custom_imports = dict(imports=['mmext_init'], allow_failed_imports=False)

model = dict(
    backbone=dict(init_cfg=dict(
        type='Pretrained', checkpoint='checkpoints/vit_stock_tiny.pth',
        prefix='backbone.')),
    head=dict(num_classes=4),
    insert=[dict(type='LoRA', targets=r'backbone\.layers\.\d+\.attn\.qkv',
                 rank=4, alpha=8)])
data_preprocessor = dict(num_classes=4)
train_dataloader = dict(dataset=dict(data_prefix='train'))
optim_wrapper = dict(
    constructor='ProvenanceOptimWrapperConstructor',
    paramwise_cfg=dict(freeze='loaded',
                       rules=[dict(select='new', lr_mult=10.0)]))
