"""Running recorded ops (see :mod:`mmext_init.deferred`): each on its
target, with the dispatch mode and :class:`.replay.PendingParameter`
passing everything through; a run that fails midway leaves NaN, not raw
memory.

Example:
    >>> import torch
    >>> dst = torch.empty(2)
    >>> run_ops([], copy=(torch.ones(2), dst))   # no ops: a plain copy
    >>> dst.tolist()
    [1.0, 1.0]
"""
from typing import Iterable, List, Optional, Tuple

import torch

from .state import ENGINE, Op

__all__ = ['run_ops', 'poison']


def run_ops(ops: List[Tuple[Op, torch.Tensor]],
            copy: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> None:
    """Run recorded ops, each on its target, after the copy ``copy``
    (source, destination) if given. The replay observers
    (:func:`.debug.observe_replays`) see the targets and ``copy`` first. If
    an op fails, every target is poisoned (:func:`poison`) before the error
    propagates.

    Example:
        >>> import torch
        >>> from mmext_init.deferred.state import Op
        >>> t = torch.empty(3)
        >>> op = Op(0, torch.ops.aten.fill_.Scalar, (None, 2.0), {},
        ...         (0, 'self'), None)
        >>> run_ops([(op, t)])
        >>> t.tolist()
        [2.0, 2.0, 2.0]
    """
    if ENGINE.replay_observers:
        targets = [t for _, t in ops]
        for observe in list(ENGINE.replay_observers):
            observe(targets, copy)
    with ENGINE.replaying():
        try:
            with torch.no_grad():
                if copy is not None:
                    with torch._C.DisableTorchFunctionSubclass():
                        copy[1].copy_(copy[0])
                for op, target in ops:
                    args, kwargs = list(op.args), dict(op.kwargs)
                    if op.where[0] < len(args):
                        args[op.where[0]] = target
                    else:
                        kwargs[op.where[1]] = target
                    op.func(*args, **kwargs)
        except BaseException:
            poison([t for _, t in ops] + ([copy[1]] if copy else []))
            raise


def poison(tensors: Iterable[Optional[torch.Tensor]]) -> None:
    """NaN (0 in integer tensors) in each of ``tensors`` (None skipped): what
    a replay that failed midway (an interrupt, out of memory) was to compute
    holds no uninitialized memory that a forward pass, an optimizer step or
    a saved checkpoint could take for values.

    Example:
        >>> import torch
        >>> weight, steps = torch.empty(2), torch.empty(2, dtype=torch.long)
        >>> poison([weight, None, steps])
        >>> bool(weight.isnan().all()), steps.tolist()
        (True, [0, 0])
    """
    with ENGINE.replaying(), torch.no_grad(), \
            torch._C.DisableTorchFunctionSubclass():
        for t in tensors:
            if t is not None:
                t.fill_(float('nan') if t.is_floating_point()
                        or t.is_complex() else 0)
