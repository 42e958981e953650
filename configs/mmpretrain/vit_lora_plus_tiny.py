# LoRA+ (Hayou et al. 2024) on the LoRA fine-tuning of vit_lora_ft_tiny.py
# (rank-4 LoRA beside every attention's qkv, the loaded part frozen, a new
# 4-class head): LoRA's B trains at 16x the learning rate of A (PEFT's
# `loraplus_lr_ratio=16`), one rule selecting B by the insert entry that
# added it. A and the head train at the base lr (AdamW, 1e-3, weight decay
# 0.05 on all of them).
_base_ = './vit_lora_ft_tiny.py'

optim_wrapper = dict(
    paramwise_cfg=dict(
        freeze='loaded',
        rules=[dict(select=dict(insert_type='LoRA', name=r'.*\.lora_B\..*'),
                    lr_mult=16.0)]))
