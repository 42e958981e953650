"""Parameter groups: stock's per-parameter groups, with the plan applied on
top, frozen parameters left out, each tensor once (tied parameters are
added once: mmengine #1137), and groups with equal options merged.

Example:
    >>> import torch.nn as nn
    >>> from mmext_init.training.plan import Setting
    >>> fc = nn.Linear(2, 2)
    >>> stock = [{'params': [fc.weight]}, {'params': [fc.bias], 'weight_decay': 0.0},
    ...          {'params': [fc.weight]}]
    >>> groups = build_groups(stock, {id(fc.weight): Setting(lr_mult=10)},
    ...                       set(), base_lr=0.1, base_wd=0.01)
    >>> [(len(g['params']), g.get('lr'), g.get('weight_decay')) for g in groups]
    [(1, 1.0, None), (1, None, 0.0)]
"""
from typing import (Any, Collection, Dict, List, Mapping, Optional, Set,
                    Tuple)

from .plan import Setting

Group = Dict[str, Any]


def apply_setting(group: Group, setting: Setting, base_lr: Optional[float],
                  base_wd: Optional[float]) -> Group:
    """``group``'s options with ``setting`` on top: a rule's ``lr_mult``
    (``decay_mult``) replaces stock's lr (weight decay) by ``base *
    mult``; the layer-decay scale then multiplies the lr."""
    out = dict(group)
    if setting.lr_mult is not None and base_lr is not None:
        out['lr'] = base_lr * setting.lr_mult
    if setting.decay_mult is not None and base_wd is not None:
        out['weight_decay'] = base_wd * setting.decay_mult
    if setting.scale != 1.0 and base_lr is not None:
        out['lr'] = out.get('lr', base_lr) * setting.scale
    return out


def _options_key(group: Group) -> Tuple[Tuple[str, str], ...]:
    return tuple(sorted((k, repr(v)) for k, v in group.items()
                        if k != 'params'))


def build_groups(stock: List[Group], settings: Mapping[int, Setting],
                 frozen: Set[int], base_lr: Optional[float],
                 base_wd: Optional[float],
                 apart: Collection[int] = ()) -> List[Group]:
    """The final groups from stock's: ``settings`` and ``frozen`` are keyed
    by parameter id; the first group a tensor appears in wins. Parameters in
    ``apart`` (inserted ones) are never merged with the others."""
    seen: Set[int] = set()
    merged: Dict[Tuple[Any, ...], Group] = {}
    for group in stock:
        for param in group['params']:
            if id(param) in seen or id(param) in frozen:
                continue
            seen.add(id(param))
            options = apply_setting(
                {k: v for k, v in group.items() if k != 'params'},
                settings.get(id(param), Setting()), base_lr, base_wd)
            key = (id(param) in apart, ) + _options_key(options)
            merged.setdefault(key, {'params': [], **options})
            merged[key]['params'].append(param)
    return list(merged.values())
