"""The end of an init session: the ledger from what the write tracker saw,
the ``on_missing`` check of every ``Pretrained`` entry, the report.

Example:
    >>> import mmext_init, torch.nn as nn
    >>> from mmengine.model import BaseModule
    >>> class Net(BaseModule):
    ...     def __init__(self):
    ...         super().__init__(init_cfg=dict(type='Zero', layer='Linear'))
    ...         self.fc = nn.Linear(2, 2)
    >>> net = Net()
    >>> net.init_weights()
    >>> ledger = mmext_init.get_provenance(net)
    >>> ledger.entries['fc.weight'].kind, ledger.entries['fc.weight'].source
    ('initializer', 'Zero')
"""
import logging
from typing import Any, Dict, List, Tuple

import torch
from mmengine.logging import print_log

from ..errors import InitConfigError
from ..loading.load_checks import is_counter
from ..loading.options import PretrainedOptions
from ..provenance.inserted import inserted_notes
from ..provenance.ledger import CONSTRUCTOR, ProvenanceLedger, entries_of
from ..provenance.report import fold_names
from .code_loads import code_load_records, is_under


def build_ledger(session: Any,
                 tensors: Dict[str, torch.Tensor]) -> ProvenanceLedger:
    """The ledger of ``session`` once every write is done."""
    tracker = session.tracker
    ledger = ProvenanceLedger(session.root_name)
    ledger.numel = {n: t.numel() for n, t in tensors.items()}
    ledger.entries = entries_of(tensors, tracker.written,
                                lambda name: tracker.name_of(tensors[name]))
    ledger.loads = [p.record for p in session.plans.all() if p.record]
    ledger.loads += code_load_records(session, tensors, ledger)
    ledger.void_entries = list(tracker.void_entries)
    ledger.beyond_stock = list(session.beyond_roots)
    for name, note in inserted_notes(session.root).items():
        if name in ledger.entries:
            ledger.entries[name] = ledger.entries[name].with_note(note)
    return ledger


def declared_entries(session: Any) -> List[Tuple[str, PretrainedOptions]]:
    """(module path, entry) of every ``Pretrained`` entry of the session:
    those mmext_init loaded and those an ``init_weights`` override did."""
    entries = [(p.module_path, p.entry) for p in session.plans.all()]
    entries += [(path, e) for _, path, e in session.code_entries]
    return entries


def enforce_on_missing(session: Any, ledger: ProvenanceLedger) -> None:
    """Tensors below an entry left at their constructor default, with no
    declared init: a warning or an error, as the entry's ``on_missing``."""
    for path, entry in declared_entries(session):
        bare = [n for n in ledger.names(CONSTRUCTOR)
                if is_under(n, path) and not is_counter(n)]
        if not bare or entry.on_missing == 'ignore':
            continue
        label = session.label(path, 'Pretrained')
        text = (f'{label}: {len(bare)} tensor(s) are not in '
                f'{entry.checkpoint} and have no declared init (kept '
                f'at constructor default): {", ".join(fold_names(bare))}. '
                'Declare one with init_missing=... or set on_missing.')
        if entry.on_missing == 'error':
            raise InitConfigError(text)
        print_log(text, logger='current', level=logging.WARNING)
