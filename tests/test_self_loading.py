"""Backbones that read the checkpoint in their own ``init_weights`` and
ignore ``prefix`` (mmseg PIDNet, BEiT, ViT; mmdet Swin with
``convert_weights=True``): on a whole-model checkpoint, a clear error that
names the entry and the file and gives a fix that works; never a silent
partial load, never a ledger that disagrees with the values."""
import os
import re

import numpy as np
import pytest
import torch
import torch.nn as nn
from mmengine.config import Config, ConfigDict
from mmengine.model import BaseModule

import mmext_init
from mmext_init import get_provenance
from mmext_init.errors import CheckpointError

PIDNET_L = 'pidnet/pidnet-l_2xb6-120k_1024x1024-cityscapes.py'
VIT_ARGS = dict(img_size=(32, 32), patch_size=8, embed_dims=32, num_layers=2,
                num_heads=2, mlp_ratio=2, out_indices=(1, ))
BEIT_ARGS = dict(img_size=(32, 32), patch_size=8, embed_dims=32, num_layers=2,
                 num_heads=2, mlp_ratio=2, out_indices=(1, ))
SWIN_ARGS = dict(pretrain_img_size=32, embed_dims=16, depths=(1, 1),
                 num_heads=(1, 2), strides=(4, 2), out_indices=(0, 1),
                 window_size=2)


class Holder(BaseModule):
    """A parent module: the backbone and a head, like a segmentor."""

    def __init__(self, backbone: nn.Module, init_cfg=None) -> None:
        super().__init__(init_cfg)
        self.backbone = backbone
        self.head = nn.Conv2d(3, 4, 1)


def randomized(module: nn.Module) -> nn.Module:
    """Every float tensor drawn anew (positive, so running_var stays valid),
    every BatchNorm counter non-zero: loaded values are recognizable."""
    with torch.no_grad():
        for name, t in module.state_dict(keep_vars=True).items():
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5)
            elif name.endswith('num_batches_tracked'):
                t.fill_(7)
    return module


def runner_checkpoint(state: dict, path) -> str:
    """A checkpoint as a Runner writes it (numpy in meta, optimizer...)."""
    torch.save({
        'meta': {'epoch': 3, 'seed': np.int64(7), 'lr': np.float64(0.1)},
        'state_dict': {k: v.clone() for k, v in state.items()},
        'message_hub': {'log_scalars': {}, 'runtime_info': {'iter': 9}},
        'optimizer': {'state': {}, 'param_groups': [{'lr': 0.1}]},
    }, path)
    return str(path)


def suggested_parent_cfg(message: str) -> dict:
    """The parent init_cfg the error suggests, as a config dict."""
    found = re.search(r"init_cfg=(dict\(type='Pretrained'.*?\)), and set",
                      message)
    assert found, message
    return eval(found.group(1))  # noqa: S307 (our own message)


def assert_backbone_loaded(model: nn.Module, state: dict, path: str) -> None:
    """Every backbone tensor is the checkpoint's, and the ledger says so."""
    ledger = get_provenance(model)
    for key, value in model.state_dict().items():
        if key.startswith('backbone.'):
            assert torch.equal(value, state[key]), key
            entry = ledger.entries[key]
            assert (entry.kind, entry.source, entry.key) == (
                'checkpoint', path, key), key


def pidnet_l_cfg() -> Config:
    """mmseg's PIDNet-L config, narrowed (same topology, few channels)."""
    import mmseg
    cfg = Config.fromfile(os.path.join(os.path.dirname(mmseg.__file__),
                                       '.mim', 'configs', PIDNET_L))
    cfg.model.backbone.update(channels=8, ppm_channels=16, init_cfg=None)
    cfg.model.decode_head.update(in_channels=32, channels=16)
    cfg.model.data_preprocessor.size = (64, 64)
    return cfg


def build_segmentor(model_cfg: ConfigDict) -> nn.Module:
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    return MODELS.build(model_cfg)


def test_pidnet_backbone_entry_on_runner_checkpoint_is_a_clear_error(
        tmp_path):
    """PIDNet passes the file's top-level dict to ``load_state_dict``: no
    conv loads. Before: no error, the checkpoint credited with the
    BatchNorm counters torch fills in itself, a warning that the file lacks
    tensors it holds. Now: an error saying so, no ledger, and the fix it
    gives loads every backbone tensor bit-exact."""
    cfg = pidnet_l_cfg()
    with mmext_init.stock_mmengine():
        reference = randomized(build_segmentor(cfg.model))
    state = reference.state_dict()
    path = runner_checkpoint(state, tmp_path / 'pidnet.pth')
    cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint=path,
                                       prefix='backbone.')
    model = build_segmentor(cfg.model)
    with pytest.raises(CheckpointError) as error:
        model.init_weights()
    message = str(error.value)
    assert message.startswith(
        f"init_cfg of 'backbone' (Pretrained): PIDNet.init_weights reads "
        f"{path} itself, with its own key handling, and ignores `prefix` "
        "(prefix='backbone.' is not applied): it gave load_state_dict a "
        "dict with keys 'message_hub', 'meta', 'optimizer', 'state_dict' "
        "(the file's top level: it does not unwrap 'state_dict'), and none "
        'of them names a tensor of the module; the ')
    assert 'num_batches_tracked counters' in message
    assert f'so it loaded nothing from {path}. Fix: move the' in message
    with pytest.raises(LookupError):  # no ledger disagreeing with values
        get_provenance(model)

    cfg.model.backbone.init_cfg = None
    cfg.model.init_cfg = suggested_parent_cfg(message)
    assert cfg.model.init_cfg == dict(type='Pretrained', checkpoint=path,
                                      ignore_keys=[r'(?!backbone\.).*'])
    model = build_segmentor(cfg.model)
    model.init_weights()
    assert_backbone_loaded(model, state, path)
    head = get_provenance(model).entries['decode_head.conv_seg.weight']
    assert head.kind != 'checkpoint'


def test_pidnet_counters_torch_fills_in_are_not_loads(tmp_path):
    """A backbone checkpoint without ``num_batches_tracked`` (a plain dict,
    as PIDNet needs): BatchNorm copies its own counter onto itself; the
    ledger keeps the counter's real origin, the rest is the checkpoint's."""
    from mmseg.models.backbones import PIDNet
    args = dict(channels=8, ppm_channels=16, num_stem_blocks=3,
                num_branch_blocks=4)
    state = randomized(PIDNet(**args)).state_dict()
    weights = {k: v for k, v in state.items()
               if not k.endswith('num_batches_tracked')}
    path = str(tmp_path / 'pidnet_backbone.pth')
    torch.save(weights, path)
    model = PIDNet(**args, init_cfg=dict(type='Pretrained', checkpoint=path))
    model.init_weights()
    ledger = get_provenance(model)
    for key, value in model.state_dict().items():
        entry = ledger.entries[key]
        if key.endswith('num_batches_tracked'):
            assert int(value) == 0 and entry.kind == 'constructor', key
            assert key not in ledger.loads[0].loaded
        else:
            assert torch.equal(value, weights[key]), key
            assert (entry.kind, entry.key) == ('checkpoint', key), key


def test_counters_alone_are_no_load(tmp_path):
    """A file whose only matching tensors are BatchNorm counters loaded
    nothing that matters: an error, not a load record."""
    from mmseg.models.backbones import PIDNet
    args = dict(channels=8, ppm_channels=16)
    counters = {k: v for k, v in randomized(PIDNet(**args)).state_dict().items()
                if k.endswith('num_batches_tracked')}
    path = str(tmp_path / 'counters.pth')
    torch.save(counters, path)
    model = PIDNet(**args, init_cfg=dict(type='Pretrained', checkpoint=path))
    with pytest.raises(CheckpointError, match=re.escape(
            f'so it loaded nothing from {path}. Fix: ')):
        model.init_weights()


def test_beit_whole_model_checkpoint_with_prefix(tmp_path):
    """BEiT looks the file's keys up in its own state dict: a bare
    ``KeyError`` before; now an error naming the entry and the file, chained
    to the KeyError, whose fix loads the backbone bit-exact."""
    from mmseg.models.backbones import BEiT
    state = randomized(Holder(BEiT(**BEIT_ARGS))).state_dict()
    path = runner_checkpoint(state, tmp_path / 'seg.pth')
    model = Holder(BEiT(**BEIT_ARGS, init_cfg=ConfigDict(
        type='Pretrained', checkpoint=path, prefix='backbone.')))
    with pytest.raises(CheckpointError) as error:
        model.init_weights()
    message = str(error.value)
    assert isinstance(error.value.__cause__, KeyError)
    assert message.startswith(
        f"init_cfg of 'backbone' (Pretrained): BEiT.init_weights reads {path} "
        'itself, with its own key handling, and ignores `prefix` '
        "(prefix='backbone.' is not applied): it looked the key "
        "'backbone.layers.0.attn.relative_position_bias_table' up among its "
        "own tensors, which are named without the leading "
        "'backbone.', and failed with KeyError. Fix: move the Pretrained "
        'entry to the parent, the model root (Holder): ')
    assert ("or give it a checkpoint of the backbone alone (keys relative to "
            "the backbone, such as 'cls_token')." in message)
    model = Holder(BEiT(**BEIT_ARGS),
                   init_cfg=suggested_parent_cfg(message))
    model.init_weights()
    assert_backbone_loaded(model, state, path)
    assert get_provenance(model).entries['head.weight'].kind != 'checkpoint'


def test_swin_convert_weights_on_mmdet_layout_checkpoint(tmp_path):
    """mmdet Swin with ``convert_weights=True`` renames an mmdet-layout
    file's keys to 'backbone.backbone.*' and fails on them: the error
    suggests ``convert_weights=False``, which then loads bit-exact."""
    from mmdet.models.backbones import SwinTransformer
    state = randomized(Holder(SwinTransformer(**SWIN_ARGS))).state_dict()
    path = runner_checkpoint(state, tmp_path / 'det.pth')

    def build(convert_weights: bool) -> Holder:
        return Holder(SwinTransformer(
            **SWIN_ARGS, convert_weights=convert_weights, init_cfg=ConfigDict(
                type='Pretrained', checkpoint=path, prefix='backbone.')))

    with pytest.raises(CheckpointError, match=re.escape(
            "init_cfg of 'backbone' (Pretrained): SwinTransformer.init_weights"
            f' reads {path} itself')) as error:
        build(convert_weights=True).init_weights()
    message = str(error.value)
    assert isinstance(error.value.__cause__, KeyError)
    assert ("'backbone.stages.0.blocks.0.attn.w_msa.relative_position_bias_"
            "table' up among its own tensors, which are named without the "
            "leading 'backbone.'" in message)
    assert ("or set convert_weights=False on 'backbone' if the file is "
            "already in this library's layout" in message)
    model = build(convert_weights=False)
    model.init_weights()
    assert_backbone_loaded(model, state, path)


def test_vit_whole_model_checkpoint_with_prefix(tmp_path):
    """mmseg's ViT unwraps 'state_dict' but keeps 'backbone.': it loads
    nothing. The error says why (the keys it was given) and how to fix it;
    the suggested parent entry loads the backbone bit-exact."""
    from mmseg.models.backbones import VisionTransformer
    state = randomized(Holder(VisionTransformer(**VIT_ARGS))).state_dict()
    path = runner_checkpoint(state, tmp_path / 'seg.pth')
    model = Holder(VisionTransformer(**VIT_ARGS, init_cfg=dict(
        type='Pretrained', checkpoint=path, prefix='backbone.')))
    with pytest.raises(CheckpointError) as error:
        model.init_weights()
    message = str(error.value)
    assert message.startswith(
        "init_cfg of 'backbone' (Pretrained): VisionTransformer.init_weights "
        f'reads {path} itself, with its own key handling, and ignores '
        "`prefix` (prefix='backbone.' is not applied): it gave "
        f"load_state_dict {len(state)} keys such as 'backbone.cls_token' "
        "(most common prefixes: 'backbone.' (")
    assert "'head.' (2 keys)), and none of them names a tensor" in message
    assert f'so it loaded nothing from {path}. Fix: ' in message
    model = Holder(VisionTransformer(**VIT_ARGS),
                   init_cfg=suggested_parent_cfg(message))
    model.init_weights()
    assert_backbone_loaded(model, state, path)


def test_suggested_parent_entry_renames_another_prefix(tmp_path):
    """The checkpoint's prefix differs from the backbone's name (keys
    'encoder.*' for the child 'backbone'): the suggested parent entry also
    renames them, and loads the backbone bit-exact."""
    from mmseg.models.backbones import VisionTransformer
    backbone = randomized(VisionTransformer(**VIT_ARGS)).state_dict()
    path = runner_checkpoint({f'encoder.{k}': v for k, v in backbone.items()},
                             tmp_path / 'encoder.pth')
    model = Holder(VisionTransformer(**VIT_ARGS, init_cfg=dict(
        type='Pretrained', checkpoint=path, prefix='encoder.')))
    with pytest.raises(CheckpointError, match='loaded nothing') as error:
        model.init_weights()
    parent_cfg = suggested_parent_cfg(str(error.value))
    assert parent_cfg == dict(type='Pretrained', checkpoint=path,
                              ignore_keys=[r'(?!encoder\.).*'],
                              revise_keys=[(r'^encoder\.', 'backbone.')])
    model = Holder(VisionTransformer(**VIT_ARGS), init_cfg=parent_cfg)
    model.init_weights()
    ledger = get_provenance(model)
    for key, value in backbone.items():
        assert torch.equal(model.backbone.state_dict()[key], value), key
        entry = ledger.entries[f'backbone.{key}']
        assert (entry.kind, entry.key) == ('checkpoint', f'encoder.{key}')


class KeyErrorBackbone(BaseModule):
    """An override failing with a KeyError unrelated to checkpoint keys."""

    def __init__(self, init_cfg=None) -> None:
        super().__init__(init_cfg)
        self.conv = nn.Conv2d(3, 4, 1)

    def init_weights(self) -> None:
        raise KeyError('conv_cfg')


def test_unrelated_key_error_propagates_unchanged(tmp_path):
    path = runner_checkpoint(Holder(KeyErrorBackbone()).state_dict(),
                             tmp_path / 'model.pth')
    model = Holder(KeyErrorBackbone(init_cfg=dict(
        type='Pretrained', checkpoint=path, prefix='backbone.')))
    with pytest.raises(KeyError, match='conv_cfg'):
        model.init_weights()


def test_detectors_resnet_whole_model_checkpoint_is_a_clear_error(tmp_path):
    """Regression (zoo sweep, detectors/cascade-rcnn_r50-rfp): mmdet's
    ``DetectoRS_ResNet`` turns its ``init_cfg`` into ``self.pretrained`` and
    loads it with ``load_checkpoint`` in its own ``init_weights``; on a
    whole-detector checkpoint it matched nothing and the run went on with
    constructor weights, without an error."""
    from mmengine.registry import MODELS, init_default_scope
    init_default_scope('mmdet')
    backbone = dict(type='DetectoRS_ResNet', depth=50, num_stages=4,
                    out_indices=(0, 1, 2, 3), norm_eval=True)
    source = randomized(MODELS.build(backbone))
    state = source.state_dict()
    whole = runner_checkpoint({f'backbone.{k}': v for k, v in state.items()},
                              tmp_path / 'detector.pth')
    model = MODELS.build(dict(backbone, init_cfg=dict(
        type='Pretrained', checkpoint=whole)))
    with pytest.raises(CheckpointError) as err:
        model.init_weights()
    text = str(err.value)
    assert 'DetectoRS_ResNet.init_weights' in text and whole in text
    assert "carry the prefix 'backbone.'" in text
    alone = runner_checkpoint(state, tmp_path / 'backbone.pth')
    model = MODELS.build(dict(backbone, init_cfg=dict(
        type='Pretrained', checkpoint=alone)))
    model.init_weights()  # the fix the error gives: a checkpoint of it alone
    ledger = get_provenance(model)
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name
        assert ledger.entries[name].kind == 'checkpoint', name
        assert ledger.entries[name].source == alone, name
