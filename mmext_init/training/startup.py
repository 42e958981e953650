"""What runs once training starts, after ``init_weights()`` and
``load_or_resume()``, before the first iteration: the prediction the
optimizer was built from is checked against the ledger, DDP against frozen
parameters, the trained parameters against the model's own freezing in
``train()``, and the trainable report is logged.

It runs from ``OptimWrapper.initialize_count_status``, which the Runner
calls right before its train loop, so no hook needs to be declared: the
constructor registers a :class:`TrainingStart` for the wrapper it builds
(:func:`attach_start`, held weakly) and the patch table's row for
``OptimWrapper.initialize_count_status`` (:func:`wrap_initialize_count_status`)
runs it once, first.
"""
import logging
import weakref
from typing import Any, Callable, Dict, List, Optional

import torch.nn as nn
from mmengine.dist import get_rank
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.optim import OptimWrapper

from ..errors import InitConfigError
from ..provenance.report import MAX_LINES, fold_names
from ..session.runner_load import load_of_model
from .expected import check_prediction, param_table
from .plan import TrainingCfg, TrainingPlan, make_plan
from .report import format_trainable, report_data, write_trainable


class TrainingStart:
    """The checks and the report of one optim wrapper, run once (they hold
    no reference to the wrapper: it is given to :meth:`start`)."""

    def __init__(self, plan: TrainingPlan, cfg: TrainingCfg) -> None:
        self.plan, self.cfg = plan, cfg
        self.done = False

    def start(self, optim_wrapper: OptimWrapper,
              model: nn.Module) -> Optional[str]:
        """Check, then report; returns the JSON file written, if any."""
        self.done = True
        root = model.module if is_model_wrapper(model) else model
        plan = self.plan
        if not plan.table.exact:
            check_prediction(plan.table, root)
            plan = self.recheck(root)
        check_ddp(model, bool(plan.frozen))
        check_frozen_by_train(root, optim_wrapper.optimizer)
        data = report_data(type(root).__name__, plan, optim_wrapper.optimizer)
        sources = loaded_sources(root, plan)
        if sources:
            data['sources'] = sources
        if get_rank() == 0:
            print_log(format_trainable(data), logger='current',
                      level=logging.INFO)
            for line in source_lines(sources):
                print_log(f'mmext_init: {line}', logger='current',
                          level=logging.INFO)
        return write_trainable(data)

    def recheck(self, root: nn.Module) -> TrainingPlan:
        """The plan again, from the real ledger; it must be the one the
        optimizer was built from."""
        exact = make_plan(root, param_table(root), self.cfg)
        differ = self.plan.differences(exact)
        if differ:
            raise InitConfigError(
                'ProvenanceOptimWrapperConstructor: with the provenance '
                'init_weights() recorded, freeze/rules/layer_decay select '
                'other parameters than when the optimizer was built: '
                f'{", ".join(differ)}')
        return exact


def loaded_sources(root: nn.Module,
                   plan: TrainingPlan) -> List[Dict[str, Any]]:
    """Per checkpoint file: how it reached the model (``init_cfg``, or the
    Runner's ``load_from``/``resume``) and how many of the parameters it
    loaded train and are frozen; empty when the Runner loads nothing (the
    report's counts by provenance then say it all)."""
    found = load_of_model(root)
    if found is None:
        return []
    out: Dict[str, Dict[str, Any]] = {}
    for info in plan.table.params:
        if not info.loaded:
            continue
        file = info.origin.source
        via = found.load.via if found and found.load.checkpoint == file \
            else 'init_cfg'
        entry = out.setdefault(file, dict(file=file, via=via, trainable=0,
                                          frozen=0))
        entry['trainable' if info.param.requires_grad else 'frozen'] += 1
    return list(out.values())


def source_lines(sources: List[Dict[str, Any]]) -> List[str]:
    """The text of :func:`loaded_sources`.

    Example:
        >>> source_lines([dict(file='base.pth', via='load_from',
        ...                    trainable=0, frozen=150)])
        ['loaded from base.pth (load_from): 150 tensors, 150 frozen, 0 trainable']
    """
    return [f'loaded from {s["file"]} ({s["via"]}): '
            f'{s["trainable"] + s["frozen"]} tensors, {s["frozen"]} frozen, '
            f'{s["trainable"]} trainable' for s in sources]


def check_ddp(model: nn.Module, any_frozen: bool) -> None:
    """DDP wrapped the model before its parameters were frozen: it must
    look for unused parameters, or its reducer waits for their gradients."""
    if not any_frozen or not hasattr(model, 'find_unused_parameters'):
        return
    if not model.find_unused_parameters:
        raise InitConfigError(
            'paramwise_cfg.freeze froze parameters of a model that '
            f'{type(model).__name__} wrapped before they were frozen: set '
            'find_unused_parameters=True in the config, or in '
            'model_wrapper_cfg when the config has one (MMEngine then '
            'ignores the top-level key)')


def _freezing_owner(root: nn.Module, name: str) -> str:
    """The closest module above parameter ``name`` with a ``frozen_stages``
    setting in force, described (``'backbone' (ResNet, frozen_stages=1)``);
    '' if none."""
    parts = name.split('.')[:-1]
    for depth in range(len(parts), -1, -1):
        path = '.'.join(parts[:depth])
        module = root.get_submodule(path)
        stages = getattr(module, 'frozen_stages', None)
        if isinstance(stages, int) and stages >= 0:
            return (f"'{path or 'model'}' ({type(module).__name__}, "
                    f'frozen_stages={stages})')
    return ''


def check_frozen_by_train(root: nn.Module, optimizer: Any) -> None:
    """Parameters the optimizer trains that the model's own ``train()``
    freezes (ResNet's ``frozen_stages`` sets ``requires_grad=False`` on whole
    stages, modules inserted into them included) would never change: an
    error naming them. Runs ``train()`` as the loop does next."""
    was_training = root.training
    root.train()
    trained = {id(p) for group in optimizer.param_groups
               for p in group['params']}
    names = [name for name, p in root.named_parameters()
             if id(p) in trained and not p.requires_grad]
    root.train(was_training)
    if not names:
        return
    owners = sorted({o for o in (_freezing_owner(root, n) for n in names)
                     if o})
    by = f' by {", ".join(owners)}' if owners else ''
    raise InitConfigError(
        f'{len(names)} parameters the optimizer trains are frozen{by} when '
        f'the model enters train(), so they would never change: '
        f'{", ".join(fold_names(names)[:MAX_LINES])}. Insert after the '
        'frozen stages, or set frozen_stages=-1 and freeze with '
        "paramwise_cfg.freeze (e.g. freeze='loaded').")


#: optim wrapper -> its checks, for the wrapper's life
STARTS: 'weakref.WeakKeyDictionary[OptimWrapper, TrainingStart]' = \
    weakref.WeakKeyDictionary()


def attach_start(optim_wrapper: OptimWrapper, plan: TrainingPlan,
                 cfg: TrainingCfg) -> TrainingStart:
    """Run :class:`TrainingStart` when the Runner starts the train loop
    (through :func:`wrap_initialize_count_status`)."""
    start = STARTS[optim_wrapper] = TrainingStart(plan, cfg)
    return start


def wrap_initialize_count_status(original: Callable) -> Callable:
    """``OptimWrapper.initialize_count_status`` that first runs the
    wrapper's :class:`TrainingStart`, once, if it has one."""

    def initialize_count_status(optim_wrapper: OptimWrapper,
                                model: nn.Module, *args: Any,
                                **kwargs: Any) -> Any:
        start = STARTS.get(optim_wrapper)
        if start is not None and not start.done:
            start.start(optim_wrapper, model)
        return original(optim_wrapper, model, *args, **kwargs)

    return initialize_count_status
