"""Layer depth from a model's own structure, for ``layer_decay``: no
per-backbone ``get_layer_depth``.

Among the selected parameters (names relative to their common module path):

* a *block* is the deepest numbered module above a parameter (a
  ``ModuleList``/``Sequential`` item) whose container holds blocks, not
  layers (every item with parameters has children): ``layer1.0``,
  ``stages.0.blocks.1``, ``layers.0.1.0``; not ``ffn.layers.0`` (its
  container also holds a bare ``Linear``) nor ``downsample.0`` (a conv);
* blocks are ordered by stage (the number in the first numbered component
  of their path: ``layer2`` -> 2, ``stages.1...`` -> 1), then by first
  appearance (so ConvNeXt's ``downsample_layers.1`` precedes ``stages.1.0``
  and Swin's ``stages.0.downsample`` follows ``stages.0.blocks``);
* depth 0 is the stem (unnumbered parameters before the first block),
  blocks are 1..N, the rest (unnumbered parameters after it) N + 1.

The learning rate of depth ``d`` is multiplied by ``rate ** (N + 1 - d)``.

Example:
    >>> import torch.nn as nn
    >>> net = nn.Module()
    >>> net.stem = nn.Conv2d(1, 1, 1)
    >>> net.layers = nn.ModuleList([nn.Sequential(nn.Conv2d(1, 1, 1),
    ...                                           nn.BatchNorm2d(1)) for _ in range(2)])
    >>> net.norm = nn.BatchNorm2d(1)
    >>> depths = layer_depths(net, [n for n, _ in net.named_parameters()])
    >>> depths.depth['stem.weight'], depths.depth['layers.1.0.bias'], depths.depth['norm.bias']
    (0, 2, 3)
    >>> depths.scale('stem.weight', 0.5)
    0.125
"""
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import torch.nn as nn

_NUMBER = re.compile(r'(\d+)$')


@dataclass
class LayerDepths:
    """Depth of each selected parameter name; ``blocks`` the block paths in
    depth order (depth ``i + 1``)."""
    depth: Dict[str, int] = field(default_factory=dict)
    blocks: List[str] = field(default_factory=list)

    @property
    def max_depth(self) -> int:
        """The depth of 'the rest' (N + 1)."""
        return len(self.blocks) + 1

    def scale(self, name: str, rate: float) -> float:
        """The learning-rate multiplier of parameter ``name``."""
        return float(rate) ** (self.max_depth - self.depth[name])


def common_path(names: Sequence[str]) -> str:
    """The longest module path above every name.

    Example:
        >>> common_path(['backbone.a.weight', 'backbone.b.0.bias'])
        'backbone'
    """
    parts = [n.split('.')[:-1] for n in names]
    common: List[str] = []
    for tokens in zip(*parts) if parts else ():
        if len(set(tokens)) != 1:
            break
        common.append(tokens[0])
    return '.'.join(common)


def holds_blocks(container: nn.Module) -> bool:
    """Whether every numbered item of ``container`` holding parameters is a
    block (has children), not a layer: ``ModuleList`` of blocks yes,
    ``Sequential(Linear, GELU, Linear)`` no."""
    items = [m for m in container.children()
             if next(m.parameters(), None) is not None]
    return bool(items) and all(
        next(m.children(), None) is not None for m in items)


def block_of(module: nn.Module, rel: str) -> Optional[str]:
    """The block path of the parameter ``rel`` (relative to ``module``):
    its deepest numbered ancestor in a container of blocks; None for a
    stem/rest parameter."""
    parts = rel.split('.')[:-1]
    modules = [module]
    for part in parts:
        modules.append(getattr(modules[-1], part))
    for i in reversed(range(len(parts))):
        if parts[i].isdigit() and holds_blocks(modules[i]):
            return '.'.join(parts[:i + 1])
    return None


def stage_of(block: str) -> int:
    """The number in the first numbered component of a block path.

    Example:
        >>> stage_of('layer2.0'), stage_of('stages.1.blocks.3')
        (2, 1)
    """
    for part in block.split('.'):
        found = _NUMBER.search(part)
        if found:
            return int(found.group(1))
    return 0


def layer_depths(root: nn.Module, names: Sequence[str]) -> LayerDepths:
    """Depths of the parameters ``names`` of ``root`` (see the module
    docstring)."""
    base = common_path(names)
    module = root.get_submodule(base) if base else root
    cut = len(base) + 1 if base else 0
    block: Dict[str, Optional[str]] = {n: block_of(module, n[cut:])
                                       for n in names}
    first: Dict[str, int] = {}
    for i, name in enumerate(names):
        if block[name] is not None:
            first.setdefault(block[name], i)
    order: List[Tuple[int, int, str]] = sorted(
        (stage_of(b), i, b) for b, i in first.items())
    blocks = [b for _, _, b in order]
    index = {b: i + 1 for i, b in enumerate(blocks)}
    start = min(first.values(), default=len(names))
    out = LayerDepths(blocks=blocks)
    for i, name in enumerate(names):
        if block[name] is not None:
            out.depth[name] = index[block[name]]
        else:
            out.depth[name] = 0 if i < start else len(blocks) + 1
    return out
