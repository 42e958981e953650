"""The benchmark's models: ViT-style stacks of ``BaseModule`` blocks with
TruncNormal/Constant ``init_cfg``s and small inserted adapters (Kaiming,
zero-init up projection), and mmdet's Swin-L; their checkpoints (without
the adapters), their allocation without init and the copy into it (the
floor).

Example:
    >>> model_cfg('vit-t', 'x.pth')['init_cfg']
    {'type': 'Pretrained', 'checkpoint': 'x.pth'}
"""
import os
from typing import Any, Dict, Optional

import torch
import torch.nn as nn
from mmengine.config import ConfigDict
from mmengine.model import BaseModule
from mmengine.registry import MODELS
from torch.utils._python_dispatch import TorchDispatchMode

from mmext_init.loading.copy import copy_finite

SIZES = {'vit-b': (768, 12), 'vit-l': (1024, 24), 'vit-h': (1280, 32),
         'swin-l': (192, 0), 'vit-t': (192, 2)}  # vit-t: smoke test only
SWIN_L = dict(type='mmdet.SwinTransformer', pretrain_img_size=384,
              embed_dims=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48],
              window_size=12)


def register() -> None:
    """Register ``BenchViT`` in MMEngine's root ``MODELS`` (once)."""
    if 'BenchViT' in MODELS.module_dict:
        return

    class Block(BaseModule):

        def __init__(self, dim: int) -> None:
            super().__init__(init_cfg=[
                dict(type='TruncNormal', std=0.02, layer='Linear'),
                dict(type='Constant', val=1, layer='LayerNorm')])
            self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
            self.fc1 = nn.Linear(dim, 4 * dim)
            self.fc2 = nn.Linear(4 * dim, dim)

    class Adapter(BaseModule):

        def __init__(self, dim: int) -> None:
            super().__init__(init_cfg=[
                dict(type='Kaiming', layer='Linear'),
                dict(type='Constant', val=0, override=dict(name='up'))])
            self.down, self.up = nn.Linear(dim, 64), nn.Linear(64, dim)

    @MODELS.register_module()
    class BenchViT(BaseModule):

        def __init__(self, dim: int, depth: int, init_cfg=None) -> None:
            super().__init__(init_cfg=init_cfg)
            self.patch_embed = nn.Conv2d(3, dim, 16, 16)
            self.blocks = nn.ModuleList([Block(dim) for _ in range(depth)])
            self.adapters = nn.ModuleList(
                [Adapter(dim) for _ in range(depth)])
            self.norm = nn.LayerNorm(dim)


def model_cfg(size: str, ckpt: Optional[str] = None) -> Dict[str, Any]:
    """Config of the benchmark model ``size`` (``Pretrained`` from ``ckpt``)."""
    dim, depth = SIZES[size]
    cfg = dict(SWIN_L) if size == 'swin-l' else dict(type='BenchViT',
                                                     dim=dim, depth=depth)
    if ckpt is not None:
        cfg['init_cfg'] = dict(type='Pretrained', checkpoint=ckpt)
    return ConfigDict(cfg)  # as from a config file (Swin reads attributes)


def build(size: str, ckpt: Optional[str] = None) -> nn.Module:
    """``MODELS.build`` of the benchmark model."""
    register()
    if size == 'swin-l':  # mmdet is optional: imported for Swin only
        import mmdet.models  # noqa: F401  (registers SwinTransformer)
    return MODELS.build(model_cfg(size, ckpt))


class NoInit(TorchDispatchMode):
    """Allocate without init: in-place ops writing a parameter are dropped
    (the floor where the meta device cannot build the model, e.g. Swin)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if (isinstance(args[0] if args else None, nn.Parameter)
                and func._schema.name.endswith('_')
                and func._schema.arguments[0].alias_info is not None):
            return args[0]
        return func(*args, **(kwargs or {}))


def allocate(size: str) -> nn.Module:
    """The model with uninitialized parameters (buffers as built)."""
    if size == 'swin-l':
        with NoInit():
            return build(size)
    with torch.device('meta'):
        model = build(size)
    return model.to_empty(device='cpu')


def floor_copy(model: nn.Module, state: Dict[str, torch.Tensor],
               checked: bool = False) -> None:
    """The floor's load: every tensor of ``state`` copied into ``model``'s
    (a detector checkpoint's ``backbone.`` dropped); ``checked``: each
    checked for NaN/Inf while copied, as mmext_init does
    (:func:`~mmext_init.loading.copy.copy_finite`), raising at the first.

    Example:
        >>> fc = nn.Linear(2, 1)
        >>> floor_copy(fc, dict(weight=torch.ones(1, 2), bias=torch.ones(1)))
        >>> fc.weight.tolist()
        [[1.0, 1.0]]
        >>> floor_copy(fc, dict(bias=torch.tensor([float('nan')])), True)
        Traceback (most recent call last):
        ...
        ValueError: bias holds NaN/Inf
    """
    targets = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for key, value in state.items():
            target = targets[key.replace('backbone.', '', 1)]
            if not checked:
                target.copy_(value)
            elif not copy_finite(target, value):
                raise ValueError(f'{key} holds NaN/Inf')


def write_checkpoint(size: str, folder: str) -> str:
    """A checkpoint of the model without adapters (fresh process memory)."""
    path = os.path.join(folder, f'{size}.pth')
    state = {k: torch.randn(v.shape) * 0.02 if v.is_floating_point() else v
             for k, v in allocate(size).state_dict().items()
             if not k.startswith('adapters.')}
    if size == 'swin-l':  # Swin reads a detector checkpoint ('backbone.')
        state = {f'backbone.{k}': v for k, v in state.items()}
    torch.save({'state_dict': state, 'meta': {'size': size}}, path)
    return path
