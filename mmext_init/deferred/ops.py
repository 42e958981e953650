"""What an ATen op does to its arguments, for deferred construction-time init.

``op_info(func)`` tells (from the op's schema, cached) which one argument an
op writes, whether it may be deferred (a whole-tensor in-place write that
reads nothing else), whether it only looks at metadata or makes a view, and
whether it draws random numbers (and from which ``Generator`` argument).

Example:
    >>> import torch
    >>> info = op_info(torch.ops.aten.uniform_.default)
    >>> info.write, info.deferrable, info.seeded
    ((0, 'self'), True, True)
"""
import itertools
from typing import Any, Dict, Iterator, NamedTuple, Optional, Tuple

import torch

from ..aten import op_schema

_NEVER = frozenset({'resize_', 'resize_as_', 'set_', 'set_data', 'copy_',
                    'detach_', 'requires_grad_', 'share_memory_'})
_NO_READ = frozenset({'new_empty', 'new_empty_strided', 'new_zeros',
                      'new_ones', 'new_full', 'empty_like', 'zeros_like',
                      'ones_like', 'full_like', 'is_same_size', 'sym_size',
                      'sym_stride', 'sym_numel', 'sym_storage_offset'})
_DATA = (torch.Tensor, torch.UntypedStorage)


class OpInfo(NamedTuple):
    write: Optional[Tuple[int, str]]  # the one argument it writes
    deferrable: bool
    no_read: bool  # a view or metadata: nothing to replay first
    gen: Optional[Tuple[int, str]]  # its Generator argument
    seeded: bool  # draws random numbers


_INFO: Dict[Any, OpInfo] = {}


def op_info(func: Any) -> OpInfo:
    """What ``func`` (an ``OpOverload``) writes, reads and draws (cached).

    Example:
        >>> import torch
        >>> op_info(torch.ops.aten.fill_.Scalar).deferrable
        True
        >>> copy = torch.ops.aten.copy_.default    # reads its source
        >>> op_info(copy).deferrable
        False
    """
    info = _INFO.get(func)
    if info is None:
        schema = op_schema(func)
        writes, gens = schema.writes, schema.generators
        info = _INFO[func] = OpInfo(
            writes[0] if len(writes) == 1 else None,
            len(writes) == 1 and func.namespace == 'aten'
            and schema.name not in _NEVER
            and torch.Tag.inplace_view not in func.tags,
            schema.view or schema.name in _NO_READ, gens[0] if gens else None,
            bool(gens) or torch.Tag.nondeterministic_seeded in func.tags)
    return info


def arg(args: Tuple, kwargs: Dict, where: Tuple[int, str]) -> Any:
    return args[where[0]] if where[0] < len(args) else kwargs.get(where[1])


def leaves(args: Tuple, kwargs: Dict) -> Iterator[Any]:
    """Tensors and storages among ATen arguments (flat, or in lists)."""
    for x in itertools.chain(args, kwargs.values()):
        if isinstance(x, (list, tuple)):
            yield from (y for y in x if isinstance(y, _DATA))
        elif isinstance(x, _DATA):
            yield x


def storage_ptr(x: Any) -> Optional[int]:
    try:
        if isinstance(x, torch.Tensor):
            return x.untyped_storage().data_ptr() or None
        if isinstance(x, torch.UntypedStorage):
            return x.data_ptr() or None
    except (RuntimeError, NotImplementedError, TypeError):
        pass
    return None


def generator_of(info: OpInfo, args: Tuple, kwargs: Dict,
                 device: Any) -> Tuple[Any, Optional[torch.Generator]]:
    """(key, generator object) of a random op; the object is None where its
    state is not saved (default generators of other devices)."""
    gen = arg(args, kwargs, info.gen) if info.gen else None
    if gen is not None:
        return id(gen), gen
    kind = torch.device(device or 'cpu').type
    return ('default', kind), torch.default_generator if kind == 'cpu' \
        else None


def function_name(func: Any) -> str:
    """Name of a torch function as ``__torch_function__`` gets it; a
    property's getter or setter is named after the property.

    Example:
        >>> import torch
        >>> function_name(torch.Tensor.sum)
        'sum'
    """
    name = getattr(func, '__name__', '')
    if name in ('__get__', '__set__'):  # a property: its own name
        return getattr(getattr(func, '__self__', None), '__name__', name)
    return name


def nested_values(args: Tuple, kwargs: Dict) -> Iterator[Any]:
    """Everything in ``args``/``kwargs``, lists, tuples and dicts opened.

    Example:
        >>> sorted(nested_values((1, [2, (3, )]), {'k': {'j': 4}}))
        [1, 2, 3, 4]
    """
    todo = list(args) + list(kwargs.values())
    while todo:
        x = todo.pop()
        if isinstance(x, (list, tuple)):
            todo.extend(x)
        elif isinstance(x, dict):
            todo.extend(x.values())
        else:
            yield x
