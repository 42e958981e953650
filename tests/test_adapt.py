"""Shape adaptation transforms, alone and through ``Pretrained(adapt=...)``."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule

from mmext_init import InitConfigError, get_provenance
from mmext_init.adapt import (Classes, Grow, Inflate, InputChannels,
                              ResizePosEmbed, ResizeRelPosTable)


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
    assert torch.equal(res.tensor[0], w[1]) and torch.equal(res.tensor[2],
                                                           w[0])
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
