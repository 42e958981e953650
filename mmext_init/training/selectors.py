r"""The SELECTOR grammar: which parameters a ``freeze``, ``rules`` or
``layer_decay`` entry (or an ``UnfreezeHook`` milestone) means.

A selector is ``'loaded'`` (the checkpoint provided all of the tensor),
``'new'`` (everything else: tensors no checkpoint provides, and *partly new*
ones, whose checkpoint part an ``adapt`` transform such as ``Classes``,
``Grow`` or ``InputChannels`` completes with new rows or channels), ``'all'``,
a dict, or a list of selectors (their union). A dict's keys are ANDed:

* ``provenance``: a ledger kind or a list of kinds (``'checkpoint'`` also
  selects partly new tensors: the checkpoint wrote part of them);
* ``name``: a regex matching the whole parameter name (one of its names,
  if tied);
* ``module_type``: class name(s), bases included: the class of the module
  holding the parameter or of any module containing it;
* ``source``: a regex matching the whole path of the checkpoint file it was
  loaded from;
* ``declared_by``: a regex matching the whole path of the module whose
  ``init_cfg`` declared its value;
* ``insert_type``: insert type name(s), bases included: tensors that an
  ``insert=[...]`` entry of one of these types added (``'LoRA'`` also
  selects a type extending ``LoRA``); ``insert_set``: of these insert sets
  (an entry's ``name``; ``'default'`` for the entries without one);
* ``exclude``: a selector (a list: their union); the parameters it does not
  match, e.g. ``dict(name=r'backbone\..*',
  exclude=dict(module_type='_BatchNorm'))``. (Not ``not``, an error naming
  ``exclude``: MMEngine's ``Config.pretty_text`` fails on a ``'not'`` key.)

Two recipes of the literature are one entry each (no preset keyword):

* BitFit (Ben Zaken et al. 2022), every bias (norms' too) and what is new
  trains: ``freeze=dict(exclude=['new', dict(name=r'.*\.bias')])``;
* LoRA+ (Hayou et al. 2024), LoRA's (and DoRA's) B at ``ratio`` x A's lr:
  ``rules=[dict(select=dict(insert_type='LoRA', name=r'.*\.lora_B\..*'),
  lr_mult=ratio)]``.

Regexes and class names match by the rules of :mod:`mmext_init.matching`
(``re.fullmatch``; a class or any of its bases). A selector (or a list
member) matching nothing is an error naming it and the closest names (or
the names a regex matches only part of). Tied parameters (one tensor under two names) are one
:class:`ParamInfo`, counted once.

Example:
    >>> import torch.nn as nn
    >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    >>> table = ParamTable.build(net, {'0.weight': Origin('checkpoint', 'a.pth', '')})
    >>> [p.name for p in select('loaded', table)]
    ['0.weight']
    >>> [p.name for p in select(dict(module_type='_BatchNorm'), table)]
    ['1.weight', '1.bias']
    >>> [p.name for p in select(dict(exclude=['loaded', dict(name=r'.*\.bias')]), table)]
    ['1.weight']
    >>> from mmext_init.provenance.inserted import mark_inserted
    >>> net[0].lora_B = nn.Linear(1, 2, bias=False)
    >>> mark_inserted(net[0].lora_B, 'inserted by LoRA(rank=1) from insert[0]')
    >>> table = ParamTable.build(net, {})
    >>> [p.name for p in select(dict(insert_type='LoRA'), table)]
    ['0.lora_B.weight']
    >>> select(dict(name=r'.*\.weigth'), table)
    Traceback (most recent call last):
    ...
    mmext_init.training.selectors.SelectorError: selector {'name': '.*\\.weigth'} matches no parameter: name='.*\\.weigth' matches none (closest names: ...)
"""
import re
from dataclasses import dataclass, field
from typing import (Any, Callable, Dict, FrozenSet, Iterable, List, Mapping,
                    Optional, Sequence, Tuple)

import torch.nn as nn

from ..errors import InitConfigError, close_names
from ..inserting.registry import INSERT_TYPES
from ..matching import class_names, full_match, name_regex, partial_hint
from ..provenance.inserted import InsertNote, inserted_notes, parse_note
from ..provenance.ledger import CHECKPOINT, KINDS

KEYWORDS = ('loaded', 'new', 'all')
SELECTOR_KEYS = ('provenance', 'name', 'module_type', 'source', 'declared_by',
                 'insert_type', 'insert_set', 'exclude')
REGEX_KEYS = ('name', 'source', 'declared_by')
SET_KEYS = ('module_type', 'insert_type', 'insert_set')  # ParamInfo.<key>s


class SelectorError(InitConfigError):
    """A selector is malformed or matches no parameter."""


@dataclass(frozen=True)
class Origin:
    """Where a parameter's value comes from, as selectors see it: the ledger
    ``kind`` (None: known only to be not loaded, before ``init_weights``),
    the checkpoint file (loaded ones only) and the declaring module path."""
    kind: Optional[str]
    source: Optional[str] = None
    declared_by: Optional[str] = None


@dataclass(eq=False)
class ParamInfo:
    """One parameter (all its names, if tied), its origin and the class
    names of the module holding it and of every module containing it."""
    name: str
    names: Tuple[str, ...]
    param: nn.Parameter
    origin: Origin
    module_types: FrozenSet[str]
    inserted: Optional[str] = None  # e.g. 'inserted by LoRA(rank=8) ...'
    insert_types: FrozenSet[str] = frozenset()  # of ``inserted``'s entry
    insert_sets: FrozenSet[str] = frozenset()  # that entry's set (one)
    # partly new: what the checkpoint provides, e.g. "Classes(...)"
    partly: Optional[str] = None

    @property
    def loaded(self) -> bool:
        """Whether the checkpoint provided all or part of it."""
        return self.origin.kind == CHECKPOINT

    @property
    def fully_loaded(self) -> bool:
        """Whether the checkpoint provided all of it (``'loaded'``)."""
        return self.loaded and self.partly is None


@dataclass
class ParamTable:
    """The parameters of a model, in ``named_parameters()`` order, with
    their origins; ``exact`` is False before ``init_weights`` (only
    loaded/not loaded is known then)."""
    params: List[ParamInfo] = field(default_factory=list)
    exact: bool = True

    @classmethod
    def build(cls, model: nn.Module, origins: Mapping[str, Origin],
              exact: bool = True) -> 'ParamTable':
        """The table of ``model``; a name missing from ``origins`` is new
        (``constructor`` when ``exact``, else unknown-but-not-loaded)."""
        types = _module_types(model)
        inserted = inserted_notes(model)
        default = Origin('constructor' if exact else None)
        by_id: Dict[int, List[str]] = {}
        tensors: Dict[int, nn.Parameter] = {}
        for name, p in model.named_parameters(remove_duplicate=False):
            by_id.setdefault(id(p), []).append(name)
            tensors[id(p)] = p
        params = []
        for key, names in by_id.items():
            first = names[0]
            owner = next((n for n in names if n in origins), first)
            note = inserted.get(first)
            parsed = parse_note(note)
            params.append(ParamInfo(
                first, tuple(names), tensors[key],
                origins.get(owner, default), types(first), note,
                entry_type_names(parsed),
                frozenset([parsed.set_name] if parsed else [])))
        return cls(params, exact)

    def names(self) -> List[str]:
        """Every parameter name (tied ones under each of their names)."""
        return [n for p in self.params for n in p.names]

    def mark_partly(self, partly: Mapping[str, str]) -> None:
        """Mark the parameters named in ``partly`` (name -> what the
        checkpoint provides of it) partly new (they are ``'new'``, not
        ``'loaded'``); the others not."""
        for info in self.params:
            info.partly = next((partly[n] for n in info.names if n in partly),
                               None)


def entry_type_names(parsed: Optional[InsertNote]) -> FrozenSet[str]:
    """The type of an ``insert`` entry, as the config wrote it, and the
    names of its class and bases (empty for None: not inserted).

    Example:
        >>> note = InsertNote(0, 'LoRA', 'LoRA(rank=8)', 'default')
        >>> sorted(entry_type_names(note))
        ['InsertType', 'LoRA']
    """
    if parsed is None:
        return frozenset()
    found = INSERT_TYPES.get(parsed.type_name)
    return frozenset({parsed.type_name}) | (
        class_names(found) if found is not None else frozenset())


def _module_types(model: nn.Module) -> Callable[[str], FrozenSet[str]]:
    """name -> class names (MRO) of its module and the modules above it."""
    own: Dict[str, FrozenSet[str]] = {
        path: class_names(m)
        for path, m in model.named_modules(remove_duplicate=False)}

    def types(name: str) -> FrozenSet[str]:
        parts = name.split('.')[:-1]
        found = set(own[''])
        for i in range(1, len(parts) + 1):
            found |= own.get('.'.join(parts[:i]), frozenset())
        return frozenset(found)

    return types


Test = Callable[[ParamInfo], bool]


def _as_list(value: Any) -> List[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _regex(key: str, value: Any, attr: Callable[[ParamInfo], Iterable[str]]
           ) -> Test:
    try:
        pattern = name_regex(str(value))
    except re.error as exc:
        raise SelectorError(f'{key}={value!r} is not a valid regex: {exc}')
    return lambda p: any(full_match(pattern, s) for s in attr(p))


def _key_test(key: str, value: Any, table: ParamTable) -> Test:
    """The test of one dict key."""
    if key == 'provenance':
        kinds = _as_list(value)
        wrong = [k for k in kinds if k not in KINDS]
        if wrong:
            raise SelectorError(
                f'provenance={value!r}: {wrong[0]!r} is not a ledger kind '
                f'(one of {", ".join(KINDS)})')
        if not table.exact and any(k != CHECKPOINT for k in kinds):
            raise SelectorError(
                f'provenance={value!r}: before init_weights() runs only '
                "'checkpoint' is known (select the rest with 'new')")
        return lambda p: p.origin.kind in kinds
    if key in SET_KEYS:
        types = set(_as_list(value))
        return lambda p: bool(types & getattr(p, key + 's'))
    if key == 'name':
        return _regex(key, value, lambda p: p.names)
    if key == 'exclude':
        chosen = {id(p) for p in select(value, table, repr(key))}
        return lambda p: id(p) not in chosen
    if key == 'source':
        return _regex(key, value, lambda p: (p.origin.source, ))
    return _regex(key, value, lambda p: (p.origin.declared_by, ))


def _options(key: str, table: ParamTable) -> List[str]:
    """What a dict key could have named, for 'closest names'."""
    if key == 'exclude':  # a selector, not a value
        return []
    seen: Dict[str, None] = {}
    for p in table.params:
        if key == 'name':
            values: Iterable[Any] = p.names
        elif key in SET_KEYS:
            values = sorted(getattr(p, key + 's'))
        else:
            values = (getattr(p.origin, {'provenance': 'kind'}.get(key, key)),)
        seen.update((str(v), None) for v in values if v is not None)
    return list(seen)


def _nothing(selector: Any, table: ParamTable) -> SelectorError:
    """The error for ``selector`` (a dict) matching nothing: the keys that
    match nothing on their own, with the closest names."""
    parts = []
    for key, value in selector.items():
        test = _key_test(key, value, table)
        if not any(test(p) for p in table.params):
            options = _options(key, table)
            hint = partial_hint(name_regex(str(value)), options) \
                if key in REGEX_KEYS else ''
            close = close_names(str(value), options)
            if key in ('insert_type', 'insert_set') and not options:
                hint = ' (no tensor of the model was added by insert=[...])'
            elif key == 'insert_set':
                hint = f' (the insert sets: {", ".join(options)})'
            parts.append(f'{key}={value!r} matches none' + (hint or (
                f' (closest names: {close})' if close else '')))
    if not parts:
        parts = ['each key matches some parameter, but none matches all']
    return SelectorError(f'selector {dict(selector)!r} matches no parameter: '
                         + '; '.join(parts))


def _keyword_nothing(selector: Any, table: ParamTable) -> SelectorError:
    """The error for a keyword matching nothing; for ``'loaded'``, the
    partly new parameters it leaves out, if any."""
    partly = [p for p in table.params if p.partly]
    why = ''
    if selector == 'loaded' and partly:
        why = (f": the checkpoint provides only part of {len(partly)} "
               f"(partly new, so 'new': they train), e.g. "
               f'{partly[0].name!r} <- {partly[0].partly}')
    return SelectorError(f'selector {selector!r} matches no parameter{why}')


def matcher(selector: Any, table: ParamTable) -> Test:
    """The test of one selector (not a list), checked for form."""
    if isinstance(selector, str):
        if selector not in KEYWORDS:
            close = close_names(selector, KEYWORDS)
            raise SelectorError(
                f'selector {selector!r} is not one of {", ".join(KEYWORDS)} '
                + (f'(did you mean {close}?)' if close else '(or a dict)'))
        if selector == 'all':
            return lambda p: True
        return (lambda p: p.fully_loaded) if selector == 'loaded' else \
            (lambda p: not p.fully_loaded)
    if not isinstance(selector, Mapping) or not selector:
        raise SelectorError(f'selector {selector!r}: expected one of '
                            f'{", ".join(KEYWORDS)}, a non-empty dict or a '
                            'list of them')
    wrong = [k for k in selector if k not in SELECTOR_KEYS]
    if 'not' in wrong:
        raise SelectorError(
            f"selector {dict(selector)!r}: the key 'not' is 'exclude' (a "
            "config holding a 'not' key fails in MMEngine's "
            'Config.pretty_text, which the Runner logs first)')
    if wrong:
        close = close_names(str(wrong[0]), SELECTOR_KEYS)
        raise SelectorError(
            f'selector {dict(selector)!r}: unknown key {wrong[0]!r}' +
            (f' (did you mean {close}?)' if close else
             f' (keys: {", ".join(SELECTOR_KEYS)})'))
    tests = [_key_test(k, v, table) for k, v in selector.items()]
    return lambda p: all(t(p) for t in tests)


def select(selector: Any, table: ParamTable,
           where: str = '') -> List[ParamInfo]:
    """The parameters ``selector`` matches, in table order; ``where`` (the
    config key, e.g. ``'paramwise_cfg.freeze'``) prefixes errors."""
    listed = isinstance(selector, (list, tuple))
    members: Sequence[Any] = selector if listed else [selector]
    if not members:
        raise SelectorError(f'{where}: an empty list selects nothing')
    chosen = set()
    try:
        for member in members:
            test = matcher(member, table)
            found = {id(p) for p in table.params if test(p)}
            if not found:
                raise _nothing(member, table) if isinstance(
                    member, Mapping) else _keyword_nothing(member, table)
            chosen |= found
    except SelectorError as exc:
        if not where:
            raise
        raise SelectorError(f'{where}: {exc}') from None
    return [p for p in table.params if id(p) in chosen]
