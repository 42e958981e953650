"""The registered insert types, one method a module: :class:`LoRA`
(:mod:`.lora`, its layers in :mod:`.lora_layers`, on
``nn.MultiheadAttention`` :mod:`.lora_mha`; ``use_rslora``), :class:`DoRA`
(:mod:`.dora`), :class:`SSF` (:mod:`.ssf`), :class:`Adapter`
(:mod:`.adapter`) and :class:`VPT` (:mod:`.prompts`, the backbones it reads
in :mod:`.prompt_backbones`). Each extends
:class:`~mmext_init.inserting.registry.InsertType` and is registered in
``INSERT_TYPES`` under its class name.

Example:
    >>> from mmext_init.inserting.registry import INSERT_TYPES
    >>> all(INSERT_TYPES.get(name) is not None
    ...     for name in ('LoRA', 'DoRA', 'SSF', 'Adapter', 'VPT'))
    True
"""
from .adapter import Adapter, BottleneckAdapter, adapter_forward_hook
from .dora import DoRA, DoRAMagnitudeVector, dora_forward_hook
from .lora import LoRA, LoRADown, LoRAUp, lora_delta, lora_forward_hook
from .lora_mha import MHA_PARTS, lora_mha_forward
from .prompts import VPT, VisualPrompt
from .ssf import SSF, SSFScaleShift, ssf_forward_hook

__all__ = [
    'LoRA', 'LoRADown', 'LoRAUp', 'lora_delta', 'lora_forward_hook',
    'Adapter', 'BottleneckAdapter', 'adapter_forward_hook', 'VPT',
    'VisualPrompt', 'DoRA', 'DoRAMagnitudeVector', 'dora_forward_hook', 'SSF',
    'SSFScaleShift', 'ssf_forward_hook', 'MHA_PARTS', 'lora_mha_forward'
]
