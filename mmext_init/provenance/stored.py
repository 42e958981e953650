"""The ledger kept in a Runner checkpoint: ``meta['mmext_provenance']``
holds :meth:`ProvenanceLedger.to_dict` (plain dicts, lists and strings,
which any unpickler reads), so that a resumed run keeps the provenance of
the run it continues.

Example:
    >>> from mmext_init.provenance.ledger import (LoadRecord, Provenance,
    ...                                           VoidEntry)
    >>> ledger = ProvenanceLedger('Net', {
    ...     'fc.weight': Provenance('checkpoint', 'base.pth', '', 'fc.weight',
    ...                             notes=('load_from', ))},
    ...     [LoadRecord('', 'base.pth', 'load_from',
    ...                 mismatched=[('fc.bias', (3, ), (4, ))])],
    ...     {'fc.weight': 12}, [VoidEntry('head', 'Zero', 'no Linear')])
    >>> meta = {META_KEY: ledger.to_dict()}
    >>> stored_ledger(meta) == ledger
    True
    >>> stored_ledger({}) is None
    True
"""
from typing import Any, Dict, Mapping, Optional

from .ledger import LoadRecord, Provenance, ProvenanceLedger, VoidEntry

META_KEY = 'mmext_provenance'

_TUPLE_LISTS = {'mismatched': (1, 2), 'cast': (), 'adapted': ()}


def _load_record(data: Mapping[str, Any]) -> LoadRecord:
    """A :class:`LoadRecord` from its ``asdict`` form (shapes as tuples)."""
    fields = dict(data)
    for name, shape_items in _TUPLE_LISTS.items():
        fields[name] = [
            tuple(tuple(v) if i in shape_items else v
                  for i, v in enumerate(item))
            for item in fields.get(name) or []]
    return LoadRecord(**fields)


def ledger_from_dict(data: Mapping[str, Any]) -> ProvenanceLedger:
    """The ledger :meth:`ProvenanceLedger.to_dict` wrote."""
    entries: Dict[str, Provenance] = {}
    numel: Dict[str, int] = {}
    for name, entry in data['entries'].items():
        entries[name] = Provenance(
            entry['kind'], entry['source'], entry.get('declared_by'),
            entry.get('key'), entry.get('args') or None,
            tuple(entry.get('notes') or ()))
        if entry.get('numel') is not None:
            numel[name] = int(entry['numel'])
    return ProvenanceLedger(
        data['root'], entries,
        [_load_record(r) for r in data.get('loads') or []], numel,
        [VoidEntry(**v) for v in data.get('void_entries') or []],
        list(data.get('beyond_stock') or []))


def stored_ledger(meta: Any) -> Optional[ProvenanceLedger]:
    """The ledger a checkpoint's ``meta`` holds, or None."""
    data = meta.get(META_KEY) if isinstance(meta, Mapping) else None
    return ledger_from_dict(data) if isinstance(data, Mapping) else None


def store_ledger(meta: Dict[str, Any], ledger: ProvenanceLedger) -> None:
    """Put ``ledger`` into a checkpoint's ``meta``."""
    meta[META_KEY] = ledger.to_dict()
