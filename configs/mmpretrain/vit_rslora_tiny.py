# rsLoRA fine-tuning ("A Rank Stabilization Scaling Factor for Fine-Tuning
# with LoRA") of mmpretrain's own ViT from the config, no model code:
# vit_lora_ft_tiny.py (the tiny ViT loaded from checkpoints/vit_stock_tiny.pth,
# a new 4-class head, everything loaded frozen, what is new at 10x the base
# learning rate) with its LoRA entry replaced (a list in a config replaces its
# base's) by one with use_rslora=True (PEFT's name): the branch is scaled by
# alpha / sqrt(rank) = 4.0 instead of alpha / rank = 2.0. The tensors and
# their names are LoRA's (`...qkv.lora_A.weight`, `...qkv.lora_B.weight`);
# mmext-merge folds them into the qkv weights with that scale.
_base_ = './vit_lora_ft_tiny.py'

model = dict(
    insert=[dict(type='LoRA', targets=r'backbone\.layers\.\d+\.attn\.qkv',
                 rank=4, alpha=8, use_rslora=True)])
