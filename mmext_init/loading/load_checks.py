"""What one checkpoint load must satisfy, by the options of its ``Pretrained``
entry: something matched, ``min_loaded``, ``on_mismatch='error'``,
``strict``. Used for mmext_init's own loads (at planning, before any tensor
is written) and for those a backbone's ``init_weights`` makes itself.

Example:
    >>> from mmext_init.loading.options import PretrainedOptions
    >>> entry = PretrainedOptions('r50.pth', min_loaded=0.9)
    >>> check_load_options(entry, 'backbone', 0.97, missing=[],
    ...                    unexpected=['head.fc.weight'], mismatched=[])
    >>> check_load_options(entry, 'backbone', 0.5, ['fc.weight'], [], [],
    ...                    {'fc.weight': (10, 2048)})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    mmext_init.errors.CheckpointError: backbone: r50.pth provides 50.0% of the module's parameter elements, below min_loaded=0.9. Largest missing (not in the checkpoint): fc.weight (10, 2048): 1 tensor, 20.5K elements. Fix the key options ...
"""
import math
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from ..errors import CheckpointError
from .key_matching import MatchResult, suggest_mappings, top_prefixes
from ..provenance.report import fold_names, human_count

Shape = Tuple[int, ...]
MAX_GROUPS = 5


def is_counter(name: str) -> bool:
    """Whether ``name`` is a BatchNorm step counter (never required).

    Example:
        >>> is_counter('backbone.bn1.num_batches_tracked')
        True
    """
    return name.endswith('num_batches_tracked')


def check_coverage(result: MatchResult, fraction: float,
                   model_shapes: Dict[str, Tuple[int, ...]],
                   ckpt_shapes: Dict[str, Tuple[int, ...]],
                   entry: Any, label: str, partial: bool = False) -> None:
    """:func:`check_load_options` on a planned match, after failing (with
    the checkpoint's common prefixes and mappings that would match) if
    nothing matched at all.

    Example:
        >>> from mmext_init.loading.key_matching import match_keys
        >>> from mmext_init.loading.options import PretrainedOptions
        >>> entry = PretrainedOptions('det.pth', prefix='neck.')
        >>> model, ckpt = {'conv.w': (4, 3)}, {'backbone.conv.w': (4, 3)}
        >>> result = match_keys(model, ckpt, entry.mapping)
        >>> check_coverage(result, 0.0, model, ckpt, entry, 'backbone')
        Traceback (most recent call last):
        ...
        mmext_init.errors.CheckpointError: backbone: nothing in det.pth matches the module with prefix='neck.'. Most common checkpoint key prefixes: 'backbone.' (1 keys). Try: prefix='backbone.' would load 100%.
    """
    if not result.loaded and not partial:
        prefixes = ', '.join(
            f'{p!r} ({n} keys)'
            for p, n in top_prefixes(ckpt_shapes).most_common(5))
        hints = '; '.join(f'{m.describe_change(entry.mapping)} would '
                          f'load {f:.0%}'
                          for m, f in suggest_mappings(
                              model_shapes, ckpt_shapes,
                              current=entry.mapping))
        raise CheckpointError(
            f'{label}: nothing in {entry.checkpoint} matches the module with '
            f'{entry.mapping.describe()}. Most common checkpoint key '
            f'prefixes: {prefixes or "none"}.'
            + (f' Try: {hints}.' if hints else ''))
    check_load_options(entry, label, fraction, result.missing,
                       result.unexpected,
                       [(k, c, m) for k, _, c, m in result.mismatched],
                       model_shapes)


def _folded_regex(folded: str) -> re.Pattern:
    """The names a :func:`fold_names` line stands for, as a regex."""
    parts = []
    for literal, inside in re.findall(r'([^{]*)(?:\{([^}]*)\})?', folded):
        parts.append(re.escape(literal))
        if not inside:
            continue
        span = re.fullmatch(r'(\d+)\.\.(\d+)', inside)
        tokens = [str(i) for i in range(int(span[1]), int(span[2]) + 1)] \
            if span else inside.split(',')
        parts.append('(?:' + '|'.join(map(re.escape, tokens)) + ')')
    return re.compile(''.join(parts))


def largest_groups(shapes: Mapping[str, str], numel: Mapping[str, int],
                   limit: int = MAX_GROUPS) -> List[str]:
    """Names folded per shape (``shapes``: name -> shape text), the groups
    with the most elements first, at most ``limit`` of them (and a line
    counting the rest).

    Example:
        >>> largest_groups({'a.0.w': '(4, 4)', 'a.1.w': '(4, 4)'},
        ...                {'a.0.w': 16, 'a.1.w': 16})
        ['a.{0..1}.w (4, 4): 2 tensors, 32 elements']
    """
    by_shape: Dict[str, List[str]] = {}
    for name, shape in shapes.items():
        by_shape.setdefault(shape, []).append(name)
    groups = []
    for shape, names in by_shape.items():
        for folded in fold_names(names):
            pattern = _folded_regex(folded)
            members = [n for n in names if pattern.fullmatch(n)]
            groups.append((sum(numel[n] for n in members), folded, shape,
                           len(members)))
    groups.sort(key=lambda g: -g[0])  # stable: module order among equals
    lines = [f"{folded} {shape}: {count} tensor{'s' if count > 1 else ''}, "
             f'{human_count(elems)} elements'
             for elems, folded, shape, count in groups[:limit]]
    if len(groups) > limit:
        lines.append(f'{len(groups) - limit} more groups')
    return lines


def coverage_details(missing: Sequence[str],
                     mismatched: Sequence[Tuple[str, Any, Any]],
                     shapes: Optional[Mapping[str, Shape]]) -> str:
    """The largest missing and shape-mismatched groups, for a
    ``min_loaded`` error (missing names without ``shapes`` are folded
    without their shapes)."""
    missing = [m for m in missing if not is_counter(m)]
    parts = []
    if missing and shapes is not None:
        parts.append('Largest missing (not in the checkpoint): ' + '; '.join(
            largest_groups({n: str(tuple(shapes[n])) for n in missing},
                           {n: math.prod(shapes[n]) for n in missing})))
    elif missing:
        parts.append('Missing (not in the checkpoint): ' +
                     ', '.join(fold_names(missing)[:MAX_GROUPS]))
    if mismatched:
        parts.append('Largest shape-mismatched: ' + '; '.join(largest_groups(
            {k: f'checkpoint {tuple(c)} vs model {tuple(m)}'
             for k, c, m in mismatched},
            {k: math.prod(m) for k, _, m in mismatched})))
    return '. '.join(parts)


def check_load_options(entry: Any, label: str, fraction: float,
                       missing: Sequence[str], unexpected: Sequence[str],
                       mismatched: Sequence[Tuple[str, Any, Any]],
                       shapes: Optional[Mapping[str, Shape]] = None) -> None:
    """Enforce ``min_loaded``, ``on_mismatch='error'`` and ``strict`` on
    what one load of ``entry`` found (``mismatched``: key, checkpoint shape,
    model shape), by mmext_init or by a backbone's own ``init_weights``.
    ``shapes`` (model name -> shape) puts the shapes of the missing tensors
    into a ``min_loaded`` error.

    Example:
        >>> from mmext_init.loading.options import PretrainedOptions
        >>> entry = PretrainedOptions('r50.pth', strict=True)
        >>> check_load_options(entry, 'backbone', 0.98, ['adapter.weight'], [],
        ...                    [])
        Traceback (most recent call last):
        ...
        mmext_init.errors.CheckpointError: backbone: strict=True and missing keys: adapter.weight
    """
    if entry.min_loaded is not None and fraction < entry.min_loaded:
        details = coverage_details(missing, mismatched, shapes)
        raise CheckpointError(
            f'{label}: {entry.checkpoint} provides {fraction:.1%} of the '
            f'module\'s parameter elements, below min_loaded='
            f'{entry.min_loaded}' + (f'. {details}' if details else '') +
            '. Fix the key options (prefix, revise_keys, key_map) or add '
            'adapt transforms for the shape mismatches (the dry run '
            'tools/match_checkpoint.py lists everything), or lower '
            'min_loaded')
    shape_text = ', '.join(f'{k} checkpoint {c} vs model {m}'
                           for k, c, m in mismatched)
    if entry.on_mismatch == 'error' and mismatched:
        raise CheckpointError(f'{label}: on_mismatch=\'error\' and shape '
                              f'mismatches: {shape_text}')
    if entry.strict:
        missing = [m for m in missing if not is_counter(m)]
        problems = []
        if missing:
            problems.append(f'missing keys: {", ".join(missing)}')
        if unexpected:
            problems.append(f'unexpected keys: {", ".join(unexpected)}')
        if mismatched:
            problems.append(f'shape mismatches: {shape_text}')
        if problems:
            raise CheckpointError(f'{label}: strict=True and ' +
                                  '; '.join(problems))
