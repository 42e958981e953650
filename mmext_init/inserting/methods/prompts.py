r"""``VPT`` (Jia et al. 2022, Visual Prompt Tuning): ``num_tokens`` learned
prompt tokens put into the token sequence of a ViT-style backbone, right
after its prefix tokens (class, distillation, register tokens), at the
input of transformer blocks: *deep*, every selected block its own prompts
(whatever the previous block made of the prompt positions is replaced, as
in the paper's VPT-deep); *shallow*, prompts at the first selected block
only, whose outputs at the prompt positions travel on to the next block.

The entry targets the backbone (the module holding the blocks, e.g.
``targets='backbone'``), since the blocks alone do not know how many
prefix tokens precede the patches nor the patch size the paper's init
needs; ``blocks`` (a regex on paths relative to it) selects the blocks,
by default every element of its ``layers`` (mmpretrain, mmseg) or
``blocks`` (timm). Each prompted block gets a :class:`VisualPrompt` child
``vpt_prompt`` holding ``tokens`` (``num_tokens``, C); its ``init_cfg`` is
``PromptUniform`` (:class:`PromptUniformInit`). The prompt positions are
dropped again from every block's output, so everything after a block
(``out_indices``, norms, heads) sees the shape it would without prompts.

Example:
    >>> import torch
    >>> from mmpretrain.models import VisionTransformer
    >>> vit = VisionTransformer(arch=dict(embed_dims=32, num_layers=2,
    ...     num_heads=2, feedforward_channels=64), img_size=32, patch_size=8)
    >>> VPT(num_tokens=5).insert(vit, 'backbone')
    ['layers.0.vpt_prompt', 'layers.1.vpt_prompt']
    >>> vit.layers[0].vpt_prompt.tokens.shape
    torch.Size([5, 32])
    >>> vit(torch.randn(2, 3, 32, 32))[0].shape  # the cls token's features
    torch.Size([2, 32])
"""
import math
import re
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.model import BaseModule
from mmengine.model.weight_init import BaseInit
from mmengine.registry import WEIGHT_INITIALIZERS

from ...matching import name_regex
from ...provenance.tracking import count_skipped_layer, provided_by_checkpoint
from .prompt_backbones import TokenLayout, token_layout
from ..registry import (INSERT_TYPES, InsertType, child_name_free,
                        is_switched_off)

__all__ = ['VPT', 'VisualPrompt', 'PromptUniformInit', 'PromptState',
           'PromptCarry', 'prompt_pre_hook', 'prompt_post_hook',
           'prompt_bound']


def prompt_bound(fan_in: int, channels: int) -> float:
    r"""The paper's bound :math:`v = \sqrt{6 / (\text{fan\_in} + C)}`: Xavier
    uniform with the patch embedding's fans (``fan_in`` = in channels x
    patch h x patch w, fan out = C, the token width), as the official code's
    ``sqrt(6 / (3 * patch_h * patch_w + prompt_dim))``.

    Example:
        >>> round(prompt_bound(3 * 16 * 16, 768), 6)  # ViT-B/16: 1/32
        0.0625
    """
    return math.sqrt(6.0 / (fan_in + channels))


@WEIGHT_INITIALIZERS.register_module(name='PromptUniform', force=True)
class PromptUniformInit(BaseInit):
    r"""Prompt tokens uniform in :math:`[-v, v]`, :math:`v =` :func:`
    prompt_bound` (``fan_in``, their width): the init of VPT's official
    code. It applies to the modules of the classes in ``layer`` that have a
    ``tokens`` tensor (``VisualPrompt`` declares ``layer='VisualPrompt'``).

    Why not MMEngine's ``Xavier``/``Uniform``: both initialize a module's
    ``weight``, and Xavier would take its fans from the (n, C) prompt
    tensor itself, :math:`\sqrt{6 / (n + C)}`; the paper's bound takes them
    from the patch embedding (a prompt is a token, the output of that
    embedding), which a constant ``Uniform(a=-v, b=v)`` would only show as
    a number. ``fan_in`` is read from the patch embedding's conv (in
    channels x kernel), where the official code writes 3 for RGB.

    Args:
        fan_in (int): the patch embedding's fan in (in channels x patch
            h x patch w).
        layer (str | list[str]): the prompt modules' class names.

    Example:
        >>> prompt = VisualPrompt(4, 8, fan_in=3 * 2 * 2)
        >>> PromptUniformInit(fan_in=12, layer='VisualPrompt')(prompt)
        >>> bool(prompt.tokens.abs().max() <= prompt_bound(12, 8))
        True
    """

    def __init__(self, fan_in: int, **kwargs) -> None:
        super().__init__(**kwargs)
        if isinstance(fan_in, bool) or not isinstance(fan_in, int) or \
                fan_in < 1:
            raise ValueError(f'PromptUniform: fan_in must be an int >= 1, '
                             f'got {fan_in!r}')
        self.fan_in = fan_in

    def __call__(self, module: nn.Module) -> None:

        def init(m: nn.Module) -> None:
            tokens = getattr(m, 'tokens', None)
            if type(m).__name__ not in self.layer or \
                    not isinstance(tokens, torch.Tensor):
                return
            if provided_by_checkpoint(m):
                count_skipped_layer()
                return
            bound = prompt_bound(self.fan_in, tokens.shape[-1])
            nn.init.uniform_(tokens, -bound, bound)

        module.apply(init)

    def _get_init_info(self) -> str:
        return f'{type(self).__name__}: fan_in={self.fan_in}'


class VisualPrompt(BaseModule):
    """The prompt tokens of one block: ``tokens`` (``num_tokens``, C) and
    the paper's ``prompt_dropout`` on them; ``forward(batch)`` gives them
    expanded to (batch, ``num_tokens``, C). Declared init:
    ``PromptUniform(fan_in=fan_in)``; the constructor draws the same.

    Example:
        >>> VisualPrompt(3, 8, fan_in=48)(2).shape
        torch.Size([2, 3, 8])
    """

    def __init__(self, num_tokens: int, channels: int, fan_in: int,
                 dropout: float = 0.0,
                 dtype: Optional[torch.dtype] = None,
                 device: Optional[torch.device] = None) -> None:
        super().__init__(init_cfg=dict(type='PromptUniform', fan_in=fan_in,
                                       layer='VisualPrompt'))
        bound = prompt_bound(fan_in, channels)
        self.tokens = nn.Parameter(torch.empty(
            num_tokens, channels, dtype=dtype, device=device).uniform_(
                -bound, bound))
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, batch: int) -> torch.Tensor:
        return self.dropout(self.tokens.expand(batch, -1, -1))


class PromptCarry:
    """Shallow prompts between blocks: the outputs at the prompt positions
    of one block, held until the next block takes them (a plain object the
    entry's blocks share; copies and pickles of the model share their own).

    Example:
        >>> carry = PromptCarry()
        >>> carry.put(torch.ones(1, 2, 4)); carry.take('layers.1').shape
        torch.Size([1, 2, 4])
        >>> carry.take('layers.1')
        Traceback (most recent call last):
        ValueError: VPT at 'layers.1' (shallow): no prompt outputs of the block before it; its blocks must run in order, each once per forward
    """

    def __init__(self) -> None:
        self.tokens: Optional[torch.Tensor] = None
        self.running = True  # the first block's prompts: their set is on

    def put(self, tokens: torch.Tensor) -> None:
        """Hold the prompt positions of a block's output."""
        self.tokens = tokens

    def take(self, path: str) -> torch.Tensor:
        """The held tokens (then none are held)."""
        tokens, self.tokens = self.tokens, None
        if tokens is None:
            raise ValueError(
                f'VPT at {path!r} (shallow): no prompt outputs of the block '
                'before it; its blocks must run in order, each once per '
                'forward')
        return tokens

    def __getstate__(self) -> dict:  # never a forward's tensors
        return dict(tokens=None, running=True)


class PromptState:
    """What the hooks of one prompted block read: where the prompts go
    (after ``prefix`` tokens), how many, the token width, the block's path
    (for errors), and for shallow prompts the shared carry and whether the
    block passes its prompt outputs on."""

    def __init__(self, path: str, layout: TokenLayout, num_tokens: int,
                 carry: Optional[PromptCarry] = None,
                 passes_on: bool = False) -> None:
        self.path, self.prefix = path, layout.prefix
        self.channels, self.num_tokens = layout.channels, num_tokens
        self.carry, self.passes_on = carry, passes_on

    def running(self, prompt: Optional[nn.Module]) -> bool:
        """Whether ``prompt`` (the block's; None: a later shallow block,
        which follows the first) runs: its insert set is on."""
        if prompt is None:
            return self.carry is not None and self.carry.running
        on = not is_switched_off(prompt)
        if self.carry is not None:
            self.carry.running = on
        return on

    def check(self, x: object, what: str) -> torch.Tensor:
        """``x`` if it is a (B, N, C) token sequence long enough, else a
        ``ValueError`` naming the block."""
        least = self.prefix + (self.num_tokens if what == 'output' else 0)
        if not isinstance(x, torch.Tensor) or x.dim() != 3 or \
                x.shape[-1] != self.channels or x.shape[1] < least:
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else \
                type(x).__name__
            raise ValueError(
                f'VPT at {self.path!r}: the block {what} is {got}, not a '
                f'(B, N >= {least}, {self.channels}) token sequence')
        return x


def prompt_pre_hook(module: nn.Module, args: Tuple) -> Tuple:
    """Forward pre-hook of a prompted block: its prompts (or, shallow, the
    carried ones) put into the first input after the prefix tokens."""
    state = module.vpt_state
    prompt = getattr(module, 'vpt_prompt', None)
    if not state.running(prompt):
        return args
    if not args:
        raise ValueError(f'VPT at {state.path!r}: the block was called '
                         'without a positional token sequence')
    x = state.check(args[0], 'input')
    if prompt is not None:
        prompts = prompt(x.shape[0])
    else:
        prompts = state.carry.take(state.path)
    p = state.prefix
    x = torch.cat([x[:, :p], prompts.to(x.dtype), x[:, p:]], dim=1)
    return (x, ) + tuple(args[1:])


def prompt_post_hook(module: nn.Module, args: Tuple,
                     output: torch.Tensor) -> torch.Tensor:
    """Forward hook of a prompted block: the prompt positions dropped from
    its output (shallow: held for the next block)."""
    state = module.vpt_state
    if not state.running(getattr(module, 'vpt_prompt', None)):
        return output
    out = state.check(output, 'output')
    p, n = state.prefix, state.num_tokens
    if state.passes_on:
        state.carry.put(out[:, p:p + n])
    return torch.cat([out[:, :p], out[:, p + n:]], dim=1)


def _consecutive(blocks: List[Tuple[str, nn.Module]], where: str) -> None:
    """Shallow prompts need blocks that follow each other in one container."""
    parents = {p.rpartition('.')[0] for p, _ in blocks}
    indices = [p.rpartition('.')[2] for p, _ in blocks]
    if len(parents) != 1 or not all(i.isdigit() for i in indices) or \
            [int(i) for i in indices] != list(
                range(int(indices[0]), int(indices[0]) + len(indices))):
        raise ValueError(
            f'VPT: deep=False needs consecutive blocks of one container in '
            f'{where}; the blocks selected are {[p for p, _ in blocks]}')


def _joined(path: str, sub_path: str) -> str:
    return f'{path}.{sub_path}' if path else sub_path


@INSERT_TYPES.register_module()
class VPT(InsertType):
    """Visual prompts in each selected block of the target backbone (see the
    module docstring).

    Args:
        num_tokens (int): prompt tokens per prompted block, >= 1.
        deep (bool): every selected block its own prompts (VPT-deep), or
            only the first one's input (VPT-shallow). Defaults to True.
        prompt_dropout (float): dropout on the prompts. Defaults to 0.
        blocks (str, optional): a regex on module paths relative to the
            target (``r'layers\\.(8|9|10|11)'``); by default every element
            of its ``layers`` or ``blocks``.
        prefix_tokens (int, optional): the tokens before the patches, for a
            backbone that does not say (``num_extra_tokens``,
            ``num_prefix_tokens``, mmseg's ``with_cls_token``).

    Example:
        >>> insert = [dict(type='VPT', targets='backbone', num_tokens=50,
        ...                deep=True, prompt_dropout=0.1)]
        >>> VPT(num_tokens=50, deep=False).deep
        False
    """

    def __init__(self, num_tokens: int, deep: bool = True,
                 prompt_dropout: float = 0.0, blocks: Optional[str] = None,
                 prefix_tokens: Optional[int] = None) -> None:
        for name, value, low in (('num_tokens', num_tokens, 1),
                                 ('prefix_tokens', prefix_tokens, 0)):
            if value is not None and (isinstance(value, bool) or
                                      not isinstance(value, int) or
                                      value < low):
                raise ValueError(f'VPT: {name} must be an int >= {low}, got '
                                 f'{value!r}')
        if not isinstance(deep, bool):
            raise ValueError(f'VPT: deep must be True or False, got {deep!r}')
        if not 0 <= prompt_dropout < 1:
            raise ValueError(f'VPT: prompt_dropout must be in [0, 1), got '
                             f'{prompt_dropout!r}')
        try:
            if blocks is not None:
                name_regex(blocks)
        except (re.error, TypeError) as error:
            raise ValueError(f'VPT: blocks is no regex: {error}') from error
        self.num_tokens, self.deep = num_tokens, deep
        self.dropout, self.blocks = prompt_dropout, blocks
        self.prefix_tokens = prefix_tokens

    def _plan(self, target: nn.Module, path: str) -> TokenLayout:
        layout = token_layout(target, path, self.blocks, self.prefix_tokens)
        if not self.deep:
            _consecutive(layout.blocks,
                         f'{path!r} ({type(target).__name__})')
        for block_path, block in layout.blocks:
            for name in ('vpt_prompt', 'vpt_state'):
                child_name_free(block, name, _joined(path, block_path))
        return layout

    def check(self, target: nn.Module, path: str) -> None:
        self._plan(target, path)

    def insert(self, target: nn.Module, path: str) -> List[str]:
        layout = self._plan(target, path)
        weight = next(target.parameters(), None)
        kw = {} if weight is None else dict(dtype=weight.dtype,
                                            device=weight.device)
        carry = None if self.deep else PromptCarry()
        children = []
        for i, (block_path, block) in enumerate(layout.blocks):
            if self.deep or i == 0:
                block.vpt_prompt = VisualPrompt(
                    self.num_tokens, layout.channels, layout.fan_in,
                    self.dropout, **kw)
                children.append(f'{block_path}.vpt_prompt')
            block.vpt_state = PromptState(
                _joined(path, block_path), layout, self.num_tokens, carry,
                passes_on=not self.deep and i < len(layout.blocks) - 1)
            block.register_forward_pre_hook(prompt_pre_hook)
            block.register_forward_hook(prompt_post_hook)
        return children

