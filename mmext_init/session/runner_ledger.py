"""The ledger after the Runner's own load (``load_from``, ``resume``).

MMEngine's load itself runs unchanged (same reader, keys, values and
warnings) under a :class:`~mmext_init.provenance.tracking.WriteTracker`:
every tensor it writes gets a ``checkpoint`` entry naming the file and the
key as written in it, replacing what ``init_weights()`` recorded. The
``adapt`` transforms of ``load_from_cfg`` then copy what they adapt, as for
a ``Pretrained`` entry (equal-shaped tensors MMEngine loaded unchanged are
first put back to their init). A resumed checkpoint that holds a ledger
(:mod:`mmext_init.provenance.stored`) gives its entries to the tensors it
wrote; the report (one ``load`` line with the skipped shape mismatches) is
logged again and ``init_provenance.json`` rewritten.

Example:
    >>> import os, tempfile, torch, torch.nn as nn
    >>> from mmext_init.session.runner_load import runner_load
    >>> path = os.path.join(tempfile.mkdtemp(), 'base.pth')
    >>> torch.save({'state_dict': {'0.weight': torch.ones(3, 2),
    ...                            '0.bias': torch.ones(4)}}, path)
    >>> net = nn.Sequential(nn.Linear(2, 3))
    >>> load = ObservedLoad(net, runner_load(path, False, None))
    >>> with load.observing():  # what MMEngine's load writes, in short
    ...     _ = net[0].weight.data.copy_(torch.ones(3, 2))
    >>> ledger = load.finish()
    >>> ledger.entries['0.weight'].describe() == f'checkpoint {path} (load_from)'
    True
    >>> ledger.entries['0.bias'].kind, ledger.loads[0].mismatched
    ('constructor', [('0.bias', (4,), (3,))])
"""
import contextlib
import copy
import dataclasses
import logging
from typing import Dict, Iterator, List, Optional

import torch
import torch.nn as nn
from mmengine.logging import print_log

from ..deferred import materialize
from ..loading.copy import apply_loads
from ..loading.plan import LoadPlan
from ..provenance.inserted import inserted_notes
from ..provenance.ledger import (CHECKPOINT, CONSTRUCTOR, LoadRecord,
                                 Provenance, ProvenanceLedger, attach_ledger,
                                 get_provenance)
from ..provenance.report import emit_report
from ..provenance.stored import stored_ledger
from ..provenance.tracking import InitSource, WriteTracker
from .runner_load import RESUME, RunnerLoad, plan_runner_load


def _base_ledger(root: nn.Module) -> ProvenanceLedger:
    """What ``init_weights()`` recorded (a copy), or every tensor at its
    constructor default when it did not run under mmext_init."""
    try:
        ledger = get_provenance(root)
    except LookupError:
        default = Provenance(CONSTRUCTOR, 'constructor default')
        return ProvenanceLedger(type(root).__name__, {
            n: default for n in root.state_dict(keep_vars=True)})
    return ProvenanceLedger(**{  # every field, its container copied
        f.name: copy.copy(getattr(ledger, f.name))
        for f in dataclasses.fields(ledger)})


class ObservedLoad:
    """One Runner load into ``root``: planned (names and shapes) when made,
    observed while :meth:`observing`, recorded by :meth:`finish`."""

    def __init__(self, root: nn.Module, load: RunnerLoad) -> None:
        materialize(root)
        self.root, self.load = root, load
        self.plan = plan_runner_load(root, load)
        self.tensors = root.state_dict(keep_vars=True)
        self.tracker = WriteTracker(self.tensors)
        self.base = _base_ledger(root)
        mapped = self.plan.entry.mapping.map_keys(self.plan.source.keys())
        self.keys = {n: self.plan.source.origin(k) for n, k in mapped.items()
                     if n in self.tensors}
        # adapted tensors MMEngine loads unchanged (equal shapes), saved to
        # be put back before the transform copies its part
        self.saved = {
            n: self.tensors[n].detach().clone() for n in self.plan.adapted
            if tuple(self.tensors[n].shape) ==
            tuple(self.plan.source.shape(mapped[n]))}

    @contextlib.contextmanager
    def observing(self) -> Iterator[None]:
        """Writes to the model's tensors inside the block are the load's."""
        src = InitSource(CHECKPOINT, self.load.checkpoint, '',
                         keys=dict(self.keys), note=self.load.via)
        with self.tracker.source(src):
            yield

    def adapt(self) -> None:
        """Copy what the ``adapt`` transforms make of the checkpoint, over
        the load (for the partly adapted: over their init)."""
        with torch.no_grad():
            for name, value in self.saved.items():
                self.tensors[name].copy_(value)
        for name in self.plan.adapted:  # the rest: the init's provenance
            owner = self.owner(name)
            prior = self.base.entries.get(owner)
            if prior is None:
                self.tracker.written.pop(owner, None)
            else:
                self.tracker.written[owner] = prior
        plan = self.plan
        adapted = LoadPlan('', plan.entry, plan.label, plan.source,
                           {n: k for n, k in plan.copies.items()
                            if n in plan.adapted}, plan.record,
                           dict(plan.adapted), dict(plan.partial))
        apply_loads([adapted], self.tensors, self.tracker)
        for name in plan.adapted:
            owner = self.owner(name)
            prov = self.tracker.written[owner]
            self.tracker.written[owner] = prov.with_note(self.load.via)

    def owner(self, name: str) -> str:
        """The name the tracker records ``name`` under (tied: the first)."""
        return self.tracker.name_of(self.tensors[name]) or name

    def finish(self) -> ProvenanceLedger:
        """Adapt, build the ledger, attach it, report it."""
        if self.plan.adapted and self.load.via != RESUME:
            self.adapt()
        ledger = self.ledger()
        attach_ledger(self.root, ledger)
        print_log(f'mmext_init: the Runner loaded {self.load.label} after '
                  f'init_weights(): {len(ledger.loads[-1].loaded)} tensors '
                  'loaded; the ledger and the report follow the load',
                  logger='current', level=logging.INFO)
        emit_report(ledger)
        return ledger

    def ledger(self) -> ProvenanceLedger:
        """The base ledger with the load's entries, and its record."""
        stored = stored_ledger(self.plan.source.meta) \
            if self.load.via == RESUME else None
        ledger = self.base if stored is None else ProvenanceLedger(
            self.base.root, dict(self.base.entries), list(stored.loads),
            {}, list(stored.void_entries), list(stored.beyond_stock))
        names: List[str] = []  # the tracker saw the load's writes only
        for name in self.tensors:
            owner = self.owner(name)
            if owner not in self.tracker.written:
                continue
            names.append(name)
            ledger.entries[name] = self._entry(name, owner, stored)
        for name, note in inserted_notes(self.root).items():
            if name in ledger.entries:
                ledger.entries[name] = ledger.entries[name].with_note(note)
        ledger.numel = {n: t.numel() for n, t in self.tensors.items()}
        ledger.loads.append(self._record(names))
        return ledger

    def _entry(self, name: str, owner: str,
               stored: Optional[ProvenanceLedger]) -> Provenance:
        """The entry of ``name`` (written through ``owner``)."""
        if stored is not None and name in stored.entries:
            return stored.entries[name]
        prov = self.tracker.written[owner]
        return prov if owner == name else \
            prov.with_note(f'tied to {owner}')

    def _record(self, names: List[str]) -> LoadRecord:
        """The plan's record with what was really loaded."""
        record = self.plan.record
        partly = set(self.plan.partial)
        record.loaded = [n for n in names if n not in partly]
        return record


def loaded_by(ledger: ProvenanceLedger, load: RunnerLoad) -> Dict[str, str]:
    """Tensor name -> checkpoint key, for the entries ``load`` wrote.

    Example:
        >>> from mmext_init.session.runner_load import RunnerLoad
        >>> ledger = ProvenanceLedger('Net', {'w': Provenance(
        ...     'checkpoint', 'base.pth', '', 'w', notes=('load_from', ))})
        >>> loaded_by(ledger, RunnerLoad('base.pth', 'load_from', ()))
        {'w': 'w'}
    """
    return {n: p.key for n, p in ledger.entries.items()
            if p.kind == CHECKPOINT and p.source == load.checkpoint
            and load.via in p.notes}
