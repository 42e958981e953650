"""What one checkpoint load must satisfy, by the options of its ``Pretrained``
entry: something matched, ``min_loaded``, ``on_mismatch='error'``,
``strict``. Used for mmext_init's own loads (at planning, before any tensor
is written) and for those a backbone's ``init_weights`` makes itself.

Example:
    >>> check_load_options(entry, label, fraction=0.97, missing=[],
    ...                    unexpected=['head.fc.weight'], mismatched=[])
"""
from typing import Any, Dict, Sequence, Tuple

from .errors import CheckpointError
from .key_matching import MatchResult, suggest_mappings, top_prefixes


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
        >>> check_coverage(result, 0.0, model_shapes, ckpt_shapes, entry, label)
        CheckpointError: ...nothing in det.pth matches the module with ...
    """
    if not result.loaded and not partial:
        prefixes = ', '.join(
            f'{p!r} ({n} keys)'
            for p, n in top_prefixes(ckpt_shapes).most_common(5))
        hints = '; '.join(f'{m.describe()} would load {f:.0%}'
                          for m, f in suggest_mappings(model_shapes,
                                                       ckpt_shapes))
        raise CheckpointError(
            f'{label}: nothing in {entry.checkpoint} matches the module with '
            f'{entry.mapping.describe()}. Most common checkpoint key '
            f'prefixes: {prefixes or "none"}.'
            + (f' Try: {hints}.' if hints else ''))
    check_load_options(entry, label, fraction, result.missing,
                       result.unexpected,
                       [(k, c, m) for k, _, c, m in result.mismatched])


def check_load_options(entry: Any, label: str, fraction: float,
                       missing: Sequence[str], unexpected: Sequence[str],
                       mismatched: Sequence[Tuple[str, Any, Any]]) -> None:
    """Enforce ``min_loaded``, ``on_mismatch='error'`` and ``strict`` on
    what one load of ``entry`` found (``mismatched``: key, checkpoint shape,
    model shape), by mmext_init or by a backbone's own ``init_weights``.

    Example:
        >>> check_load_options(entry, label, 0.98, ['adapter.weight'], [], [])
        CheckpointError: ...strict=True and missing keys: adapter.weight
    """
    if entry.min_loaded is not None and fraction < entry.min_loaded:
        raise CheckpointError(
            f'{label}: {entry.checkpoint} provides {fraction:.1%} of the '
            f'module\'s parameter elements, below min_loaded='
            f'{entry.min_loaded}')
    shapes = ', '.join(f'{k} checkpoint {c} vs model {m}'
                       for k, c, m in mismatched)
    if entry.on_mismatch == 'error' and mismatched:
        raise CheckpointError(
            f'{label}: on_mismatch=\'error\' and shape mismatches: {shapes}')
    if entry.strict:
        missing = [m for m in missing if not is_counter(m)]
        problems = []
        if missing:
            problems.append(f'missing keys: {", ".join(missing)}')
        if unexpected:
            problems.append(f'unexpected keys: {", ".join(unexpected)}')
        if mismatched:
            problems.append(f'shape mismatches: {shapes}')
        if problems:
            raise CheckpointError(f'{label}: strict=True and ' +
                                  '; '.join(problems))
