"""Checkpoint converters for known foreign layouts (``converter='...'`` on
``Pretrained``), in a registry users extend from their own code.

A converter is a function ``{key: tensor} -> {key: tensor}`` applied to the
checkpoint's state dict before any key option.

Example:
    >>> @CHECKPOINT_CONVERTERS.register_module(name='my_layout')
    ... def my_layout(state):
    ...     return {k.replace('trunk.', 'backbone.'): v for k, v in state.items()}
    >>> init_cfg = dict(type='Pretrained', checkpoint='x.pth', converter='my_layout')
"""
from typing import Callable, Dict

import torch
from mmengine.registry import Registry

CHECKPOINT_CONVERTERS = Registry('checkpoint converter')
StateDict = Dict[str, torch.Tensor]

_TIMM_VIT_BLOCK = (  # (timm fragment, mmseg fragment), first match wins
    ('norm1.', 'ln1.'), ('norm2.', 'ln2.'),
    ('mlp.fc1.', 'ffn.layers.0.0.'), ('mlp.fc2.', 'ffn.layers.1.'),
    ('attn.qkv.', 'attn.attn.in_proj_'), ('attn.proj.', 'attn.attn.out_proj.'),
)


@CHECKPOINT_CONVERTERS.register_module(name='timm_vit')
def timm_vit_to_mmseg(state: StateDict) -> StateDict:
    """timm ``VisionTransformer`` naming -> mmseg/mmpretrain-style
    ``VisionTransformer`` naming (the classifier ``head`` is dropped).

    Example:
        >>> timm_vit_to_mmseg({'blocks.0.attn.qkv.weight': w})
        {'layers.0.attn.attn.in_proj_weight': w}
    """
    out: StateDict = {}
    for key, value in state.items():
        if key.startswith('head'):
            continue
        new = key
        if key.startswith('norm.'):
            new = 'ln1.' + key[len('norm.'):]
        elif key.startswith('patch_embed.proj.'):
            new = key.replace('patch_embed.proj.', 'patch_embed.projection.')
        elif key.startswith('blocks.'):
            for old, repl in _TIMM_VIT_BLOCK:
                if old in key:
                    new = key.replace(old, repl)
                    break
            new = 'layers.' + new[len('blocks.'):]
        out[new] = value
    return out


@CHECKPOINT_CONVERTERS.register_module(name='swin_official')
def swin_official_to_mm(state: StateDict) -> StateDict:
    """The original Microsoft Swin release naming -> mmdet/mmseg
    ``SwinTransformer`` naming (mmdet's own ``swin_converter``, which also
    reorders the patch-merging weights).

    Example:
        >>> init_cfg = dict(type='Pretrained', checkpoint='swin_tiny_patch4_window7_224.pth',
        ...                 converter='swin_official')
    """
    from mmdet.models.backbones.swin import swin_converter
    return dict(swin_converter(state))


def get_converter(name: str) -> Callable[[StateDict], StateDict]:
    """The converter registered as ``name`` (error listing the known ones)."""
    fn = CHECKPOINT_CONVERTERS.get(name)
    if fn is None:
        known = ', '.join(sorted(CHECKPOINT_CONVERTERS.module_dict))
        raise KeyError(f'unknown converter {name!r} (registered: {known})')
    return fn
