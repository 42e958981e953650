"""``ProvenanceOptimWrapperConstructor``: freezing, learning rates and
layer decay chosen by where each weight came from.

Example:
    >>> import torch.nn as nn
    >>> import mmext_init
    >>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    >>> build = ProvenanceOptimWrapperConstructor(
    ...     dict(optimizer=dict(type='SGD', lr=0.1, weight_decay=1e-4)),
    ...     dict(rules=[dict(select=dict(name=r'1\\..*'), lr_mult=10)]))
    >>> wrapper = build(net)
    >>> [(len(g['params']), g['lr']) for g in wrapper.optimizer.param_groups]
    [(2, 0.1), (2, 1.0)]
"""
import copy
import dataclasses
import inspect
import weakref
from typing import Any, Dict, List, Optional, Sequence, Set

import torch.nn as nn
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper
from mmengine.registry import (OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS,
                               OPTIMIZERS)

from .expected import param_table
from .freezing import freeze_params
from .groups import Group, build_groups
from .optim_state import track_names
from .plan import TrainingCfg, TrainingPlan, make_plan
from .startup import attach_start

#: optim wrapper -> the constructor that built it (``UnfreezeHook`` asks)
BUILT_BY: 'weakref.WeakKeyDictionary[OptimWrapper, Any]' = \
    weakref.WeakKeyDictionary()


def built_by(optim_wrapper: OptimWrapper) -> Optional[
        'ProvenanceOptimWrapperConstructor']:
    """The constructor that built ``optim_wrapper``, if it was this one."""
    return BUILT_BY.get(optim_wrapper)


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class ProvenanceOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """MMEngine's default constructor, plus three ``paramwise_cfg`` keys
    that choose parameters with a SELECTOR (see
    :mod:`mmext_init.training.selectors`):

    * ``freeze=SELECTOR``: ``requires_grad=False``, left out of the
      optimizer; norm layers whose parameters are all frozen stay in eval
      mode during training, also after ``model.train()``;
    * ``rules=[dict(select=SELECTOR, lr_mult=..., decay_mult=...), ...]``,
      applied in order (a later rule overrides an earlier one, key by key);
    * ``layer_decay=dict(rate=..., select=SELECTOR)`` (``select`` defaults
      to ``'all'``): the lr of depth ``d`` of ``N + 1`` is multiplied by
      ``rate ** (N + 1 - d)`` (depths: :mod:`mmext_init.training.depth`).

    Precedence, per parameter:

    1. ``freeze`` first: a frozen parameter is in no group, whatever else
       selects it. A rule giving ``lr_mult`` to a frozen parameter is an
       error (``decay_mult`` alone is allowed; ``layer_decay`` skips them).
    2. Stock keys (``custom_keys``, ``bias_lr_mult``, ``norm_decay_mult``,
       ``bias_decay_mult``, ``dwconv_decay_mult``, ``flat_decay_mult``,
       ``dcn_offset_lr_mult``) give the lr and weight decay as in stock.
    3. ``rules`` then replace them: ``lr_mult`` sets ``lr = base lr *
       lr_mult``, ``decay_mult`` sets ``weight_decay = base wd *
       decay_mult``; a key a rule does not give keeps the value from 2.
    4. ``layer_decay`` multiplies the lr from 3.

    A parameter that ``UnfreezeHook`` unfreezes later gets the options it
    would have had without ``freeze`` (2-4), its lr times the milestone's
    ``lr_mult``. The optimizer's state dict carries each group's parameter
    names, and a resume maps the saved state by name
    (:mod:`mmext_init.training.optim_state`).

    Each tensor is added once (tied parameters, and ``bypass_duplicate``
    needs no setting), and groups with equal options are merged.

    Provenance is needed before ``init_weights()`` has run (the Runner
    builds the optimizer first): it is predicted from the plans of the
    model's ``Pretrained`` entries, and checked against the ledger when
    training starts, together with the trainable report
    (:mod:`mmext_init.training.startup`).

    Args:
        optim_wrapper_cfg (dict): the ``optim_wrapper`` config, as for
            MMEngine's ``DefaultOptimWrapperConstructor``.
        paramwise_cfg (dict, optional): stock keys plus ``freeze``,
            ``rules`` and ``layer_decay``.

    Example:
        >>> import torch.nn as nn
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
        >>> ctor = ProvenanceOptimWrapperConstructor(
        ...     dict(optimizer=dict(type='SGD', lr=0.1)),
        ...     dict(freeze=dict(name='0[.].*')))
        >>> wrapper = ctor(model)
        >>> [p.requires_grad for p in model.parameters()]
        [False, False, True, True]
    """

    def __init__(self, optim_wrapper_cfg: dict,
                 paramwise_cfg: Optional[dict] = None) -> None:
        paramwise_cfg = copy.deepcopy(dict(paramwise_cfg or {}))
        self.training_cfg = TrainingCfg.pop_from(paramwise_cfg)
        super().__init__(optim_wrapper_cfg, paramwise_cfg)

    def plan(self, model: nn.Module) -> TrainingPlan:
        """The resolved plan for ``model`` (unwrapped)."""
        return make_plan(model, param_table(model), self.training_cfg)

    def param_groups(self, model: nn.Module,
                     plan: TrainingPlan) -> List[Dict[str, Any]]:
        """Stock's groups with ``plan`` applied (see the class docstring)."""
        stock: List[Dict[str, Any]] = []
        self.add_params(stock, model)
        return self._groups(stock, plan, {id(p.param) for p in plan.frozen})

    def unfrozen_groups(self, model: nn.Module,
                        params: Sequence[nn.Parameter]) -> List[Group]:
        """The groups of ``params`` (which must train now) as if ``freeze``
        had never selected them; every other parameter left out."""
        cfg = dataclasses.replace(self.training_cfg, freeze=None)
        plan = make_plan(model, param_table(model), cfg)
        chosen = {id(p) for p in params}
        others = {id(p.param) for p in plan.table.params
                  if id(p.param) not in chosen}
        stock: List[Group] = []
        still_frozen = [p for p in model.parameters() if not p.requires_grad]
        try:  # stock skips (and warns about) frozen ones: all count here
            for p in still_frozen:
                p.requires_grad_(True)
            self.add_params(stock, model)
        finally:
            for p in still_frozen:
                p.requires_grad_(False)
        return self._groups(stock, plan, others)

    def _groups(self, stock: List[Group], plan: TrainingPlan,
                left_out: Set[int]) -> List[Group]:
        """``stock``'s groups with the settings of ``plan``, parameters
        whose id is in ``left_out`` dropped, inserted ones kept apart."""
        settings = {id(p.param): plan.setting(p.name)
                    for p in plan.table.params}
        inserted = {id(p.param) for p in plan.table.params if p.inserted}
        return build_groups(stock, settings, left_out, self.base_lr,
                            self.base_wd, inserted)

    def __call__(self, model: nn.Module) -> OptimWrapper:
        root = model.module if hasattr(model, 'module') else model
        plan = self.plan(root)
        groups = self.param_groups(root, plan)
        freeze_params(root, [p.param for p in plan.frozen])
        optimizer_cfg = self.optimizer_cfg.copy()
        optimizer_cls = optimizer_cfg['type']
        if isinstance(optimizer_cls, str):
            with OPTIMIZERS.switch_scope_and_registry(None) as registry:
                optimizer_cls = registry.get(optimizer_cfg['type'])
        first_arg = next(iter(inspect.signature(optimizer_cls).parameters))
        optimizer_cfg[first_arg] = groups
        optimizer = OPTIMIZERS.build(optimizer_cfg)
        wrapper_cfg = self.optim_wrapper_cfg.copy()
        wrapper_cfg.setdefault('type', 'OptimWrapper')
        wrapper = OPTIM_WRAPPERS.build(
            wrapper_cfg, default_args=dict(optimizer=optimizer))
        attach_start(wrapper, plan, self.training_cfg)
        track_names(optimizer, root)
        BUILT_BY[wrapper] = self
        return wrapper
