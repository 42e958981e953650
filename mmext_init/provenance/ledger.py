"""The provenance ledger: where the value of every parameter and persistent
buffer came from, exactly (no mean-value heuristics).

Example (``init_weights()`` fills one per model, see :func:`get_provenance`):
    >>> ledger = ProvenanceLedger('RetinaNet', {
    ...     'backbone.conv1.weight': Provenance(CHECKPOINT, 'r50.pth',
    ...                                         'backbone', 'conv1.weight'),
    ...     'backbone.adapters.0.up.weight': Provenance(INITIALIZER, 'Zero',
    ...                                                 'backbone.adapters.0')})
    >>> ledger.counts()
    {'checkpoint': 1, 'initializer': 1, 'init_weights': 0, 'constructor': 0}
    >>> ledger.entries['backbone.adapters.0.up.weight'].describe()
    'Zero from backbone.adapters.0'
"""
from dataclasses import asdict, dataclass, field, replace
from typing import (Any, Callable, Dict, Iterable, List, Mapping, Optional,
                    Tuple)

import torch.nn as nn

CHECKPOINT = 'checkpoint'
INITIALIZER = 'initializer'
INIT_WEIGHTS = 'init_weights'
CONSTRUCTOR = 'constructor'
KINDS = (CHECKPOINT, INITIALIZER, INIT_WEIGHTS, CONSTRUCTOR)

_LEDGER_ATTR = '_mmext_provenance'


def format_args(args: Optional[Mapping[str, Any]]) -> str:
    """``{'val': 0, 'bias': 1}`` -> ``'val=0, bias=1'``.

    Example:
        >>> format_args({'mode': 'fan_out'})
        "mode='fan_out'"
    """
    return ', '.join(f'{k}={v!r}' for k, v in (args or {}).items())


@dataclass(frozen=True)
class Provenance:
    """Origin of one tensor's value.

    Attributes:
        kind (str): ``'checkpoint'``, ``'initializer'``, ``'init_weights'``
            or ``'constructor'`` (nothing declared wrote it).
        source (str): the checkpoint file, the init type, or the class whose
            ``init_weights`` override wrote it.
        declared_by (str, optional): the path of the module whose
            ``init_cfg`` declared it (``''``: the model root).
        key (str, optional): the checkpoint key (kind ``'checkpoint'``).
        args (Mapping, optional): the init type's arguments (for a
            checkpoint: how the tensor was adapted or cast).
        notes (tuple[str]): remarks shown in the report.

    Example:
        >>> p = Provenance(CHECKPOINT, 'r50.pth', 'backbone', 'conv1.weight')
        >>> p.with_note('tied to conv2.weight').describe()
        'checkpoint r50.pth (tied to conv2.weight)'
    """
    kind: str
    source: str
    declared_by: Optional[str] = None
    key: Optional[str] = None
    args: Optional[Mapping[str, Any]] = None
    notes: Tuple[str, ...] = ()

    def describe(self, root: Optional[str] = None) -> str:
        """One-line human description, used by the report; ``root`` (the
        model root's class) names a declaration on the root, else
        ``<root>``.

        Example:
            >>> Provenance('initializer', 'Constant', 'head', args={'val': 0}).describe()
            'Constant(val=0) from head'
            >>> Provenance('initializer', 'Normal', '').describe('RetinaNet')
            'Normal from the model root (RetinaNet)'
        """
        where = self.declared_by or (
            f'the model root ({root})' if root else '<root>')
        if self.kind == CHECKPOINT:
            text = f'checkpoint {self.source}'
            if self.args:
                text += f' [{format_args(self.args)}]'
        elif self.kind == INITIALIZER:
            args = format_args(self.args)
            text = f'{self.source}({args})' if args else self.source
            text += f' from {where}'
        elif self.kind == INIT_WEIGHTS:
            text = f'init_weights of {self.source} at {where}'
        else:
            text = 'constructor default (no declared init)'
        if self.notes:
            text += ' (' + '; '.join(self.notes) + ')'
        return text

    def with_note(self, note: str) -> 'Provenance':
        """A copy with ``note`` appended (notes are deduplicated)."""
        if note in self.notes:
            return self
        return Provenance(self.kind, self.source, self.declared_by, self.key,
                          self.args, self.notes + (note, ))


@dataclass
class LoadRecord:
    """What one checkpoint load did for the module that declared it.

    Attributes:
        module (str): the path of the module loaded into (``''``: the root).
        checkpoint (str): the checkpoint file.
        via (str): what loaded it (``'Pretrained'``, ``'load_from'``, or a
            class's ``init_weights`` override).
        prefix (str, optional): the checkpoint key prefix used.
        loaded (list[str]): the model tensors loaded.
        missing (list[str]): model tensors the checkpoint does not provide.
        unexpected (list[str]): checkpoint keys no model tensor took.
        mismatched (list[tuple]): ``(name, checkpoint shape, model shape)``.
        cast (list[tuple]): ``(name, checkpoint dtype, model dtype)``.
        loaded_fraction (float): the loaded share of the module's elements.
        adapted (list[tuple]): ``(name, transform description)``.

    Example:
        >>> record = LoadRecord('backbone', 'r50.pth', 'Pretrained',
        ...                     loaded=['backbone.conv1.weight'])
        >>> record.loaded, record.missing
        (['backbone.conv1.weight'], [])
    """
    module: str
    checkpoint: str
    via: str
    prefix: Optional[str] = None
    loaded: List[str] = field(default_factory=list)
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    mismatched: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = field(
        default_factory=list)
    cast: List[Tuple[str, str, str]] = field(default_factory=list)
    loaded_fraction: float = 0.0
    adapted: List[Tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class VoidEntry:
    """An ``init_cfg`` (or ``init_missing``) entry that touched no tensor:
    it neither wrote one nor left one out because the checkpoint provides it.

    ``entry`` is the entry as text (``"Kaiming, layer='Conv2d'"``),
    ``module`` the path of the module declaring it, ``reason`` why it reached
    nothing; ``field`` is ``'init_cfg'`` or ``'init_missing'`` (then
    ``checkpoint`` is that ``Pretrained`` entry's file).
    """
    module: str
    entry: str
    reason: str
    field: str = 'init_cfg'
    checkpoint: Optional[str] = None


@dataclass
class ProvenanceLedger:
    """All provenance of one ``init_weights()`` call on ``root``.

    Attributes:
        root (str): the class name of the model root.
        entries (dict[str, Provenance]): tensor name to its provenance.
        loads (list[LoadRecord]): one per checkpoint load.
        numel (dict[str, int]): tensor name to its number of elements.
        void_entries (list[VoidEntry]): declared entries that touched no
            tensor.
        beyond_stock (list[str]): modules stock MMEngine's recursion never
            reaches whose declared init ran (outermost only).

    Example:
        >>> ledger = ProvenanceLedger('Net', {
        ...     'fc.weight': Provenance(INITIALIZER, 'Zero', 'fc')})
        >>> ledger.counts()['initializer'], ledger.to_dict()['root']
        (1, 'Net')
    """
    root: str
    entries: Dict[str, Provenance] = field(default_factory=dict)
    loads: List[LoadRecord] = field(default_factory=list)
    numel: Dict[str, int] = field(default_factory=dict)
    void_entries: List[VoidEntry] = field(default_factory=list)
    # modules stock MMEngine's recursion never reaches (below a plain torch
    # container) whose declared init mmext_init ran, outermost only
    beyond_stock: List[str] = field(default_factory=list)

    def names(self, kind: str) -> List[str]:
        """Names of the tensors of one kind, in model order.

        Example:
            >>> ledger = ProvenanceLedger('Net', {
            ...     'fc.weight': Provenance(CHECKPOINT, 'r50.pth'),
            ...     'extra.weight': Provenance(CONSTRUCTOR, 'constructor default')})
            >>> ledger.names(CONSTRUCTOR)
            ['extra.weight']
        """
        return [n for n, p in self.entries.items() if p.kind == kind]

    def counts(self) -> Dict[str, int]:
        """Number of tensors per kind."""
        out = {k: 0 for k in KINDS}
        for p in self.entries.values():
            out[p.kind] += 1
        return out

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready form, as written to ``init_provenance.json``."""
        return {
            'version': 1,
            'root': self.root,
            'counts': self.counts(),
            'entries': {
                n: {
                    **asdict(p), 'notes': list(p.notes),
                    'args': dict(p.args) if p.args else None,
                    'numel': self.numel.get(n)
                }
                for n, p in self.entries.items()
            },
            'loads': [asdict(r) for r in self.loads],
            'void_entries': [asdict(v) for v in self.void_entries],
            'beyond_stock': list(self.beyond_stock),
        }


def entries_of(names: Iterable[str], written: Mapping[str, Provenance],
               owner_of: Callable[[str], Optional[str]]
               ) -> Dict[str, Provenance]:
    """The provenance of each of ``names`` from the ``written`` records
    (constructor default where none). A tied tensor (one parameter under two
    names, e.g. a conv shared across pyramid levels) is recorded under one
    name, ``owner_of(name)``: the others get its provenance and a note.

    Example:
        >>> written = {'a.weight': Provenance(INITIALIZER, 'Zero', 'a')}
        >>> entries_of(['a.weight', 'b.weight'], written,
        ...            lambda n: 'a.weight')['b.weight'].notes
        ('tied to a.weight',)
    """
    default = Provenance(CONSTRUCTOR, 'constructor default')
    out = {}
    for name in names:
        owner = owner_of(name) or name
        prov = written.get(owner, default)
        if owner != name:
            prov = replace(prov, notes=prov.notes + (f'tied to {owner}', ))
        out[name] = prov
    return out


def get_provenance(model: nn.Module) -> ProvenanceLedger:
    """The ledger of the last ``init_weights()`` run on ``model``.

    Args:
        model (nn.Module): the module ``init_weights()`` was called on.

    Returns:
        ProvenanceLedger: the ledger attached to ``model``.

    Raises:
        LookupError: naming the class, if none is attached.

    Example:
        >>> model = nn.Linear(2, 2)
        >>> attach_ledger(model, ProvenanceLedger('Linear'))
        >>> get_provenance(model).root
        'Linear'
        >>> get_provenance(nn.ReLU())
        Traceback (most recent call last):
        ...
        LookupError: ReLU has no provenance ledger: init_weights() has not run on it with mmext_init active
    """
    ledger = model.__dict__.get(_LEDGER_ATTR)
    if ledger is None:
        raise LookupError(
            f'{type(model).__name__} has no provenance ledger: init_weights() '
            'has not run on it with mmext_init active')
    return ledger


def attach_ledger(model: nn.Module, ledger: ProvenanceLedger) -> None:
    """Store ``ledger`` on ``model`` (a plain attribute, not a buffer)."""
    model.__dict__[_LEDGER_ATTR] = ledger
