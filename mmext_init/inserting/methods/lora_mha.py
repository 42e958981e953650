r"""LoRA on an ``nn.MultiheadAttention`` (what mmcv's ``MultiheadAttention``
wraps: DETR, DINO, Mask2Former, mmseg's MiT, mmpretrain's CLIP): a low-rank
change of its packed q/k/v projection ``in_proj_weight`` (3E x E) and of
its ``out_proj.weight``, :math:`W + s\, B A` each, as HF PEFT does it.

The attention reads both weights directly (``F.multi_head_attention_
forward``; ``out_proj``'s forward never runs), so no forward hook can add a
branch: :func:`lora_mha_forward` replaces the module's ``forward`` (a
``functools.partial`` of this module-level function, so ``copy.deepcopy``
and ``pickle`` give a copy using its own branch) and runs
``nn.MultiheadAttention.forward`` with ``W + s B A`` in place of each
weight for that call only: the registered parameters are never written
(they stay as loaded, and receive gradients when not frozen). The tensors
are PEFT's without its ``base_layer``/``default``: ``lora_A.weight``
(r x E) and ``lora_B.weight`` (3E x r) on the attention,
``out_proj.lora_A.weight`` (r x E) and ``out_proj.lora_B.weight`` (E x r).

Example:
    >>> import torch, torch.nn as nn
    >>> mha = nn.MultiheadAttention(8, 2, batch_first=True)
    >>> insert_mha(mha, 'attn', rank=2, scale=2.0)
    ['lora_A', 'lora_B', 'out_proj.lora_A', 'out_proj.lora_B']
    >>> sorted(n for n in mha.state_dict() if 'lora' in n)
    ['lora_A.weight', 'lora_B.weight', 'out_proj.lora_A.weight', 'out_proj.lora_B.weight']
    >>> x = torch.randn(1, 5, 8)
    >>> out, _ = mha(x, x, x)  # B = 0: the plain attention
    >>> torch.equal(out, nn.MultiheadAttention.forward(mha, x, x, x)[0])
    True
"""
import functools
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Sequence

import torch
import torch.nn as nn

from .lora_layers import LoRADown, LoRAUp, lora_delta
from ..registry import child_name_free, is_switched_off

__all__ = ['MHA_PARTS', 'check_mha', 'insert_mha', 'fold_mha',
           'lora_mha_forward', 'merged_mha_weights']

#: the parts of an ``nn.MultiheadAttention`` LoRA can change: its packed
#: q/k/v projection and its output projection
MHA_PARTS = ('in_proj', 'out_proj')


def check_mha(mha: nn.MultiheadAttention, path: str, dropout: float,
              parts: Sequence[str]) -> None:
    """Raise ``ValueError`` naming ``path`` for an attention LoRA cannot
    change: separate q/k/v weights (``kdim``/``vdim`` other than
    ``embed_dim``), dropout on the branch (the change is folded into the
    weights for each call, as in PEFT, so there is no branch input to drop),
    a forward already replaced on the instance, or names already taken.

    Example:
        >>> check_mha(nn.MultiheadAttention(8, 2, kdim=4), 'attn', 0.0,
        ...           MHA_PARTS)
        Traceback (most recent call last):
        ValueError: 'attn' (MultiheadAttention) has separate q/k/v weights (kdim=4, vdim=8, embed_dim=8): LoRA applies to its packed in_proj_weight only (as PEFT)
    """
    where = f'{path!r} ({type(mha).__name__})'
    if not mha._qkv_same_embed_dim:
        raise ValueError(
            f'{where} has separate q/k/v weights (kdim={mha.kdim}, '
            f'vdim={mha.vdim}, embed_dim={mha.embed_dim}): LoRA applies to '
            'its packed in_proj_weight only (as PEFT)')
    if dropout:
        raise ValueError(
            f'{where}: LoRA on an nn.MultiheadAttention changes its weights '
            f'(W + s B A) and has no branch input to drop: dropout='
            f'{dropout!r} must be 0')
    if 'forward' in vars(mha):
        raise ValueError(f'{where} already has its own forward (set on the '
                         'instance): LoRA would replace it')
    if 'in_proj' in parts:
        for name in ('lora_A', 'lora_B', 'lora_scale'):
            child_name_free(mha, name, path)
    if 'out_proj' in parts:
        for name in ('lora_A', 'lora_B', 'lora_scale'):
            child_name_free(mha.out_proj, name, f'{path}.out_proj')


def insert_mha(mha: nn.MultiheadAttention, path: str, rank: int,
               scale: float, parts: Sequence[str] = MHA_PARTS) -> List[str]:
    """Add ``lora_A``/``lora_B`` (and the float ``lora_scale``) to ``mha``
    for ``'in_proj'`` and to ``mha.out_proj`` for ``'out_proj'``, and make
    its forward :func:`lora_mha_forward`; the new child names.

    Example:
        >>> mha = nn.MultiheadAttention(8, 2)
        >>> insert_mha(mha, 'attn', 4, 1.0, ['out_proj'])
        ['out_proj.lora_A', 'out_proj.lora_B']
    """
    kw = dict(dtype=mha.out_proj.weight.dtype,
              device=mha.out_proj.weight.device)
    embed = mha.embed_dim
    children = []
    for part, layer, out in (('in_proj', mha, 3 * embed),
                             ('out_proj', mha.out_proj, embed)):
        if part in parts:
            layer.lora_A = LoRADown(embed, rank, **kw)
            layer.lora_B = LoRAUp(rank, out, **kw)
            layer.lora_scale = scale
            prefix = '' if layer is mha else 'out_proj.'
            children += [prefix + 'lora_A', prefix + 'lora_B']
    mha.forward = functools.partial(lora_mha_forward, mha)
    return children


def merged_mha_weights(mha: nn.MultiheadAttention,
                       running: bool = False) -> Dict[str, Any]:
    r"""``{'in_proj_weight': W + s B A, 'out_proj.weight': ...}`` for the
    parts that hold a LoRA (read through plain torch ops: a deferred
    weight is computed on this read); ``running``: only the parts whose
    insert set is switched on (the forward)."""
    def changes(layer: nn.Module) -> bool:
        return hasattr(layer, 'lora_A') and not (
            running and is_switched_off(layer.lora_A))

    merged = {}
    if changes(mha):
        merged['in_proj_weight'] = mha.in_proj_weight + lora_delta(mha)
    if changes(mha.out_proj):
        merged['out_proj.weight'] = mha.out_proj.weight + \
            lora_delta(mha.out_proj)
    return merged


@contextmanager
def weights_in_place(mha: nn.MultiheadAttention,
                     merged: Dict[str, torch.Tensor]) -> Iterator[None]:
    """Within the block, ``mha`` reads the tensors of ``merged`` (by
    ``state_dict`` name) in place of its parameters; after it, the very
    parameter objects are back, unchanged."""
    slots = []
    for name, value in merged.items():
        owner, _, key = name.rpartition('.')
        params = mha.get_submodule(owner)._parameters
        slots.append((params, key, params[key]))
        params[key] = value
    try:
        yield
    finally:
        for params, key, original in slots:
            params[key] = original


def lora_mha_forward(mha: nn.MultiheadAttention, *args: Any,
                     **kwargs: Any) -> Any:
    """The forward of a LoRA'd attention: ``nn.MultiheadAttention.forward``
    (all its arguments: ``key_padding_mask``, ``need_weights``,
    ``attn_mask``, ``batch_first``, its fast path) with ``W + s B A`` for
    each changed weight, everything read from ``mha``."""
    merged = merged_mha_weights(mha, running=True)
    with weights_in_place(mha, merged):
        return nn.MultiheadAttention.forward(mha, *args, **kwargs)


def fold_mha(mha: nn.MultiheadAttention) -> Dict[str, Optional[torch.Tensor]]:
    """What folding the LoRA of ``mha`` makes of its ``state_dict``: the
    merged ``in_proj_weight``/``out_proj.weight`` (each delta added once)
    and ``None`` for the LoRA tensors.

    Example:
        >>> mha = nn.MultiheadAttention(8, 2)
        >>> _ = insert_mha(mha, 'attn', 2, 1.0)
        >>> sorted(k for k, v in fold_mha(mha).items() if v is not None)
        ['in_proj_weight', 'out_proj.weight']
    """
    folded: Dict[str, Optional[torch.Tensor]] = dict(merged_mha_weights(mha))
    for prefix, layer in (('', mha), ('out_proj.', mha.out_proj)):
        if hasattr(layer, 'lora_A'):
            folded[prefix + 'lora_A.weight'] = None
            folded[prefix + 'lora_B.weight'] = None
    return folded
