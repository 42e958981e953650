"""Converters: a checkpoint from a timm-layout ViT loads into mmseg's ViT."""
import pytest
import torch
import torch.nn as nn
from mmengine.config import ConfigDict
from mmengine.model import BaseModule
from safetensors.torch import save_file
from swin_official import SwinOfficial, layer_norm

from mmext_init import InitConfigError, get_provenance
from mmext_init.checkpoint.converters import (CHECKPOINT_CONVERTERS,
                                              convert_source)
from mmext_init.checkpoint.formats import open_checkpoint


class TimmAttention(nn.Module):
    """timm's ViT attention layout: fused ``qkv`` and ``proj``."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        attn = (q @ k.transpose(-2, -1) * (c // self.heads)**-0.5).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class TimmMlp(nn.Module):

    def __init__(self, dim):
        super().__init__()
        self.fc1 = nn.Linear(dim, dim * 4)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(dim * 4, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class TimmBlock(nn.Module):

    def __init__(self, dim, heads):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = TimmAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = TimmMlp(dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TimmPatchEmbed(nn.Module):

    def __init__(self, dim, patch):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, patch)


class TimmViT(nn.Module):
    """The parameter names and forward math of timm's VisionTransformer."""

    def __init__(self, img=32, patch=8, dim=32, depth=2, heads=2):
        super().__init__()
        self.patch_embed = TimmPatchEmbed(dim, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + (img // patch)**2,
                                                  dim))
        self.blocks = nn.Sequential(*[TimmBlock(dim, heads)
                                      for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], 1)
        return self.norm(self.blocks(x + self.pos_embed))


class Wrapper(BaseModule):
    """Pretrained at the parent: mmseg's ViT loads by itself otherwise."""

    def __init__(self, backbone, init_cfg):
        super().__init__(init_cfg=init_cfg)
        self.backbone = backbone


def test_timm_vit_checkpoint_into_mmseg_vit(save_ckpt):
    # mmseg: a heavy optional extra (openmmlab) only this test needs
    from mmseg.models.backbones import VisionTransformer
    timm = TimmViT()
    with torch.no_grad():
        for p in timm.parameters():
            p.normal_(0, 0.2)
    path = save_ckpt({k: v.clone() for k, v in timm.state_dict().items()},
                     wrap=False)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dims=32,
                            num_layers=2, num_heads=2, mlp_ratio=4,
                            final_norm=True, out_indices=(1, ),
                            patch_bias=True)  # timm's patch embed has a bias
    model = Wrapper(vit, init_cfg=dict(
        type='Pretrained', checkpoint=path, converter='TimmViT',
        revise_keys=[(r'^', 'backbone.')], strict=True))
    model.init_weights()
    ledger = get_provenance(model)
    assert ledger.counts()['constructor'] == 0
    assert ledger.entries['backbone.layers.1.attn.attn.in_proj_weight'].key \
        == 'blocks.1.attn.qkv.weight'
    vit.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = vit(x)[0]
        tokens = timm.eval()(x)[:, 1:]
    ref = tokens.transpose(1, 2).reshape(2, 32, 4, 4)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_unknown_converter_lists_registered(save_ckpt):
    model = Wrapper(nn.Linear(2, 2), init_cfg=dict(
        type='Pretrained', checkpoint=save_ckpt({'w': torch.zeros(1)}),
        converter='TimmVit'))
    with pytest.raises(InitConfigError, match='registered: .*TimmViT'):
        model.init_weights()


@pytest.mark.parametrize('old, new', [
    ('timm_vit', 'TimmViT'), ('timm_vit_mmpretrain', 'TimmViTMMPretrain'),
    ('swin_official', 'SwinOfficial')])
def test_former_snake_case_converter_names_name_the_new_one(save_ckpt, old,
                                                           new):
    """Converters are CamelCase as every registered type; a former name is
    an error naming the new one, not an alias."""
    assert new in CHECKPOINT_CONVERTERS.module_dict
    assert old not in CHECKPOINT_CONVERTERS.module_dict
    model = Wrapper(nn.Linear(2, 2), init_cfg=dict(
        type='Pretrained', checkpoint=save_ckpt({'w': torch.zeros(1)}),
        converter=old))
    with pytest.raises(InitConfigError, match=(
            r'^init_cfg of the model root \(Wrapper\) \(Pretrained\): '
            rf"Pretrained: converter '{old}' is now named '{new}' "
            r'\(registered names are CamelCase\)$')):
        model.init_weights()


def test_users_register_their_own_converter(save_ckpt):

    @CHECKPOINT_CONVERTERS.register_module(name='test_trunk', force=True)
    def rename(state):
        return {k.replace('trunk.', 'backbone.'): v for k, v in state.items()}

    model = Wrapper(nn.Linear(2, 2), init_cfg=dict(
        type='Pretrained', checkpoint=save_ckpt({
            'trunk.weight': torch.ones(2, 2), 'trunk.bias': torch.ones(2)}),
        converter='test_trunk'))
    model.init_weights()
    assert torch.all(model.backbone.weight == 1)


def test_swin_official_checkpoint_into_mmdet_swin(save_ckpt):
    # mmdet: a heavy optional extra (openmmlab) only this test needs
    from mmdet.models.backbones import SwinTransformer
    official = SwinOfficial()
    with torch.no_grad():
        for p in official.parameters():
            p.normal_(0, 0.2)
    path = save_ckpt({k: v.clone() for k, v in official.state_dict().items()},
                     wrap=False)
    swin = SwinTransformer(pretrain_img_size=16, embed_dims=16, depths=(2, 1),
                           num_heads=(1, 2), window_size=2,
                           strides=(4, 2), out_indices=(0, 1))
    assert any(k.endswith('attn_mask') for k in official.state_dict())
    model = Wrapper(swin, init_cfg=dict(
        type='Pretrained', checkpoint=path, converter='SwinOfficial',
        revise_keys=[(r'^', 'backbone.')], on_missing='ignore'))
    model.init_weights()
    ledger = get_provenance(model)
    record = ledger.loads[0]
    assert record.unexpected == [] and record.mismatched == []
    assert record.missing == ['backbone.norm0.weight', 'backbone.norm0.bias']
    reduction = 'backbone.stages.0.downsample.reduction.weight'
    assert ledger.entries[reduction].kind == 'checkpoint'
    assert ledger.entries[reduction].key == reduction[len('backbone.'):]  # computed
    assert ledger.entries['backbone.norm1.weight'].key == 'norm.weight'
    assert torch.equal(swin.norm1.weight, official.norm.weight)  # final norm
    assert torch.equal(swin.stages[1].blocks[0].attn.w_msa.qkv.weight,
                       official.layers[1].blocks[0].attn.qkv.weight)
    x = torch.randn(2, 3, 16, 16)
    swin.eval()  # not chained: mmdet's SwinTransformer.train() returns None
    with torch.no_grad():
        ours = swin(x)
        ref = official.eval()(x)
    # stage 0: mmdet's norm0 (default LN init); last stage: the official norm
    expected = [layer_norm(ref[0]), official.norm(ref[1])]
    for out, r in zip(ours, expected):
        b, c, h, w = out.shape
        assert torch.allclose(out, r.transpose(1, 2).reshape(b, c, h, w),
                              atol=1e-5)


def test_swin_official_matches_mmdet_swin_converter():
    """Same tensors as mmdet's own converter (minus its 'backbone.' prefix),
    plus the final norm; attn_mask and head dropped."""
    # mmdet: a heavy optional extra (openmmlab) only this test needs
    from mmdet.models.backbones.swin import swin_converter
    state = SwinOfficial(img=32, depths=(2, 2, 1), heads=(1, 2, 4)).state_dict()
    ours = CHECKPOINT_CONVERTERS.get('SwinOfficial')(dict(state))
    theirs = {k[len('backbone.'):]: v for k, v in swin_converter(state).items()
              if not k.endswith('attn_mask') and not k.startswith('backbone.norm.')}
    assert set(ours) - set(theirs) == {'norm2.weight', 'norm2.bias'}
    assert set(theirs) - set(ours) == set()
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), key


def test_converter_runs_on_shapes_first(tmp_path):
    """The plan reads no tensor data: the converter sees meta tensors; a
    renamed key reads only its own source tensor."""
    save_file({'blocks.0.norm1.weight': torch.arange(3.),
               'head.weight': torch.ones(2)}, str(tmp_path / 'v.safetensors'))
    seen = []

    def spy(state):
        seen.append({v.device.type for v in state.values()})
        return CHECKPOINT_CONVERTERS.get('TimmViT')(state)

    source = open_checkpoint(str(tmp_path / 'v.safetensors'))
    converted = convert_source(source, spy)
    assert seen == [{'meta'}] and converted.shapes() == {
        'layers.0.ln1.weight': (3, )}
    assert torch.equal(converted.get('layers.0.ln1.weight'), torch.arange(3.))
    assert converted.origin('layers.0.ln1.weight') == 'blocks.0.norm1.weight'
    assert seen == [{'meta'}]  # a pure rename never ran the real conversion


def test_converter_on_a_backbone_loading_by_itself_is_an_error(save_ckpt):
    """mmseg's ViT loads its own init_cfg checkpoint and would ignore the
    converter (loading only cls_token/pos_embed): refuse instead."""
    # mmseg: a heavy optional extra (openmmlab) only this test needs
    from mmseg.models.backbones import VisionTransformer
    path = save_ckpt(TimmViT().state_dict(), wrap=False)
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dims=32,
                            num_layers=2, num_heads=2, mlp_ratio=4,
                            patch_bias=True, init_cfg=ConfigDict(
                                type='Pretrained', checkpoint=path,
                                converter='TimmViT'))
    with pytest.raises(InitConfigError, match=r'VisionTransformer.init_weights '
                       r'loads .* itself and ignores converter'):
        vit.init_weights()
