"""Which modules an ``insert`` entry reaches: ``targets`` (a regex that
must match a whole path of ``model.named_modules()``) and/or ``layer``
(class names, base classes included), by the rules of
:mod:`mmext_init.matching`; both given, a module must match both. An entry
reaching nothing is an :class:`InitConfigError` naming
the entry and the closest module paths (or class names); so is each branch
of an alternation in ``targets`` (``.*attn\\.(qkv|porj)``, or ``a|b`` at the
top level) that matches no module path, though the others do.

Example:
    >>> import torch.nn as nn
    >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Linear(8, 2))
    >>> [p for p, _ in select_targets(model, r'[02]', None, 'insert[0]')]
    ['0', '2']
    >>> [p for p, _ in select_targets(model, None, '_ConvNd', 'insert[0]')]
    ['0']
"""
import re
from typing import (Collection, Iterator, List, Optional, Sequence, Tuple,
                    Union)

import torch.nn as nn

from ..errors import InitConfigError, close_names
from ..matching import (class_matches, class_names, full_match,
                        name_regex, partial_hint)

__all__ = ['select_targets', 'closest_paths', 'insert_label',
           'check_forward_called', 'check_branches']

Layer = Optional[Union[str, Sequence[str]]]


def regex_text(pattern: object) -> str:
    r"""A regex as written in a config: a raw string where it has a
    backslash (and no quote), else its repr.

    Example:
        >>> print(regex_text(r'.*attn\.qkv'), regex_text('a|b'))
        r'.*attn\.qkv' 'a|b'
    """
    if isinstance(pattern, str) and '\\' in pattern and "'" not in pattern:
        return f"r'{pattern}'"
    return repr(pattern)


def insert_label(index: int, type_name: str, targets: Optional[str],
                 layer: Layer) -> str:
    r"""How messages name an entry (a regex as a raw string, as written in
    a config).

    Example:
        >>> print(insert_label(0, 'LoRA', r'.*attn\.qkv', None))
        insert[0] (LoRA, targets=r'.*attn\.qkv')
    """
    parts = [str(type_name)]
    if targets is not None:
        parts.append(f'targets={regex_text(targets)}')
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
        regex = name_regex(pattern)
        reached = [p for p in paths if full_match(regex, p)]
        if reached and layers:
            return InitConfigError(
                f'{text}: {len(reached)} paths match targets (e.g. '
                f'{reached[0]!r}) but none is a {" or ".join(layers)}')
        hint = partial_hint(regex, paths)
        near = closest_paths(pattern, paths)
        return InitConfigError(text + (hint or (
            f'; closest module paths: {near}' if near else '')))
    names = set().union(*(class_names(m) for m in model.modules()))
    near = ' or '.join(filter(None, (close_names(w, names) for w in layers)))
    return InitConfigError(text + (f'; did you mean {near}?' if near else ''))


def _structure(pattern: str) -> Iterator[Tuple[int, str]]:
    """``(index, char)`` of the ``(``, ``)`` and ``|`` of ``pattern`` that
    are not escaped and not inside a character class."""
    i, klass = 0, False
    while i < len(pattern):
        char = pattern[i]
        if char == '\\':
            i += 1
        elif klass or char == '[':
            klass = char != ']' if klass else True
        elif char in '()|':
            yield i, char
        i += 1


def _groups(pattern: str) -> List[Tuple[int, int]]:
    """(start, end) of the body of the whole pattern and of each group of
    it whose branches may be taken one at a time (inside its parentheses):
    not a lookaround, conditional or backreference group, and neither it
    nor a group around it under a quantifier."""
    groups, stack = [(0, len(pattern), True)], []
    for i, char in _structure(pattern):
        if char == '(':
            stack.append(i)
        elif char == ')' and stack:
            start = stack.pop()
            special = re.match(r'\(\?(?:[=!]|<[=!]|\()', pattern[start:])
            quantified = re.match(r'[*+?{]', pattern[i + 1:i + 2])
            groups.append((start + 1, i, not special and not quantified))
    return [(a, b) for a, b, plain in groups
            if plain and all(ok for c, d, ok in groups if c < a and b < d)]


def _branches(pattern: str) -> List[Tuple[str, str]]:
    r"""``(branch, pattern with only that branch)`` for each branch of each
    plain alternation of ``pattern`` (the top level and groups not under a
    quantifier), as :func:`select_targets` checks them.

    Example:
        >>> [b for b, _ in _branches(r'.*attn\.(qkv|porj)')]
        ['qkv', 'porj']
        >>> _branches(r'a|b'), _branches(r'(?:a|b)')
        ([('a', 'a'), ('b', 'b')], [('a', '(?:a)'), ('b', '(?:b)')])
        >>> _branches(r'(a|b)+'), _branches(r'x[|]y'), _branches(r'x(?!a|b)')
        ([], [], [])
    """
    out = []
    for inner, close in _groups(pattern):
        body = pattern[inner:close]
        if inner and body.startswith('?'):  # (?:...), (?P<n>...)
            head = re.match(r'\?(?:P<[^>]*>|[a-zA-Z]*:)', body)
            if head is None:
                continue
            inner += head.end()
            body = body[head.end():]
        cuts = _top_bars(body)
        if not cuts:
            continue
        bounds = [-1] + cuts + [len(body)]
        for a, b in zip(bounds, bounds[1:]):
            branch = body[a + 1:b]
            out.append((branch, pattern[:inner] + branch + pattern[close:]))
    return out


def _top_bars(body: str) -> List[int]:
    """Positions of the ``|`` of ``body`` outside its groups."""
    cuts, depth = [], 0
    for i, char in _structure(body):
        depth += {'(': 1, ')': -1}.get(char, 0)
        if char == '|' and depth == 0:
            cuts.append(i)
    return cuts


def check_branches(targets: str, paths: Sequence[str], label: str) -> None:
    r"""Each branch of an alternation in ``targets`` (``(qkv|proj)``, or
    ``a|b`` at the top level) must reach one of ``paths`` (the modules of
    the entry's ``layer``): one that matches none is an
    :class:`InitConfigError` naming it (a typo there would otherwise
    silently insert into the other branches only).

    Example:
        >>> check_branches(r'.*attn\.(qkv|porj)',
        ...                ['b.attn', 'b.attn.qkv', 'b.attn.proj'], 'insert[0]')
        Traceback (most recent call last):
        ...
        mmext_init.errors.InitConfigError: insert[0]: the alternative 'porj' of targets matches no module path (r'.*attn\.(porj)' reaches none); closest module paths: 'b.attn.proj'
    """
    for branch, alone in _branches(targets):
        try:
            regex = name_regex(alone)
        except re.error:  # a branch that needs the others (backreference)
            continue
        if not any(full_match(regex, p) for p in paths):
            near = closest_paths(alone, paths)
            raise InitConfigError(
                f'{label}: the alternative {branch!r} of targets matches no '
                f'module path ({regex_text(alone)} reaches none)' +
                (f'; closest module paths: {near}' if near else ''))


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
        pattern = None if targets is None else name_regex(targets)
    except (re.error, TypeError) as error:
        raise InitConfigError(f'{label}: targets is no regex: {error}') \
            from error
    found, paths, of_layer = [], [], []
    for path, module in model.named_modules():
        if id(module) in skip:
            continue
        paths.append(path)
        if layers and not class_matches(module, layers):
            continue
        of_layer.append(path)
        if pattern is None or full_match(pattern, path):
            found.append((path, module))
    if not found:
        raise _no_match(model, targets, layers, label, paths)
    if targets is not None:
        check_branches(targets, of_layer, label)
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
