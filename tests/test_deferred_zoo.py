"""Deferred constructor init on the zoo's own modules: without
``Pretrained``, a registry build with deferral on gives the tensors, the
forward output and the generator position of the same build with deferral
off (``MMEXT_INIT_DEFER=0``), bit for bit.

Every module here drops parameters during its own construction: their
constructor init drew random numbers without deferral, so deferral must
draw them too (``mmext_init.deferred.order``), where they were recorded.
"""
import gc
import os.path as osp
from typing import Any, Callable, Dict, Optional, Tuple

import mmseg
import pytest
import torch
import torch.nn as nn
from mmdet.registry import MODELS as DET_MODELS
from mmdet.utils import register_all_modules as register_det
from mmengine.config import Config, ConfigDict
from mmengine.model import BaseModule
from mmengine.registry import MODELS
from mmseg.registry import MODELS as SEG_MODELS
from mmseg.utils import register_all_modules as register_seg

from mmext_init import deferred

Forward = Callable[[nn.Module], Any]


def det_models():
    register_det()
    return DET_MODELS


def seg_models():
    register_seg()  # (Mask2Former's config names mmdet's types too)
    return SEG_MODELS


def rand(*shape: int) -> torch.Tensor:
    """Inputs from their own generator (the global one is under test)."""
    return torch.rand(*shape, generator=torch.Generator().manual_seed(1))


def flat(out: Any) -> list:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (list, tuple)):
        return [t for item in out for t in flat(item)]
    return []


def build_and_init(registry, cfg: Dict, defer: bool, monkeypatch,
                   forward: Optional[Forward]) -> Tuple[Dict, list, Any]:
    """State dict, forward output and the next draw of the global generator
    after seed 0, build and ``init_weights()``; also how many parameters
    were pending after the build."""
    monkeypatch.setenv(deferred.ENV_VAR, '1' if defer else '0')
    torch.manual_seed(0)
    model = registry.build(cfg)
    pending = deferred.pending_count()
    model.init_weights()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    next_draw = torch.rand(8)
    output = []
    if forward is not None:
        model.eval()
        with torch.no_grad():
            output = [t.clone() for t in flat(forward(model))]
    return state, output, (next_draw, pending)


def assert_deferral_changes_nothing(registry, cfg: Dict, monkeypatch,
                                    forward: Optional[Forward] = None):
    theirs, their_out, (their_draw, _) = build_and_init(
        registry, cfg, False, monkeypatch, forward)
    ours, our_out, (our_draw, pending) = build_and_init(
        registry, cfg, True, monkeypatch, forward)
    assert pending, 'nothing deferred: the test would prove nothing'
    assert list(ours) == list(theirs)
    differ = [k for k, v in ours.items() if not torch.equal(v, theirs[k])]
    assert not differ, f'{len(differ)} tensors differ, first: {differ[:3]}'
    assert torch.equal(our_draw, their_draw), 'generator left elsewhere'
    assert len(our_out) == len(their_out)
    for a, b in zip(our_out, their_out):
        assert torch.equal(a, b)


# mmdet ---------------------------------------------------------------------
def test_retina_sepbn_head_ties_convs_across_levels(monkeypatch):
    """nas_fpn / EfficientNet RetinaNet: the convs built for levels 1.. are
    replaced by level 0's, so they die pending."""
    cfg = dict(type='RetinaSepBNHead', num_classes=3, num_ins=3,
               in_channels=8, feat_channels=8, stacked_convs=2,
               norm_cfg=dict(type='BN'),
               anchor_generator=dict(
                   type='AnchorGenerator', octave_base_scale=4,
                   scales_per_octave=3, ratios=[0.5, 1.0, 2.0],
                   strides=[8, 16, 32]),
               bbox_coder=dict(type='DeltaXYWHBBoxCoder'))
    feats = tuple(rand(1, 8, s, s) for s in (8, 4, 2))
    assert_deferral_changes_nothing(det_models(), cfg, monkeypatch,
                                    lambda head: head(feats))


@pytest.mark.parametrize('cfg', [
    dict(type='Shared2FCBBoxHead', in_channels=8, fc_out_channels=16,
         roi_feat_size=7, num_classes=3),  # Mask/Faster R-CNN, HTC, GRoIE...
    dict(type='DIIHead', num_classes=3, num_ffn_fcs=2, num_heads=2,
         num_cls_fcs=1, num_reg_fcs=1, feedforward_channels=16,
         in_channels=16, dynamic_conv_cfg=dict(
             type='DynamicConv', in_channels=16, feat_channels=8,
             out_channels=16, input_feat_shape=7,
             act_cfg=dict(type='ReLU', inplace=True),
             norm_cfg=dict(type='LN'))),  # Sparse R-CNN, QueryInst
], ids=['Shared2FCBBoxHead', 'DIIHead'])
def test_bbox_heads_rebuild_their_predictors(cfg, monkeypatch):
    """BBoxHead builds ``fc_cls``/``fc_reg``; its subclasses build them again
    for other input sizes: the first ones die pending."""
    if cfg['type'] == 'DIIHead':
        def forward(head):
            return head(rand(2, 16, 7, 7), rand(1, 2, 16))
    else:
        def forward(head):
            return head(rand(2, 8, 7, 7))
    assert_deferral_changes_nothing(det_models(), cfg, monkeypatch, forward)


# mmseg ---------------------------------------------------------------------
SEG_HEAD = dict(channels=16, num_classes=3, in_index=0,
                norm_cfg=dict(type='BN'))


@pytest.mark.parametrize('cfg', [
    dict(type='FCNHead', in_channels=16, num_convs=0, concat_input=False,
         **SEG_HEAD),  # CGNet: the conv it built is replaced by Identity
    dict(type='DepthwiseSeparableFCNHead', in_channels=16, num_convs=2,
         **SEG_HEAD),  # Fast-SCNN: FCNHead's convs rebuilt separable
], ids=['FCNHead-num_convs-0', 'DepthwiseSeparableFCNHead'])
def test_fcn_heads_replace_their_convs(cfg, monkeypatch):
    assert_deferral_changes_nothing(seg_models(), cfg, monkeypatch,
                                    lambda head: head([rand(1, 16, 8, 8)]))


def test_dpt_head_drops_a_residual_unit(monkeypatch):
    """DPT: ``fusion_blocks[0].res_conv_unit1 = None`` after building it."""
    cfg = dict(type='DPTHead', in_channels=(16, ) * 4, channels=8,
               embed_dims=16, post_process_channels=[8] * 4,
               readout_type='project', num_classes=3,
               input_transform='multiple_select', in_index=(0, 1, 2, 3),
               norm_cfg=dict(type='BN'))
    feats = [[rand(1, 16, 4, 4), rand(1, 16)] for _ in range(4)]
    assert_deferral_changes_nothing(seg_models(), cfg, monkeypatch,
                                    lambda head: head(feats))


def small_mask2former_head() -> Dict:
    """mmseg's Mask2Former ADE20K head, shrunk (its ``cls_embed`` is built
    by mmdet's head, then again by mmseg's for ``num_classes + 1``)."""
    path = osp.join(osp.dirname(mmseg.__file__), '.mim', 'configs',
                    'mask2former',
                    'mask2former_r50_8xb2-160k_ade20k-512x512.py')
    sizes = dict(feat_channels=32, out_channels=32, embed_dims=32,
                 num_heads=2, feedforward_channels=32, num_feats=16,
                 num_layers=1, num_queries=4)

    def shrink(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: sizes[k] if k in sizes and isinstance(v, int)
                    else shrink(v) for k, v in x.items()}
        if isinstance(x, list):
            return [shrink(v) for v in x]
        return x

    cfg = shrink(Config.fromfile(path).model.decode_head.to_dict())
    cfg.update(in_channels=[8, 8, 8, 8], num_classes=3)
    cfg['loss_cls']['class_weight'] = [1.0] * 3 + [0.1]
    return ConfigDict(cfg)  # the head reads its entries as attributes


def test_mask2former_head_rebuilds_its_classifier(monkeypatch):
    assert_deferral_changes_nothing(seg_models(), small_mask2former_head(),
                                    monkeypatch)


# the same patterns in a model of one's own ---------------------------------
@MODELS.register_module(force=True)
class KeepsLayersAside(BaseModule):
    """Parameters the model does not hold as its own (a plain list) and a
    layer thrown away, both built before declared inits that draw."""

    def __init__(self, init_cfg=dict(type='Normal', std=0.01,
                                     layer='Linear')):
        super().__init__(init_cfg)
        self.fc = nn.Linear(8, 8)
        nn.Linear(8, 8)  # built and dropped at once
        self.aside = [nn.Linear(8, 8)]  # not registered: not in state_dict

    def forward(self, x):
        return self.aside[0](self.fc(x))


def test_tensors_outside_the_state_dict_still_draw(monkeypatch):
    assert_deferral_changes_nothing(MODELS, dict(type='KeepsLayersAside'),
                                    monkeypatch,
                                    lambda model: model(rand(2, 8)))


def test_a_model_deleted_pending_draws_what_it_would_have(monkeypatch):
    """Build, delete without reading, draw: as without deferral; nothing
    stays pending and the global hooks go away."""
    draws = []
    for defer in ('0', '1'):
        monkeypatch.setenv(deferred.ENV_VAR, defer)
        torch.manual_seed(0)
        model = MODELS.build(dict(type='KeepsLayersAside'))
        assert bool(deferred.pending_count()) == (defer == '1')
        del model
        gc.collect()
        assert deferred.pending_count() == 0 and not deferred.hooks_installed()
        draws.append(torch.rand(8))
    assert torch.equal(*draws)
