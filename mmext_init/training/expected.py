"""Provenance before ``init_weights()``: the Runner builds the optim wrapper
first, so what will be loaded is predicted from the plans of the model's
``Pretrained`` entries and of the Runner's own load that follows
``init_weights()`` (``load_from``, ``resume``:
:mod:`mmext_init.session.runner_load`), on names and shapes only (no tensor
data is read, no initializer runs, deferred init is not settled), and
checked against the real ledger once ``init_weights()`` and that load have
run.

Example:
    >>> import os, tempfile, torch, torch.nn as nn
    >>> from mmengine.model import Sequential
    >>> path = os.path.join(tempfile.mkdtemp(), 'fc.pth')
    >>> torch.save({'0.weight': torch.ones(2, 2)}, path)
    >>> net = Sequential(nn.Linear(2, 2),
    ...                  init_cfg=dict(type='Pretrained', checkpoint=path))
    >>> table = param_table(net)
    >>> [(i.name, i.origin.kind) for i in table.params if i.loaded]
    [('0.weight', 'checkpoint')]
"""
from typing import Dict, List, Optional, Tuple

import torch.nn as nn

from ..errors import CheckpointError, InitConfigError
from ..loading.copy import planned_copies
from ..loading.plan import LoadPlan, shape_run
from ..provenance.ledger import CHECKPOINT, ProvenanceLedger, get_provenance
from ..provenance.report import fold_names
from ..provenance.stored import stored_ledger
from ..session.load_plans import plan_entries, plan_entry, superseded_reason
from ..session.model_names import ModelNames, is_base_like, uses_contract
from ..session.own_loader import own_loader_entries, reads_checkpoint_itself
from ..session.runner_load import RESUME, load_of_model, plan_runner_load
from .selectors import Origin, ParamTable


def own_loader_plans(names: ModelNames, module: nn.Module) -> List[LoadPlan]:
    """The predicted plans of a module whose own ``init_weights`` reads its
    ``Pretrained`` entries with its own key handling (mmdet Swin, mmseg
    ViT...): the first of :func:`own_loader_entries` that matches anything
    (the file's keys as they are, whatever the ``prefix``; then with the
    module's path stripped, what Swin does with a whole-detector
    checkpoint). The real ledger checks the prediction."""
    plans = []
    path = names.path_of(module)
    for entry in names.pretrained_entries(module):
        options = own_loader_entries(entry, path)
        for i, option in enumerate(options):
            try:
                plans.append(plan_entry(names, module, option))
                break
            except CheckpointError:
                if i == len(options) - 1:
                    raise
    return plans


def pretrained_plans(root: nn.Module) -> List[LoadPlan]:
    """The load plan of every ``Pretrained`` entry in the ``init_cfg`` of a
    ``BaseModule`` of ``root``: as the session plans them, or as their
    module's own loader is expected to load them; none of a module whose
    entries an enclosing entry supersedes (:func:`superseded_reason`)."""
    names = ModelNames(root)
    plans: List[LoadPlan] = []
    for module in filter(is_base_like, root.modules()):
        if uses_contract(module) and superseded_reason(names, module, plans):
            continue
        own = not uses_contract(module) and reads_checkpoint_itself(module)
        plans += own_loader_plans(names, module) if own \
            else plan_entries(names, module)
    return plans


def runner_plan(root: nn.Module) -> Optional[LoadPlan]:
    """The plan of the load the Runner makes into ``root`` after
    ``init_weights()`` (``load_from``, ``resume``), if it makes one."""
    found = load_of_model(root)
    return plan_runner_load(root, found.load) if found else None


def _origins(plans: List[LoadPlan]) -> Dict[str, Origin]:
    """Tensor name -> origin, for what ``plans`` load (all or part; the
    outermost wins, as when loading)."""
    return {
        name: Origin(CHECKPOINT, plan.source_file(name), plan.module_path)
        for plan, name, _ in planned_copies(plans)
    }


def load_origins(plan: LoadPlan) -> Dict[str, Origin]:
    """What the Runner's load ``plan`` gives: for a resumed checkpoint that
    holds a ledger, the origins it records (every kind) for the tensors it
    provides; else the file."""
    origins = _origins([plan])
    stored = stored_ledger(plan.source.meta) \
        if plan.record.via == RESUME else None
    if stored is not None:
        recorded = ledger_origins(stored)
        origins.update({n: recorded[n] for n in origins if n in recorded})
    return origins


def ledger_origins(ledger: ProvenanceLedger) -> Dict[str, Origin]:
    """Tensor name -> origin, from a real ledger.

    Example:
        >>> from mmext_init.provenance.ledger import Provenance
        >>> ledger = ProvenanceLedger('Net', {
        ...     'a': Provenance('checkpoint', 'r.pth', 'backbone'),
        ...     'b': Provenance('initializer', 'Zero', 'head')})
        >>> ledger_origins(ledger)['b']
        Origin(kind='initializer', source=None, declared_by='head')
    """
    return {
        name: Origin(p.kind, p.source if p.kind == CHECKPOINT else None,
                     p.declared_by)
        for name, p in ledger.entries.items()
    }


def param_table(root: nn.Module) -> ParamTable:
    """The table selectors read, its partly new tensors marked
    (:func:`partly_new`): from the ledger if ``init_weights()`` has run
    and the Runner's load (if any) is done, else predicted
    (``exact=False``). Each checkpoint is planned once."""
    shapes = {n: tuple(t.shape)
              for n, t in root.state_dict(keep_vars=True).items()}
    try:
        ledger: Optional[ProvenanceLedger] = get_provenance(root)
    except LookupError:
        ledger = None
    found = load_of_model(root)
    if ledger is None:
        plans, runner = pretrained_plans(root), runner_plan(root)
        origins, partly = _origins(plans), partly_new(plans, shapes)
    else:
        origins, partly = ledger_origins(ledger), ledger_partly(ledger)
        runner = plan_runner_load(root, found.load) \
            if found is not None and not found.done else None
    if runner is not None:
        origins.update(load_origins(runner))
        partly = {n: d for n, d in partly.items()
                  if n not in runner.copies and n not in runner.partial}
        partly.update(partly_new([runner], shapes))
    table = ParamTable.build(root, origins,
                             exact=ledger is not None and runner is None)
    table.mark_partly(partly)
    return table


def partly_new(plans: List[LoadPlan],
               shapes: Dict[str, Tuple[int, ...]]) -> Dict[str, str]:
    """Tensor name -> the transform that completes it (its description),
    for every tensor (of the shapes ``shapes``) that ``plans`` provide
    only part of (an ``adapt`` transform such as ``Classes`` adding a
    class row, ``Grow`` or ``InputChannels`` gives it new values); the
    outermost entry wins, then the Runner's load, as when loading; a
    resume's from the ledger it holds. They are ``'new'`` to the
    selectors, not ``'loaded'``: ``freeze='loaded'`` leaves them to train,
    since frozen, their new rows would keep their init for the whole run.

    Example:
        >>> import os, tempfile, torch
        >>> from mmengine.model import Sequential
        >>> path = os.path.join(tempfile.mkdtemp(), 'fc.pth')
        >>> torch.save({'0.weight': torch.ones(2, 4),
        ...             '0.bias': torch.ones(2)}, path)
        >>> net = Sequential(nn.Linear(4, 3), init_cfg=dict(
        ...     type='Pretrained', checkpoint=path,
        ...     adapt=[dict(type='Grow', keys='0.*')]))
        >>> partly_new(pretrained_plans(net), {'0.weight': (3, 4), '0.bias': (3, )})
        {'0.weight': "Grow(overlap='2x4')", '0.bias': "Grow(overlap='2')"}
    """
    out: Dict[str, str] = {}
    for plan, name, partial in planned_copies(plans):
        if not partial:
            continue
        transform = plan.adapted[name]
        local = name[len(plan.module_path) + 1:] if plan.module_path \
            else name
        ckpt_shape = tuple(plan.source.shapes()[plan.partial[name]])
        done = shape_run(transform, local, ckpt_shape, shapes[name],
                         plan.label)
        out[name] = done.description if done else type(transform).__name__
    for plan in plans:  # a resume restores them whole: its ledger tells
        stored = stored_ledger(plan.source.meta) \
            if plan.record is not None and plan.record.via == RESUME else None
        if stored is not None:
            out = {n: d for n, d in out.items() if n not in plan.copies}
            resumed = ledger_partly(stored)
            out.update({n: resumed[n] for n in plan.copies if n in resumed})
    return out


def ledger_partly(ledger: ProvenanceLedger) -> Dict[str, str]:
    """Tensor name -> the transform that completed it, for the tensors
    ``ledger`` records as partly loaded (a ``rest: ...`` note after the
    transform's description).

    Example:
        >>> from mmext_init.provenance.ledger import Provenance
        >>> ledger = ProvenanceLedger('Net', {'fc.weight': Provenance(
        ...     'checkpoint', 'r.pth', 'head', notes=(
        ...         "Grow(overlap='2x4')", 'rest: constructor default'))})
        >>> ledger_partly(ledger)
        {'fc.weight': "Grow(overlap='2x4')"}
    """
    return {name: entry.notes[0] for name, entry in ledger.entries.items()
            if any(n.startswith('rest: ') for n in entry.notes)}


def disagreements(predicted: ParamTable,
                  ledger: ProvenanceLedger) -> List[str]:
    """How the prediction differs from the ledger, one line per kind of
    difference (folded names); empty when they agree."""
    real = ledger_origins(ledger)
    unloaded, unplanned, moved = [], [], []
    for info in predicted.params:
        origin = real.get(info.name)
        was = origin is not None and origin.kind == CHECKPOINT
        if info.loaded and not was:
            unloaded.append(info.name)
        elif was and not info.loaded:
            unplanned.append(info.name)
        elif was and origin.source != info.origin.source:
            moved.append(f'{info.name} ({info.origin.source} -> '
                         f'{origin.source})')
    lines = []
    for names, what in ((unloaded, 'planned as loaded, not loaded'),
                        (unplanned, 'loaded, not planned'),
                        (moved, 'loaded from another file than planned')):
        if names:
            shown = fold_names(names) if names is not moved else names
            lines.append(f'{what}: {", ".join(shown)}')
    return lines


def check_prediction(predicted: ParamTable, root: nn.Module) -> None:
    """Raise if the ledger of ``root`` says other parameters were loaded
    (or from other files) than predicted when the optimizer was built."""
    try:
        ledger = get_provenance(root)
    except LookupError as exc:
        raise InitConfigError(
            'ProvenanceOptimWrapperConstructor chose parameters by their '
            f'planned provenance, but {exc}') from None
    lines = disagreements(predicted, ledger)
    if lines:
        raise InitConfigError(
            'ProvenanceOptimWrapperConstructor: the optimizer was built from '
            'the load plan, and init_weights() loaded something else:\n  ' +
            '\n  '.join(lines))

