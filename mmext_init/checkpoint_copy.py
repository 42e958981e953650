"""Step 3 of an init session: copy each planned checkpoint tensor once.

The outermost ``Pretrained`` wins where two provide the same tensor (stock
MMEngine applies a parent's after its children's); partly adapted tensors
get the checkpoint's region after every full copy. Each copy is recorded as
``checkpoint`` provenance; the pages of a memory-mapped source are given back
once copied.
"""
from typing import Dict, List, Tuple

import torch

from .pretrained import LoadPlan, all_finite
from .provenance import CHECKPOINT, Provenance
from .tracking import WriteTracker


def apply_loads(plans: List[LoadPlan], tensors: Dict[str, torch.Tensor],
                tracker: WriteTracker) -> None:
    """Copy what ``plans`` provide into ``tensors`` (the model's, by name),
    each tensor once, and record its provenance in ``tracker``.

    Example:
        >>> apply_loads(session.all_plans(), model.state_dict(keep_vars=True),
        ...             session.tracker)
    """
    final: Dict[str, LoadPlan] = {}

    def depth(plan: LoadPlan) -> int:
        return plan.module_path.count('.') if plan.module_path else -1

    for plan in sorted(plans, key=depth, reverse=True):
        for name in plan.copies:
            final[name] = plan  # outer plans come later and win
    with torch.no_grad():
        for name, plan in final.items():
            _copy(plan, name, tensors[name], False, tracker)
        for plan in plans:  # a full copy elsewhere wins
            for name in plan.partial:
                if name not in final:
                    _copy(plan, name, tensors[name], True, tracker)


def _copy(plan: LoadPlan, name: str, dst: torch.Tensor, partial: bool,
          tracker: WriteTracker) -> None:
    """Copy one checkpoint tensor (or the checkpoint part of an adapted
    one) into ``dst`` and record its provenance."""
    # a plain copy is checked for NaN/Inf after it lands: the check then
    # reads resident memory instead of faulting the file's pages in twice
    late_check = (plan.entry.check_finite and not partial
                  and name not in plan.adapted)
    src, adapted = plan.fetch(name, tuple(dst.shape), check=not late_check)
    key = plan.source.origin(plan.copies.get(name) or plan.partial[name])
    notes: Tuple[str, ...] = ()
    if adapted is not None:
        notes += (adapted.description, )
        plan.record.adapted.append((name, adapted.description))
    if partial:
        before = tracker.written.get(name)
        rest = before.describe() if before else 'constructor default'
        dst[adapted.region] = src[adapted.region].to(dst.dtype)
        notes += (f'rest: {rest}', )
    else:
        if src.dtype != dst.dtype:
            notes += (f'cast {src.dtype} -> {dst.dtype}', )
            plan.record.cast.append((name, str(src.dtype),
                                     str(dst.dtype)))
        dst.copy_(src)
        if adapted is None:  # the file's own tensor: done with its pages
            plan.source.release(plan.copies[name], src)
        if late_check and not all_finite(dst):
            raise plan.non_finite(plan.copies[name], dst)
    args = {'prefix': plan.entry.prefix} if plan.entry.prefix else None
    tracker.record(
        name,
        Provenance(CHECKPOINT, plan.entry.checkpoint, plan.module_path,
                   key, args, notes))
