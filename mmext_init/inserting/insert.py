"""``insert_modules(model, cfgs)``: apply a config's ``insert=[...]``
entries to a built model, in order, and say what each added.

Each entry is ``dict(type=<INSERT_TYPES name>, targets=<regex>,
layer=<class names>, **args)``; its targets are all selected (and checked)
before anything is inserted, never among modules inserted by an earlier
entry. Every target is marked, so a second call on the same model is an
error rather than a double insertion. Errors are
:class:`~mmext_init.errors.InitConfigError` naming ``insert[i]``.

Example:
    >>> import torch.nn as nn
    >>> model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> records = insert_modules(model, [
    ...     dict(type='LoRA', targets='0|2', rank=2, alpha=4)])
    >>> records[1].names
    ('2.lora_A.weight', '2.lora_B.weight')
    >>> records[1].describe()
    'inserted by LoRA(rank=2, alpha=4) from insert[0]'
    >>> inserted_into(model[0])
    ('insert[0] LoRA(rank=2, alpha=4)',)
"""
from dataclasses import dataclass
from typing import Collection, List, Mapping, Sequence, Set, Tuple

import torch.nn as nn

from ..errors import InitConfigError, close_names
from ..provenance.ledger import format_args
from .registry import INSERT_TYPES, InsertType, tensor_names
from .targets import check_forward_called, insert_label, select_targets

__all__ = ['Inserted', 'insert_modules', 'inserted_into', 'build_entry']

_MARK = '_mmext_inserted'


@dataclass(frozen=True)
class Inserted:
    """What one entry inserted into one target: ``index`` of the entry in
    ``insert``, ``entry`` its description (``LoRA(rank=8, alpha=16)``),
    ``target`` the module path it matched and ``names`` the new tensors'
    full ``model.state_dict()`` names."""
    index: int
    entry: str
    target: str
    names: Tuple[str, ...]

    def describe(self) -> str:
        """For the ledger: ``inserted by LoRA(rank=8) from insert[0]``."""
        return f'inserted by {self.entry} from insert[{self.index}]'


def inserted_into(module: nn.Module) -> Tuple[str, ...]:
    """The entries that inserted into ``module`` (``insert[i] <entry>``)."""
    return tuple(getattr(module, _MARK, ()))


def build_entry(type_name: object, args: Mapping,
                label: str) -> InsertType:
    """Build an entry's insert type from ``INSERT_TYPES`` (errors name
    ``label``).

    Example:
        >>> build_entry('Lora', {'rank': 4}, 'insert[0]')
        Traceback (most recent call last):
        mmext_init.errors.InitConfigError: insert[0]: unknown insert type 'Lora'; did you mean 'LoRA'?
    """
    cls = INSERT_TYPES.get(type_name) if isinstance(type_name, str) else None
    if cls is None:
        near = close_names(str(type_name), INSERT_TYPES.module_dict)
        raise InitConfigError(
            f'{label}: unknown insert type {type_name!r}' +
            (f'; did you mean {near}?' if near else
             f' (registered: {", ".join(sorted(INSERT_TYPES.module_dict))})'))
    try:
        return cls(**args)
    except (TypeError, ValueError) as error:
        raise InitConfigError(f'{label}: {error}') from error


def _check_not_inserted(model: nn.Module) -> None:
    done = [f'{path!r}: {", ".join(inserted_into(m))}'
            for path, m in model.named_modules() if inserted_into(m)]
    if done:
        raise InitConfigError(
            f'insert: {type(model).__name__} already holds inserted modules '
            f'({"; ".join(done[:3])}{"; ..." if len(done) > 3 else ""}); '
            'insert_modules runs once per model (again would insert twice)')


def _insert_entry(model: nn.Module, index: int, cfg: Mapping,
                  skip: Collection[int]) -> List[Inserted]:
    """Apply entry ``index``: select and check all targets, then insert."""
    args = dict(cfg)
    type_name = args.pop('type', None)
    targets, layer = args.pop('targets', None), args.pop('layer', None)
    label = insert_label(index, str(type_name), targets, layer)
    inserter = build_entry(type_name, args, label)
    found = select_targets(model, targets, layer, label, skip)
    try:
        for path, module in found:
            check_forward_called(model, path)
            inserter.check(module, path)
    except ValueError as error:
        raise InitConfigError(f'{label}: {error}') from error
    entry = f'{type_name}({format_args(args)})'
    records = []
    for path, module in found:
        children = inserter.insert(module, path)
        setattr(module, _MARK, inserted_into(module) +
                (f'insert[{index}] {entry}', ))
        prefix = f'{path}.' if path else ''
        names = tuple(prefix + n for n in tensor_names(module, children))
        records.append(Inserted(index, entry, path, names))
    return records


def insert_modules(model: nn.Module,
                   cfgs: Sequence[Mapping]) -> List[Inserted]:
    """Insert every entry of ``cfgs`` into ``model`` (see the module
    docstring); one :class:`Inserted` per (entry, target), in order.

    Raises:
        InitConfigError: naming ``insert[i]``: unknown type or bad
            arguments, no target, an unsupported target, or a model
            already inserted into.
    """
    _check_not_inserted(model)
    skip: Set[int] = set()
    records: List[Inserted] = []
    for index, cfg in enumerate(cfgs):
        before = {id(m) for m in model.modules()}
        records += _insert_entry(model, index, cfg, skip)
        skip |= {id(m) for m in model.modules()} - before
    return records
