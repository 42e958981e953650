"""``INSERT_TYPES``: the registry of what an ``insert=[...]`` entry can add
to a built model, and :class:`InsertType`, the base its entries extend.

An insert type is built from the entry without ``type``/``targets``/
``layer``; :meth:`InsertType.check` then sees every target (before any is
changed) and :meth:`InsertType.insert` adds submodules to each, under new
names beside the target's own tensors (never renaming them), declaring
their init in their own ``init_cfg``.

Register a new type with ``@INSERT_TYPES.register_module()``; an entry
``dict(type='Tag', targets=...)`` then builds ``Tag()``.

Example:
    >>> import torch.nn as nn
    >>> class Tag(InsertType):
    ...     '''Adds a bias-free 1x1 marker layer (a toy type).'''
    ...     def insert(self, target, path):
    ...         target.tag = nn.Linear(1, 1, bias=False)
    ...         return ['tag']
    >>> fc = nn.Linear(2, 2)
    >>> tensor_names(fc, Tag().insert(fc, 'head.fc'))
    ['tag.weight']
"""
from typing import Dict, List, Optional

import torch
import torch.nn as nn
from mmengine.registry import Registry

__all__ = ['INSERT_TYPES', 'InsertType', 'tensor_names', 'child_name_free',
           'SET_ATTR', 'OFF_ATTR', 'is_switched_off']

INSERT_TYPES = Registry('insert type', scope='mmext_init',
                        locations=['mmext_init.inserting'])

#: what each child an entry inserted carries: its insert set's name (a
#: plain attribute, so copies and pickles keep it) ...
SET_ATTR = 'mmext_insert_set'
#: ... and, while that set is switched off, True
OFF_ATTR = 'mmext_insert_off'


def is_switched_off(child: nn.Module) -> bool:
    """Whether the insert set of ``child`` (a module an entry inserted) is
    switched off: its forward hook then leaves the target's output as it
    is (:func:`~mmext_init.inserting.sets.enable_insert_sets`). A plain
    ``__dict__`` read: it runs in every hooked forward.

    Example:
        >>> a = nn.Linear(2, 2)
        >>> is_switched_off(a), setattr(a, OFF_ATTR, True), is_switched_off(a)
        (False, None, True)
    """
    return child.__dict__.get(OFF_ATTR, False)


class InsertType:
    """What one ``insert`` entry adds to each of its targets.

    Subclasses take the entry's arguments in ``__init__`` (raising
    ``ValueError`` for bad ones), may refuse a target in :meth:`check`
    (``ValueError`` naming ``path`` and the target's class) and add
    submodules in :meth:`insert`, returning the names of the children added
    to ``target``. A type whose addition is linear in the target's own
    tensors sets ``foldable = True`` and implements :meth:`fold`, which
    ``mmext-merge`` calls to fold it into them.

    Example:
        >>> class Gate(InsertType):
        ...     def insert(self, target, path):
        ...         target.add_module('gate', nn.Identity())
        ...         return ['gate']
        >>> block = nn.Sequential(nn.Linear(2, 2))
        >>> Gate().insert(block, 'block'), tensor_names(block, ['gate'])
        (['gate'], [])
    """

    #: whether :meth:`fold` can fold what :meth:`insert` added into the
    #: target's own tensors (``mmext-merge``); the others stay modules
    foldable: bool = False

    def check(self, target: nn.Module, path: str) -> None:
        """Raise ``ValueError`` if ``target`` (at ``path``) is unsupported."""

    def insert(self, target: nn.Module, path: str) -> List[str]:
        """Add the modules to ``target``; return the new child names."""
        raise NotImplementedError

    def fold(self, target: nn.Module,
             path: str) -> Dict[str, Optional[torch.Tensor]]:
        """What folding this entry into ``target`` (at ``path``) makes of
        its ``state_dict``, by names relative to ``target``: a new value for
        each of the target's own tensors it changes (computed from the
        current values, in their dtype: ``mmext-merge`` calls it on the
        model in float64, in insertion order, writing each result back
        before the next entry's fold) and ``None`` for each inserted tensor
        the folded model no longer has. Only for ``foldable`` types.

        Raises:
            ValueError: naming ``path``, if this target cannot be folded
                (e.g. no tensor to fold a shift into).
        """
        raise NotImplementedError(
            f'{type(self).__name__} is not foldable into weights')


def tensor_names(module: nn.Module, children: List[str]) -> List[str]:
    """The ``state_dict`` names (relative to ``module``) of the parameters
    and persistent buffers under its ``children`` (dotted paths allowed),
    without reading any value (deferred parameters stay pending).

    Example:
        >>> block = nn.Sequential()
        >>> block.add_module('bn', nn.BatchNorm1d(2))
        >>> tensor_names(block, ['bn'])[-1]
        'bn.num_batches_tracked'
    """
    names = []
    for child in children:
        sub_tree = module.get_submodule(child)
        for path, sub in sub_tree.named_modules(prefix=child):
            names += [f'{path}.{n}' for n, t in sub.named_parameters(
                recurse=False) if t is not None]
            names += [
                f'{path}.{n}' for n, t in sub.named_buffers(recurse=False)
                if t is not None and n not in sub._non_persistent_buffers_set
            ]
    return names


def child_name_free(target: nn.Module, name: str, path: str) -> None:
    """Raise ``ValueError`` when ``target`` already has an attribute ``name``
    (an earlier insertion, or the model's own).

    Example:
        >>> child_name_free(nn.Linear(2, 2), 'lora_A', 'fc')
        >>> child_name_free(nn.Linear(2, 2), 'weight', 'fc')
        Traceback (most recent call last):
        ValueError: 'fc' (Linear) already has an attribute 'weight'
    """
    if hasattr(target, name):
        raise ValueError(f'{path!r} ({type(target).__name__}) already has an '
                         f'attribute {name!r}')
