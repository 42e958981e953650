"""timm's real models, not hand-made layouts: files written from a timm
model's own ``state_dict`` (safetensors, as the timm hub ships them, or
``.pth``):

* ``mmpretrain.TIMMBackbone(pretrained=False)`` with our ``Pretrained``
  (``revise_keys`` adding ``timm_model.``): every tensor, BatchNorm
  statistics included, loaded bit-exact from its file key, and the
  backbone computes what the timm model with those weights computes;
* the ``TimmViT`` converter: timm's ``VisionTransformer`` into mmseg's
  ViT, and ``TimmViTMMPretrain`` into mmpretrain's, strict, with the
  outputs of the timm model: bit for bit from mmpretrain's ViT (timm's
  fused ``qkv`` and the same ops), within float32 rounding from mmseg's
  (torch's ``nn.MultiheadAttention``).
"""
import copy
from typing import Dict

import pytest
import timm
import torch
import torch.nn as nn
from mmengine.model import BaseModule
from mmengine.registry import init_default_scope
from mmpretrain.registry import MODELS
from safetensors.torch import save_file

from mmext_init import get_provenance

#: timm model name -> kwargs making it tiny (timm's own classes and names)
TIMM_MODELS = {
    'vit_tiny_patch16_224': dict(img_size=32, patch_size=8, embed_dim=32,
                                 depth=2, num_heads=2),
    'resnet10t': dict(),
}
VIT = TIMM_MODELS['vit_tiny_patch16_224']


def timm_model(name: str, **kwargs) -> nn.Module:
    """A timm model as timm builds it, its BatchNorm statistics moved off
    their defaults (one forward in train mode), then in eval mode."""
    model = timm.create_model(name, pretrained=False, **TIMM_MODELS[name],
                              **kwargs)
    with torch.no_grad():
        model.train()(torch.randn(4, 3, 32, 32))
    return model.eval()


def write(state: Dict[str, torch.Tensor], path: str) -> str:
    state = {k: v.detach().clone().contiguous() for k, v in state.items()}
    if path.endswith('.safetensors'):
        save_file(state, path)
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize('name, suffix', [
    ('vit_tiny_patch16_224', '.safetensors'), ('resnet10t', '.pth')])
def test_timm_backbone_loads_a_timm_file(tmp_path, name, suffix):
    ref = timm_model(name)
    path = write(ref.state_dict(), str(tmp_path / f'{name}{suffix}'))
    init_default_scope('mmpretrain')
    backbone = MODELS.build(dict(
        type='TIMMBackbone', model_name=name, pretrained=False,
        **TIMM_MODELS[name], init_cfg=dict(
            type='Pretrained', checkpoint=path,
            revise_keys=[(r'^', 'timm_model.')])))
    backbone.init_weights()
    ledger = get_provenance(backbone)
    state = backbone.state_dict()
    file_state = ref.state_dict()
    tensors = [n for n in state if not n.endswith('num_batches_tracked')]
    assert {ledger.entries[n].kind for n in tensors} == {'checkpoint'}
    for n in tensors:
        key = n[len('timm_model.'):]
        assert ledger.entries[n].key == key, n
        assert torch.equal(state[n], file_state[key]), n
    if name == 'resnet10t':
        assert any(n.endswith('running_var') for n in tensors)
    record, = ledger.loads
    assert record.missing == [] and record.mismatched == []
    # the file's classifier (its keys), which TIMMBackbone removes
    # (reset_classifier)
    assert sorted(record.unexpected) in (['fc.bias', 'fc.weight'],
                                         ['head.bias', 'head.weight'])
    headless = copy.deepcopy(ref)
    headless.reset_classifier(0, '')
    x = torch.randn(2, 3, 32, 32)
    backbone.eval()  # not chained: this train() returns None
    with torch.no_grad():
        out, = backbone(x)
        assert torch.equal(out, headless(x))


class Wrapper(BaseModule):
    """``Pretrained`` at the parent: mmseg's ViT loads by itself
    otherwise (tests/test_converters.py)."""

    def __init__(self, backbone: nn.Module, init_cfg: dict) -> None:
        super().__init__(init_cfg=init_cfg)
        self.backbone = backbone


def check_converted(model: BaseModule, vit: nn.Module, ref: nn.Module,
                    file_key: str, model_key: str) -> None:
    """Every tensor of ``vit`` from the file (none constructor-made), the
    given key's origin, and equal weights."""
    ledger = get_provenance(model)
    assert ledger.counts()['constructor'] == 0
    assert ledger.counts()['checkpoint'] == len(vit.state_dict())
    assert ledger.entries[model_key].key == file_key
    record, = ledger.loads
    assert record.missing == [] and record.unexpected == []
    assert torch.equal(dict(model.named_parameters())[model_key],
                       ref.state_dict()[file_key])


def test_timm_vit_converter_into_mmseg_vit(tmp_path):
    """TimmViT: a real timm ViT's file into mmseg's ViT (LayerNorm eps as
    timm's, ``patch_bias=True``), strict (the converter drops the head);
    the patch tokens after the final
    norm are timm's ``forward_features`` tokens."""
    # mmseg: a heavy optional extra (openmmlab) only this test needs
    from mmseg.models.backbones import VisionTransformer
    ref = timm_model('vit_tiny_patch16_224')
    path = write(ref.state_dict(), str(tmp_path / 'vit.safetensors'))
    vit = VisionTransformer(img_size=32, patch_size=8, embed_dims=32,
                            num_layers=2, num_heads=2, mlp_ratio=4,
                            final_norm=True, out_indices=(1, ),
                            patch_bias=True, norm_cfg=dict(type='LN',
                                                           eps=1e-6))
    model = Wrapper(vit, init_cfg=dict(
        type='Pretrained', checkpoint=path, converter='TimmViT',
        revise_keys=[(r'^', 'backbone.')], strict=True))
    model.init_weights()
    check_converted(model, vit, ref, 'blocks.1.attn.qkv.weight',
                    'backbone.layers.1.attn.attn.in_proj_weight')
    x = torch.randn(2, 3, 32, 32)
    vit.eval()  # not chained: mmseg's ViT.train() returns None
    with torch.no_grad():
        ours = vit(x)[0]
        tokens = ref.forward_features(x)[:, 1:]
    expected = tokens.transpose(1, 2).reshape(2, 32, 4, 4)
    print(f'\ntimm -> mmseg ViT: max difference '
          f'{(ours - expected).abs().max().item():.2e}')
    assert torch.allclose(ours, expected, rtol=0, atol=1e-5)


def test_timm_vit_mmpretrain_converter_into_mmpretrain_vit(tmp_path):
    """TimmViTMMPretrain: the same file into mmpretrain's own ViT, its
    ``init_cfg`` (mmpretrain's ViT does not load by itself), strict; all
    tokens after the final norm are timm's ``forward_features``, bit for
    bit."""
    ref = timm_model('vit_tiny_patch16_224')
    path = write(ref.state_dict(), str(tmp_path / 'vit.safetensors'))
    init_default_scope('mmpretrain')
    vit = MODELS.build(dict(
        type='VisionTransformer', img_size=32, patch_size=8, out_type='raw',
        arch=dict(embed_dims=32, num_layers=2, num_heads=2,
                  feedforward_channels=128),
        init_cfg=dict(type='Pretrained', checkpoint=path,
                      converter='TimmViTMMPretrain', strict=True)))
    vit.init_weights()
    check_converted(vit, vit, ref, 'blocks.1.attn.qkv.weight',
                    'layers.1.attn.qkv.weight')
    x = torch.randn(2, 3, 32, 32)
    vit.eval()
    with torch.no_grad():
        ours, = vit(x)
        expected = ref.forward_features(x)
    assert torch.equal(ours, expected)


def test_timm_vit_mmseg_converter_does_not_fit_mmpretrain(tmp_path):
    """The mmseg naming of ``TimmViT`` is not mmpretrain's: strict, it is
    an error naming an attention key, not a silent partial load."""
    ref = timm_model('vit_tiny_patch16_224')
    path = write(ref.state_dict(), str(tmp_path / 'vit.pth'))
    init_default_scope('mmpretrain')
    vit = MODELS.build(dict(
        type='VisionTransformer', img_size=32, patch_size=8,
        arch=dict(embed_dims=32, num_layers=2, num_heads=2,
                  feedforward_channels=128),
        init_cfg=dict(type='Pretrained', checkpoint=path,
                      converter='TimmViT', strict=True)))
    with pytest.raises(RuntimeError, match=r'missing keys: layers\.0\.attn'
                       r'\.qkv\.weight, .*unexpected keys: layers\.0\.attn'
                       r'\.attn\.in_proj_weight'):
        vit.init_weights()

