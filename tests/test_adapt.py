"""Shape adaptation transforms, alone and through ``Pretrained(adapt=...)``."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.config import ConfigDict
from mmengine.model import BaseModule

from mmext_init import CheckpointError, InitConfigError, get_provenance
from mmext_init.loading.adapt_classes import Classes
from mmext_init.loading.adapt import (Grow, Inflate, InputChannels,
                                      ResizePosEmbed, ResizeRelPosTable,
                                      dry_run)


def test_resize_pos_embed():
    pos = torch.randn(1, 1 + 16, 8)
    same = ResizePosEmbed('pos', num_prefix_tokens=1)('pos', pos, (1, 17, 8))
    assert torch.equal(same.tensor, pos)  # original grid at original size
    big = ResizePosEmbed('pos')('pos', pos.half(), (1, 1 + 36, 8))
    assert big.tensor.shape == (1, 37, 8) and big.tensor.dtype == torch.half
    assert torch.equal(big.tensor[:, :1], pos[:, :1].half())
    assert 'grid=\'4x4->6x6\'' in big.description
    const = torch.ones(1, 17, 8)
    assert torch.allclose(ResizePosEmbed('p')('p', const, (1, 37, 8)).tensor,
                          torch.ones(1, 37, 8), atol=1e-5)


def test_resize_rel_pos_table():
    table = torch.randn((2 * 7 - 1)**2, 3)
    out = ResizeRelPosTable('t')('t', table, ((2 * 12 - 1)**2, 3)).tensor
    assert out.shape == (23 * 23, 3)
    with pytest.raises(ValueError, match='same number of heads'):
        ResizeRelPosTable('t')('t', table, (23 * 23, 4))


def test_inflate_on_constant_clip_equals_2d_conv():
    w2d = torch.randn(4, 3, 3, 3)
    w3d = Inflate('w', mode='replicate')('w', w2d, (4, 3, 5, 3, 3)).tensor
    frame = torch.randn(1, 3, 8, 8)
    clip = frame.unsqueeze(2).repeat(1, 1, 5, 1, 1)
    out3d = F.conv3d(clip, w3d, padding=(0, 1, 1))[:, :, 0]
    assert torch.allclose(out3d, F.conv2d(frame, w2d, padding=1), atol=1e-5)
    centre = Inflate('w', mode='center')('w', w2d, (4, 3, 5, 3, 3)).tensor
    assert torch.equal(centre[:, :, 2], w2d) and centre[:, :, 0].abs().sum() == 0


def test_input_channels_sum_tile_copy():
    w = torch.randn(8, 3, 3, 3)
    grey = torch.randn(1, 1, 6, 6)
    summed = InputChannels('w', mode='sum')('w', w, (8, 1, 3, 3)).tensor
    assert torch.allclose(F.conv2d(grey, summed),
                          F.conv2d(grey.repeat(1, 3, 1, 1), w), atol=1e-5)
    tiled = InputChannels('w', mode='tile')('w', w, (8, 6, 3, 3)).tensor
    six = torch.randn(1, 3, 6, 6).repeat(1, 2, 1, 1)
    assert torch.allclose(F.conv2d(six, tiled), F.conv2d(six[:, :3], w),
                          atol=1e-5)
    copied = InputChannels('w', mode='copy')('w', w, (8, 4, 3, 3))
    assert torch.equal(copied.tensor[:, :3], w) and copied.region[1] == \
        slice(0, 3)


def test_classes_and_grow_keep_rows_bit_exact():
    w = torch.randn(3, 5)
    res = Classes('w', old_classes=['cat', 'dog', 'car'],
                  new_classes=['dog', 'bus', 'cat'])('w', w, (3, 5))
    assert torch.equal(res.tensor[0], w[1])
    assert torch.equal(res.tensor[2], w[0])
    assert res.region.tolist() == [True, False, True]
    grown = Grow('w')('w', w, (4, 7))
    assert torch.equal(grown.tensor[:3, :5], w)
    assert grown.region == (slice(0, 3), slice(0, 5))


class Head(BaseModule):
    """A classifier whose checkpoint had other classes and a smaller grid."""

    def __init__(self, num_classes, grid, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, 4))
        self.fc = nn.Linear(4, num_classes)


def test_pretrained_adapt_end_to_end(save_ckpt):
    source = Head(3, 2)
    for p in source.parameters():
        nn.init.normal_(p)
    path = save_ckpt({k: v.detach().clone()
                      for k, v in source.state_dict().items()})
    head = Head(4, 3, init_cfg=[
        dict(type='Pretrained', checkpoint=path, adapt=[
            dict(type='ResizePosEmbed', keys='pos_embed'),
            dict(type='Classes', keys=r'fc\.(weight|bias)',
                 index_map=[2, -1, 0, -1])]),
        dict(type='Constant', val=7, bias=7, layer='Linear')])
    head.init_weights()
    assert torch.equal(head.fc.weight[0], source.fc.weight[2])
    assert torch.all(head.fc.weight[1] == 7)  # new class: declared init
    assert torch.equal(head.pos_embed[:, 0], source.pos_embed[:, 0])
    ledger = get_provenance(head)
    fc = ledger.entries['fc.weight']
    assert fc.kind == 'checkpoint' and fc.notes[0].startswith('Classes(')
    assert fc.notes[1] == 'rest: Constant(val=7, bias=7) from <root>'
    assert ledger.entries['pos_embed'].notes[0].startswith('ResizePosEmbed(')
    assert ledger.loads[0].mismatched == []


def test_transform_matching_nothing_is_an_error(save_ckpt):
    path = save_ckpt({k: v.clone() for k, v in Head(3, 2).state_dict().items()})
    head = Head(3, 2, init_cfg=dict(type='Pretrained', checkpoint=path, adapt=[
        dict(type='Grow', keys=r'classifier\..*')]))
    with pytest.raises(InitConfigError, match='matches no tensor'):
        head.init_weights()


def test_classes_on_equal_shapes_reorders_rows(save_ckpt):
    """Same number of classes, other order: shapes match, rows must move."""
    source = Head(3, 2)
    path = save_ckpt({k: v.detach().clone()
                      for k, v in source.state_dict().items()})
    head = Head(3, 2, init_cfg=dict(type='Pretrained', checkpoint=path, adapt=[
        dict(type='Classes', keys=r'fc\.(weight|bias)',
             old_classes=['a', 'b', 'c'], new_classes=['c', 'a', 'b'])]))
    head.init_weights()
    assert torch.equal(head.fc.weight, source.fc.weight[[2, 0, 1]])
    assert torch.equal(head.fc.bias, source.fc.bias[[2, 0, 1]])
    notes = get_provenance(head).entries['fc.weight'].notes
    assert notes == ("Classes(classes='3 kept', new=[], rows='3 classes')",
                     )  # no 'rest'


def test_classes_on_retinanet_anchor_grouped_rows(save_ckpt):
    """retina_cls has anchors x classes channels (``groups=2`` anchors):
    kept classes score the same on the same features, the new class gets
    the head's declared init."""
    # mmdet: a heavy optional extra (openmmlab) only this test needs
    from mmdet.models.dense_heads import RetinaHead
    from mmdet.utils import register_all_modules
    register_all_modules()
    kw = dict(in_channels=8, feat_channels=8, stacked_convs=1,
              anchor_generator=dict(type='AnchorGenerator', ratios=[0.5, 1.0],
                                    octave_base_scale=4, scales_per_octave=1,
                                    strides=[8]))
    old = RetinaHead(num_classes=4, **kw)  # classes a, b, c, d; 2 anchors
    for p in old.parameters():
        nn.init.normal_(p)
    path = save_ckpt({k: v.detach().clone() for k, v in old.state_dict().items()})
    new = RetinaHead(num_classes=3, **kw, init_cfg=[
        dict(type='Pretrained', checkpoint=path, adapt=[dict(
            type='Classes', keys=r'retina_cls\.(weight|bias)',
            old_classes=list('abcd'), new_classes=['c', 'a', 'z'],
            groups=2)]),
        dict(type='Constant', val=0, bias=-4.6, layer='Conv2d')])
    new.init_weights()
    x = torch.randn(1, 8, 5, 5)
    with torch.no_grad():
        old_cls = old.forward_single(x)[0].view(1, 2, 4, 5, 5)
        new_cls = new.forward_single(x)[0].view(1, 2, 3, 5, 5)
    assert torch.allclose(new_cls[:, :, 0], old_cls[:, :, 2], atol=1e-4)  # c
    assert torch.allclose(new_cls[:, :, 1], old_cls[:, :, 0], atol=1e-4)  # a
    rows = old.retina_cls.weight.view(2, 4, 8, 3, 3)  # bit-exact rows
    assert torch.equal(new.retina_cls.weight.view(2, 3, 8, 3, 3)[:, :2],
                       rows[:, [2, 0]])
    assert torch.all(new_cls[:, :, 2] == -4.6)  # z: weight 0, bias -4.6
    fc = get_provenance(new).entries['retina_cls.weight']
    assert fc.notes[0] == \
        "Classes(classes='2 kept', new=['z'], rows='2 groups x 4->3 classes')"
    with pytest.raises(ValueError, match=r'index_map refers to class 5; the '
                       'checkpoint has 4'):
        Classes('w', index_map=[0, 5])('w', torch.randn(4, 2), (2, 2))


def test_transform_that_cannot_apply_fails_while_planning(save_ckpt):
    path = save_ckpt({k: v.clone() for k, v in Head(3, 2).state_dict().items()})
    head = Head(3, 2, init_cfg=dict(type='Pretrained', checkpoint=path, adapt=[
        dict(type='ResizePosEmbed', keys='pos_embed', num_prefix_tokens=2)]))
    head.pos_embed = nn.Parameter(torch.zeros(1, 11, 4))  # 10 tokens: no grid
    with pytest.raises(InitConfigError, match=r'ResizePosEmbed on pos_embed: '
                       r'checkpoint \(1, 5, 4\) -> model \(1, 11, 4\)'):
        head.init_weights()


@pytest.mark.parametrize('transform,ckpt,model', [
    (ResizePosEmbed('p'), (1, 17, 8), (1, 37, 8)),
    (ResizeRelPosTable('t'), (9, 2), (25, 2)),
    (InputChannels('w', mode='copy'), (8, 3, 3, 3), (8, 6, 3, 3)),
    (Classes('w', index_map=[1, -1]), (3, 4), (2, 4)),
    (Inflate('w', mode='center'), (8, 3, 3, 3), (8, 3, 4, 3, 3)),
    (Grow('w'), (3, 4), (5, 4))])
def test_dry_run_agrees_with_the_real_call(transform, ckpt, model):
    shape_only = dry_run(transform, 'w', ckpt, model)
    real = transform('w', torch.randn(ckpt), model)
    assert shape_only.description == real.description
    if isinstance(real.region, torch.Tensor):
        assert torch.equal(shape_only.region, real.region)
    else:
        assert shape_only.region == real.region


def test_resize_pos_embed_equals_mmseg_vit_runtime_resize():
    """A ViT trained at 32 px run at 48 px (mmseg resizes pos_embed on the
    fly, bicubic) equals a 48 px ViT loaded through ResizePosEmbed."""
    # mmseg: a heavy optional extra (openmmlab) only this test needs
    from mmseg.models.backbones import VisionTransformer
    kw = dict(patch_size=8, embed_dims=16, num_layers=1, num_heads=2,
              mlp_ratio=2, out_indices=(0, ), final_norm=True)
    small, big = VisionTransformer(img_size=32, **kw), \
        VisionTransformer(img_size=48, **kw)
    with torch.no_grad():
        for p in small.parameters():
            p.normal_(0, 0.2)
    state = dict(small.state_dict())
    state['pos_embed'] = ResizePosEmbed('pos_embed')(
        'pos_embed', state['pos_embed'], (1, 37, 16)).tensor
    big.load_state_dict(state)
    small.eval()
    big.eval()
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        assert torch.allclose(small(x)[0], big(x)[0], atol=1e-6)


def test_resize_rel_pos_table_equals_mmdet_swin_own_resize(tmp_path):
    """mmdet's Swin resizes the tables itself when it loads a checkpoint
    made with another window size: ResizeRelPosTable gives the same."""
    # mmdet: a heavy optional extra (openmmlab) only this test needs
    from mmdet.models.backbones import SwinTransformer
    kw = dict(pretrain_img_size=32, embed_dims=8, depths=(1, ),
              num_heads=(2, ), strides=(4, ), out_indices=(0, ))
    src = SwinTransformer(window_size=2, **kw)
    for p in src.parameters():
        nn.init.normal_(p)
    torch.save({'state_dict': {
        'backbone.' + k: v for k, v in src.state_dict().items()
        if 'relative_position_index' not in k}}, tmp_path / 'w2.pth')
    dst = SwinTransformer(window_size=3, init_cfg=ConfigDict(
        type='Pretrained', checkpoint=str(tmp_path / 'w2.pth')), **kw)
    dst.init_weights()
    key = 'stages.0.blocks.0.attn.w_msa.relative_position_bias_table'
    ours = ResizeRelPosTable(key)(key, src.state_dict()[key], (25, 2)).tensor
    assert torch.equal(ours, dst.state_dict()[key])


def test_module_whose_tensors_are_all_partially_adapted(save_ckpt):
    """Only a classifier, one class replaced: every tensor is partial, which
    is not 'nothing matches'."""
    source = Classifier()
    path = save_ckpt({k: v.detach().clone()
                      for k, v in source.state_dict().items()})
    head = Classifier(init_cfg=[dict(type='Pretrained', checkpoint=path, adapt=[
        dict(type='Classes', keys=r'fc\.(weight|bias)', old_classes=list('abc'),
             new_classes=list('abz'))]), dict(type='Constant', val=3, bias=3,
                                              layer='Linear')])
    head.init_weights()
    assert torch.equal(head.fc.weight[:2], source.fc.weight[:2])
    assert torch.all(head.fc.weight[2] == 3) and head.fc.bias[2] == 3


class Classifier(BaseModule):

    def __init__(self, init_cfg=None):
        super().__init__(init_cfg=init_cfg)
        self.fc = nn.Linear(4, 3)


@pytest.mark.parametrize('adapt', [
    dict(type='Classes', keys=r'fc\.(weight|bias)', old_classes=list('abc'),
         new_classes=list('abz')),  # region: a row mask
    dict(type='Grow', keys=r'fc\.(weight|bias)')])  # region: slices
def test_partly_adapted_tensors_count_towards_min_loaded(adapt, save_ckpt):
    """Two of three classifier rows come from the checkpoint: 10 of the 15
    parameter elements, which min_loaded and the report count."""
    source = Classifier()
    state = {k: v.detach().clone() for k, v in source.state_dict().items()}
    if adapt['type'] == 'Grow':  # a checkpoint with two classes
        state = {k: v[:2].clone() for k, v in state.items()}
    path = save_ckpt(state)

    def build(min_loaded):
        return Classifier(init_cfg=dict(type='Pretrained', checkpoint=path,
                                        adapt=[adapt], min_loaded=min_loaded,
                                        init_missing=dict(type='Zero',
                                                          layer='Linear')))

    head = build(0.66)
    head.init_weights()
    assert torch.equal(head.fc.weight[:2], source.fc.weight[:2])
    assert get_provenance(head).loads[0].loaded_fraction == pytest.approx(
        10 / 15)
    with pytest.raises(CheckpointError, match=r'66\.7%.*min_loaded=0\.67'):
        build(0.67).init_weights()
