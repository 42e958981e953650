# SSF fine-tuning ("Scaling & Shifting Your Features") of mmpretrain's own
# ViT from the config, no model code: the setting of vit_lora_ft_tiny.py (the
# tiny ViT loaded from checkpoints/vit_stock_tiny.pth, a new 4-class head,
# everything loaded frozen, what is new at 10x the base learning rate) with
# its LoRA entry replaced (a list in a config replaces its base's) by a
# per-channel scale and shift after the patch embedding, every LayerNorm,
# qkv, attention projection and MLP layer, as the paper places them. Each
# target keeps its names; `<target>.ssf.scale` and `<target>.ssf.shift` sit
# beside them, declared init the identity (ones and zeros: the function is
# unchanged at step 0; init='paper' draws N(1, 0.02) and N(0, 0.02) as the
# paper's code does). mmext-merge folds every SSF into its target's weight
# and bias.
_base_ = './vit_lora_ft_tiny.py'

model = dict(
    insert=[dict(type='SSF',
                 targets=r'backbone\.(patch_embed\.projection|ln1|layers\.\d+'
                 r'\.(ln1|ln2|attn\.qkv|attn\.proj|ffn\.layers\.(0\.0|1)))')])
