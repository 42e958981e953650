"""The init report: one grouped summary instead of one line per parameter.

Example of the INFO summary::

    mmext_init: initialization report for RetinaNet: 190 tensors, 12.1M elements
      checkpoint     170 tensors   11.2M elements  (92.6%)
      initializer     16 tensors    0.9M elements  (7.4%)
      ...
    initialized:
      backbone.adapters.{0..3}.up.{weight,bias} <- Zero from backbone.adapters.N
    init_cfg entries that initialized nothing:
      init_cfg of 'neck' (Kaiming, layer='Conv3d'): no Conv3d layer in it

The full ledger goes to ``init_provenance.json`` in the Runner's log
directory (rank 0 only) and to the DEBUG log.

Example (:func:`format_report` of a ledger built by hand):
    >>> zero = Provenance('initializer', 'Zero', 'fc')
    >>> ledger = ProvenanceLedger('Net', {'fc.weight': zero, 'fc.bias': zero},
    ...                           numel={'fc.weight': 4, 'fc.bias': 2})
    >>> print(format_report(ledger))
    mmext_init: initialization report for Net: 2 tensors, 6 elements
      checkpoint        0 tensors        0 elements  (0.0% of the model)
      initializer       2 tensors        6 elements  (100.0% of the model)
      init_weights      0 tensors        0 elements  (0.0% of the model)
      constructor       0 tensors        0 elements  (0.0% of the model)
    initialized:
      fc.{weight,bias} <- Zero from fc
"""
import json
import logging
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

from mmengine.dist import get_rank
from mmengine.logging import MMLogger, print_log

from ..context import CONTEXT
from ..errors import entry_label
from .ledger import (CHECKPOINT, CONSTRUCTOR, INIT_WEIGHTS, INITIALIZER,
                         KINDS, Provenance, ProvenanceLedger)

REPORT_TITLE = 'mmext_init: initialization report'
PROVENANCE_FILE = 'init_provenance.json'
VOID_TITLE = 'init_cfg entries that initialized nothing:'
BEYOND_TITLE = ("initialized beyond stock MMEngine's reach (below a plain "
                'torch container, which its recursion does not enter):')
MAX_LINES = 25
_SECTIONS = ((CHECKPOINT, 'loaded'), (INITIALIZER, 'initialized'),
             (INIT_WEIGHTS, 'init_weights overrides'),
             (CONSTRUCTOR, 'no declared init (constructor default)'))
_NUMBERED = re.compile(r'^([A-Za-z_]*?)(\d+)$')


def _render(tokens: Sequence[str]) -> str:
    if len(tokens) == 1:
        return tokens[0]
    parts = [_NUMBERED.match(t) for t in tokens]
    if all(parts) and len({p.group(1) for p in parts}) == 1:
        stem = parts[0].group(1)
        nums = sorted(int(p.group(2)) for p in parts)
        if nums == list(range(nums[0], nums[-1] + 1)):
            return f'{stem}{{{nums[0]}..{nums[-1]}}}'
        return f'{stem}{{{",".join(map(str, nums))}}}'
    return '{' + ','.join(tokens) + '}'


def fold_names(names: Sequence[str]) -> List[str]:
    """Fold dotted names that differ in one component.

    Args:
        names (Sequence[str]): dotted tensor or module names.

    Returns:
        list[str]: the folded patterns (``{0..1}`` ranges, ``{a,b}`` sets).

    Example:
        >>> fold_names(['a.0.up.weight', 'a.0.up.bias', 'a.1.up.weight', 'a.1.up.bias'])
        ['a.{0..1}.up.{weight,bias}']
        >>> fold_names(['l.conv1.weight', 'l.conv2.weight', 'l.bn.bias'])
        ['l.conv{1..2}.weight', 'l.bn.bias']
    """
    patterns: List[Tuple[Tuple[str, ...], ...]] = [
        tuple((t, ) for t in name.split('.')) for name in names
    ]
    changed = True
    while changed:
        changed = False
        width = max((len(p) for p in patterns), default=0)
        for pos in reversed(range(width)):
            groups: Dict[tuple, List[tuple]] = {}
            for pat in patterns:
                if len(pat) <= pos:
                    groups.setdefault(('#', pat), []).append(pat)
                    continue
                groups.setdefault(pat[:pos] + (None, ) + pat[pos + 1:],
                                  []).append(pat)
            merged = []
            for key, members in groups.items():
                if len(members) == 1 or key[0] == '#':
                    merged.extend(members)
                    continue
                tokens: List[str] = []
                for m in members:
                    tokens.extend(t for t in m[pos] if t not in tokens)
                merged.append(key[:pos] + (tuple(tokens), ) + key[pos + 1:])
                changed = True
            patterns = merged
    return ['.'.join(_render(tok) for tok in pat) for pat in patterns]


def _group_key(prov: Provenance, root: str) -> str:
    declared = prov.declared_by
    if declared:
        declared = re.sub(r'(?<=\.)\d+(?=\.|$)|^\d+(?=\.|$)', 'N', declared)
    return Provenance(prov.kind, prov.source, declared, None, prov.args,
                      prov.notes).describe(root)


def human_count(n: float) -> str:
    """``n`` with a unit, as the reports print element counts.

    Example:
        >>> human_count(86_415_592), human_count(950)
        ('86.4M', '950')
    """
    for unit, size in (('G', 1e9), ('M', 1e6), ('K', 1e3)):
        if n >= size:
            return f'{n / size:.1f}{unit}'
    return str(int(n))


def _limited(lines: List[str], more: str) -> List[str]:
    if len(lines) <= MAX_LINES:
        return lines
    return lines[:MAX_LINES] + [f'  ... {len(lines) - MAX_LINES} more {more}']


def format_report(ledger: ProvenanceLedger, skipped_ops: int = 0,
                  skipped_calls: int = 0) -> str:
    """The grouped summary text of ``ledger`` (a full one: module docstring).

    Args:
        ledger (ProvenanceLedger): the ledger to summarize.
        skipped_ops (int): initializer ops skipped on checkpoint tensors.
        skipped_calls (int): initializer calls skipped on them.
    Example:
        >>> assert format_report(ProvenanceLedger('Net')).startswith(REPORT_TITLE)
    """
    total = sum(ledger.numel.values()) or 1
    lines = [
        f'{REPORT_TITLE} for {ledger.root}: {len(ledger.entries)} tensors, '
        f'{human_count(total)} elements'
    ]
    for kind in KINDS:
        names = ledger.names(kind)
        elems = sum(ledger.numel.get(n, 0) for n in names)
        lines.append(f'  {kind:<13}{len(names):>6} tensors '
                     f'{human_count(elems):>8} elements  '
                     f'({elems / total:.1%} of the model)')
    if skipped_ops or skipped_calls:
        lines.append(f'  initializer work skipped on tensors the checkpoint '
                     f'provides: {skipped_ops} ops, {skipped_calls} calls')
    lines += _load_lines(ledger)
    for kind, title in _SECTIONS:
        groups: Dict[str, List[str]] = {}
        for name, prov in ledger.entries.items():
            if prov.kind == kind:
                groups.setdefault(_group_key(prov, ledger.root),
                                  []).append(name)
        if not groups:
            continue
        lines.append(f'{title}:')
        body = [
            f'  {folded} <- {desc}' for desc, names in groups.items()
            for folded in fold_names(names)
        ]
        lines.extend(_limited(body, f'lines (see {PROVENANCE_FILE})'))
    if ledger.beyond_stock:
        lines.append(BEYOND_TITLE)
        lines.extend(_limited(['  ' + f for f in
                               fold_names(ledger.beyond_stock)],
                              f'lines (see {PROVENANCE_FILE})'))
    void = _void_lines(ledger)
    if void:
        lines.append(VOID_TITLE)
        lines.extend(_limited(void, f'lines (see {PROVENANCE_FILE})'))
    return '\n'.join(lines)


def _load_lines(ledger: ProvenanceLedger) -> List[str]:
    """One line per checkpoint load, then its misses and mismatches."""
    lines = []
    for record in ledger.loads:
        where = record.module or f'the model root ({ledger.root})'
        prefix = f' [prefix={record.prefix!r}]' if record.prefix else ''
        lines.append(
            f'load {where} <- {record.checkpoint}{prefix} via {record.via}: '
            f'{len(record.loaded)} loaded ({record.loaded_fraction:.1%} of '
            f"the module's parameter elements), {len(record.missing)} missing, "
            f'{len(record.unexpected)} unexpected, {len(record.mismatched)} '
            'shape-mismatched')
        for key, ckpt_shape, model_shape in record.mismatched:
            lines.append(f'  shape mismatch {key}: checkpoint '
                         f'{tuple(ckpt_shape)} vs model {tuple(model_shape)}')
        if record.missing:
            lines.append('  missing (not in checkpoint): ' +
                         ', '.join(fold_names(record.missing)))
        if record.unexpected:
            lines.append('  unexpected (in checkpoint, unused): ' + ', '.join(
                _limited(fold_names(record.unexpected), 'groups')))
        for key, src, dst in record.cast:
            lines.append(f'  cast {key}: {src} -> {dst}')
        for key, how in record.adapted:
            lines.append(f'  adapted {key}: {how}')
    return lines


def _void_lines(ledger: ProvenanceLedger) -> List[str]:
    """The entries that initialized nothing, modules folded per entry.

    Example line::

        init_cfg of 'backbone.adapters.{0..3}' (Kaiming, layer='Conv2d'): no Conv2d layer in it
    """
    groups: Dict[tuple, List[str]] = {}
    for void in ledger.void_entries:
        key = (void.field, void.entry, void.reason, void.checkpoint)
        groups.setdefault(key, []).append(void.module)
    lines = []
    for (field_, entry, reason, checkpoint), paths in groups.items():
        folded = fold_names([p for p in paths if p])
        if '' in paths:
            folded.insert(0, '')
        lines += [
            f'  {entry_label(path, ledger.root, entry, field_, checkpoint)}: '
            f'{reason}' for path in folded
        ]
    return lines


def runner_log_dir() -> Optional[str]:
    """Log directory of the active Runner, if any: the latest ``Runner``
    whose logger is the current one. A plain ``init_weights()`` writes no
    file, even where some logger has a file handler (stock dumps its init
    info into that log only)."""
    runner = CONTEXT.runner()
    if runner is None or getattr(runner, 'logger', None) is not \
            MMLogger.get_current_instance():
        return None
    return runner.log_dir


def emit_report(ledger: ProvenanceLedger, skipped_ops: int = 0,
                skipped_calls: int = 0) -> None:
    """Log the summary (INFO), the ledger (DEBUG) and write the JSON file."""
    print_log(
        format_report(ledger, skipped_ops, skipped_calls), logger='current',
        level=logging.INFO)
    logger = MMLogger.get_current_instance()
    if logger.isEnabledFor(logging.DEBUG):
        print_log(
            'mmext_init: provenance ledger\n' + '\n'.join(
                f'  {n}: {p.describe(ledger.root)}' +
                (f' [key {p.key}]' if p.key else '')
                for n, p in ledger.entries.items()),
            logger='current',
            level=logging.DEBUG)
    write_json(ledger)


def write_json(ledger: ProvenanceLedger) -> Optional[str]:
    """Write ``init_provenance.json`` into the active Runner's log dir (rank 0
    only); returns its path, or None when there is nothing to write to."""
    log_dir = runner_log_dir()
    if not log_dir or get_rank() != 0:
        return None
    path = os.path.join(log_dir, PROVENANCE_FILE)
    with open(path, 'w') as f:
        json.dump(ledger.to_dict(), f, indent=1)
    return path
