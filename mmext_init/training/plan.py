"""The new ``paramwise_cfg`` keys, read and resolved to one setting per
parameter: ``freeze``, ``rules`` and ``layer_decay``.

Example:
    >>> import torch.nn as nn
    >>> from mmext_init.training.selectors import Origin, ParamTable
    >>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    >>> table = ParamTable.build(net, {'0.weight': Origin('checkpoint', 'a.pth')})
    >>> cfg = TrainingCfg.pop_from({'freeze': 'loaded', 'rules': [
    ...     dict(select=dict(name=r'1\\..*'), lr_mult=10)]})
    >>> plan = make_plan(net, table, cfg)
    >>> [p.name for p in plan.frozen], plan.setting('1.bias').lr_mult
    (['0.weight'], 10.0)
"""
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch.nn as nn

from ..errors import InitConfigError
from ..provenance.report import fold_names
from .depth import LayerDepths, layer_depths
from .selectors import ParamInfo, ParamTable, select

NEW_KEYS = ('freeze', 'rules', 'layer_decay')
RULE_KEYS = ('select', 'lr_mult', 'decay_mult')


@dataclass
class TrainingCfg:
    """The new keys of ``paramwise_cfg`` (None/empty when absent)."""
    freeze: Any = None
    rules: List[Dict[str, Any]] = field(default_factory=list)
    layer_decay: Optional[Dict[str, Any]] = None

    @classmethod
    def pop_from(cls, paramwise_cfg: Dict[str, Any]) -> 'TrainingCfg':
        """Take the new keys out of ``paramwise_cfg`` (changed in place),
        checking their form."""
        cfg = cls(paramwise_cfg.pop('freeze', None),
                  list(paramwise_cfg.pop('rules', None) or []),
                  paramwise_cfg.pop('layer_decay', None))
        for i, rule in enumerate(cfg.rules):
            wrong = [k for k in rule if k not in RULE_KEYS]
            if wrong or 'select' not in rule:
                raise InitConfigError(
                    f'paramwise_cfg.rules[{i}] = {dict(rule)!r}: a rule is '
                    f'dict(select=..., lr_mult=..., decay_mult=...)' +
                    (f'; unknown key {wrong[0]!r}' if wrong else ''))
        decay = cfg.layer_decay
        if decay is not None and (set(decay) - {'rate', 'select'}
                                  or 'rate' not in decay):
            raise InitConfigError(
                f'paramwise_cfg.layer_decay = {dict(decay)!r}: expected '
                "dict(rate=..., select=...) ('select' defaults to 'all')")
        return cfg

    def __bool__(self) -> bool:
        return self.freeze is not None or bool(self.rules) or \
            self.layer_decay is not None


@dataclass
class Setting:
    """What the new keys give one parameter: multipliers of the base lr and
    weight decay from ``rules`` (None: stock's value stands), the
    ``layer_decay`` lr scale and depth."""
    lr_mult: Optional[float] = None
    decay_mult: Optional[float] = None
    scale: float = 1.0
    depth: Optional[int] = None

    def key(self) -> Tuple[Any, ...]:
        """Comparable form."""
        return (self.lr_mult, self.decay_mult, self.scale, self.depth)


@dataclass
class TrainingPlan:
    """The frozen parameters and every other parameter's setting."""
    table: ParamTable
    frozen: List[ParamInfo] = field(default_factory=list)
    settings: Dict[str, Setting] = field(default_factory=dict)
    depths: Optional[LayerDepths] = None

    def setting(self, name: str) -> Setting:
        """The setting of parameter ``name`` (its first name if tied)."""
        return self.settings.get(name, Setting())

    def is_frozen(self, info: ParamInfo) -> bool:
        """Whether ``info`` is frozen."""
        return any(p is info for p in self.frozen)

    def differences(self, other: 'TrainingPlan') -> List[str]:
        """Names whose freezing or setting differs in ``other``, folded."""
        mine = {p.name for p in self.frozen}
        theirs = {p.name for p in other.frozen}
        names = sorted(mine ^ theirs)
        names += [p.name for p in self.table.params
                  if p.name not in mine and p.name not in theirs
                  and self.setting(p.name).key() !=
                  other.setting(p.name).key()]
        return fold_names(names)


def _rule_settings(plan: TrainingPlan, cfg: TrainingCfg) -> None:
    """Apply ``rules`` in order (later ones override, key by key)."""
    frozen = {p.name for p in plan.frozen}
    for i, rule in enumerate(cfg.rules):
        where = f'paramwise_cfg.rules[{i}]'
        chosen = select(rule['select'], plan.table, where)
        clash = [p.name for p in chosen if p.name in frozen]
        if clash and rule.get('lr_mult') is not None:
            raise InitConfigError(
                f'{where} gives lr_mult={rule["lr_mult"]} to parameters '
                f'that freeze={cfg.freeze!r} freezes: '
                f'{", ".join(fold_names(clash))}. Narrow its select (e.g. '
                "add provenance=... or use 'new') or change freeze.")
        for info in chosen:
            if info.name in frozen:
                continue
            setting = plan.settings.setdefault(info.name, Setting())
            if rule.get('lr_mult') is not None:
                setting.lr_mult = float(rule['lr_mult'])
            if rule.get('decay_mult') is not None:
                setting.decay_mult = float(rule['decay_mult'])


def _layer_decay(root: nn.Module, plan: TrainingPlan,
                 decay: Dict[str, Any]) -> None:
    """Scale the lr of the selected (trainable) parameters by depth."""
    rate = float(decay['rate'])
    if not 0 < rate <= 1:
        raise InitConfigError(f'paramwise_cfg.layer_decay: rate={rate} is '
                              'not in (0, 1]')
    chosen = select(decay.get('select', 'all'), plan.table,
                    'paramwise_cfg.layer_decay')
    plan.depths = layer_depths(root, [p.name for p in chosen])
    frozen = {p.name for p in plan.frozen}
    for info in chosen:
        if info.name not in frozen:
            setting = plan.settings.setdefault(info.name, Setting())
            setting.depth = plan.depths.depth[info.name]
            setting.scale = plan.depths.scale(info.name, rate)


def make_plan(root: nn.Module, table: ParamTable,
              cfg: TrainingCfg) -> TrainingPlan:
    """Resolve ``cfg`` over ``table`` (the parameters of ``root``, as
    :func:`~.expected.param_table` gives them)."""
    plan = TrainingPlan(table)
    if cfg.freeze is not None:
        plan.frozen = select(cfg.freeze, table, 'paramwise_cfg.freeze')
    _rule_settings(plan, cfg)
    if cfg.layer_decay is not None:
        _layer_decay(root, plan, cfg.layer_decay)
    return plan
