"""Map checkpoint keys onto a module's keys and say what matched.

Works on names and shapes only, so it never needs the weights in memory
(the dry-run matcher and the load planner share it).

Order of the key options of a ``Pretrained`` entry: ``ignore_keys`` (regexes
matching whole raw checkpoint keys) -> ``key_map`` (explicit raw checkpoint
key -> model key; a mapped key skips the next two steps) -> ``revise_keys``
(``re.sub`` pairs, in order) -> ``prefix`` (keep the keys under it and strip it).

Example:
    >>> mapping = KeyMapping(prefix='backbone.')
    >>> result = match_keys({'conv.weight': (8, 3, 3, 3)},
    ...                     {'backbone.conv.weight': (8, 3, 3, 3)}, mapping)
    >>> result.loaded
    {'conv.weight': 'backbone.conv.weight'}
"""
import math
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import (Container, Dict, Iterable, List, Mapping, Optional,
                    Sequence, Tuple)

from ..matching import full_match, name_regex

Shape = Tuple[int, ...]


@dataclass(frozen=True)
class KeyMapping:
    """The key options of one ``Pretrained`` entry."""
    prefix: Optional[str] = None
    revise_keys: Sequence[Tuple[str, str]] = ()
    ignore_keys: Sequence[str] = ()
    key_map: Tuple[Tuple[str, str], ...] = ()
    match: str = 'exact'  # or 'suffix' (see suffix_match)

    def map_keys(self, keys: Iterable[str]) -> Dict[str, str]:
        """``{model_key: checkpoint_key}`` for the checkpoint keys that survive.

        Raises ``ValueError`` when two checkpoint keys map to one model key.

        Example:
            >>> KeyMapping(revise_keys=[(r'^model\\.', '')]).map_keys(['model.fc.w'])
            {'fc.w': 'model.fc.w'}
        """
        ignore = [name_regex(p) for p in self.ignore_keys]
        revise = [(re.compile(p), r) for p, r in self.revise_keys]
        prefix = self.prefix
        if prefix and not prefix.endswith('.'):
            prefix += '.'
        explicit = dict(self.key_map)
        out: Dict[str, str] = {}
        for key in keys:
            if any(full_match(p, key) for p in ignore):
                continue
            if key in explicit:
                new = explicit[key]
                if new in out:
                    raise ValueError(
                        f'checkpoint keys {out[new]!r} and {key!r} both map '
                        f'to {new!r}; adjust key_map')
                out[new] = key
                continue
            new = key
            for pattern, repl in revise:
                new = pattern.sub(repl, new)
            if prefix:
                if not new.startswith(prefix):
                    continue
                new = new[len(prefix):]
            if new in out:
                raise ValueError(
                    f'checkpoint keys {out[new]!r} and {key!r} both map to '
                    f'{new!r}; adjust revise_keys/ignore_keys')
            out[new] = key
        return out

    def describe(self) -> str:
        """The config text of this mapping, e.g. ``prefix='backbone.'``."""
        parts = []
        if self.prefix:
            parts.append(f'prefix={self.prefix!r}')
        if self.revise_keys:
            pairs = ', '.join(f'(r{p!r}, {r!r})' for p, r in self.revise_keys)
            parts.append(f'revise_keys=[{pairs}]')
        if self.ignore_keys:
            parts.append(f'ignore_keys={list(self.ignore_keys)!r}')
        if self.key_map:
            parts.append(f'key_map={dict(self.key_map)!r}')
        if self.match != 'exact':
            parts.append(f'match={self.match!r}')
        return ', '.join(parts) or 'no key mapping'

    def describe_change(self, current: 'KeyMapping') -> str:
        """The config text of this mapping suggested instead of
        ``current``: ``no prefix`` where it drops ``current``'s prefix.

        Example:
            >>> KeyMapping().describe_change(KeyMapping(prefix='backbone.'))
            'no prefix'
        """
        if not current.prefix or self.prefix:
            return self.describe()
        rest = replace(self, prefix=None)
        return 'no prefix' + (f', {rest.describe()}'
                              if rest != KeyMapping() else '')


@dataclass
class MatchResult:
    """How a checkpoint's keys line up with a module's keys."""
    loaded: Dict[str, str] = field(default_factory=dict)  # model -> ckpt key
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)  # checkpoint keys
    mismatched: List[Tuple[str, str, Shape, Shape]] = field(
        default_factory=list)  # (model key, ckpt key, ckpt shape, model shape)
    # partly adapted tensors: model key -> elements the checkpoint provides
    partly: Dict[str, int] = field(default_factory=dict)

    def loaded_fraction(self, model_shapes: Mapping[str, Shape],
                        counted: Optional[Iterable[str]] = None) -> float:
        """Fraction of the elements of ``counted`` (default: all) loaded,
        the checkpoint's part of partly adapted tensors included."""
        names = model_shapes if counted is None else counted
        sizes = {n: math.prod(int(s) for s in model_shapes[n]) for n in names}
        return element_fraction(sizes, self.loaded, self.partly)


def element_fraction(sizes: Mapping[str, int], loaded: Container[str],
                     partly: Optional[Mapping[str, int]] = None) -> float:
    """Fraction of the elements of ``sizes`` (name -> element count) that a
    load provides: all of each name in ``loaded``, ``partly[name]`` of a
    partly adapted one; 0.0 when ``sizes`` holds no element.

    Example:
        >>> element_fraction({'w': 6, 'b': 2}, {'b'})
        0.25
        >>> element_fraction({'w': 6, 'b': 2}, {'b'}, partly={'w': 3})
        0.625
    """
    partly = partly or {}
    total = sum(sizes.values())
    got = sum(size if name in loaded else partly.get(name, 0)
              for name, size in sizes.items())
    return got / total if total else 0.0


def match_keys(model_shapes: Mapping[str, Shape],
               ckpt_shapes: Mapping[str, Shape],
               mapping: KeyMapping) -> MatchResult:
    """Match checkpoint tensors to model tensors by mapped name and shape.

    Example:
        >>> r = match_keys({'w': (2, 2)}, {'w': (3, 3)}, KeyMapping())
        >>> r.mismatched
        [('w', 'w', (3, 3), (2, 2))]
    """
    mapped = mapping.map_keys(ckpt_shapes)
    if mapping.match == 'suffix':
        rest = {k: v for k, v in mapped.items() if k not in model_shapes}
        missing = [k for k in model_shapes if k not in mapped]
        for model_key, key in suffix_match(missing, rest).items():
            mapped[model_key] = rest[key]
            del mapped[key]
    result = MatchResult()
    for name, shape in model_shapes.items():
        ckpt_key = mapped.get(name)
        if ckpt_key is None:
            result.missing.append(name)
        elif tuple(ckpt_shapes[ckpt_key]) != tuple(shape):
            result.mismatched.append(
                (name, ckpt_key, tuple(ckpt_shapes[ckpt_key]), tuple(shape)))
        else:
            result.loaded[name] = ckpt_key
    result.unexpected = [
        ckpt for model_key, ckpt in mapped.items()
        if model_key not in model_shapes
    ]
    return result


def _is_dotted_suffix(a: str, b: str) -> bool:
    return a == b or a.endswith('.' + b) or b.endswith('.' + a)


def suffix_match(model_keys: Iterable[str],
                 ckpt_keys: Iterable[str]) -> Dict[str, str]:
    """Pair keys where one is a dotted suffix of the other; for each model
    key the longest match wins. Two candidates of equal length, or one
    checkpoint key that is the best match of two model keys, are an error
    listing both (as detectron2's ``align_and_update_state_dicts``).

    Example:
        >>> suffix_match(['backbone.stem.conv.weight'], ['stem.conv.weight'])
        {'backbone.stem.conv.weight': 'stem.conv.weight'}
        >>> suffix_match(['a.fc.w', 'b.fc.w'], ['fc.w'])
        Traceback (most recent call last):
        ...
        ValueError: match='suffix': checkpoint key 'fc.w' is the best match of model keys 'a.fc.w' and 'b.fc.w'; use key_map or revise_keys
    """
    ckpt_keys = list(ckpt_keys)
    out: Dict[str, str] = {}
    claimed: Dict[str, str] = {}  # checkpoint key -> model key
    for model_key in model_keys:
        best, best_len, tied = None, 0, None
        for key in ckpt_keys:
            if not _is_dotted_suffix(model_key, key):
                continue
            length = min(len(model_key), len(key))
            if length > best_len:
                best, best_len, tied = key, length, None
            elif length == best_len:
                tied = key
        if tied is not None:
            raise ValueError(
                f'match=\'suffix\': model key {model_key!r} matches '
                f'checkpoint keys {best!r} and {tied!r} equally well; use '
                'key_map or revise_keys')
        if best is None:
            continue
        if best in claimed:
            raise ValueError(
                f'match=\'suffix\': checkpoint key {best!r} is the best '
                f'match of model keys {claimed[best]!r} and {model_key!r}; '
                'use key_map or revise_keys')
        claimed[best] = model_key
        out[model_key] = best
    return out


def top_prefixes(keys: Iterable[str], depth: int = 1) -> Counter:
    """Count the dotted prefixes of ``depth`` components.

    Example:
        >>> top_prefixes(['backbone.a.w', 'backbone.b.w', 'neck.w'])
        Counter({'backbone.': 2, 'neck.': 1})
    """
    out: Counter = Counter()
    for key in keys:
        parts = key.split('.')
        if len(parts) > depth:
            out['.'.join(parts[:depth]) + '.'] += 1
    return out


def _candidates(current: KeyMapping, model_shapes: Mapping[str, Shape],
                ckpt_shapes: Mapping[str, Shape]) -> List[KeyMapping]:
    """``current`` with one option changed: no ``prefix``, another
    ``prefix`` (from the keys its other options make), a leading component
    added by ``revise_keys`` (without ``prefix``), or ``match='suffix'``."""
    try:
        keys = replace(current, prefix=None).map_keys(ckpt_shapes)
    except ValueError:
        keys = {}
    out: List[KeyMapping] = [replace(current, prefix=None)]
    for depth in (1, 2):
        for prefix, _ in top_prefixes(keys, depth).most_common(8):
            out.append(replace(current, prefix=prefix))
    for prefix, _ in top_prefixes(model_shapes).most_common(8):
        out.append(replace(current, prefix=None, revise_keys=tuple(
            current.revise_keys) + ((r'^', prefix), )))
    out.append(replace(current, match='suffix'))
    return [m for m in out if m != current]


def suggest_mappings(model_shapes: Mapping[str, Shape],
                     ckpt_shapes: Mapping[str, Shape],
                     limit: int = 3,
                     current: Optional[KeyMapping] = None,
                     counted: Optional[Sequence[str]] = None
                     ) -> List[Tuple[KeyMapping, float]]:
    """Key mappings that would load more than ``current`` (default: no key
    options), best first, with the fraction of the elements of ``counted``
    (default: all of the module's) each would load.

    Each candidate is ``current`` with one option changed: dropping its
    ``prefix``, taking another sub-tree of the checkpoint (``prefix``),
    adding a leading component to its keys (``revise_keys``), or
    ``match='suffix'``; the other options of ``current`` are kept. A
    candidate that loads no more than ``current`` would not change the
    result and is not suggested. Ranked by what they would load (the
    order of the list above among equals).

    Example:
        >>> suggest_mappings({'conv.w': (1, )}, {'backbone.conv.w': (1, )})
        [(KeyMapping(prefix='backbone.', ...), 1.0)]
        >>> whole = {'backbone.conv.w': (1, ), 'head.fc.w': (1, )}
        >>> [(m.describe_change(KeyMapping(prefix='backbone.')), f)
        ...  for m, f in suggest_mappings(whole, whole,
        ...                               current=KeyMapping(prefix='backbone.'))]
        [('no prefix', 1.0), ("prefix='backbone.', match='suffix'", 0.5)]
    """
    current = current or KeyMapping()

    def loads(mapping: KeyMapping) -> Optional[float]:
        try:
            result = match_keys(model_shapes, ckpt_shapes, mapping)
        except ValueError:
            return None
        return result.loaded_fraction(model_shapes, counted)

    now = loads(current) or 0.0
    scored = []
    for mapping in _candidates(current, model_shapes, ckpt_shapes):
        frac = loads(mapping)
        if frac is not None and frac > now and \
                all(m != mapping for m, _ in scored):
            scored.append((mapping, frac))
    scored.sort(key=lambda item: -item[1])
    return scored[:limit]
