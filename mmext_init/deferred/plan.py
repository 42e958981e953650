"""What one replay of pending records does (see :mod:`.replay`): for each
record taken out of pending, the ops to run and on what, the pending copy to
fill, the aliases to update, the converted parameter to compute as built.

Example:
    >>> import torch.nn as nn
    >>> from mmext_init.deferred import deferred_construction
    >>> from mmext_init.deferred.replay import forget, sync_hooks
    >>> from mmext_init.deferred.state import ENGINE
    >>> with deferred_construction():
    ...     fc = nn.Linear(2, 2)
    >>> plan = ReplayPlan(check_version=True)
    >>> for pid in (id(fc.weight), id(fc.bias)):
    ...     plan.add(ENGINE.pending[pid])
    ...     forget(pid)
    >>> [target is fc.weight for _, target in plan.ops]
    [True, False]
    >>> plan.run()           # draws from the generator as it is now
    >>> bool(fc.weight.abs().max() <= 0.5 ** 0.5)
    True
    >>> sync_hooks()         # nothing pending: the global hooks go
"""
import weakref
from typing import Any, Dict, List, Optional, Tuple

import torch

from .copies import fill_copies, fill_views, moved_alias
from .ops import storage_ptr
from .order import random_ops, scratch_like
from .running import run_ops
from .state import Op

__all__ = ['ReplayPlan']


class ReplayPlan:
    """The work of one replay, gathered record by record (:meth:`add`), then
    done in record order (:meth:`run`); :meth:`targets` is what a failed
    replay must poison."""

    def __init__(self, check_version: bool) -> None:
        self.check_version = check_version
        self.ops: List[Tuple[Op, torch.Tensor]] = []
        self.copies: List[Tuple[Any, torch.Tensor]] = []
        self.views: List[Tuple[weakref.ref, torch.Tensor]] = []
        self.converted: List[Tuple[torch.Tensor, torch.Tensor]] = []
        self.scratches: Dict[Any, torch.Tensor] = {}  # values nobody reads

    def add(self, entry: Any) -> None:
        """Plan the replay of ``entry``, no longer pending. A parameter
        whose storage was replaced (``.data = x``), or (with
        ``check_version``) that something wrote outside the record, keeps
        that value; its random ops still draw, into a scratch tensor."""
        target = entry.ref()
        if target is None:  # died pending: its aliases take the values
            target = next((v for v in (r() for r in entry.aliases)
                           if v is not None), None)
        if target is not None:  # its aliases get the values it ends with
            self.views.extend((ref, target) for ref in entry.aliases)
        if self._keeps_its_value(entry, target):
            if not random_ops(entry):
                return
            target = scratch_like(entry.like, self.scratches)
        elif entry.source is None and (target.shape, target.dtype,
                                       target.device) != entry.like:
            target = self._as_built(target, entry.like)
        if entry.source is not None:
            self.copies.append((entry, target))
        else:
            self.ops.extend((op, target) for op in entry.ops)

    def _keeps_its_value(self, entry: Any,
                         target: Optional[torch.Tensor]) -> bool:
        return (target is None or storage_ptr(target) != entry.ptr
                or (self.check_version and entry.version is not None
                    and target._version != entry.version))

    def _as_built(self, target: torch.Tensor, like: Tuple) -> torch.Tensor:
        """A parameter converted while pending (``.double()``, ``.cuda()``)
        is computed as built, then converted, as without deferral (ops such
        as ``mul_`` start from its values, converted back): the scratch
        tensor to compute it in."""
        self.converted.append((target, target))  # the scratch comes next
        scratch = torch.empty(like[0], dtype=like[1], device=like[2])
        run_ops([], copy=(target, scratch))
        self.converted[-1] = (scratch, target)
        return scratch

    def run(self) -> None:
        """Run the ops in record order, convert what was computed as built,
        then fill the pending copies and the moved aliases."""
        self.ops.sort(key=lambda item: item[0].seq)
        run_ops(self.ops)
        for scratch, target in self.converted:
            run_ops([], copy=(scratch, target))
        fill_copies(self.copies)
        fill_views(self.views)

    def targets(self) -> List[Optional[torch.Tensor]]:
        """Every tensor the replay writes (None for an alias gone)."""
        return ([t for _, t in self.ops] + [t for _, t in self.converted] +
                [t for _, t in self.copies] +
                [moved_alias(*v) for v in self.views])
