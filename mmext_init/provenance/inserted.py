"""Modules added to a built model by ``insert=[...]``, remembered so that
the ledger can say what inserted each of their tensors, next to where its
value came from (a note: ``inserted by LoRA(rank=8) from insert[0]``).

The marks are held by the inserted modules themselves (weakly), so they
hold whatever module ``init_weights()`` is called on, under any path. The
model built with ``insert`` also keeps the entries as given
(:func:`insert_config`: what a delta checkpoint records). A note names its
entry: :func:`parse_note` reads the entry's index, type and description
back (what selectors' ``insert_type`` and the per-entry lines of the
trainable report use).

Example:
    >>> import torch.nn as nn
    >>> net = nn.Sequential(nn.Linear(2, 2))
    >>> net[0].lora_A = nn.Linear(2, 1, bias=False)
    >>> mark_inserted(net[0].lora_A, 'inserted by LoRA(rank=1) from insert[0]')
    >>> inserted_notes(net)
    {'0.lora_A.weight': 'inserted by LoRA(rank=1) from insert[0]'}
"""
import copy
import re
import weakref
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

import torch.nn as nn


class InsertionMarks:
    """What insertion left on models, held weakly (one object for this
    concern): ``notes`` (inserted module -> its ledger note) and
    ``entries`` (model built with ``insert`` -> the entries)."""

    def __init__(self) -> None:
        self.notes: 'weakref.WeakKeyDictionary[nn.Module, str]' = \
            weakref.WeakKeyDictionary()
        self.entries: 'weakref.WeakKeyDictionary[nn.Module, List[Any]]' = \
            weakref.WeakKeyDictionary()


MARKS = InsertionMarks()

#: the insert set of the entries without a ``name``
DEFAULT_SET = 'default'
#: the form of a note: ``inserted by <Type>(<args>) from insert[<i>]``,
#: then `` of set '<name>'`` for an entry of a named set
NOTE = re.compile(r'inserted by (?P<entry>(?P<type>[^(\s]+)\(.*\)) '
                  r"from insert\[(?P<index>\d+)\](?: of set '(?P<set>\w+)')?")


@dataclass(frozen=True)
class InsertNote:
    """What a note says: the entry's ``index`` in ``insert``, its
    ``type_name`` as the config wrote it, ``entry`` its description and
    ``set_name`` its insert set."""
    index: int
    type_name: str
    entry: str
    set_name: str = DEFAULT_SET

    @property
    def label(self) -> str:
        """``insert[0] LoRA(rank=8)`` (then `` of set 'seg'``)."""
        of_set = '' if self.set_name == DEFAULT_SET else \
            f" of set '{self.set_name}'"
        return f'insert[{self.index}] {self.entry}{of_set}'


def parse_note(note: Optional[str]) -> Optional[InsertNote]:
    """The entry a note names (None for None or another text).

    Example:
        >>> note = parse_note('inserted by LoRA(rank=8, alpha=16) from insert[1]')
        >>> note.index, note.type_name, note.entry, note.set_name
        (1, 'LoRA', 'LoRA(rank=8, alpha=16)', 'default')
        >>> parse_note('inserted by LoRA(rank=8) from insert[0]').label
        'insert[0] LoRA(rank=8)'
        >>> parse_note("inserted by SSF() from insert[2] of set 'seg'").label
        "insert[2] SSF() of set 'seg'"
    """
    found = NOTE.fullmatch(note) if note else None
    if found is None:
        return None
    return InsertNote(int(found['index']), found['type'], found['entry'],
                      found['set'] or DEFAULT_SET)


def mark_inserted(module: nn.Module, note: str) -> None:
    """Remember that ``module`` (with everything under it) was inserted."""
    MARKS.notes[module] = note


def is_inserted(module: nn.Module) -> bool:
    """Whether ``module`` was inserted (itself, not an ancestor)."""
    return module in MARKS.notes


def inserted_notes(root: nn.Module) -> Dict[str, str]:
    """Tensor name (in ``root.state_dict()``) -> note, for the tensors of
    every inserted module under ``root``."""
    notes: Dict[str, str] = {}
    for path, module in root.named_modules():
        note = MARKS.notes.get(module)
        if note is None:
            continue
        for name, _ in module.state_dict(keep_vars=True).items():
            notes.setdefault(f'{path}.{name}' if path else name, note)
    return notes


def inserted_entries(root: nn.Module) -> Dict[str, InsertNote]:
    """Tensor name (in ``root.state_dict()``) -> the ``insert`` entry that
    added it (:func:`parse_note` of its note), for every tensor an entry
    inserted under ``root``.

    Example:
        >>> import torch.nn as nn
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
        >>> mark_inserted(net[1], 'inserted by SSF() from insert[0]')
        >>> {k: v.label for k, v in inserted_entries(net).items()}
        {'1.weight': 'insert[0] SSF()', '1.bias': 'insert[0] SSF()'}
    """
    parsed = {name: parse_note(note)
              for name, note in inserted_notes(root).items()}
    return {name: note for name, note in parsed.items() if note is not None}


def remember_insert(model: nn.Module, entries: List[Any]) -> None:
    """Remember the ``insert`` entries ``model`` was built with."""
    MARKS.entries[model] = copy.deepcopy(entries)


def insert_config(model: nn.Module) -> Optional[List[Any]]:
    """The ``insert`` entries ``model`` was built with (a copy), None if it
    was built without.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2))
        >>> remember_insert(net, [dict(type='LoRA', targets='0', rank=1)])
        >>> insert_config(net), insert_config(nn.Linear(1, 1))
        ([{'type': 'LoRA', 'targets': '0', 'rank': 1}], None)
    """
    entries = MARKS.entries.get(model)
    return None if entries is None else copy.deepcopy(entries)
