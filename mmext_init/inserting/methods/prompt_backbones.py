r"""What ``VPT`` needs to know of a token backbone, read from the backbone
itself: its blocks, how many prefix tokens (class, distillation,
register) precede the patch tokens, the patch embedding's fan in and the
token width; and what refuses prompts: a block bound to the patch grid's
token count (a relative position bias table of fixed size, as in BEiT and
Swin; relative position embeddings over the grid, as in SAM's ViT; rotary
position embeddings over the grid, as in EVA-02; a forward that takes the
grid along with the tokens, as Swin's, PVT's and MiT's ``(x, hw_shape)``).

Prefix tokens: ``num_extra_tokens`` (mmpretrain's ``VisionTransformer``
1, DeiT's distilled 2, 0 without a class token), ``num_prefix_tokens``
(timm), mmseg ``VisionTransformer``'s ``with_cls_token`` (1 or 0).

Example:
    >>> from mmseg.models.backbones import VisionTransformer
    >>> vit = VisionTransformer(img_size=32, patch_size=8, embed_dims=32,
    ...     num_layers=2, num_heads=2, mlp_ratio=2)
    >>> layout = token_layout(vit, 'backbone', None, None)
    >>> layout.prefix, layout.channels, layout.fan_in, len(layout.blocks)
    (1, 32, 192, 2)
"""
import inspect
import re
from dataclasses import dataclass
from typing import List, Optional, Tuple

import torch
import torch.nn as nn

from ...matching import full_match, name_regex
from ..targets import closest_paths

__all__ = ['TokenLayout', 'token_layout', 'prefix_count', 'grid_bound',
           'default_blocks', 'BLOCK_CONTAINERS', 'PREFIX_ATTRS']

#: where a backbone keeps its transformer blocks, in the order looked at
BLOCK_CONTAINERS = ('layers', 'blocks')
#: the attributes that say how many tokens precede the patches
PREFIX_ATTRS = ('num_extra_tokens', 'num_prefix_tokens')

Blocks = Tuple[Tuple[str, nn.Module], ...]


@dataclass(frozen=True)
class TokenLayout:
    """A backbone's token layout: ``prefix`` tokens before the patches,
    ``channels`` the token width, ``fan_in`` the patch embedding's (in
    channels x patch h x patch w), ``blocks`` the selected blocks
    ``(path relative to the backbone, block)``."""
    prefix: int
    channels: int
    fan_in: int
    blocks: Blocks


def _where(path: str, module: nn.Module) -> str:
    return f'{path!r} ({type(module).__name__})'


def prefix_count(backbone: nn.Module, where: str,
                 given: Optional[int]) -> int:
    """The backbone's prefix tokens (see the module docstring); ``given``
    (``prefix_tokens=``) must agree with what the backbone says.

    Raises:
        ValueError: naming ``where``: the backbone says nothing and none
            was given, or it says something else.

    Example:
        >>> prefix_count(nn.Linear(2, 2), "'head'", None)
        Traceback (most recent call last):
        ValueError: VPT: 'head' does not say how many prefix tokens precede its patch tokens (no num_extra_tokens, num_prefix_tokens or with_cls_token): set prefix_tokens=
    """
    found, source = None, None
    for attr in PREFIX_ATTRS:
        value = getattr(backbone, attr, None)
        if isinstance(value, int) and not isinstance(value, bool):
            found, source = value, attr
            break
    else:
        flag = getattr(backbone, 'with_cls_token', None)
        if isinstance(flag, bool):
            found, source = int(flag), f'with_cls_token={flag}'
    if given is None:
        if found is None:
            raise ValueError(
                f'VPT: {where} does not say how many prefix tokens precede '
                f'its patch tokens (no {", ".join(PREFIX_ATTRS)} or '
                'with_cls_token): set prefix_tokens=')
        return found
    if found is not None and found != given:
        raise ValueError(f'VPT: prefix_tokens={given}, but {where} has '
                         f'{found} ({source})')
    return given


def _patch_projection(backbone: nn.Module, where: str) -> nn.Conv2d:
    """The first ``nn.Conv2d`` of the backbone's ``patch_embed``."""
    embed = getattr(backbone, 'patch_embed', None)
    convs = [m for m in embed.modules() if isinstance(m, nn.Conv2d)] \
        if isinstance(embed, nn.Module) else []
    if not convs:
        raise ValueError(
            f'VPT: {where} has no patch embedding with a Conv2d '
            '(patch_embed), which the prompts take their width and their '
            "init's fan from: target a ViT-style token backbone")
    return convs[0]


def default_blocks(backbone: nn.Module) -> Optional[Blocks]:
    """The elements of the backbone's ``layers`` or ``blocks`` (a
    ModuleList or Sequential), None if it has neither.

    Example:
        >>> net = nn.Module()
        >>> net.blocks = nn.Sequential(nn.Identity(), nn.Identity())
        >>> [p for p, _ in default_blocks(net)]
        ['blocks.0', 'blocks.1']
    """
    for attr in BLOCK_CONTAINERS:
        container = getattr(backbone, attr, None)
        if isinstance(container, (nn.ModuleList, nn.Sequential)) and \
                len(container):
            return tuple((f'{attr}.{name}', block)
                         for name, block in container.named_children())
    return None


def _select_blocks(backbone: nn.Module, where: str,
                   pattern: Optional[str]) -> Blocks:
    if pattern is None:
        found = default_blocks(backbone)
        if found is None:
            raise ValueError(
                f'VPT: {where} has no {" or ".join(BLOCK_CONTAINERS)} of '
                'transformer blocks: target the token backbone that holds '
                "its blocks (e.g. targets='backbone'), or name them with "
                r"blocks= (a regex relative to the target, r'layers\.\d+')")
        return found
    regex = name_regex(pattern)
    paths = [(p, m) for p, m in backbone.named_modules() if p]
    found = tuple((p, m) for p, m in paths if full_match(regex, p))
    if not found:
        near = closest_paths(pattern, [p for p, _ in paths])
        raise ValueError(
            f'VPT: blocks={pattern!r} matches no module of {where} (paths '
            'relative to it)' + (f'; closest: {near}' if near else ''))
    return found


def _grid_reason(module: nn.Module) -> Optional[str]:
    """Why ``module`` is bound to the patch grid's token count, if it is."""
    table = getattr(module, 'relative_position_bias_table', None)
    if isinstance(table, torch.Tensor):
        return ('has a relative position bias table of fixed size '
                f'{tuple(table.shape)} (relative_position_bias_table), made '
                'for the token count of its patch grid')
    if isinstance(getattr(module, 'rel_pos_h', None), torch.Tensor):
        return 'has relative position embeddings over the patch grid ' \
               '(rel_pos_h, rel_pos_w)'
    rope = getattr(module, 'rope', None)
    if isinstance(rope, nn.Module):
        return ('applies rotary position embeddings over the patch grid '
                f'(rope, {type(rope).__name__})')
    if re.search(r'rotary|rope', type(module).__name__, re.IGNORECASE):
        return 'is a rotary position embedding over the patch grid'
    return None


def _grid_arguments(block: nn.Module) -> List[str]:
    """The required positional arguments of the block's forward after the
    token sequence (e.g. Swin's ``hw_shape``)."""
    try:
        params = list(inspect.signature(block.forward).parameters.values())
    except (TypeError, ValueError):
        return []
    positional = [p for p in params if p.kind in (
        p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return [p.name for p in positional[1:] if p.default is p.empty]


def grid_bound(backbone: nn.Module, path: str, blocks: Blocks) -> None:
    """Raise ``ValueError`` naming the backbone, the module at fault and
    its class when the backbone or a selected block cannot take more tokens
    than its patch grid has (see the module docstring).

    Example:
        >>> from mmpretrain.models import BEiTViT
        >>> beit = BEiTViT(arch=dict(embed_dims=32, num_layers=1,
        ...     num_heads=2, feedforward_channels=64), img_size=32,
        ...     patch_size=8)
        >>> grid_bound(beit, 'backbone', default_blocks(beit))
        Traceback (most recent call last):
        ValueError: VPT cannot prompt 'backbone' (BEiTViT): 'backbone.layers.0.attn' (BEiTAttention) has a relative position bias table of fixed size (52, 2) (relative_position_bias_table), made for the token count of its patch grid
    """
    head = f'VPT cannot prompt {_where(path, backbone)}'

    def where(sub_path: str, module: nn.Module) -> str:
        return _where('.'.join(p for p in (path, sub_path) if p), module)

    for sub_path, module in backbone.named_modules():
        reason = _grid_reason(module)
        if reason:
            raise ValueError(f'{head}: {where(sub_path, module)} {reason}')
    for block_path, block in blocks:
        if type(block).forward is nn.Module.forward:
            raise ValueError(f'{head}: {where(block_path, block)} has no '
                             'forward (a container): select its blocks '
                             'with blocks=')
        extra = _grid_arguments(block)
        if extra:
            raise ValueError(
                f'{head}: {where(block_path, block)} takes '
                f'{", ".join(extra)} with its tokens, which must then be '
                'its patch grid')


def token_layout(backbone: nn.Module, path: str, blocks: Optional[str],
                 prefix_tokens: Optional[int]) -> TokenLayout:
    """The :class:`TokenLayout` of ``backbone`` (at ``path``) for the
    ``blocks`` regex (None: every element of its ``layers``/``blocks``).

    Raises:
        ValueError: naming ``path`` and the class: no blocks, no patch
            embedding, an unknown prefix count, or a grid-bound block
            (:func:`grid_bound`).
    """
    where = _where(path, backbone)
    found = _select_blocks(backbone, where, blocks)
    grid_bound(backbone, path, found)
    prefix = prefix_count(backbone, where, prefix_tokens)
    conv = _patch_projection(backbone, where)
    fan_in = conv.in_channels // conv.groups * conv.kernel_size[0] * \
        conv.kernel_size[1]
    return TokenLayout(prefix, conv.out_channels, fan_in, found)
