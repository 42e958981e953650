"""Parameter groups added to a running optimizer, following its schedules.

MMEngine's parameter schedulers keep one base value per group
(``base_values``, read from the group's ``initial_<name>``) and several of
them (cosine, poly...) zip those with the groups, so a group added after
they were built would never be scheduled. :func:`add_param_groups` gives each
new group its ``initial_<name>``, appends it to every scheduler's base values,
and starts the group at the point the schedule has reached: its value times
the ratio current/initial of the first existing group that has one.

Example:
    >>> import torch, torch.nn as nn
    >>> from mmengine.optim import MultiStepLR
    >>> a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    >>> opt = torch.optim.SGD(a.parameters(), lr=0.1)
    >>> sched = MultiStepLR(opt, milestones=[1], gamma=0.5, by_epoch=False)
    >>> opt.step(); sched.step()
    >>> added = add_param_groups(opt, [{'params': list(b.parameters()),
    ...                                 'lr': 1.0}], [sched])
    >>> opt.param_groups[1]['lr'], opt.param_groups[1]['initial_lr']
    (0.5, 1.0)
    >>> sched.base_values
    [0.1, 1.0]
"""
from numbers import Real
from typing import Any, Dict, List, Optional, Sequence

import torch

Group = Dict[str, Any]


def _reference(groups: Sequence[Group], name: str) -> Optional[Group]:
    """The first group with a non-zero ``initial_<name>``."""
    for group in groups:
        initial = group.get(f'initial_{name}')
        if isinstance(initial, Real) and initial != 0:
            return group
    return None


def follow_schedule(new: Group, old: Sequence[Group], name: str) -> None:
    """Give ``new`` its ``initial_<name>`` and the current value the
    schedule of ``name`` has reached in the ``old`` groups."""
    key = f'initial_{name}'
    ref = _reference(old, name)
    if name in new and isinstance(new[name], Real):
        new[key] = new[name]
        if ref is not None:
            new[name] = new[key] * (ref[name] / ref[key])
    elif ref is not None:  # e.g. 'momentum' of Adam: MMEngine adds it
        new[key], new[name] = ref[key], ref[name]


def add_param_groups(optimizer: torch.optim.Optimizer, groups: List[Group],
                     schedulers: Sequence[Any]) -> List[Group]:
    """Add ``groups`` to ``optimizer`` (torch fills the defaults) and to the
    ``schedulers`` (MMEngine ``_ParamScheduler`` objects); returns the live
    groups added."""
    old = list(optimizer.param_groups)
    for group in groups:
        optimizer.add_param_group(group)
    added = optimizer.param_groups[len(old):]
    for name in dict.fromkeys(s.param_name for s in schedulers):
        for group in added:
            follow_schedule(group, old, name)
    for scheduler in schedulers:
        scheduler.base_values.extend(
            group[f'initial_{scheduler.param_name}'] for group in added)
    return added
