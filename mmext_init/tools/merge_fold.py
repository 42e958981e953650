"""Folding ``insert`` entries into weights, for ``mmext-merge``
(:mod:`.merge_inserted`): which entries fold (``InsertType.foldable``) and
the folded state dict, each entry folded by its type's
:meth:`~mmext_init.inserting.InsertType.fold`.

Example:
    >>> import torch, torch.nn as nn
    >>> import mmext_init
    >>> from mmext_init.inserting import insert_modules
    >>> model = nn.Sequential(nn.Linear(4, 2))
    >>> insert = [dict(type='LoRA', targets='0', rank=2)]
    >>> _ = insert_modules(model, insert)
    >>> sorted(fold_entries(model, insert, targets_of(model, [0])))
    ['0.bias', '0.weight']
"""
import copy
import re
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..errors import InitConfigError, close_names
from ..inserting import INSERT_TYPES, InsertType, inserted_into
from ..inserting.insert import build_entry, entry_arguments, entry_set
from ..provenance.inserted import inserted_entries
from .merge_proof import MergeError

MARK = re.compile(r'insert\[(\d+)\] ')  # inserted_into's marks


def is_foldable(entry: dict) -> bool:
    """Whether an ``insert`` entry's type folds into weights
    (``InsertType.foldable``: LoRA and its subclasses, ...)."""
    kind = entry.get('type')
    cls = kind if isinstance(kind, type) else INSERT_TYPES.get(kind) \
        if isinstance(kind, str) else None
    return isinstance(cls, type) and bool(getattr(cls, 'foldable', False))


def targets_of(model: nn.Module, indices: Sequence[int]) -> Dict[str, List]:
    """``{'insert[i] <entry>': [target paths]}`` of the entries ``indices``
    (the marks :func:`inserted_into` leaves on each target)."""
    found: Dict[str, List[str]] = {}
    for path, module in model.named_modules():
        for mark in inserted_into(module):
            match = MARK.match(mark)
            if match and int(match.group(1)) in indices:
                found.setdefault(mark, []).append(path)
    return found


def split_entries(insert: List[dict]) -> Tuple[List[int], List[int]]:
    """Indices of the foldable entries of ``insert`` and of the others.

    Example:
        >>> split_entries([dict(type='LoRA', rank=4),
        ...                dict(type='Adapter', reduction=4)])
        ([0], [1])
    """
    foldable = [i for i, e in enumerate(insert) if is_foldable(e)]
    return foldable, [i for i in range(len(insert)) if i not in foldable]


def entry_type(entry: dict, index: int) -> InsertType:
    """The insert type of ``entry`` (``insert[index]``), built as
    :func:`~mmext_init.inserting.insert.build_entry` builds it."""
    return build_entry(entry.get('type'), entry_arguments(entry),
                       f'insert[{index}]')


def choose_sets(insert: List[dict], names: Sequence[str],
                config: str) -> Tuple[List[int], List[int]]:
    """Indices of the entries of the insert sets ``names`` (all entries
    when none is given) and of the others.

    Example:
        >>> choose_sets([dict(type='LoRA', name='a'), dict(type='SSF')],
        ...             ['a'], 'cfg.py')
        ([0], [1])
        >>> choose_sets([dict(type='LoRA', name='a')], ['b'], 'cfg.py')
        Traceback (most recent call last):
        mmext_init.tools.merge_proof.MergeError: --set b: cfg.py's model.insert has no entry of insert set 'b' (its sets: a)
    """
    try:
        sets = [entry_set(e, f'insert[{i}]') for i, e in enumerate(insert)]
    except InitConfigError as error:
        raise MergeError(f'{config}: {error}') from error
    for name in names:
        if name not in sets:
            near = close_names(name, sets)
            raise MergeError(
                f"--set {name}: {config}'s model.insert has no entry of "
                f"insert set {name!r} (its sets: "
                f'{", ".join(dict.fromkeys(sets))})' +
                (f'; did you mean {near}?' if near else ''))
    chosen = [i for i, s in enumerate(sets) if not names or s in names]
    return chosen, [i for i in range(len(insert)) if i not in chosen]


def drop_entries(model: nn.Module, state: Dict[str, torch.Tensor],
                 dropped: Sequence[int]) -> None:
    """Remove from ``state`` every tensor that the entries ``dropped``
    inserted into ``model``."""
    for name, note in inserted_entries(model).items():
        if note.index in dropped:
            state.pop(name, None)


def fold_entries(model: nn.Module, insert: List[dict],
                 folded: Dict[str, List[str]]) -> Dict[str, torch.Tensor]:
    """The state dict of ``model`` with every entry of ``folded``
    (``{'insert[i] <entry>': [target paths]}``) folded into its targets by
    its type's :meth:`~mmext_init.inserting.InsertType.fold`: in float64,
    in insertion order, on a copy of ``model`` (each result written back
    into the copy before the next fold reads it; ``model`` stays the
    reference of the proof) and cast to the tensor's dtype in the state
    dict.

    Raises:
        MergeError: a fold refuses a target, or names a tensor the target
            does not hold.
    """
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model = copy.deepcopy(model).double()
    names = {id(m): f'{n}.' if n else '' for n, m in model.named_modules()}
    order = sorted(folded, key=lambda mark: int(MARK.match(mark).group(1)))
    for mark in order:
        index = int(MARK.match(mark).group(1))
        inserter = entry_type(insert[index], index)
        for path in folded[mark]:
            module = model.get_submodule(path)
            with torch.no_grad():
                try:
                    updates = inserter.fold(module, path)
                except ValueError as error:
                    raise MergeError(f'{mark}: {error}') from error
                write_back(module, names[id(module)], updates, state, mark)
    return state


def write_back(module: nn.Module, prefix: str,
               updates: Dict[str, Optional[torch.Tensor]],
               state: Dict[str, torch.Tensor], mark: str) -> None:
    """Apply one fold's ``updates`` (names relative to ``module``, at
    ``prefix`` in ``state``) to ``state`` and to ``module``'s tensors."""
    tensors = dict(module.state_dict(keep_vars=True))
    for name, value in updates.items():
        if name not in tensors or prefix + name not in state:
            raise MergeError(
                f'{mark}: folding {prefix + name!r} names no tensor of '
                f'{type(module).__name__} (it has '
                f'{", ".join(sorted(tensors)) or "none"})')
        if value is None:
            del state[prefix + name]
            continue
        tensors[name].data.copy_(value)
        state[prefix + name] = value.to(state[prefix + name].dtype)
