# DoRA fine-tuning of mmpretrain's own ViT from the config, no model code:
# vit_lora_ft_tiny.py (the tiny ViT loaded from checkpoints/vit_stock_tiny.pth,
# a new 4-class head, everything loaded frozen, what is new at 10x the base
# learning rate) with its LoRA entry replaced by rank-4 DoRA branches beside
# every attention's fused qkv projection (a list in a config replaces its
# base's). `...qkv.weight` keeps its name and loads from the checkpoint;
# beside it sit `...qkv.lora_A.weight` (Kaiming-uniform), `...qkv.lora_B.
# weight` (zero) and `...qkv.lora_magnitude_vector.weight`, whose declared
# init (DoRAMagnitude) is the norm of each output row of the LOADED qkv
# weight, so the model's function is unchanged at step 0. mmext-merge folds
# DoRA back into the qkv weights.
_base_ = './vit_lora_ft_tiny.py'

model = dict(
    insert=[dict(type='DoRA', targets=r'backbone\.layers\.\d+\.attn\.qkv',
                 rank=4, alpha=8)])
