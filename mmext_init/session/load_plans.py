"""The load plans of one init session, and what the deferred engine is
told about them.

Every ``Pretrained`` entry reads its checkpoint's names and shapes and
decides what it provides; those tensors are *protected*: initializers skip
them, and their pending constructor init is dropped instead of replayed
(:meth:`SessionPlans.settle`). If the session fails, :meth:`refill_on_error`
gives the dropped tensors their constructor init after all.

Example:
    >>> import os, tempfile, torch, torch.nn as nn
    >>> from mmext_init.provenance.tracking import WriteTracker
    >>> path = os.path.join(tempfile.mkdtemp(), 'fc.pth')
    >>> torch.save({'weight': torch.ones(2, 2)}, path)
    >>> fc = nn.Linear(2, 2)
    >>> fc.init_cfg = dict(type='Pretrained', checkpoint=path)
    >>> plans = SessionPlans(ModelNames(fc),
    ...                      WriteTracker(fc.state_dict(keep_vars=True)))
    >>> [p.copies for p in plans.of_module(fc)], sorted(plans.protected)
    ([{'weight': 'weight'}], ['weight'])
"""
import contextlib
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Set

import torch.nn as nn

from ..deferred import construction as deferred
from ..loading.load_checks import is_counter
from ..loading.options import PretrainedOptions
from ..loading.plan import LoadPlan, plan_load
from ..provenance.ledger import VoidEntry
from ..provenance.tracking import WriteTracker
from .code_loads import is_under
from .model_names import ModelNames, pretrained_cfgs, uses_contract


def plan_entry(names: ModelNames, module: nn.Module,
               entry: PretrainedOptions) -> LoadPlan:
    """The plan of one ``Pretrained`` entry of ``module`` (nothing is
    protected or loaded)."""
    path = names.path_of(module)
    return plan_load(module, path, entry, names.label(path, 'Pretrained'))


def plan_entries(names: ModelNames, module: nn.Module) -> List[LoadPlan]:
    """The plans of the ``Pretrained`` entries of ``module``'s own
    ``init_cfg`` (also used to predict provenance before ``init_weights``,
    see :mod:`mmext_init.training.expected`)."""
    return [plan_entry(names, module, entry)
            for entry in names.pretrained_entries(module)]


def superseded_reason(names: ModelNames, module: nn.Module,
                      plans: Sequence[LoadPlan]) -> Optional[str]:
    """Why ``module``'s own ``Pretrained`` entries are superseded by the
    planned entries of enclosing modules, or None if they are not: stock
    MMEngine applies an enclosing entry after its children's, so what they
    load is overwritten where the enclosing entry is the same entry
    (mmpretrain's CSPNet hands its ``init_cfg`` to every stage) or copies
    every tensor of ``module`` in full (step counters aside).

    Example:
        >>> import os, tempfile, torch
        >>> net = nn.Sequential(nn.Linear(2, 2))
        >>> path = os.path.join(tempfile.mkdtemp(), 'net.pth')
        >>> torch.save(net.state_dict(), path)
        >>> names = ModelNames(net)
        >>> outer = plan_entry(names, net, PretrainedOptions(path))
        >>> net[0].init_cfg = dict(type='Pretrained', checkpoint='other.pth')
        >>> superseded_reason(names, net[0], [outer])
        'every tensor of it is loaded by the entry of the model root, which is applied after it (as in stock MMEngine)'
    """
    path, cfgs = names.path_of(module), pretrained_cfgs(module)
    outer = [p for p in plans if path and p.module_path != path
             and is_under(path, p.module_path)]
    if not outer or not cfgs:
        return None
    paths = sorted({p.module_path for p in outer})
    enclosing = [names.root.get_submodule(p) if p else names.root
                 for p in paths]
    same = [p for p, m in zip(paths, enclosing)
            if all(c in pretrained_cfgs(m) for c in cfgs)]
    if same:
        return (f'the same entry as that of {_named(same[-1:])}, which is '
                'applied after it (as in stock MMEngine)')
    own = [f'{path}.{n}' for n in module.state_dict(keep_vars=True)
           if not is_counter(n)]
    copied = {n for p in outer for n in p.copies}
    if not own or not all(n in copied for n in own):
        return None
    by = [p.module_path for p in outer if any(n in p.copies for n in own)]
    return (f'every tensor of it is loaded by the entry of '
            f'{_named(sorted(set(by)))}, which is applied after it (as in '
            'stock MMEngine)')


def _named(paths: Sequence[str]) -> str:
    """Module paths as the report names them."""
    return ', '.join(repr(p) if p else 'the model root' for p in paths)


class SessionPlans:
    """The plans of every ``Pretrained`` entry met in one session."""

    def __init__(self, names: ModelNames, tracker: WriteTracker) -> None:
        self.names = names
        self.tracker = tracker
        self.by_module: Dict[int, List[LoadPlan]] = {}
        self.dropped: List[deferred.Dropped] = []  # see refill_on_error
        self.settled = False

    @property
    def protected(self) -> Set[str]:
        """Names of the tensors the checkpoints provide."""
        return self.tracker.protected

    def all(self) -> List[LoadPlan]:
        """Every plan, in the order the modules were planned."""
        return [p for plans in self.by_module.values() for p in plans]

    def of_module(self, module: nn.Module) -> List[LoadPlan]:
        """Plans of ``module``'s own entries (made once, protected)."""
        if id(module) not in self.by_module:
            reason = superseded_reason(self.names, module, self.all())
            if reason:
                self.tracker.void_entries.extend(
                    VoidEntry(self.names.path_of(module),
                              f'Pretrained, checkpoint={e.checkpoint!r}',
                              reason)
                    for e in self.names.pretrained_entries(module))
                self.by_module[id(module)] = []
                return []
            plans = plan_entries(self.names, module)
            for plan in plans:
                self.protect(plan.copies)
            self.by_module[id(module)] = plans
        return self.by_module[id(module)]

    def add(self, module: nn.Module, entry: PretrainedOptions) -> None:
        """Plan an entry met outside any init_cfg (``initialize(m, cfg)``)."""
        plan = plan_entry(self.names, module, entry)
        self.protect(plan.copies)
        self.by_module.setdefault(id(module), []).append(plan)

    def protect(self, names: Iterable[str]) -> None:
        """The checkpoint provides ``names``: initializers skip them, and
        after settling, their pending constructor init is dropped too."""
        names = set(names)
        self.tracker.protected.update(names)
        if self.settled and names:
            tensors = self.names.root.state_dict(keep_vars=True)
            self.dropped.append(deferred.settle(
                {n: tensors[n] for n in names if n in tensors}, names))

    def unwritten(self) -> Set[int]:
        """Ids of the tensors whose constructor init was dropped for a copy
        and that nothing wrote since (see :meth:`Dropped.unwritten`)."""
        return {i for dropped in self.dropped for i in dropped.unwritten()}

    def plan_declared(self) -> None:
        """Plan the entries of every module whose ``init_cfg`` mmext_init
        applies, then settle deferred init."""
        for module in self.names.root.modules():
            if uses_contract(module) and getattr(module, 'init_cfg', None):
                self.of_module(module)
        self.settle()

    def settle(self) -> None:
        """Constructor init skipped at build time: dropped for the tensors
        the checkpoint provides, replayed now for the others (before any
        declared init), except below modules whose own ``init_weights``
        handles a ``Pretrained`` entry (what they load is known after)."""
        root = self.names.root
        tensors = root.state_dict(keep_vars=True)
        own = [self.names.path_of(m) for m in root.modules()
               if not uses_contract(m) and self.names.pretrained_entries(m)]
        later = {n for n in tensors if any(is_under(n, p) for p in own)}
        self.dropped.append(deferred.settle(tensors, self.protected, later))
        self.settled = True

    @contextlib.contextmanager
    def refill_on_error(self) -> Iterator[None]:
        """If the session fails, tensors whose constructor init was dropped
        for a copy that never came get that init after all."""
        try:
            yield
        except BaseException as exc:
            spoiled = getattr(exc, 'spoiled', ())  # copied, then non-finite
            for dropped in self.dropped:
                dropped.refill(spoiled)
            raise
