# BitFit (Ben Zaken et al. 2022) fine-tuning of mmpretrain's own ViT from the
# config, no model code: the tiny ViT of vit_stock_tiny.py loaded from its
# stock Runner checkpoint (checkpoints/vit_stock_tiny.pth, prefix
# 'backbone.') and a new head for the 4 classes of the fine-tuning set (the
# checkpoint's head had 2), as in vit_lora_ft_tiny.py but without LoRA. Only
# the bias terms of the backbone train (every `.bias`: attention, FFN, patch
# embedding and every LayerNorm's; the LayerNorm weights, cls_token and
# pos_embed stay frozen), and the head, which the checkpoint does not
# provide: one `freeze` entry, "everything but what is new or a bias"
# (`exclude`: what its selectors do not match). Everything that trains does
# so at the base learning rate.
_base_ = './vit_stock_tiny.py'
custom_imports = dict(imports=['mmext_init'], allow_failed_imports=False)

model = dict(
    backbone=dict(init_cfg=dict(
        type='Pretrained', checkpoint='checkpoints/vit_stock_tiny.pth',
        prefix='backbone.')),
    head=dict(num_classes=4))
data_preprocessor = dict(num_classes=4)
train_dataloader = dict(dataset=dict(data_prefix='train'))
optim_wrapper = dict(
    constructor='ProvenanceOptimWrapperConstructor',
    paramwise_cfg=dict(freeze=dict(exclude=['new', dict(name=r'.*\.bias')])))
