# Two named insert sets on mmpretrain's own ViT, from the config:
# vit_lora_ft_tiny.py (the tiny ViT loaded from checkpoints/vit_stock_tiny.pth,
# a new 4-class head, everything loaded frozen, what is new at 10x the base
# learning rate) with LoRA on every attention's qkv in the set 'attn' and on
# every MLP's output layer in the set 'mlp' (an entry's `name`). On the built
# model, mmext_init.enable_insert_sets(model, ['attn']) runs one set and
# switches the other off, without rebuilding; DeltaCheckpointHook(per_set=True)
# saves one delta per set (delta_iter_4.attn.pth, delta_iter_4.mlp.pth) and
# the new head in delta_iter_4.pth; Pretrained(checkpoint=[base,
# 'delta_iter_4.pth', 'delta_iter_4.attn.pth']) loads one set, and
# `mmext-merge ... --set attn` folds it into the weights, leaving 'mlp' out.
_base_ = './vit_lora_ft_tiny.py'

model = dict(insert=[
    dict(type='LoRA', name='attn', targets=r'backbone\.layers\.\d+\.attn\.qkv',
         rank=4, alpha=8),
    dict(type='LoRA', name='mlp',
         targets=r'backbone\.layers\.\d+\.ffn\.layers\.1', rank=4, alpha=8),
])
custom_hooks = [dict(type='DeltaCheckpointHook', interval=-1, by_epoch=False,
                     per_set=True)]
