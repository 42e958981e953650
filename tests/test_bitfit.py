r"""BitFit (Ben Zaken et al. 2022) as one ``freeze`` entry of
``ProvenanceOptimWrapperConstructor``:
``freeze=dict(exclude=['new', dict(name=r'.*\.bias')])``.

Checked against the method's definition, computed without the rule's
regex: the trainable set is every bias term (a module's ``bias``
parameter, LayerNorm's and BatchNorm's included, as the paper trains all
of them) plus what the checkpoint does not provide (the new head), on
mmpretrain's ViT classifier and mmdet's RetinaNet; the optimizer holds
exactly those. A BatchNorm whose bias trains is not all frozen, so it
follows ``train()``: its running statistics move (under ``freeze='loaded'``
they stay).
"""
from typing import Dict, Set

import pytest
import torch
import torch.nn as nn
from mmdet.registry import MODELS as DET_MODELS
from mmengine.registry import init_default_scope
from mmpretrain.registry import MODELS as PRETRAIN_MODELS
from torch.nn.modules.batchnorm import _BatchNorm

from mmext_init import ProvenanceOptimWrapperConstructor
from toy_models import tiny_retinanet_cfg

BITFIT = dict(exclude=['new', dict(name=r'.*\.bias')])
OPTIM = dict(optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05))
VIT = dict(type='VisionTransformer', img_size=32, patch_size=8,
           arch=dict(embed_dims=32, num_layers=2, num_heads=2,
                     feedforward_channels=64))


def bias_terms(model: nn.Module) -> Set[str]:
    """Every module's ``bias`` parameter, by identity (the definition)."""
    ids = {id(m.bias) for m in model.modules()
           if isinstance(getattr(m, 'bias', None), nn.Parameter)}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def _checkpoint(save_ckpt, module: nn.Module, prefix: str) -> str:
    """The state of ``module`` (freshly initialized) under ``prefix``."""
    module.init_weights()
    return save_ckpt({prefix + k: v for k, v in module.state_dict().items()})


def _trainable(model: nn.Module) -> Set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def _in_optimizer(model: nn.Module, optimizer) -> Set[str]:
    ids = {id(p) for g in optimizer.param_groups for p in g['params']}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def _bitfit(model: nn.Module, freeze=BITFIT):
    return ProvenanceOptimWrapperConstructor(OPTIM, dict(freeze=freeze))(
        model).optimizer


@pytest.fixture
def vit_classifier(save_ckpt):
    """mmpretrain's ImageClassifier: ViT backbone from a checkpoint (2
    classes there), a new 4-class head."""
    init_default_scope('mmpretrain')
    ckpt = _checkpoint(save_ckpt, PRETRAIN_MODELS.build(VIT), 'backbone.')
    return PRETRAIN_MODELS.build(dict(
        type='ImageClassifier',
        backbone=dict(VIT, init_cfg=dict(type='Pretrained', checkpoint=ckpt,
                                         prefix='backbone.')),
        head=dict(type='VisionTransformerClsHead', num_classes=4,
                  in_channels=32, loss=dict(type='CrossEntropyLoss'))))


def test_bitfit_on_mmpretrain_vit_trains_every_bias_and_the_new_head(
        vit_classifier):
    """Trainable = biases (qkv, proj, FFN, every LayerNorm's) + the head;
    LayerNorm weights, cls_token, pos_embed and every weight frozen."""
    model = vit_classifier
    optimizer = _bitfit(model)
    names = {n for n, _ in model.named_parameters()}
    head = {n for n in names if n.startswith('head.')}
    expected = {n for n in bias_terms(model) if n.startswith('backbone.')}
    assert _trainable(model) == expected | head
    assert _in_optimizer(model, optimizer) == expected | head
    norms = [path for path, m in model.backbone.named_modules()
             if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 2 * 2 + 1  # ln1, ln2 per layer, the final ln1
    for path in norms:
        assert f'backbone.{path}.bias' in expected
        assert f'backbone.{path}.weight' not in _trainable(model)
    assert {'backbone.cls_token', 'backbone.pos_embed'} <= names - expected
    assert any('.attn.qkv.bias' in n for n in expected)
    model.init_weights()  # the ledger agrees with the prediction
    assert _trainable(model) == expected | head


def _retinanet(save_ckpt) -> nn.Module:
    init_default_scope('mmdet')
    ckpt = _checkpoint(save_ckpt, DET_MODELS.build(
        tiny_retinanet_cfg()['backbone']), '')
    return DET_MODELS.build(tiny_retinanet_cfg(
        init_cfg=dict(type='Pretrained', checkpoint=ckpt)))


def _bn_stats(model: nn.Module) -> Dict[str, torch.Tensor]:
    return {n: b.clone() for n, b in model.named_buffers()
            if n.endswith('running_mean')}


def test_bitfit_on_mmdet_retinanet_trains_bn_biases_and_their_stats(
        save_ckpt):
    """ResNet's convolutions have no bias: BitFit trains its BatchNorm
    biases (weights frozen) and everything new (FPN, head); the BN layers
    stay in training mode, so their running statistics move, and a
    backward gives the BN biases a gradient and the weights none."""
    model = _retinanet(save_ckpt)
    optimizer = _bitfit(model)
    model.init_weights()
    names = {n for n, _ in model.named_parameters()}
    new = {n for n in names if not n.startswith('backbone.')}
    expected = {n for n in bias_terms(model) if n.startswith('backbone.')}
    bns = [p for p, m in model.backbone.named_modules()
           if isinstance(m, _BatchNorm)]
    assert expected == {f'backbone.{p}.bias' for p in bns}  # convs: no bias
    assert _trainable(model) == _in_optimizer(model, optimizer) == \
        expected | new
    before = _bn_stats(model.backbone)
    model.train()
    out = model.backbone(torch.randn(2, 3, 64, 64))
    sum(o.sum() for o in out).backward()
    after = _bn_stats(model.backbone)
    assert all(m.training for m in model.backbone.modules()
               if isinstance(m, _BatchNorm))
    assert [n for n in before if torch.equal(before[n], after[n])] == []
    for path in bns:
        bn = model.backbone.get_submodule(path)
        assert bn.weight.grad is None and bn.bias.grad is not None, path


def test_freeze_loaded_keeps_the_bn_stats_bitfit_moves(save_ckpt):
    """The contrast: under ``freeze='loaded'`` every BN parameter is frozen,
    the layers stay in eval mode and their statistics do not move."""
    model = _retinanet(save_ckpt)
    _bitfit(model, freeze='loaded')
    model.init_weights()
    before = _bn_stats(model.backbone)
    model.train()
    model.backbone(torch.randn(2, 3, 64, 64))
    after = _bn_stats(model.backbone)
    assert before and all(torch.equal(before[n], after[n]) for n in before)
