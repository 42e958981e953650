"""Shape adaptation of checkpoint tensors (``adapt=[...]`` on ``Pretrained``).

Each transform is registered in ``ADAPT_TRANSFORMS`` (an MMEngine registry
users can extend), takes ``keys`` (a regex or list of regexes, full match on
the module's tensor names) and adapts a checkpoint tensor whose shape differs
from the model's. A transform returns an :class:`Adapted`: the new tensor,
and ``region`` -- ``None`` when the whole tensor comes from the checkpoint,
else the part that does (a tuple of slices, or a boolean mask over dim 0);
the rest keeps the tensor's declared init.

Example (config):
    >>> adapt = [dict(type='ResizePosEmbed', keys=r'.*pos_embed'),
    ...          dict(type='InputChannels', keys='patch_embed.projection.weight')]
"""
import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from mmengine.registry import Registry

from ..matching import full_match, name_regex

ADAPT_TRANSFORMS = Registry('checkpoint adaptation')
Shape = Tuple[int, ...]
Region = Union[None, Tuple[slice, ...], torch.Tensor]


@dataclass
class Adapted:
    """A checkpoint tensor fitted to the model's shape."""
    tensor: torch.Tensor
    region: Region
    description: str


class AdaptTransform:
    """Base of the ``adapt`` transforms: ``keys`` selection, shape check,
    description.

    Args:
        keys (str | list[str]): patterns of the model tensor names handled.

    Example:
        >>> t = AdaptTransform(['head.fc.weight', 'head.fc.bias'])
        >>> t.selects('head.fc.bias'), t.selects('neck.fc.bias')
        (True, False)
    """

    def __init__(self, keys: Union[str, Sequence[str]]) -> None:
        keys = [keys] if isinstance(keys, str) else list(keys)
        self.patterns = [name_regex(k) for k in keys]
        self.keys = keys

    def selects(self, name: str) -> bool:
        """Whether this transform handles model tensor ``name`` (a pattern
        of ``keys`` matches it whole)."""
        return any(full_match(p, name) for p in self.patterns)

    def partial(self, name: str, ckpt_shape: Shape,
                model_shape: Shape) -> bool:
        """Whether only part of tensor ``name`` will come from the
        checkpoint."""
        return dry_run(self, name, ckpt_shape, model_shape).region is not None

    def changes(self, ckpt_shape: Shape, model_shape: Shape) -> bool:
        """Whether a tensor of the model's shape must still be transformed
        (only ``Classes`` reorders rows of equal-shaped tensors). True also
        when the shapes do not fit the transform: the shape-only call that
        follows raises the error, naming the tensor."""
        return tuple(ckpt_shape) != tuple(model_shape)

    def describe(self, **extra: Any) -> str:
        args = ', '.join(f'{k}={v!r}' for k, v in extra.items())
        return f'{type(self).__name__}({args})'

    def error(self, name: str, ckpt: Shape, model: Shape, why: str) -> None:
        raise ValueError(f'{type(self).__name__} on {name}: checkpoint '
                         f'{tuple(ckpt)} -> model {tuple(model)}: {why}')

    def __call__(self, name: str, ckpt: torch.Tensor,
                 model_shape: Shape) -> Adapted:
        raise NotImplementedError


def build_transform(cfg: Dict[str, Any]) -> AdaptTransform:
    """Build a transform from its cfg without MMEngine's scope search (which
    warns under ``default_scope='mmdet'``); unknown types list the known ones.

    Example:
        >>> t = build_transform(dict(type='InputChannels', keys='conv1.weight',
        ...                          mode='tile'))
        >>> type(t).__name__, t.keys, t.mode
        ('InputChannels', ['conv1.weight'], 'tile')
        >>> build_transform(dict(type='Shrink'))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        KeyError: "unknown transform 'Shrink' (registered: Classes, Grow, ...)"
    """
    args = dict(cfg)
    kind = args.pop('type', None)
    cls = kind if isinstance(kind, type) else ADAPT_TRANSFORMS.get(kind)
    if cls is None:
        known = ', '.join(sorted(ADAPT_TRANSFORMS.module_dict))
        raise KeyError(f'unknown transform {kind!r} (registered: {known})')
    return cls(**args)


def dry_run(transform: AdaptTransform, name: str, ckpt_shape: Shape,
            model_shape: Shape, dtype: torch.dtype = torch.float32) -> Adapted:
    """Run ``transform`` on shapes only (meta tensors, no data): the same
    checks, region and description as the real call.

    Example:
        >>> dry_run(Grow('w'), 'w', (3, 4), (5, 4)).region
        (slice(0, 3, None), slice(0, 4, None))
    """
    with torch.device('meta'):
        out = transform(name, torch.empty(ckpt_shape, dtype=dtype),
                        tuple(model_shape))
    if tuple(out.tensor.shape) != tuple(model_shape):
        transform.error(name, ckpt_shape, model_shape,
                        f'made {tuple(out.tensor.shape)}')
    return out


def region_numel(region: Region, shape: Shape) -> int:
    """Elements of a tensor of ``shape`` that ``region`` covers (all of them
    for ``None``): what a partly adapted tensor takes from the checkpoint.

    Example:
        >>> region_numel((slice(0, 3), slice(0, 4)), (5, 4))
        12
    """
    if region is None:
        return math.prod(shape)
    if isinstance(region, torch.Tensor):  # boolean mask over dim 0
        return int(region.sum()) * math.prod(shape[1:])
    return torch.empty(shape, device='meta')[region].numel()


def _side(n: int) -> Optional[int]:
    side = int(round(math.sqrt(max(n, 0))))
    return side if side > 0 and side * side == n else None


def _resize_grid(grid: torch.Tensor, size: Tuple[int, int],
                 mode: str) -> torch.Tensor:
    """(1, C, H, W) -> (1, C, h, w), computed in float32."""
    if tuple(grid.shape[-2:]) == tuple(size):
        return grid
    out = F.interpolate(grid.float(), size=size, mode=mode,
                        align_corners=False)
    return out.to(grid.dtype)


@ADAPT_TRANSFORMS.register_module()
class ResizePosEmbed(AdaptTransform):
    """Absolute position embeddings ``(1, P + g*g, C)`` to a new square grid
    (interpolated in float32), keeping ``num_prefix_tokens`` P as they are.

    Example (a 4x4 grid and a class token to an 8x8 grid):
        >>> done = ResizePosEmbed('pos_embed')('pos_embed',
        ...                                    torch.zeros(1, 1 + 4 * 4, 8),
        ...                                    (1, 1 + 8 * 8, 8))
        >>> tuple(done.tensor.shape), done.description
        ((1, 65, 8), "ResizePosEmbed(num_prefix_tokens=1, grid='4x4->8x8')")
    """

    def __init__(self, keys, num_prefix_tokens: int = 1,
                 mode: str = 'bicubic') -> None:
        super().__init__(keys)
        self.num_prefix_tokens = num_prefix_tokens
        self.mode = mode

    def __call__(self, name, ckpt, model_shape):
        p = self.num_prefix_tokens
        if ckpt.dim() != 3 or len(model_shape) != 3 or ckpt.shape[0] != 1 \
                or model_shape[0] != 1 or ckpt.shape[2] != model_shape[2]:
            self.error(name, ckpt.shape, model_shape, 'expects (1, N, C) '
                       'with the same C')
        g1, g2 = _side(ckpt.shape[1] - p), _side(model_shape[1] - p)
        if g1 is None or g2 is None:
            self.error(name, ckpt.shape, model_shape, f'the tokens after '
                       f'{p} prefix token(s) are not a square grid')
        grid = ckpt[:, p:].reshape(1, g1, g1, -1).permute(0, 3, 1, 2)
        grid = _resize_grid(grid, (g2, g2), self.mode)
        grid = grid.permute(0, 2, 3, 1).reshape(1, g2 * g2, -1)
        return Adapted(torch.cat([ckpt[:, :p], grid], dim=1), None,
                       self.describe(num_prefix_tokens=p,
                                     grid=f'{g1}x{g1}->{g2}x{g2}'))


@ADAPT_TRANSFORMS.register_module()
class ResizeRelPosTable(AdaptTransform):
    """Swin relative position bias tables ``((2W-1)^2, heads)`` to a new
    window size.

    Example (window 7 to window 13, 3 heads):
        >>> done = ResizeRelPosTable('table')('table', torch.zeros(13 * 13, 3),
        ...                                   (25 * 25, 3))
        >>> tuple(done.tensor.shape), done.description
        ((625, 3), "ResizeRelPosTable(table='13x13->25x25')")
    """

    def __init__(self, keys, mode: str = 'bicubic') -> None:
        super().__init__(keys)
        self.mode = mode

    def __call__(self, name, ckpt, model_shape):
        if ckpt.dim() != 2 or len(model_shape) != 2 or \
                ckpt.shape[1] != model_shape[1]:
            self.error(name, ckpt.shape, model_shape,
                       'expects (L, heads) with the same number of heads')
        s1, s2 = _side(ckpt.shape[0]), _side(model_shape[0])
        if s1 is None or s2 is None:
            self.error(name, ckpt.shape, model_shape,
                       'table lengths must be squares (2W-1)^2')
        grid = ckpt.permute(1, 0).reshape(1, -1, s1, s1)
        grid = _resize_grid(grid, (s2, s2), self.mode)
        return Adapted(grid.reshape(-1, s2 * s2).permute(1, 0).contiguous(),
                       None, self.describe(table=f'{s1}x{s1}->{s2}x{s2}'))


@ADAPT_TRANSFORMS.register_module()
class InputChannels(AdaptTransform):
    """First-layer weights ``(O, I, ...)`` for a new number of input channels:
    ``'sum'`` (to 1 channel), ``'tile'`` (repeat, rescale by I/I_new) or
    ``'copy'`` (the first min(I, I_new) channels; the rest keeps its
    declared init).

    Example (RGB to one channel):
        >>> done = InputChannels('conv1.weight', mode='sum')(
        ...     'conv1.weight', torch.ones(8, 3, 3, 3), (8, 1, 3, 3))
        >>> done.tensor[0, 0, 0, 0].item(), done.description
        (3.0, "InputChannels(mode='sum', channels='3->1')")
    """

    def __init__(self, keys, mode: str = 'sum') -> None:
        super().__init__(keys)
        if mode not in ('sum', 'tile', 'copy'):
            raise ValueError(f"InputChannels: mode must be 'sum', 'tile' or "
                             f"'copy', got {mode!r}")
        self.mode = mode

    def __call__(self, name, ckpt, model_shape):
        i_old, i_new = ckpt.shape[1], model_shape[1]
        if ckpt.dim() != len(model_shape) or ckpt.shape[0] != model_shape[0] \
                or ckpt.shape[2:] != tuple(model_shape[2:]):
            self.error(name, ckpt.shape, model_shape,
                       'only the input-channel dimension (1) may differ')
        desc = self.describe(mode=self.mode, channels=f'{i_old}->{i_new}')
        if self.mode == 'sum':
            if i_new != 1:
                self.error(name, ckpt.shape, model_shape,
                           "mode='sum' makes 1 input channel")
            return Adapted(ckpt.sum(1, keepdim=True), None, desc)
        if self.mode == 'tile':
            reps = math.ceil(i_new / i_old)
            tiled = ckpt.repeat(1, reps, *([1] * (ckpt.dim() - 2)))
            return Adapted(tiled[:, :i_new] * (i_old / i_new), None, desc)
        n = min(i_old, i_new)
        out = torch.zeros(model_shape, dtype=ckpt.dtype)
        out[:, :n] = ckpt[:, :n]
        return Adapted(out, (slice(None), slice(0, n)) if i_new > i_old
                       else None, desc)


@ADAPT_TRANSFORMS.register_module()
class Inflate(AdaptTransform):
    """2D conv weights ``(O, I, kh, kw)`` to 3D ``(O, I, T, kh, kw)``:
    ``'replicate'`` over time and divide by T, or ``'center'`` frame.

    Example:
        >>> done = Inflate('conv.weight', mode='center')(
        ...     'conv.weight', torch.ones(2, 3, 3, 3), (2, 3, 3, 3, 3))
        >>> done.tensor[0, 0, :, 0, 0], done.description
        (tensor([0., 1., 0.]), "Inflate(mode='center', time=3)")
    """

    def __init__(self, keys, mode: str = 'replicate') -> None:
        super().__init__(keys)
        if mode not in ('replicate', 'center'):
            raise ValueError(f"Inflate: mode must be 'replicate' or "
                             f"'center', got {mode!r}")
        self.mode = mode

    def __call__(self, name, ckpt, model_shape):
        if ckpt.dim() != 4 or len(model_shape) != 5 or \
                tuple(ckpt.shape[:2]) + tuple(ckpt.shape[2:]) != \
                tuple(model_shape[:2]) + tuple(model_shape[3:]):
            self.error(name, ckpt.shape, model_shape,
                       'expects (O, I, kh, kw) -> (O, I, T, kh, kw)')
        t = model_shape[2]
        if self.mode == 'replicate':
            out = ckpt.unsqueeze(2).repeat(1, 1, t, 1, 1) / t
        else:
            out = torch.zeros(model_shape, dtype=ckpt.dtype)
            out[:, :, t // 2] = ckpt
        return Adapted(out, None, self.describe(mode=self.mode, time=t))


@ADAPT_TRANSFORMS.register_module()
class Grow(AdaptTransform):
    """Copy the overlapping (leading) slice of the checkpoint tensor; the
    rest keeps the declared init (``region`` is ``None`` when the model
    tensor is no larger in any dimension: a crop).

    Example (two classes to three: the third row keeps its declared init):
        >>> done = Grow('fc.weight')('fc.weight', torch.ones(2, 3), (3, 3))
        >>> done.tensor.tolist(), done.region
        ([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]], (slice(0, 2, None), slice(0, 3, None)))
    """

    def __call__(self, name, ckpt, model_shape):
        if ckpt.dim() != len(model_shape):
            self.error(name, ckpt.shape, model_shape, 'ranks differ')
        region = tuple(slice(0, min(a, b))
                       for a, b in zip(ckpt.shape, model_shape))
        out = torch.zeros(model_shape, dtype=ckpt.dtype)
        out[region] = ckpt[region]
        overlap = 'x'.join(str(r.stop) for r in region)
        crop = all(b <= a for a, b in zip(ckpt.shape, model_shape))
        return Adapted(out, None if crop else region,
                       self.describe(overlap=overlap))
