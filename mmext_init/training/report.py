"""The trainable report, logged at the start of training (rank 0, INFO) and
written as ``trainable_params.json`` next to ``init_provenance.json``.

Example of the text::

    mmext_init: trainable parameters of RetinaNet: 40 of 190 tensors (0.1M of 12.1M elements) train
      checkpoint     trainable     0 tensors        0   frozen   150 tensors    11.2M
      initializer    trainable    24 tensors    50.2K   frozen     0 tensors        0
    parameter groups (SGD):
      group 0: lr=0.005 weight_decay=0.0001, 40 tensors: backbone.adapters.{0..2}.up.{weight,bias}, ...
    frozen: backbone.{conv1,bn1}.weight, ...

Partly new parameters (:func:`.plan.partly_new`) get a line of their own, saying why
they train under ``freeze='loaded'``. Last come the tensors each ``insert``
entry added, and the totals as PEFT's ``print_trainable_parameters`` prints
them (exact counts; tied tensors once)::

    per insert entry (share of all 43,172 params):
      insert[0] LoRA(rank=4, alpha=8): 8 tensors, 2,048 params (4.7438%), all train
    trainable params: 2,180 || all params: 43,172 || trainable%: 5.0496
"""
import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from mmengine.dist import get_rank

from ..provenance.inserted import parse_note
from ..provenance.ledger import KINDS
from ..provenance.report import (MAX_LINES, fold_names, human_count,
                                 runner_log_dir)
from .plan import TrainingPlan

TRAINABLE_TITLE = 'mmext_init: trainable parameters'
TRAINABLE_FILE = 'trainable_params.json'


def _number(value: Any) -> str:
    return f'{value:.6g}' if isinstance(value, float) else str(value)


def report_data(root: str, plan: TrainingPlan,
                optimizer: torch.optim.Optimizer) -> Dict[str, Any]:
    """The report as JSON-ready data: counts by provenance of the trainable
    and the frozen (``requires_grad=False``: by ``freeze``, or before, e.g.
    ResNet's ``frozen_stages``) parameters, the groups with their options,
    depth and names, and the frozen names. A group's lr is the one it was
    built with (``initial_lr`` once a param scheduler has set it, e.g. to
    the start of a warmup)."""
    names = {id(p.param): p.names for p in plan.table.params}
    depth = {id(p.param): plan.setting(p.name).depth
             for p in plan.table.params}
    counts = {k: {s: {'tensors': 0, 'elements': 0}
                  for s in ('trainable', 'frozen')}
              for k in KINDS + ('new', )}
    for info in plan.table.params:
        state = 'trainable' if info.param.requires_grad else 'frozen'
        count = counts[info.origin.kind or 'new'][state]
        count['tensors'] += 1
        count['elements'] += info.param.numel()
    inserted = {id(p.param): p.inserted for p in plan.table.params}
    groups = []
    for group in optimizer.param_groups:
        ids = [id(p) for p in group['params']]
        groups.append({
            'lr': group.get('initial_lr', group.get('lr')),
            'weight_decay': group.get('weight_decay'),
            'depth': sorted({depth.get(i) for i in ids} - {None}),
            'inserted': sorted({inserted.get(i) for i in ids} - {None}),
            'names': [n for i in ids for n in names.get(i, ('?', ))]})
    return {'version': 1, 'root': root, 'totals': totals(plan),
            'inserted_entries': entry_counts(plan),
            'optimizer': type(optimizer).__name__,
            'counts': {k: v for k, v in counts.items()
                       if v['trainable']['tensors'] or v['frozen']['tensors']},
            'groups': groups,
            'frozen': [n for p in plan.table.params
                       if not p.param.requires_grad for n in p.names],
            'partly_new': [dict(name=n, completed_by=p.partly,
                                trainable=p.param.requires_grad)
                           for p in plan.table.params if p.partly
                           for n in p.names]}


def totals(plan: TrainingPlan) -> Dict[str, int]:
    """Trainable (``requires_grad``) and all parameters (elements), each
    tensor once, as PEFT's ``get_nb_trainable_parameters`` counts them."""
    params = [p.param for p in plan.table.params]
    return {'trainable': sum(p.numel() for p in params if p.requires_grad),
            'all': sum(p.numel() for p in params)}


def entry_counts(plan: TrainingPlan) -> List[Dict[str, Any]]:
    """Per ``insert`` entry, in entry order: its label (``insert[0]
    LoRA(rank=8)``), the tensors and parameters it added and how many of
    them train."""
    found: Dict[int, Dict[str, Any]] = {}
    for info in plan.table.params:
        note = parse_note(info.inserted)
        if note is None:
            continue
        count = found.setdefault(note.index, dict(
            entry=note.label, tensors=0, params=0, trainable_tensors=0,
            trainable_params=0))
        count['tensors'] += 1
        count['params'] += info.param.numel()
        if info.param.requires_grad:
            count['trainable_tensors'] += 1
            count['trainable_params'] += info.param.numel()
    return [found[i] for i in sorted(found)]


def _percent(part: int, whole: int) -> str:
    return f'{100 * part / whole if whole else 0:.4f}'


def entry_lines(data: Dict[str, Any]) -> List[str]:
    """The lines of the ``insert`` entries and of the totals (none for a
    report without totals, written before they were).

    Example:
        >>> entry_lines({'totals': dict(trainable=30, all=200),
        ...              'inserted_entries': [dict(
        ...                  entry='insert[0] LoRA(rank=2)', tensors=2, params=20,
        ...                  trainable_tensors=2, trainable_params=20)]})
        ... # doctest: +NORMALIZE_WHITESPACE
        ['per insert entry (share of all 200 params):',
         '  insert[0] LoRA(rank=2): 2 tensors, 20 params (10.0000%), all train',
         'trainable params: 30 || all params: 200 || trainable%: 15.0000']
    """
    total = data.get('totals')
    if total is None:
        return []
    lines = []
    if data.get('inserted_entries'):
        lines.append(f'per insert entry (share of all {total["all"]:,d} '
                     'params):')
    for e in data.get('inserted_entries', ()):
        train = e['trainable_tensors']
        state = 'all train' if train == e['tensors'] else 'all frozen' \
            if not train else f'{train} of {e["tensors"]} tensors train'
        lines.append(f'  {e["entry"]}: {e["tensors"]} tensors, '
                     f'{e["params"]:,d} params '
                     f'({_percent(e["params"], total["all"])}%), {state}')
    return lines + [f'trainable params: {total["trainable"]:,d} || all '
                    f'params: {total["all"]:,d} || trainable%: '
                    f'{_percent(total["trainable"], total["all"])}']


def format_trainable(data: Dict[str, Any]) -> str:
    """The text of :func:`report_data`'s result."""
    total = sum(c[s]['tensors'] for c in data['counts'].values()
                for s in c)
    elems = sum(c[s]['elements'] for c in data['counts'].values()
                for s in c)
    train = sum(c['trainable']['tensors'] for c in data['counts'].values())
    train_el = sum(c['trainable']['elements']
                   for c in data['counts'].values())
    lines = [f'{TRAINABLE_TITLE} of {data["root"]}: {train} of {total} '
             f'tensors ({human_count(train_el)} of {human_count(elems)} elements) '
             'train']
    for kind, c in data['counts'].items():
        t, f = c['trainable'], c['frozen']
        lines.append(f'  {kind:<13} trainable {t["tensors"]:>5} tensors '
                     f'{human_count(t["elements"]):>8}   frozen {f["tensors"]:>5}'
                     f' tensors {human_count(f["elements"]):>8}')
    lines.append(f'parameter groups ({data["optimizer"]}):')
    for i, group in enumerate(data['groups']):
        depth = group['depth']
        where = f' depth {",".join(map(str, depth))}' if depth else ''
        where += ''.join(f' ({note})' for note in group.get('inserted', ()))
        folded = fold_names(group['names'])
        shown = ', '.join(folded[:MAX_LINES])
        more = f', ... {len(folded) - MAX_LINES} more' \
            if len(folded) > MAX_LINES else ''
        lines.append(f'  group {i}: lr={_number(group["lr"])} weight_decay='
                     f'{_number(group["weight_decay"])}{where}, '
                     f'{len(group["names"])} tensors: {shown}{more}')
    lines += partly_lines(data.get('partly_new', ()))
    if data['frozen']:
        folded = fold_names(data['frozen'])
        lines.append('frozen: ' + ', '.join(folded[:MAX_LINES]) +
                     (f', ... (see {TRAINABLE_FILE})'
                      if len(folded) > MAX_LINES else ''))
    return '\n'.join(lines + entry_lines(data))


def partly_lines(partly: Sequence[Dict[str, Any]]) -> List[str]:
    """The line of the partly new tensors, folded by what completes them:
    why they train although the checkpoint provided part of them (or that
    a selector froze them).

    Example:
        >>> partly_lines([dict(name=f'{h}.fc.{t}', trainable=True,
        ...                    completed_by='Classes(new=[5])')
        ...               for h in ('head', 'aux') for t in ('weight', 'bias')])
        ["partly new (the checkpoint provides part, the rest is new: 'new' to selectors, not 'loaded', so freeze='loaded' leaves them to train): {head,aux}.fc.{weight,bias} <- Classes(new=[5]), trains"]
    """
    if not partly:
        return []
    by_how: Dict[Tuple[str, bool], List[str]] = {}
    for p in partly:
        by_how.setdefault((p['completed_by'], p['trainable']),
                          []).append(p['name'])
    shown = '; '.join(f"{', '.join(fold_names(names))} <- {how}, "
                      f"{'trains' if trainable else 'frozen'}"
                      for (how, trainable), names in by_how.items())
    return ['partly new (the checkpoint provides part, the rest is new: '
            "'new' to selectors, not 'loaded', so freeze='loaded' leaves "
            f'them to train): {shown}']


def write_trainable(data: Dict[str, Any],
                    log_dir: Optional[str] = None) -> Optional[str]:
    """Write ``trainable_params.json`` into ``log_dir`` (default: the active
    Runner's, where ``init_provenance.json`` goes), rank 0 only."""
    log_dir = log_dir or runner_log_dir()
    if not log_dir or get_rank() != 0:
        return None
    path = os.path.join(log_dir, TRAINABLE_FILE)
    with open(path, 'w') as f:
        json.dump(data, f, indent=1)
    return path


def group_lines(data: Dict[str, Any]) -> List[str]:
    """The group lines of the text alone (for the dry run)."""
    return [line for line in format_trainable(data).splitlines()
            if line.startswith('  group ')]
