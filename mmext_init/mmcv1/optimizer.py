"""``ProvenanceOptimizerConstructor``: freezing and learning rates chosen
by where each weight came from, for mmcv 1.x's ``build_optimizer``::

    optimizer = dict(type='SGD', lr=0.01, momentum=0.9,
                     constructor='ProvenanceOptimizerConstructor',
                     paramwise_cfg=dict(freeze='loaded', rules=[
                         dict(select='new', lr_mult=10)]))

The keys ``freeze``, ``rules`` and ``layer_decay`` and their selectors are
those of the MMEngine backend's ``ProvenanceOptimWrapperConstructor``
(:mod:`mmext_init.training`); the stock keys (``custom_keys``,
``bias_lr_mult``, ...) are mmcv 1.x's ``DefaultOptimizerConstructor``'s.
OpenMMLab 1.x scripts call ``model.init_weights()`` before they build the
optimizer, so the plan is made from the ledger; the trainable report is
logged when the optimizer is built.

Example:
    >>> import torch.nn as nn
    >>> import mmext_init
    >>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    >>> build = ProvenanceOptimizerConstructor(
    ...     dict(type='SGD', lr=0.1, weight_decay=1e-4),
    ...     dict(freeze=dict(name=r'0\\..*'), rules=[
    ...         dict(select=dict(name=r'1\\.bias'), lr_mult=10)]))
    >>> optimizer = build(net)
    >>> [(len(g['params']), g['lr']) for g in optimizer.param_groups]
    [(1, 0.1), (1, 1.0)]
    >>> [p.requires_grad for p in net.parameters()]
    [False, False, True, True]
"""
import copy
import logging
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn
from mmcv.runner.optimizer import (OPTIMIZER_BUILDERS, OPTIMIZERS,
                                   DefaultOptimizerConstructor)
from mmcv.utils import build_from_cfg, print_log

from ..training.expected import param_table
from ..training.freezing import freeze_params
from ..training.groups import build_groups
from ..training.optim_state import track_names
from ..training.plan import TrainingCfg, TrainingPlan, make_plan
from ..training.report import format_trainable, report_data
from .run_log import run_logger


@OPTIMIZER_BUILDERS.register_module()
class ProvenanceOptimizerConstructor(DefaultOptimizerConstructor):
    """mmcv 1.x's default optimizer constructor plus ``paramwise_cfg``'s
    ``freeze``, ``rules`` and ``layer_decay`` (see the module docstring).

    Args:
        optimizer_cfg (dict): the ``optimizer`` config without
            ``constructor`` and ``paramwise_cfg``.
        paramwise_cfg (dict, optional): stock keys plus the new ones.

    Example:
        >>> ctor = ProvenanceOptimizerConstructor(dict(type='SGD', lr=0.1),
        ...                                       dict(rules=[]))
        >>> ctor.training_cfg.rules
        []
    """

    def __init__(self, optimizer_cfg: Dict[str, Any],
                 paramwise_cfg: Optional[Dict[str, Any]] = None) -> None:
        paramwise_cfg = copy.deepcopy(dict(paramwise_cfg or {}))
        self.training_cfg = TrainingCfg.pop_from(paramwise_cfg)
        super().__init__(optimizer_cfg, paramwise_cfg)

    def plan(self, model: nn.Module) -> TrainingPlan:
        """The plan for ``model`` (unwrapped), from its ledger if
        ``init_weights()`` has run, else predicted (a warning says so).

        Args:
            model (nn.Module): the model.

        Returns:
            TrainingPlan: frozen parameters and settings.
        """
        table = param_table(model)
        if not table.exact:
            print_log(
                'mmext_init: ProvenanceOptimizerConstructor: the model has '
                'no provenance ledger yet (init_weights() has not run), so '
                'freeze/rules select by the provenance its Pretrained '
                'entries predict; call model.init_weights() before '
                'build_optimizer to have it exact',
                logger=run_logger(), level=logging.WARNING)
        return make_plan(model, table, self.training_cfg)

    def __call__(self, model: nn.Module) -> torch.optim.Optimizer:
        root = model.module if hasattr(model, 'module') else model
        plan = self.plan(root)
        stock: List[Dict[str, Any]] = []
        self.add_params(stock, root)
        settings = {id(p.param): plan.setting(p.name)
                    for p in plan.table.params}
        inserted = {id(p.param) for p in plan.table.params if p.inserted}
        groups = build_groups(stock, settings,
                              {id(p.param) for p in plan.frozen},
                              self.base_lr, self.base_wd, inserted)
        freeze_params(root, [p.param for p in plan.frozen])
        optimizer_cfg = self.optimizer_cfg.copy()
        optimizer_cfg['params'] = groups
        optimizer = build_from_cfg(optimizer_cfg, OPTIMIZERS)
        track_names(optimizer, root)
        print_log(format_trainable(
            report_data(type(root).__name__, plan, optimizer)),
            logger=run_logger())
        return optimizer
