"""Which modules an ``insert`` entry reaches: ``targets`` (a regex,
``re.fullmatch`` on the paths of ``model.named_modules()``) and/or
``layer`` (class names, base classes included); both given, a module must
match both. An entry reaching nothing is an :class:`InitConfigError` naming
the entry and the closest module paths (or class names).

Example:
    >>> import torch.nn as nn
    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Linear(8, 2))
    >>> [p for p, _ in select_targets(model, r'[02]', None, 'insert[0]')]
    ['0', '2']
    >>> [p for p, _ in select_targets(model, None, '_ConvNd', 'insert[0]')]
    ['0']
"""
import re
from typing import Collection, List, Optional, Sequence, Set, Tuple, Union

import torch.nn as nn

from ..errors import InitConfigError, close_names

__all__ = ['select_targets', 'closest_paths', 'class_names', 'insert_label',
           'check_forward_called']

Layer = Optional[Union[str, Sequence[str]]]


def class_names(module: nn.Module) -> Set[str]:
    """The names of ``module``'s class and all its bases.

    Example:
        >>> sorted(class_names(nn.ReLU()))
        ['Module', 'ReLU', 'object']
    """
    return {c.__name__ for c in type(module).__mro__}


def insert_label(index: int, type_name: str, targets: Optional[str],
                 layer: Layer) -> str:
    r"""How messages name an entry (a regex as a raw string, as written in
    a config).

    Example:
        >>> print(insert_label(0, 'LoRA', r'.*attn\.qkv', None))
        insert[0] (LoRA, targets=r'.*attn\.qkv')
    """
    parts = [str(type_name)]
    if isinstance(targets, str) and '\\' in targets and "'" not in targets:
        parts.append(f"targets=r'{targets}'")
    elif targets is not None:
        parts.append(f'targets={targets!r}')
    if layer is not None:
        parts.append(f'layer={layer!r}')
    return f'insert[{index}] ({", ".join(parts)})'


def _plain(pattern: str) -> str:
    """A regex as the text it most likely means: escapes undone, leading
    ``.*``/``^`` and a trailing ``$`` dropped."""
    text = re.sub(r'\\(.)', r'\1', pattern)
    return re.sub(r'^(\^|\.\*|\.\+)+|\$$', '', text)


def closest_paths(pattern: str, paths: Sequence[str]) -> str:
    """The module paths a ``targets`` regex that matches nothing may have
    meant: compared with the paths and their tails of as many parts as the
    regex (so ``.*attn\\.w_msa\\.qvk`` finds ``...attn.w_msa.qkv``),
    quoted.

    Example:
        >>> closest_paths(r'.*blocks\\.0\\.atn', ['s.blocks.0.attn', 's.norm'])
        "'s.blocks.0.attn'"
    """
    word = _plain(pattern)
    depth = word.count('.') + 1
    tails = {p: p for p in paths}
    for path in paths:
        tails.setdefault('.'.join(path.split('.')[-depth:]), path)
    near = re.findall(r"'([^']*)'", close_names(word, tails))
    return ' or '.join(repr(p) for p in dict.fromkeys(tails[n] for n in near))


def _no_match(model: nn.Module, pattern: Optional[str], layers: List[str],
              label: str, paths: List[str]) -> InitConfigError:
    """The error for an entry that reaches no module."""
    text = f'{label} matches no module of {type(model).__name__}'
    if pattern is not None:
        reached = [p for p in paths if re.fullmatch(pattern, p)]
        if reached and layers:
            return InitConfigError(
                f'{text}: {len(reached)} paths match targets (e.g. '
                f'{reached[0]!r}) but none is a {" or ".join(layers)}')
        near = closest_paths(pattern, paths)
        return InitConfigError(text + (f'; closest module paths: {near}'
                                       if near else ''))
    names = set().union(*(class_names(m) for m in model.modules()))
    near = ' or '.join(filter(None, (close_names(w, names) for w in layers)))
    return InitConfigError(text + (f'; did you mean {near}?' if near else ''))


def select_targets(model: nn.Module,
                   targets: Optional[str],
                   layer: Layer,
                   label: str,
                   skip: Collection[int] = ()) -> List[Tuple[str, nn.Module]]:
    """``(path, module)`` of every module of ``model`` the entry reaches, in
    ``named_modules`` order; modules whose ``id`` is in ``skip`` (inserted
    by an earlier entry) are never reached.

    Raises:
        InitConfigError: naming ``label``: neither ``targets`` nor ``layer``
            given, a bad regex, or nothing reached.
    """
    if targets is None and layer is None:
        raise InitConfigError(f'{label}: give targets= (a regex on module '
                              'paths) and/or layer= (class names)')
    layers = [layer] if isinstance(layer, str) else list(layer or [])
    try:
        pattern = None if targets is None else re.compile(targets)
    except (re.error, TypeError) as error:
        raise InitConfigError(f'{label}: targets is no regex: {error}') \
            from error
    found, paths = [], []
    for path, module in model.named_modules():
        if id(module) in skip:
            continue
        paths.append(path)
        if pattern is not None and not pattern.fullmatch(path):
            continue
        if layers and not class_names(module) & set(layers):
            continue
        found.append((path, module))
    if not found:
        raise _no_match(model, targets, layers, label, paths)
    return found


def check_forward_called(model: nn.Module, path: str) -> None:
    """Raise ``ValueError`` for a target whose parent never calls its
    ``forward`` (so no hook on it would run): the ``out_proj`` of an
    ``nn.MultiheadAttention``, whose weight the attention reads directly.

    Example:
        >>> mha = nn.MultiheadAttention(8, 2)
        >>> check_forward_called(mha, 'out_proj')
        Traceback (most recent call last):
        ValueError: 'out_proj' (NonDynamicallyQuantizableLinear): nn.MultiheadAttention reads its weight directly and never calls its forward, so nothing inserted there would run
    """
    if not path:
        return
    parent_path, _, name = path.rpartition('.')
    parent = model.get_submodule(parent_path)
    if isinstance(parent, nn.MultiheadAttention) and name == 'out_proj':
        raise ValueError(
            f'{path!r} ({type(getattr(parent, name)).__name__}): '
            'nn.MultiheadAttention reads its weight directly and never calls '
            'its forward, so nothing inserted there would run')
