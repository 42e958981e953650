r"""LoRA+ (Hayou et al. 2024) as one rule of
``ProvenanceOptimWrapperConstructor``: LoRA's B at ``ratio`` x the lr of A,
``rules=[dict(select=dict(insert_type='LoRA', name=r'.*\.lora_B\..*'),
lr_mult=ratio)]``, checked against PEFT's
``peft.optimizers.create_loraplus_optimizer`` on the same model (the same
layers given LoRA by PEFT's ``get_peft_model``) with the same lr, ratio and
weight decay: every parameter gets the same lr and weight decay, matched by
name (PEFT's ``base_model.model.`` prefix, ``base_layer`` and ``default``
dropped). Layers: nn.Linear (mmpretrain ViT's ``qkv``), mmcv ConvModule
(mmdet FPN's 1x1 and 3x3 convs), nn.Conv2d (RetinaNet's 3x3 heads) and
nn.MultiheadAttention (mmseg MiT's: B of the packed q/k/v and of
``out_proj``), and DoRA, which extends LoRA.

PEFT gives every trainable 1-D tensor the B lr too (its rule is ``"lora_B"
in name or param.ndim == 1``; biases and norms also without weight decay):
with a trainable head, the head's bias is the one difference, and with DoRA
on a Linear its magnitude vector; naming them in a rule reproduces PEFT.
"""
from typing import Dict, List, Tuple

import pytest
import torch
import torch.distributed.tensor  # noqa: F401  (PEFT reads it, unimported)
import torch.nn as nn
from mmdet.registry import MODELS as DET_MODELS
from mmengine.registry import init_default_scope
from mmpretrain.registry import MODELS as PRETRAIN_MODELS
from mmseg.registry import MODELS as SEG_MODELS
from peft import LoraConfig, get_peft_model
from peft.optimizers import create_loraplus_optimizer

from mmext_init import ProvenanceOptimWrapperConstructor
from toy_models import tiny_retinanet_cfg

LR, RATIO, WD = 1e-3, 16.0, 0.05
RANK, ALPHA = 4, 8
LORA_B = dict(insert_type='LoRA', name=r'.*\.lora_B\..*')
VIT = dict(type='ImageClassifier', backbone=dict(
    type='VisionTransformer', img_size=32, patch_size=8,
    arch=dict(embed_dims=32, num_layers=2, num_heads=2,
              feedforward_channels=64)),
    head=dict(type='VisionTransformerClsHead', num_classes=4, in_channels=32,
              loss=dict(type='CrossEntropyLoss')))
MIT = dict(type='MixVisionTransformer', in_channels=3, embed_dims=8,
           num_stages=2, num_layers=[1, 1], num_heads=[1, 2],
           patch_sizes=[7, 3], strides=[4, 2], sr_ratios=[2, 1],
           out_indices=(0, 1))
# (scope, registry, model config, our targets, PEFT's targets)
CASES = {
    'vit-linear': ('mmpretrain', PRETRAIN_MODELS, VIT,
                   r'backbone\.layers\.\d+\.attn\.qkv',
                   r'backbone\.layers\.\d+\.attn\.qkv'),
    'retinanet-convmodule-conv2d': (
        'mmdet', DET_MODELS, tiny_retinanet_cfg(),
        r'neck\.(lateral|fpn)_convs\.\d+|bbox_head\.retina_(cls|reg)',
        r'neck\.(lateral|fpn)_convs\.\d+\.conv|bbox_head\.retina_(cls|reg)'),
    'mit-multiheadattention': ('mmseg', SEG_MODELS, MIT, r'.*attn\.attn',
                               r'.*attn\.attn'),
}
Options = Dict[str, Tuple[float, float]]


def peft_name(name: str) -> str:
    """A PEFT parameter name in our naming."""
    name = name[len('base_model.model.'):]
    return name.replace('.base_layer.', '.').replace('.default.', '.')


def options(model: nn.Module, optimizer, rename=lambda n: n) -> Options:
    """Parameter name -> (lr, weight_decay) in ``optimizer``."""
    group_of = {id(p): g for g in optimizer.param_groups for p in g['params']}
    return {rename(n): (group_of[id(p)]['lr'], group_of[id(p)]['weight_decay'])
            for n, p in model.named_parameters() if id(p) in group_of}


def pair(case: str, dora: bool = False) -> Tuple[nn.Module, nn.Module]:
    """The model with our LoRA (DoRA) inserted and PEFT's LoRA model of the
    same configuration."""
    scope, registry, cfg, ours, theirs = CASES[case]
    init_default_scope(scope)
    inserted = registry.build(dict(cfg, insert=[dict(
        type='DoRA' if dora else 'LoRA', targets=ours, rank=RANK,
        alpha=ALPHA)]))
    peft = get_peft_model(registry.build(cfg), LoraConfig(
        r=RANK, lora_alpha=ALPHA, target_modules=theirs, use_dora=dora))
    return inserted, peft


def ours(model: nn.Module, freeze, rules: List[dict]) -> Options:
    ctor = ProvenanceOptimWrapperConstructor(
        dict(optimizer=dict(type='AdamW', lr=LR, weight_decay=WD)),
        dict(freeze=freeze, rules=rules))
    return options(model, ctor(model).optimizer)


def loraplus(model: nn.Module) -> Options:
    optimizer = create_loraplus_optimizer(
        model, torch.optim.AdamW, lr=LR, loraplus_lr_ratio=RATIO,
        loraplus_weight_decay=WD, weight_decay=WD)
    return options(model, optimizer, peft_name)


@pytest.mark.parametrize('case', sorted(CASES))
def test_lora_plus_rule_gives_what_peft_gives(case):
    """Only LoRA trains (PEFT's default): the same tensors train, A at lr,
    B at lr x ratio, all with the weight decay; PEFT's B is ours."""
    inserted, peft = pair(case)
    mine = ours(inserted, dict(exclude=dict(insert_type='LoRA')),
                [dict(select=LORA_B, lr_mult=RATIO)])
    theirs = loraplus(peft)
    assert mine == theirs
    b_names = {n for n in mine if '.lora_B.' in n}
    assert b_names and len(b_names) * 2 == len(mine)
    if case.startswith('mit'):  # in_proj's B on the attention, out_proj's
        assert {n.split('.attn.attn.')[1] for n in b_names} == {
            'lora_B.weight', 'out_proj.lora_B.weight'}
    assert {mine[n] for n in b_names} == {(LR * RATIO, WD)}
    assert {v for n, v in mine.items() if n not in b_names} == {(LR, WD)}


def test_selecting_b_by_module_type_is_the_same_rule():
    """``module_type='LoRAUp'`` (B's class) selects the same tensors."""
    inserted, peft = pair('retinanet-convmodule-conv2d')
    freeze = dict(exclude=dict(insert_type='LoRA'))
    by_type = ours(inserted, freeze, [dict(select=dict(module_type='LoRAUp'),
                                           lr_mult=RATIO)])
    assert by_type == ours(inserted, freeze,
                           [dict(select=LORA_B, lr_mult=RATIO)])
    assert by_type == loraplus(peft)


def test_a_trainable_head_differs_by_its_bias_only():
    """Head trainable on both sides: PEFT gives its bias (1-D) the B lr and
    no weight decay, the rule does not; a second rule for it makes the two
    optimizers equal."""
    inserted, peft = pair('vit-linear')
    for name, param in peft.named_parameters():
        if name.startswith('base_model.model.head.'):
            param.requires_grad_(True)
    freeze = dict(exclude=[dict(insert_type='LoRA'), dict(name=r'head\..*')])
    rules = [dict(select=LORA_B, lr_mult=RATIO)]
    theirs = loraplus(peft)
    mine = ours(inserted, freeze, rules)
    assert mine.keys() == theirs.keys()
    differ = sorted(n for n in mine if mine[n] != theirs[n])
    assert differ == ['head.layers.head.bias']
    assert (mine[differ[0]], theirs[differ[0]]) == \
        ((LR, WD), (LR * RATIO, 0.0))
    inserted, _ = pair('vit-linear')
    mine = ours(inserted, freeze, rules + [dict(
        select=dict(name=r'head\..*\.bias'), lr_mult=RATIO, decay_mult=0)])
    assert mine == theirs


def test_dora_magnitude_trains_at_the_lr_of_a():
    """DoRA extends LoRA: the rule's ``insert_type='LoRA'`` selects its B;
    its magnitude (1-D on a Linear) stays at the base lr, where PEFT gives
    it the B lr (its ``ndim == 1`` rule); naming it in the rule too gives
    PEFT's optimizer."""
    inserted, peft = pair('vit-linear', dora=True)
    freeze = dict(exclude=dict(insert_type='LoRA'))
    theirs = loraplus(peft)
    mine = ours(inserted, freeze, [dict(select=LORA_B, lr_mult=RATIO)])
    assert mine.keys() == theirs.keys()
    differ = {n for n in mine if mine[n] != theirs[n]}
    magnitudes = {n for n in mine if '.lora_magnitude_vector.' in n}
    assert magnitudes and differ == magnitudes
    assert {mine[n] for n in differ} == {(LR, WD)}
    assert {theirs[n] for n in differ} == {(LR * RATIO, WD)}
    both = dict(LORA_B, name=r'.*\.(lora_B|lora_magnitude_vector)\..*')
    inserted, _ = pair('vit-linear', dora=True)
    assert ours(inserted, freeze, [dict(select=both, lr_mult=RATIO)]) == \
        theirs
