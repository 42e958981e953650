"""LoRA from the config against HF PEFT's (``peft.inject_adapter_in_model``
with ``LoraConfig``) on real OpenMMLab models: with the same A and B, the
outputs are bit-identical (max difference 0.0) on Linear (mmdet Swin's
window attention ``qkv``/``proj``), Conv2d (ResNet's 3x3 and 1x1 convs),
grouped/depthwise convs (mmpretrain ConvNeXt) and with rsLoRA's scale;
a PEFT state dict without ``base_layer.``/``.default`` loads into ours
strictly, and ours into PEFT's."""
import copy
import math
from typing import Dict, List

import pytest
import torch
import torch.nn as nn
from mmdet.models.backbones import ResNet, SwinTransformer
from mmpretrain.models import ConvNeXt
from peft import LoraConfig, inject_adapter_in_model

from mmext_init.errors import InitConfigError
from mmext_init.inserting import LoRA, insert_modules, lora_delta

SWIN_ARGS = dict(embed_dims=16, depths=(2, 2), num_heads=(1, 2),
                 strides=(4, 2), out_indices=(0, 1), window_size=4,
                 patch_size=4)
SWIN_ATTN = r'.*attn\.w_msa\.(qkv|proj)'
RESNET_CONVS = r'layer[12]\.\d+\.conv[12]|conv1'
CONVNEXT_ARCH = dict(depths=[1, 1], channels=[8, 16])


def peft_to_ours(name: str) -> str:
    """A PEFT state-dict name as ours: without ``base_layer.``/``.default``.

    Example:
        >>> peft_to_ours('a.qkv.base_layer.weight'), peft_to_ours(
        ...     'a.qkv.lora_A.default.weight')
        ('a.qkv.weight', 'a.qkv.lora_A.weight')
    """
    return name.replace('.base_layer', '').replace('.default', '')


def outputs(model: nn.Module, x: torch.Tensor) -> List[torch.Tensor]:
    """The model's outputs in eval mode, without grad, as a list."""
    model.eval()
    with torch.no_grad():
        out = model(x)
    return list(out) if isinstance(out, (tuple, list)) else [out]


def max_difference(a: List[torch.Tensor], b: List[torch.Tensor]) -> float:
    """Largest absolute difference between two output lists."""
    assert len(a) == len(b) and a
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def trained(state: Dict[str, torch.Tensor], seed: int) -> Dict:
    """``state`` with every LoRA tensor drawn anew (as after training)."""
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) * 0.2
            if 'lora_' in k else v for k, v in state.items()}


def pair(plain: nn.Module, entry: dict, peft_cfg: LoraConfig):
    """Ours (``insert=[entry]``) and PEFT's on copies of ``plain``, PEFT's
    loaded from ours with trained LoRA tensors; both state dicts."""
    ours, theirs = copy.deepcopy(plain), copy.deepcopy(plain)
    records = insert_modules(ours, [entry])
    assert records
    ours.load_state_dict(trained(ours.state_dict(), 1), strict=True)
    inject_adapter_in_model(peft_cfg, theirs)
    mine = ours.state_dict()
    theirs.load_state_dict(
        {k: mine[peft_to_ours(k)] for k in theirs.state_dict()}, strict=True)
    return ours, theirs


def assert_same_as_peft(plain, entry, peft_cfg, x) -> None:
    """Bit-identical outputs, names one to one both ways, and a trained
    PEFT state dict loading strictly into ours."""
    ours, theirs = pair(plain, entry, peft_cfg)
    assert {peft_to_ours(k) for k in theirs.state_dict()} == \
        set(ours.state_dict())
    reference = outputs(plain, x)
    out = outputs(ours, x)
    assert max_difference(out, outputs(theirs, x)) == 0.0
    assert max_difference(out, reference) > 0  # the branch is live
    other = trained(theirs.state_dict(), 2)  # PEFT's trained -> ours
    theirs.load_state_dict(other, strict=True)
    ours.load_state_dict({peft_to_ours(k): v for k, v in other.items()},
                         strict=True)
    assert max_difference(outputs(ours, x), outputs(theirs, x)) == 0.0


def image(size: int = 32) -> torch.Tensor:
    return torch.randn(2, 3, size, size,
                       generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize('use_rslora', [False, True])
def test_swin_attention_linears_equal_peft(use_rslora):
    plain = SwinTransformer(**SWIN_ARGS)
    plain.init_weights()
    assert_same_as_peft(
        plain, dict(type='LoRA', targets=SWIN_ATTN, rank=4, alpha=8,
                    use_rslora=use_rslora),
        LoraConfig(target_modules=SWIN_ATTN, r=4, lora_alpha=8,
                   use_rslora=use_rslora), image())


def test_resnet_convs_equal_peft():
    plain = ResNet(depth=18)
    plain.init_weights()
    assert_same_as_peft(
        plain, dict(type='LoRA', targets=RESNET_CONVS, rank=4, alpha=4),
        LoraConfig(target_modules=RESNET_CONVS, r=4, lora_alpha=4),
        image(64))


def test_rslora_scale_is_alpha_over_sqrt_rank():
    fc, twin = nn.Linear(8, 8), nn.Linear(8, 8)
    LoRA(rank=9, alpha=6, use_rslora=True).insert(fc, 'fc')
    LoRA(rank=9, alpha=6).insert(twin, 'fc')
    assert fc.lora_scale == 6 / math.sqrt(9) == 2.0
    assert twin.lora_scale == 6 / 9
    with pytest.raises(ValueError, match='use_rslora must be True or False'):
        LoRA(rank=2, use_rslora='yes')


@pytest.mark.parametrize('rank', [8, 16])
def test_convnext_depthwise_convs_equal_peft(rank):
    """Depthwise 7x7 convs (groups = channels): A over all input channels,
    B a grouped 1x1 conv, as PEFT builds them; the rank a multiple of the
    groups."""
    plain = ConvNeXt(arch=CONVNEXT_ARCH, out_indices=(0, 1))
    plain.init_weights()
    target = r'stages\.0\.0\.depthwise_conv'
    assert_same_as_peft(
        plain, dict(type='LoRA', targets=target, rank=rank, alpha=rank),
        LoraConfig(target_modules=target, r=rank, lora_alpha=rank),
        image())
    ours = copy.deepcopy(plain)
    insert_modules(ours, [dict(type='LoRA', targets=target, rank=rank)])
    conv = ours.get_submodule('stages.0.0.depthwise_conv')
    assert conv.lora_A.weight.shape == (rank, 8, 7, 7)
    assert conv.lora_B.weight.shape == (8, rank // 8, 1, 1)


def test_grouped_conv_rank_not_a_multiple_is_refused_naming_it():
    model = ConvNeXt(arch=CONVNEXT_ARCH, out_indices=(0, 1))
    with pytest.raises(InitConfigError, match=(
            r"insert\[0\] \(LoRA.*'stages\.1\.0\.depthwise_conv' \(Conv2d\) "
            r'has groups=16: .*multiple of groups.*got rank=8')):
        insert_modules(model, [dict(type='LoRA', targets=r'.*depthwise_conv',
                                    rank=8)])
    assert not hasattr(model.get_submodule('stages.0.0.depthwise_conv'),
                       'lora_A')  # nothing inserted: all checked first


def test_grouped_conv_fold_is_refused_naming_the_target():
    """A grouped conv's branch mixes channels across groups: no grouped
    weight holds it (PEFT refuses the merge too)."""
    conv = nn.Conv2d(4, 4, 3, groups=2)
    lora = LoRA(rank=2)
    lora.insert(conv, 'neck.conv')
    with pytest.raises(ValueError, match=r"'neck\.conv' \(Conv2d\): Conv2d "
                       r'with groups=2: .*cannot be folded'):
        lora.fold(conv, 'neck.conv')
    with pytest.raises(ValueError, match='groups=2'):
        lora_delta(conv)


def test_resnet_fold_matches_the_unmerged_forward():
    """Folding (float64) the trained branches gives the unmerged outputs."""
    plain = ResNet(depth=18).double()
    plain.init_weights()
    ours = copy.deepcopy(plain)
    lora = LoRA(rank=4, alpha=8, use_rslora=True)
    records = insert_modules(ours, [dict(type='LoRA', targets=RESNET_CONVS,
                                         rank=4, alpha=8, use_rslora=True)])
    ours.load_state_dict(trained(ours.state_dict(), 4))
    merged = copy.deepcopy(plain)
    state = dict(merged.state_dict())
    for record in records:
        folded = lora.fold(ours.get_submodule(record.target), record.target)
        state[f'{record.target}.weight'] = folded['weight']
    merged.load_state_dict(state, strict=True)
    x = image(64).double()
    out = outputs(ours, x)
    assert max_difference(out, outputs(plain, x)) > 1e-3
    assert max_difference(outputs(merged, x), out) < 1e-9
