"""``insert_modules(model, cfgs)``: apply a config's ``insert=[...]``
entries to a built model, in order, and say what each added.

Each entry is ``dict(type=<INSERT_TYPES name>, targets=<regex>,
layer=<class names>, name=<insert set>, **args)``; its targets are all
selected (and checked) before anything is inserted, never among modules
inserted by an earlier entry. Entries with the same ``name`` form one
insert set (``'default'`` when not given; :mod:`.sets` switches sets on and
off), and every child an entry inserted carries its set's name. Every
target is marked, so a second call on the same model is an error rather
than a double insertion. Errors are
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
    >>> net = nn.Sequential(nn.Linear(8, 8))
    >>> records = insert_modules(net, [dict(type='LoRA', targets='0', rank=2,
    ...                                       name='seg')])
    >>> records[0].describe()
    "inserted by LoRA(rank=2) from insert[0] of set 'seg'"
"""
import re
from dataclasses import dataclass
from typing import Collection, List, Mapping, Sequence, Set, Tuple

import torch.nn as nn

from ..errors import InitConfigError, close_names
from ..provenance.inserted import DEFAULT_SET
from ..provenance.ledger import format_args
from .registry import INSERT_TYPES, SET_ATTR, InsertType, tensor_names
from .targets import check_forward_called, insert_label, select_targets

__all__ = ['Inserted', 'insert_modules', 'inserted_into', 'build_entry',
           'entry_arguments', 'entry_set', 'DEFAULT_SET', 'ENTRY_KEYS']

_MARK = '_mmext_inserted'
#: the keys of an entry that are not its insert type's arguments
ENTRY_KEYS = ('type', 'targets', 'layer', 'name')
SET_NAME = re.compile(r'[A-Za-z_][A-Za-z0-9_]*')


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
    set_name: str = DEFAULT_SET

    def describe(self) -> str:
        """For the ledger: ``inserted by LoRA(rank=8) from insert[0]``,
        plus `` of set 'seg'`` for a named set."""
        of_set = '' if self.set_name == DEFAULT_SET else \
            f" of set '{self.set_name}'"
        return f'inserted by {self.entry} from insert[{self.index}]{of_set}'


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


def entry_arguments(cfg: Mapping) -> dict:
    """The arguments of an entry's insert type: the entry without
    :data:`ENTRY_KEYS`.

    Example:
        >>> entry_arguments(dict(type='LoRA', targets='fc', name='a', rank=4))
        {'rank': 4}
    """
    return {k: v for k, v in cfg.items() if k not in ENTRY_KEYS}


def entry_set(cfg: Mapping, label: str) -> str:
    """The insert set of an entry: its ``name`` (an identifier: it goes
    into file names), :data:`DEFAULT_SET` without one.

    Example:
        >>> entry_set(dict(type='LoRA', name='seg head'), 'insert[1]')
        Traceback (most recent call last):
        mmext_init.errors.InitConfigError: insert[1]: name='seg head' is no insert set name: letters, digits and '_', not starting with a digit
    """
    name = cfg.get('name', DEFAULT_SET)
    if not isinstance(name, str) or not SET_NAME.fullmatch(name):
        raise InitConfigError(
            f'{label}: name={name!r} is no insert set name: letters, digits '
            "and '_', not starting with a digit")
    return name


def _collision_hint(module: nn.Module, error: ValueError) -> str:
    """What earlier entries inserted into ``module``, when ``error`` is a
    second entry adding children of the same names
    (:func:`~.registry.child_name_free`)."""
    done = inserted_into(module)
    if not done or 'already has an attribute' not in str(error):
        return ''
    return (f' (from {", ".join(done)}: the modules of every insert set '
            "keep their type's names, so two entries of one type cannot "
            'insert into one layer; target other layers)')


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
    type_name, args = cfg.get('type'), entry_arguments(cfg)
    targets, layer = cfg.get('targets'), cfg.get('layer')
    label = insert_label(index, str(type_name), targets, layer)
    set_name = entry_set(cfg, label)
    inserter = build_entry(type_name, args, label)
    found = select_targets(model, targets, layer, label, skip)
    for path, module in found:
        try:
            check_forward_called(model, path)
            inserter.check(module, path)
        except ValueError as error:
            raise InitConfigError(
                f'{label}: {error}{_collision_hint(module, error)}') from error
    entry = f'{type_name}({format_args(args)})'
    records = []
    for path, module in found:
        children = inserter.insert(module, path)
        for child in children:
            setattr(module.get_submodule(child), SET_ATTR, set_name)
        setattr(module, _MARK, inserted_into(module) +
                (f'insert[{index}] {entry}', ))
        prefix = f'{path}.' if path else ''
        names = tuple(prefix + n for n in tensor_names(module, children))
        records.append(Inserted(index, entry, path, names, set_name))
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
