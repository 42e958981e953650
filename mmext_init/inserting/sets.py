"""Insert sets: the entries of ``insert=[...]`` that share a ``name``
(``'default'`` for the entries without one), switched on and off on the
built model without rebuilding it.

A switched-off set's modules stay in the model, with their tensors (they
load, save and initialize as before), but their forward hooks leave each
target's output as it is: the model computes what it computes without
them. Switching does not freeze anything: freeze what does not run
(``paramwise_cfg.freeze=dict(insert_set=...)``), or DDP finds parameters
without a gradient.

Example:
    >>> import torch, torch.nn as nn, torch.nn.functional as F
    >>> import mmext_init
    >>> from mmext_init.inserting import insert_modules
    >>> model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    >>> _ = insert_modules(model, [
    ...     dict(type='LoRA', targets='0', rank=2, name='a'),
    ...     dict(type='LoRA', targets='1', rank=2, name='b')])
    >>> _ = model[0].lora_B.weight.data.fill_(1.0)  # as if 'a' trained
    >>> x = torch.randn(3, 4)
    >>> with_a = model(x)
    >>> enable_insert_sets(model, 'b')  # the sets that ran before
    ('a', 'b')
    >>> insert_sets(model)
    {'a': False, 'b': True}
    >>> plain = F.linear(F.linear(x, model[0].weight, model[0].bias),
    ...                  model[1].weight, model[1].bias)
    >>> torch.equal(model(x), plain), torch.equal(with_a, plain)
    (True, False)
    >>> _ = enable_insert_sets(model, ['a', 'b'])
    >>> torch.equal(model(x), with_a)
    True
"""
from typing import Dict, Iterable, Tuple, Union

import torch.nn as nn

from ..errors import InitConfigError, close_names
from .registry import OFF_ATTR, SET_ATTR, is_switched_off

__all__ = ['insert_sets', 'enable_insert_sets']


def insert_sets(model: nn.Module) -> Dict[str, bool]:
    """Each insert set of ``model`` and whether it runs.

    Args:
        model (nn.Module): a model built with ``insert=[...]`` (or any
            module holding inserted modules).

    Returns:
        dict: set name -> True (it runs) or False (switched off), in module
        order; empty for a model without inserted modules.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2))
        >>> from mmext_init.inserting import insert_modules
        >>> _ = insert_modules(net, [dict(type='LoRA', targets='0', rank=1)])
        >>> insert_sets(net), insert_sets(nn.Linear(2, 2))
        ({'default': True}, {})
    """
    found: Dict[str, bool] = {}
    for module in model.modules():
        name = module.__dict__.get(SET_ATTR)
        if name is not None:
            found.setdefault(name, not is_switched_off(module))
    return found


def enable_insert_sets(model: nn.Module,
                       names: Union[str, Iterable[str]]) -> Tuple[str, ...]:
    """Run exactly the insert sets ``names`` and switch the others off.

    Args:
        model (nn.Module): a model built with ``insert=[...]``.
        names (str or iterable of str): the sets to run (an entry's
            ``name``; ``'default'`` for the entries without one); ``()``
            switches every set off.

    Returns:
        tuple: the sets that ran before, to switch them back.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2))
        >>> from mmext_init.inserting import insert_modules
        >>> _ = insert_modules(net, [dict(type='LoRA', targets='0', rank=1,
        ...                                   name='a')])
        >>> enable_insert_sets(net, ()), insert_sets(net)
        (('a',), {'a': False})
        >>> enable_insert_sets(net, 'b')
        Traceback (most recent call last):
        mmext_init.errors.InitConfigError: enable_insert_sets: 'b' is no insert set of Sequential (its sets: a)

    Raises:
        InitConfigError: ``model`` holds no inserted module, or a name is
            no set of it (naming its sets).
    """
    wanted = [names] if isinstance(names, str) else list(names)
    known = insert_sets(model)
    if not known:
        raise InitConfigError(
            f'enable_insert_sets: {type(model).__name__} holds no module '
            'inserted by insert=[...]')
    unknown = [n for n in wanted if n not in known]
    if unknown:
        near = close_names(str(unknown[0]), known)
        raise InitConfigError(
            f'enable_insert_sets: {unknown[0]!r} is no insert set of '
            f'{type(model).__name__} (its sets: {", ".join(known)})' +
            (f'; did you mean {near}?' if near else ''))
    before = tuple(name for name, running in known.items() if running)
    for module in model.modules():
        name = module.__dict__.get(SET_ATTR)
        if name is not None:
            setattr(module, OFF_ATTR, name not in wanted)
    return before
