# LoRA from the config on mmseg's SegFormer, no model code: the
# tiny segmentor of segformer_mit_adapters_ft_tiny.py with mmseg's own
# MixVisionTransformer, rank-4 LoRA beside the convolutions of every
# attention's spatial reduction (`attn.sr`) and of the Mix-FFN's 1x1
# projections (`ffn.layers.0`, `ffn.layers.4`). (LoRA on MiT's attention
# itself, its nn.MultiheadAttention's q/k/v and out_proj:
# segformer_mit_lora_attn_tiny.py.) Everything the checkpoint provides is
# frozen.
_base_ = './segformer_mit_adapters_ft_tiny.py'

model = dict(
    backbone=dict(type='MixVisionTransformer'),
    insert=[
        dict(type='LoRA',
             targets=r'backbone\.layers\.\d+\.1\.\d+\.(attn\.sr|ffn\.layers\.[04])',
             rank=4, alpha=8),
    ])
optim_wrapper = dict(
    constructor='ProvenanceOptimWrapperConstructor',
    paramwise_cfg=dict(freeze='loaded'))
