"""What an ATen op's schema says about its arguments, parsed once per op.

The bottom layer of the package (it imports nothing of it): the write
tracker (:mod:`mmext_init.provenance.tracking`) and the deferred engine
(:mod:`mmext_init.deferred.ops`) both read which arguments an op writes.

Example:
    >>> import torch
    >>> schema = op_schema(torch.ops.aten.normal_.default)
    >>> schema.name, schema.writes, schema.generators
    ('normal_', ((0, 'self'),), ((3, 'generator'),))
    >>> op_schema(torch.ops.aten.view.default).view
    True
"""
from typing import Any, Dict, NamedTuple, Tuple

__all__ = ['OpSchema', 'op_schema']

Arg = Tuple[int, str]  # (position, name) of an argument


class OpSchema(NamedTuple):
    """The argument facts of one ATen op."""
    name: str  # without its namespace: 'uniform_'
    writes: Tuple[Arg, ...]  # the arguments it writes to
    generators: Tuple[Arg, ...]  # its ``Generator`` arguments
    view: bool  # writes nothing, and every result aliases an argument


_SCHEMAS: Dict[Any, OpSchema] = {}


def op_schema(func: Any) -> OpSchema:
    """The :class:`OpSchema` of ``func`` (an ``OpOverload``), cached.

    Example:
        >>> import torch
        >>> op_schema(torch.ops.aten.add.out).writes
        ((3, 'out'),)
    """
    found = _SCHEMAS.get(func)
    if found is None:
        found = _SCHEMAS[func] = _parse(func._schema)
    return found


def _parse(schema: Any) -> OpSchema:
    args = list(enumerate(schema.arguments))
    writes = tuple((i, a.name) for i, a in args
                   if a.alias_info is not None and a.alias_info.is_write)
    generators = tuple((i, a.name) for i, a in args
                       if 'Generator' in str(a.type))
    view = not writes and bool(schema.returns) and all(
        r.alias_info is not None for r in schema.returns)
    return OpSchema(schema.name.split('::')[-1], writes, generators, view)
