# LoRA on the attention of mmseg's SegFormer, from the config, no model
# code: the tiny segmentor of segformer_mit_lora_tiny.py with rank-4 LoRA
# on every MiT attention's torch nn.MultiheadAttention (`attn.attn`): its
# packed q/k/v projection `in_proj_weight` (`attn.attn.lora_A/lora_B`) and
# its output projection (`attn.attn.out_proj.lora_A/lora_B`), the tensors
# of HF PEFT's LoRA without `base_layer`/`default`. Everything the
# checkpoint provides is frozen; 2 iterations.
_base_ = './segformer_mit_lora_tiny.py'

model = dict(
    insert=[
        dict(type='LoRA', targets=r'backbone\.layers\.\d+\.1\.\d+\.attn\.attn',
             rank=4, alpha=8),
    ])
train_cfg = dict(max_iters=2)
param_scheduler = [
    dict(type='ConstantLR', factor=1.0, by_epoch=False, begin=0, end=2)
]
default_hooks = dict(checkpoint=dict(interval=2))
