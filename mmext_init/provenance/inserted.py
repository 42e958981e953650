"""Modules added to a built model by ``insert=[...]``, remembered so that
the ledger can say what inserted each of their tensors, next to where its
value came from (a note: ``inserted by LoRA(rank=8) from insert[0]``).

The marks are held by the inserted modules themselves (weakly), so they
hold whatever module ``init_weights()`` is called on, under any path.

Example:
    >>> import torch.nn as nn
    >>> net = nn.Sequential(nn.Linear(2, 2))
    >>> net[0].lora_A = nn.Linear(2, 1, bias=False)
    >>> mark_inserted(net[0].lora_A, 'inserted by LoRA(rank=1) from insert[0]')
    >>> inserted_notes(net)
    {'0.lora_A.weight': 'inserted by LoRA(rank=1) from insert[0]'}
"""
import weakref
from typing import Dict

import torch.nn as nn

#: inserted module -> its note (one object for this concern)
INSERTED: 'weakref.WeakKeyDictionary[nn.Module, str]' = \
    weakref.WeakKeyDictionary()


def mark_inserted(module: nn.Module, note: str) -> None:
    """Remember that ``module`` (with everything under it) was inserted."""
    INSERTED[module] = note


def is_inserted(module: nn.Module) -> bool:
    """Whether ``module`` was inserted (itself, not an ancestor)."""
    return module in INSERTED


def inserted_notes(root: nn.Module) -> Dict[str, str]:
    """Tensor name (in ``root.state_dict()``) -> note, for the tensors of
    every inserted module under ``root``."""
    notes: Dict[str, str] = {}
    for path, module in root.named_modules():
        note = INSERTED.get(module)
        if note is None:
            continue
        for name, _ in module.state_dict(keep_vars=True).items():
            notes.setdefault(f'{path}.{name}' if path else name, note)
    return notes
