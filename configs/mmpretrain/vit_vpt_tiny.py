# Visual Prompt Tuning (VPT-deep) of mmpretrain's own ViT from the config, no
# model code: vit_lora_ft_tiny.py (the tiny ViT loaded from its stock Runner
# checkpoint, a new 4-class head, everything loaded frozen, what is new at
# 10x the base learning rate) with its insert list replaced: 4 prompt tokens
# put after the class token at the input of each of the 4 blocks (and
# dropped from each block's output). Each block's prompts are
# `backbone.layers.N.vpt_prompt.tokens`, initialized as the paper's official
# code does (PromptUniform: uniform in [-v, v], v = sqrt(6 / (3 * 8 * 8 + 32))
# for 8 px patches of 3 channels and 32-wide tokens). Only the prompts and
# the head train. Two iterations: an example, not a schedule.
_base_ = './vit_lora_ft_tiny.py'

model = dict(
    insert=[dict(type='VPT', targets='backbone', num_tokens=4, deep=True)])
train_cfg = dict(type='IterBasedTrainLoop', max_iters=2)
