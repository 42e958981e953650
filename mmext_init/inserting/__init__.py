"""Insert parameter-efficient modules into a built model from its config
(``model = dict(..., insert=[dict(type='LoRA', targets=r'.*qkv', rank=8)])``):
:func:`insert_modules` applies the entries through
``INSERT_TYPES`` (:mod:`.registry`) to the modules :mod:`.targets` selects.
The registered types add modules beside the target's own tensors (never
renaming them), each declaring its init in its ``init_cfg``:
:class:`LoRA`, :class:`DoRA`, :class:`SSF` and :class:`Adapter` keep the
model's function at step 0 (SSF with its default ``init='identity'``);
:class:`VPT` adds prompt tokens, which change it (the methods are in
:mod:`.methods`).
LoRA, DoRA and SSF fold into the weights (``InsertType.fold``).

Example:
    >>> import torch, torch.nn as nn
    >>> import mmext_init
    >>> from mmengine.model import Sequential
    >>> model = Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 1))
    >>> x = torch.randn(1, 3, 8, 8)
    >>> before = model(x)
    >>> records = insert_modules(model, [
    ...     dict(type='LoRA', layer='Conv2d', rank=2),
    ...     dict(type='Adapter', targets='2', hidden=4,
    ...          act=dict(type='GELU'))])
    >>> [r.names[0] for r in records]
    ['0.lora_A.weight', '2.lora_A.weight', '2.adapter.down.weight']
    >>> model.init_weights()  # the declared inits: B and up zero
    >>> torch.equal(model(x), before)
    True
"""
from .insert import Inserted, insert_modules, inserted_into
from .methods import (MHA_PARTS, SSF, VPT, Adapter, BottleneckAdapter, DoRA,
                      DoRAMagnitudeVector, LoRA, LoRADown, LoRAUp,
                      SSFScaleShift, VisualPrompt, adapter_forward_hook,
                      dora_forward_hook, lora_delta, lora_forward_hook,
                      lora_mha_forward, ssf_forward_hook)
from .registry import INSERT_TYPES, InsertType
from .targets import select_targets

__all__ = [
    'INSERT_TYPES', 'InsertType', 'insert_modules', 'Inserted',
    'inserted_into', 'select_targets', 'LoRA', 'LoRADown', 'LoRAUp',
    'lora_delta', 'lora_forward_hook', 'Adapter', 'BottleneckAdapter',
    'adapter_forward_hook', 'VPT', 'VisualPrompt',
    'DoRA', 'DoRAMagnitudeVector', 'dora_forward_hook', 'SSF',
    'SSFScaleShift', 'ssf_forward_hook',
    'MHA_PARTS', 'lora_mha_forward'
]
