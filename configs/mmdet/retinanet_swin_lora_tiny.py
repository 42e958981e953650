# LoRA from the config, no model code: the tiny RetinaNet-Swin of
# retinanet_swin_adapters_ft_tiny.py with mmdet's own SwinTransformer, and
# rank-4 LoRA branches inserted beside every window attention's qkv and
# output projections. Original names do not change (`...attn.w_msa.qkv.weight`
# still loads from the checkpoint); the new tensors sit beside them
# (`...qkv.lora_A.weight`, `...qkv.lora_B.weight`), get their declared init
# (A Kaiming-uniform, B zero: the detector's output is unchanged at step 0)
# and say in the ledger that insert[0] put them there. Everything the
# checkpoint provides is frozen; the LoRA branches, the neck and the new
# head train.
_base_ = './retinanet_swin_adapters_ft_tiny.py'

model = dict(
    backbone=dict(type='SwinTransformer'),
    insert=[
        dict(type='LoRA', targets=r'backbone\.stages\.\d+\.blocks\.\d+\.'
             r'attn\.w_msa\.(qkv|proj)', rank=4, alpha=8),
    ])
optim_wrapper = dict(
    constructor='ProvenanceOptimWrapperConstructor',
    paramwise_cfg=dict(freeze='loaded'))
