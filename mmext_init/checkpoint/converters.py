"""Checkpoint converters for known foreign layouts (``converter='...'`` on
``Pretrained``), in a registry users extend from their own code.

A converter is a function ``{key: tensor} -> {key: tensor}`` applied to the
checkpoint's state dict before any key option.

Registered names are CamelCase, as every registered type's: ``TimmViT``,
``TimmViTMMPretrain``, ``SwinOfficial``. A former snake_case name is an
error naming the new one.

Example (then ``converter='TrunkToBackbone'`` on a ``Pretrained`` entry):
    >>> @CHECKPOINT_CONVERTERS.register_module(name='TrunkToBackbone',
    ...                                        force=True)
    ... def trunk_to_backbone(state):
    ...     return {k.replace('trunk.', 'backbone.'): v for k, v in state.items()}
    >>> get_converter('TrunkToBackbone')({'trunk.conv.weight': 1})
    {'backbone.conv.weight': 1}
    >>> get_converter('timm_vit')
    Traceback (most recent call last):
    ...
    KeyError: "converter 'timm_vit' is now named 'TimmViT' (registered names are CamelCase)"
"""
from typing import Callable, Dict, Optional, Tuple

import torch
from mmengine.registry import Registry

from ..errors import renamed
from .formats import CheckpointTensors

CHECKPOINT_CONVERTERS = Registry('checkpoint converter')
StateDict = Dict[str, torch.Tensor]

_TIMM_VIT_BLOCK = (  # (timm fragment, mm fragment), first match wins
    ('norm1.', 'ln1.'), ('norm2.', 'ln2.'),
    ('mlp.fc1.', 'ffn.layers.0.0.'), ('mlp.fc2.', 'ffn.layers.1.'),
)
_MMSEG_ATTENTION = (  # torch's nn.MultiheadAttention inside mmcv's
    ('attn.qkv.', 'attn.attn.in_proj_'), ('attn.proj.', 'attn.attn.out_proj.'),
)


def rename_timm_vit(state: StateDict,
                    block: Tuple[Tuple[str, str], ...]) -> StateDict:
    """timm ``VisionTransformer`` keys renamed to OpenMMLab's ViT naming
    (``blocks.N`` -> ``layers.N`` with the fragments of ``block``, the
    final ``norm`` -> ``ln1``, ``patch_embed.proj`` ->
    ``patch_embed.projection``); the classifier ``head`` dropped.

    Example:
        >>> w = torch.ones(1)
        >>> list(rename_timm_vit({'blocks.0.norm1.weight': w, 'head.bias': w},
        ...                      (('norm1.', 'ln1.'), )))
        ['layers.0.ln1.weight']
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
            for old, repl in block:
                if old in key:
                    new = key.replace(old, repl)
                    break
            new = 'layers.' + new[len('blocks.'):]
        out[new] = value
    return out


@CHECKPOINT_CONVERTERS.register_module(name='TimmViT')
def timm_vit_to_mmseg(state: StateDict) -> StateDict:
    """timm ``VisionTransformer`` naming -> mmseg ``VisionTransformer``
    naming (attention: torch's ``nn.MultiheadAttention``, ``in_proj_*`` and
    ``out_proj``); the classifier ``head`` is dropped.

    Example:
        >>> w = torch.ones(1)
        >>> list(timm_vit_to_mmseg({'blocks.0.attn.qkv.weight': w,
        ...                         'norm.bias': w, 'head.weight': w}))
        ['layers.0.attn.attn.in_proj_weight', 'ln1.bias']
    """
    return rename_timm_vit(state, _TIMM_VIT_BLOCK + _MMSEG_ATTENTION)


@CHECKPOINT_CONVERTERS.register_module(name='TimmViTMMPretrain')
def timm_vit_to_mmpretrain(state: StateDict) -> StateDict:
    """timm ``VisionTransformer`` naming -> mmpretrain
    ``VisionTransformer`` naming (its attention keeps timm's fused ``qkv``
    and ``proj``); the classifier ``head`` is dropped.

    Example:
        >>> w = torch.ones(1)
        >>> list(timm_vit_to_mmpretrain({'blocks.0.attn.qkv.weight': w,
        ...                              'blocks.0.mlp.fc2.bias': w}))
        ['layers.0.attn.qkv.weight', 'layers.0.ffn.layers.1.bias']
    """
    return rename_timm_vit(state, _TIMM_VIT_BLOCK)


def _unfold_order(x: torch.Tensor) -> torch.Tensor:
    """Patch-merging channels: official (x0, x1, x2, x3) concat order ->
    ``nn.Unfold`` order used by mmdet/mmseg (x0, x2, x1, x3), along dim -1
    (``reduction.weight``) or dim 0 (``norm`` weight/bias)."""
    if x.dim() == 1:
        return x.reshape(4, -1)[[0, 2, 1, 3]].transpose(0, 1).reshape(-1)
    out_ch, in_ch = x.shape
    return x.reshape(out_ch, 4, in_ch // 4)[:, [0, 2, 1, 3]].transpose(
        1, 2).reshape(out_ch, in_ch)


@CHECKPOINT_CONVERTERS.register_module(name='SwinOfficial')
def swin_official_to_mm(state: StateDict) -> StateDict:
    """The original Microsoft Swin release naming -> mmdet/mmseg
    ``SwinTransformer`` naming, relative to the backbone (as ``TimmViT``):
    ``layers.i`` -> ``stages.i`` (``attn.`` -> ``attn.w_msa.``, ``mlp`` ->
    ``ffn``), patch-merging weights reordered for ``nn.Unfold``, the final
    ``norm`` -> ``norm{last stage}``; ``head`` and the ``attn_mask`` buffers
    (derived from the input size) are dropped. Same tensors as mmdet's
    ``swin_converter`` without its ``backbone.`` prefix.

    Example:
        >>> w = torch.ones(1)
        >>> list(swin_official_to_mm({'layers.0.blocks.0.attn.qkv.weight': w,
        ...                           'layers.1.blocks.0.mlp.fc1.bias': w,
        ...                           'norm.weight': w, 'head.weight': w}))
        ['stages.0.blocks.0.attn.w_msa.qkv.weight', 'stages.1.blocks.0.ffn.layers.0.0.bias', 'norm1.weight']
    """
    stages = {int(k.split('.')[1]) for k in state if k.startswith('layers.')}
    last = max(stages) if stages else 0
    out: StateDict = {}
    for key, value in state.items():
        if key.startswith('head') or key.endswith('attn_mask'):
            continue
        new = key
        if key.startswith('layers.'):
            if '.downsample.' in key:
                value = _unfold_order(value)
            new = new.replace('.attn.', '.attn.w_msa.').replace(
                '.mlp.fc1.', '.ffn.layers.0.0.').replace(
                    '.mlp.fc2.', '.ffn.layers.1.')
            new = 'stages.' + new[len('layers.'):]
        elif key.startswith('patch_embed.proj.'):
            new = key.replace('.proj.', '.projection.')
        elif key.startswith('norm.'):
            new = f'norm{last}.' + key[len('norm.'):]
        out[new] = value
    return out


def get_converter(name: str) -> Callable[[StateDict], StateDict]:
    """The converter registered as ``name``.

    Raises:
        KeyError: a former name (naming the new one), or an unknown one
            (listing the registered ones).
    """
    moved = renamed('converter', name)
    if moved and name not in CHECKPOINT_CONVERTERS.module_dict:
        raise KeyError(moved)
    fn = CHECKPOINT_CONVERTERS.get(name)
    if fn is None:
        known = ', '.join(sorted(CHECKPOINT_CONVERTERS.module_dict))
        raise KeyError(f'unknown converter {name!r} (registered: {known})')
    return fn


def convert_source(source: CheckpointTensors,
                   converter: Callable[[StateDict], StateDict],
                   name: str = 'converter') -> CheckpointTensors:
    """``source`` seen through ``converter``, lazily: the converter first
    runs on meta tensors (names, shapes, dtypes, no data); a key it only
    renamed reads its one source tensor, and the real conversion runs once,
    on first access to a key it computed. A converter that cannot run on
    meta tensors (data-dependent) runs on the real tensors at once.

    Example:
        >>> import os, tempfile
        >>> from mmext_init.checkpoint.formats import open_checkpoint
        >>> path = os.path.join(tempfile.mkdtemp(), 'vit.pth')
        >>> torch.save({'blocks.0.norm1.weight': torch.ones(3)}, path)
        >>> vit = open_checkpoint(path)
        >>> t = convert_source(vit, get_converter('TimmViT'))
        >>> t.keys(), t.origin('layers.0.ln1.weight')
        (['layers.0.ln1.weight'], 'blocks.0.norm1.weight')
    """
    try:
        fake = {k: torch.empty(source.shape(k), dtype=source.dtype(k),
                               device='meta') for k in source.keys()}
        out, origins = _run(converter, fake)
    except Exception:  # noqa: BLE001 - e.g. a data-dependent converter
        out, origins = _run(converter,
                            {k: source.get(k) for k in source.keys()})
        return CheckpointTensors(
            source.path, {k: tuple(v.shape) for k, v in out.items()},
            out.__getitem__, origins, {k: v.dtype for k, v in out.items()})
    bad = [k for k, v in out.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise TypeError(f'{name} returned a non-tensor for {bad[0]!r}')
    return _lazily_converted(source, converter, out, origins)


def _run(converter: Callable[[StateDict], StateDict],
         state: StateDict) -> Tuple[StateDict, Dict[str, str]]:
    """``converter(state)``, and the input key of each output that is an
    input tensor itself (renamed, not computed)."""
    by_id = {id(v): k for k, v in state.items()}
    out = converter(dict(state))
    return out, {k: by_id[id(v)] for k, v in out.items() if id(v) in by_id}


def _lazily_converted(source: CheckpointTensors,
                      converter: Callable[[StateDict], StateDict],
                      meta: StateDict,
                      origins: Dict[str, str]) -> CheckpointTensors:
    """``source`` through ``converter``, given its output on meta tensors:
    a renamed key reads its source tensor, a computed one runs the real
    conversion (once)."""
    cache: Dict[str, Optional[StateDict]] = {'state': None}

    def get(key: str) -> torch.Tensor:
        if key in origins:
            return source.get(origins[key])
        if cache['state'] is None:
            cache['state'] = converter({k: source.get(k)
                                        for k in source.keys()})
        return cache['state'][key]

    def release(key: str, tensor: torch.Tensor) -> None:
        if key in origins:  # a renamed tensor is the file's own
            source.release(origins[key], tensor)

    return CheckpointTensors(source.path,
                             {k: tuple(v.shape) for k, v in meta.items()},
                             get, origins,
                             {k: v.dtype for k, v in meta.items()}, release)
