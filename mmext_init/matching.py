r"""The two rules by which every config key that names things matches.

* A name regex (``insert`` ``targets``, ``adapt`` ``keys``, ``Pretrained``
  ``ignore_keys``, a selector's ``name``/``source``/``declared_by``,
  ``LSUVInitHook``'s ``include``) matches a name only when it matches the
  whole name (``re.fullmatch``): ``r'backbone\..*'`` matches
  ``backbone.conv.weight``, ``'backbone'`` only the name ``backbone``.
* A class name (``insert`` ``layer``, a selector's ``module_type``,
  ``LSUVInitHook``'s ``layers``) matches a module whose class or any of its
  base classes has that name (``_BatchNorm`` matches a ``BatchNorm2d``).

The exceptions are stock MMEngine's own arguments, which keep stock's
meaning: ``revise_keys`` pairs are applied with ``re.sub``, and the
``layer`` of an ``init_cfg`` entry matches the class and its direct bases.

Example:
    >>> import torch.nn as nn
    >>> regex = name_regex(r'backbone\..*')
    >>> full_match(regex, 'backbone.conv.weight'), full_match(regex, 'x.backbone.w')
    (True, False)
    >>> class_matches(nn.BatchNorm2d(2), ['_BatchNorm'])
    True
"""
import re
from typing import FrozenSet, Iterable, Optional, Pattern, Union

__all__ = ['name_regex', 'full_match', 'partial_hint', 'class_names',
           'class_matches', 'init_layer_names']


def name_regex(pattern: Union[str, Pattern[str]]) -> Pattern[str]:
    """``pattern`` compiled, to be matched with :func:`full_match`.

    Raises:
        re.error: ``pattern`` is no regex (callers name the config key).
        TypeError: ``pattern`` is no string.
    """
    return re.compile(pattern)


def full_match(regex: Pattern[str], name: Optional[str]) -> bool:
    """Whether ``regex`` matches all of ``name`` (None matches nothing)."""
    return name is not None and regex.fullmatch(name) is not None


def partial_hint(regex: Pattern[str], names: Iterable[Optional[str]]) -> str:
    r"""For a regex that matches no whole name: the names it matches only
    part of, and the pattern that matches them whole ('' if none).

    Example:
        >>> partial_hint(name_regex('backbone'), ['backbone.conv.w', 'head.w'])
        " (it matches only part of 1 name, e.g. 'backbone.conv.w': a pattern matches whole names, e.g. 'backbone.*')"
    """
    inside = [n for n in names if n is not None and regex.search(n)]
    if not inside:
        return ''
    start = all(regex.match(n) for n in inside)
    whole = f'{regex.pattern}.*' if start else f'.*{regex.pattern}.*'
    count = f"{len(inside)} name{'s' if len(inside) > 1 else ''}"
    return (f' (it matches only part of {count}, e.g. {inside[0]!r}: a '
            f'pattern matches whole names, e.g. {whole!r})')


def class_names(module: object) -> FrozenSet[str]:
    """The names of the class of ``module`` (or of ``module``, a class) and
    of all its base classes but ``object``.

    Example:
        >>> import torch.nn as nn
        >>> sorted(class_names(nn.ReLU()))
        ['Module', 'ReLU']
    """
    cls = module if isinstance(module, type) else type(module)
    return frozenset(c.__name__ for c in cls.__mro__ if c is not object)


def class_matches(module: object, names: Iterable[str]) -> bool:
    """Whether a name of ``names`` is one of :func:`class_names`."""
    return not class_names(module).isdisjoint(names)


def init_layer_names(module: object) -> FrozenSet[str]:
    """The names the ``layer`` of an ``init_cfg`` entry matches, as stock
    MMEngine's initializers match them (``weight_init._get_bases_name``):
    the class of ``module`` and its direct bases only.

    Example:
        >>> import torch.nn as nn
        >>> sorted(init_layer_names(nn.BatchNorm2d(2)))
        ['BatchNorm2d', '_BatchNorm']
    """
    cls = type(module)
    return frozenset({cls.__name__} | {b.__name__ for b in cls.__bases__})
