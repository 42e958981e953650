"""The training benchmark's models (:mod:`.train`, ``mmext-bench-train``):
mmdet backbones built through ``MODELS.build`` and initialized, in the four
modes the benchmark times.

* ``stock``: the backbone, no LoRA, every parameter trained;
* ``peft``: PEFT's ``inject_adapter_in_model`` with ``LoraConfig(r,
  lora_alpha, target_modules=<the targets' regex>)`` (``use_dora=True``
  for ``dora``) on the initialized backbone; only its ``lora_*`` trained;
* ``ours``: the same backbone config with ``insert=[dict(type='LoRA',
  targets=<the same regex>, rank=r, alpha=alpha)]`` (``DoRA`` for
  ``dora``), built by ``MODELS.build`` as from a config; only ``lora_*``
  trained;
* ``merged``: ``ours`` with a random B, every branch folded into its weight
  (:func:`~mmext_init.tools.merge_fold.fold_entries`, as
  ``mmext-merge`` does) and loaded (``strict``) into a ``stock`` backbone:
  a plain model, every parameter trained (for a method whose insert type
  is ``foldable``).

Models (``TRAIN_MODELS``): ``swin-t`` (mmdet's ``SwinTransformer``, Swin-T,
LoRA on every ``qkv`` and ``proj``), ``resnet50`` (mmdet's ``ResNet``,
LoRA on the 3x3 ``conv2`` of every bottleneck) and ``tiny`` (a 2-stage
Swin of width 16, to check that the tool runs).

Example:
    >>> insert_entry('swin-t', 'lora', rank=8, alpha=16)
    {'type': 'LoRA', 'targets': '.*\\\\.(qkv|proj)', 'rank': 8, 'alpha': 16}
    >>> check_method('lora')
"""
from typing import Any, Dict, List

import torch
import torch.nn as nn
from mmengine.config import ConfigDict
from mmengine.registry import MODELS

from ...inserting import INSERT_TYPES, inserted_into
from ..cli import ToolError
from ..merge_fold import fold_entries, is_foldable, targets_of

SWIN = dict(type='mmdet.SwinTransformer', drop_path_rate=0.0, window_size=7)
TRAIN_MODELS: Dict[str, Dict[str, Any]] = {
    'swin-t': dict(
        backbone=dict(SWIN, embed_dims=96, depths=[2, 2, 6, 2],
                      num_heads=[3, 6, 12, 24]),
        targets=r'.*\.(qkv|proj)'),
    'resnet50': dict(backbone=dict(type='mmdet.ResNet', depth=50),
                     targets=r'layer\d\.\d+\.conv2'),
    'tiny': dict(
        backbone=dict(SWIN, embed_dims=16, depths=[1, 1], num_heads=[1, 2],
                      strides=(4, 2), out_indices=(0, 1)),
        targets=r'.*\.(qkv|proj)'),
}
#: method -> (our insert type, PEFT's LoraConfig options)
METHODS: Dict[str, tuple] = {'lora': ('LoRA', {}),
                             'dora': ('DoRA', dict(use_dora=True))}
MODES = ('stock', 'peft', 'ours', 'merged')


def check_method(method: str) -> None:
    """ToolError unless our insert type of ``method`` is registered.

    Raises:
        ToolError: naming ``--methods`` and the missing insert type.
    """
    kind = METHODS[method][0]
    if INSERT_TYPES.get(kind) is None:
        raise ToolError(
            f'--methods {method}: insert type {kind!r} is not registered in '
            'mmext_init.inserting.INSERT_TYPES (registered: '
            f'{", ".join(sorted(INSERT_TYPES.module_dict))})')


def insert_entry(name: str, method: str, rank: int,
                 alpha: float) -> Dict[str, Any]:
    """Our ``insert`` entry for model ``name`` and ``method``."""
    return dict(type=METHODS[method][0], targets=TRAIN_MODELS[name]['targets'],
                rank=rank, alpha=alpha)


def build_stock(name: str, insert: Any = None) -> nn.Module:
    """``MODELS.build`` of the backbone (with ``insert`` entries if given),
    then ``init_weights()``."""
    import mmdet.models  # noqa: F401  (registers the mmdet backbones)
    cfg = dict(TRAIN_MODELS[name]['backbone'])
    if insert is not None:
        cfg['insert'] = insert
    model = MODELS.build(ConfigDict(cfg))  # as from a config file
    model.init_weights()
    return model


def build_peft(name: str, method: str, rank: int, alpha: float) -> nn.Module:
    """The stock backbone with PEFT's LoRA (or DoRA) on the same targets."""
    from peft import LoraConfig, inject_adapter_in_model  # test-only dep
    config = LoraConfig(r=rank, lora_alpha=alpha,
                        target_modules=TRAIN_MODELS[name]['targets'],
                        **METHODS[method][1])
    return inject_adapter_in_model(config, build_stock(name))


def lora_targets(model: nn.Module) -> List[str]:
    """The paths of the modules our ``insert`` entries went into."""
    return [path for path, m in model.named_modules() if inserted_into(m)]


def random_b(model: nn.Module, std: float = 0.01) -> None:
    """Seeded normal values for every LoRA B of ``model`` (as after
    training: the branch then changes the function)."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for key, value in model.named_parameters():
            if '.lora_B.' in key:
                value.normal_(0, std, generator=generator)


def build_merged(name: str, method: str, rank: int,
                 alpha: float) -> nn.Module:
    """A stock backbone loaded (``strict``) with ``ours`` folded, after a
    seeded random B (as after training).

    Raises:
        ToolError: the method's insert type is not ``foldable``.
    """
    entry = insert_entry(name, method, rank, alpha)
    if not is_foldable(entry):
        raise ToolError(f'merged: insert type {entry["type"]!r} of '
                        f'--methods {method} is not foldable into weights')
    ours = build_stock(name, [entry])
    random_b(ours)
    state = fold_entries(ours, [entry], targets_of(ours, [0]))
    plain = build_stock(name)
    plain.load_state_dict(state, strict=True)
    return plain


def build(name: str, mode: str, method: str, rank: int,
          alpha: float) -> nn.Module:
    """The model of ``mode``, its trainable parameters set: all for
    ``stock``/``merged``, PEFT's ``lora_*`` tensors for ``peft``, what the
    ``insert`` entry added (the tensors under each target but its own
    ``weight``/``bias``) for ``ours``.

    Raises:
        ToolError: ``merged`` for a method that does not fold.
    """
    if mode == 'stock':
        return build_stock(name)
    if mode == 'merged':
        return build_merged(name, method, rank, alpha)
    if mode == 'peft':
        model = build_peft(name, method, rank, alpha)
        for key, value in model.named_parameters():
            value.requires_grad_('lora_' in key)  # as PEFT sets it
        return model
    model = build_stock(name, [insert_entry(name, method, rank, alpha)])
    model.requires_grad_(False)
    for path in lora_targets(model):
        for key, value in model.get_submodule(path).named_parameters():
            value.requires_grad_(key not in ('weight', 'bias'))
    return model
