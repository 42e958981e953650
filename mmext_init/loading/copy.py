"""Step 3 of an init session: copy each planned checkpoint tensor once.

The outermost ``Pretrained`` wins where two provide the same tensor (stock
MMEngine applies a parent's after its children's); partly adapted tensors
get the checkpoint's region after every full copy. Each copy is recorded as
``checkpoint`` provenance; the pages of a memory-mapped source are given back
once copied.

All or nothing: a damaged or non-finite checkpoint leaves the model
untouched by the load, never half-loaded. Every source tensor is read
(readable, and free of NaN/Inf unless ``check_finite=False``) before the
first model tensor is written, except the full copies into tensors nothing
wrote yet (deferred init dropped for the copy): those are checked while
they are copied, a chunk at a time (:func:`copy_finite`, the check's read
bringing the chunk into cache for the copy: one pass over the file instead
of two), and if one is not finite, every tensor the load wrote that way is
named in the error's ``spoiled``, which the session gives its constructor
init back.
"""
from typing import AbstractSet, Dict, List, Tuple

import torch

from ..errors import NonFiniteTensorError
from .plan import LoadPlan, all_finite
from ..provenance.ledger import CHECKPOINT, Provenance
from ..provenance.tracking import WriteTracker

Copy = Tuple[LoadPlan, str, bool]  # plan, model tensor name, partial

#: elements checked, then copied, at a time by :func:`copy_finite` (4 MiB
#: of float32: in cache between the check and the copy)
CHUNK = 1 << 20


def apply_loads(plans: List[LoadPlan], tensors: Dict[str, torch.Tensor],
                tracker: WriteTracker,
                unwritten: AbstractSet[str] = frozenset()) -> None:
    """Copy what ``plans`` provide into ``tensors`` (the model's, by name),
    each tensor once, and record its provenance in ``tracker``; check every
    source first (:func:`check_sources`), so a failure writes nothing.
    ``unwritten`` names tensors whose memory nothing wrote yet (deferred
    init dropped for the copy): see :func:`check_sources`.

    Example:
        >>> import os, tempfile, torch.nn as nn
        >>> from mmext_init.loading.options import PretrainedOptions
        >>> from mmext_init.loading.plan import plan_load
        >>> path = os.path.join(tempfile.mkdtemp(), 'fc.pth')
        >>> torch.save({'weight': torch.ones(2, 3)}, path)
        >>> fc = nn.Linear(3, 2)
        >>> tensors = fc.state_dict(keep_vars=True)
        >>> tracker = WriteTracker(tensors)
        >>> apply_loads([plan_load(fc, '', PretrainedOptions(path), 'fc')],
        ...             tensors, tracker)
        >>> fc.weight.sum().item(), list(tracker.written)
        (6.0, ['weight'])
        >>> tracker.written['weight'].kind, tracker.written['weight'].key
        ('checkpoint', 'weight')
    """
    todo = planned_copies(plans)
    in_copy = [c for c in todo if checks_in_copy(c, unwritten)]
    checked_first = [c for c in todo if not checks_in_copy(c, unwritten)]
    check_sources(checked_first)
    spoiled: List[torch.Tensor] = []
    with torch.no_grad():
        for plan, name, _ in in_copy:  # first: a failure here writes no other
            spoiled.append(tensors[name])
            _copy(plan, name, tensors[name], False, tracker, True, spoiled)
        for plan, name, partial in checked_first:  # full copies, then partial
            _copy(plan, name, tensors[name], partial, tracker)


def checks_in_copy(copy: Copy, unwritten: AbstractSet[str]) -> bool:
    """Whether ``copy`` is checked while copied (:func:`copy_finite`): a
    full, unadapted copy, checked, into a tensor nothing wrote yet."""
    plan, name, partial = copy
    return (plan.entry.check_finite and not partial and name in unwritten
            and name not in plan.adapted)


def copy_finite(dst: torch.Tensor, src: torch.Tensor) -> bool:
    """Copy ``src`` into ``dst`` unless it holds NaN/Inf, checking (then
    copying) :data:`CHUNK` elements at a time; False at the first
    non-finite chunk, ``dst`` then partly written.

    Example:
        >>> dst = torch.zeros(3)
        >>> copy_finite(dst, torch.ones(3)), dst.tolist()
        (True, [1.0, 1.0, 1.0])
        >>> copy_finite(dst, torch.tensor([2.0, float('inf'), 2.0]))
        False
    """
    chunked = (src.dtype == dst.dtype and src.shape == dst.shape
               and src.is_contiguous() and dst.is_contiguous()
               and src.numel() > CHUNK)
    if not chunked:
        if not all_finite(src):
            return False
        dst.copy_(src)
        return True
    flat_src, flat_dst = src.view(-1), dst.view(-1)
    for start in range(0, flat_src.numel(), CHUNK):
        part = flat_src[start:start + CHUNK]
        if not all_finite(part):
            return False
        flat_dst[start:start + CHUNK].copy_(part)
    return True


def planned_copies(plans: List[LoadPlan]) -> List[Copy]:
    """The copies to make, in order: full copies (the outermost plan wins),
    then the checkpoint parts of adapted tensors no full copy provides."""
    final: Dict[str, LoadPlan] = {}

    def depth(plan: LoadPlan) -> int:
        return plan.module_path.count('.') if plan.module_path else -1

    for plan in sorted(plans, key=depth, reverse=True):
        for name in plan.copies:
            final[name] = plan  # outer plans come later and win
    todo = [(plan, name, False) for name, plan in final.items()]
    todo += [(plan, name, True) for plan in plans for name in plan.partial
             if name not in final]  # a full copy elsewhere wins
    return todo


def check_sources(todo: List[Copy]) -> None:
    """Read every source tensor of ``todo`` (opening shards, raising a
    :class:`~mmext_init.errors.CheckpointError` naming the file if one is
    unreadable) and check it for NaN/Inf, before anything is written; the
    pages a check read are given back (the copy reads them again)."""
    for plan, name, partial in todo:
        key = plan.copies.get(name) or plan.partial[name]
        src = plan.source.get(key)
        if not plan.entry.check_finite:
            continue
        finite = all_finite(src)
        plan.source.release(key, src)
        if not finite:
            raise _non_finite(plan, key)


def _non_finite(plan: LoadPlan, key: str,
                spoiled: Tuple[torch.Tensor, ...] = ()) -> NonFiniteTensorError:
    """The error for ``key`` holding NaN/Inf, naming the shard holding it."""
    error = plan.non_finite(key, spoiled)
    shard = plan.source.file_of(key)
    if shard != plan.file_of_key(key):
        error = NonFiniteTensorError(f'{error} (in shard {shard})', spoiled)
    return error


def _copy(plan: LoadPlan, name: str, dst: torch.Tensor, partial: bool,
          tracker: WriteTracker, check: bool = False,
          spoiled: List[torch.Tensor] = ()) -> None:
    """Copy one checkpoint tensor (or the checkpoint part of an adapted
    one, checked by :func:`check_sources`) into ``dst`` and record its
    provenance; ``check``: with :func:`copy_finite` (a non-finite source
    raises, naming ``spoiled``)."""
    src, adapted = plan.fetch(name, tuple(dst.shape), check=False)
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
        if not check:
            dst.copy_(src)
        elif not copy_finite(dst, src):
            raise _non_finite(plan, plan.copies[name], tuple(spoiled))
        if adapted is None:  # the file's own tensor: done with its pages
            plan.source.release(plan.copies[name], src)
    args = {'prefix': plan.entry.prefix} if plan.entry.prefix else None
    tracker.record(
        name,
        Provenance(CHECKPOINT, plan.source_file(name), plan.module_path,
                   key, args, notes))
