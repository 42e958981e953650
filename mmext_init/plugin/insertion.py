"""``model = dict(..., insert=[...])``: a model built through a registry
with an ``insert`` key is built without it (the model class never sees
the key), then the entries are inserted (:mod:`mmext_init.inserting`) and
every inserted module is marked for the ledger's notes
(:mod:`mmext_init.provenance.inserted`).

Example:
    >>> import torch.nn as nn
    >>> import mmext_init
    >>> from mmengine.registry import MODELS
    >>> @MODELS.register_module(force=True)
    ... class TwoLayers(nn.Sequential):
    ...     def __init__(self):
    ...         super().__init__(nn.Linear(4, 4), nn.Linear(4, 2))
    >>> net = MODELS.build(dict(type='TwoLayers', insert=[
    ...     dict(type='LoRA', targets='1', rank=2)]))
    >>> sorted(net.state_dict())
    ['0.bias', '0.weight', '1.bias', '1.lora_A.weight', '1.lora_B.weight', '1.weight']
"""
from typing import Any, Callable, Dict, List

import torch.nn as nn

from ..deferred.guards import is_model_registry
from ..errors import InitConfigError
from ..inserting.insert import insert_modules
from ..provenance.inserted import mark_inserted, remember_insert

INSERT_KEY = 'insert'


def insert_entries(cfg: Any) -> List[Dict[str, Any]]:
    """The checked ``insert`` list of a model config."""
    entries = cfg[INSERT_KEY]
    if not isinstance(entries, (list, tuple)) or not all(
            isinstance(e, dict) for e in entries):
        raise InitConfigError(
            f'model.insert = {entries!r}: expected a list of dicts, e.g. '
            "[dict(type='LoRA', targets=r'.*attn\\.qkv', rank=8)]")
    return [dict(e) for e in entries]


def apply_insert(model: nn.Module, entries: List[Dict[str, Any]]) -> None:
    """Insert ``entries`` into ``model``, mark what they added and
    remember them on ``model``."""
    remember_insert(model, entries)
    for record in insert_modules(model, entries):
        owners = {name.rsplit('.', 1)[0] for name in record.names}
        for path in owners:
            mark_inserted(model.get_submodule(path), record.describe())


def wrap_build_insert(original: Callable) -> Callable:
    """``Registry.build`` of a model registry: ``insert`` popped, then
    applied to the built model."""

    def build(self, cfg, *args, **kwargs):
        if not (isinstance(cfg, dict) and INSERT_KEY in cfg
                and is_model_registry(self)):
            return original(self, cfg, *args, **kwargs)
        entries = insert_entries(cfg)
        plain = {k: v for k, v in cfg.items() if k != INSERT_KEY}
        model = original(self, plain, *args, **kwargs)
        apply_insert(model, entries)
        return model

    return build
