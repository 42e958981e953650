"""``UnfreezeHook``: staged unfreezing of what ``freeze`` froze.

Example (config)::

    optim_wrapper = dict(constructor='ProvenanceOptimWrapperConstructor',
                         optimizer=dict(type='SGD', lr=0.01, momentum=0.9),
                         paramwise_cfg=dict(freeze='loaded'))
    custom_hooks = [dict(type='UnfreezeHook', milestones=[
        dict(at=500, by='iter', select=dict(name=r'backbone\\.layer4\\..*'),
             lr_mult=0.1),
        dict(at=1000, by='iter', select='loaded', lr_mult=0.1)])]

At a milestone ``dict(at=N, by='iter'|'epoch', select=SELECTOR,
lr_mult=1.0)`` the frozen parameters the selector matches train from the
iteration (epoch) that starts with ``runner.iter == N`` (``runner.epoch ==
N``), i.e. once N have completed: ``requires_grad=True``, their norm layers
follow ``train()`` again, and they join the optimizer as new groups with the
options they would have had without ``freeze`` (stock keys, ``rules``,
``layer_decay``), the lr times ``lr_mult``, at the point the param schedulers
have reached (:mod:`mmext_init.training.added_groups`).

Checkpoints record the milestones applied; a resume applies them again before
the optimizer state loads, and that state is matched by parameter name
(:mod:`mmext_init.training.optim_state`), so resuming across a milestone
gives the weights of the uninterrupted run.
"""
import logging
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence

from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS
from mmengine.runner import IterBasedTrainLoop

from ..errors import InitConfigError
from ..provenance.report import fold_names, human_count
from ..training.added_groups import add_param_groups
from ..training.constructor import (ProvenanceOptimWrapperConstructor,
                                    built_by)
from ..training.freezing import unfreeze_params
from ..training.expected import param_table
from ..training.selectors import ParamInfo, select

MILESTONE_KEYS = ('at', 'by', 'select', 'lr_mult')
RECORD_KEY = 'unfrozen_milestones'  # in checkpoint['meta']


@dataclass
class Milestone:
    """One entry of ``milestones``."""
    at: int
    by: str
    select: Any
    lr_mult: float = 1.0

    @classmethod
    def parse(cls, index: int, cfg: Dict[str, Any]) -> 'Milestone':
        """Check and read ``milestones[index]``."""
        where = f'UnfreezeHook milestones[{index}] = {dict(cfg)!r}'
        wrong = [k for k in cfg if k not in MILESTONE_KEYS]
        missing = [k for k in ('at', 'by', 'select') if k not in cfg]
        if wrong or missing:
            raise InitConfigError(
                f'{where}: expected dict(at=N, by=\'iter\'|\'epoch\', '
                'select=SELECTOR, lr_mult=1.0)' +
                (f'; unknown key {wrong[0]!r}' if wrong else '') +
                (f'; missing {", ".join(missing)}' if missing else ''))
        if cfg['by'] not in ('iter', 'epoch') or not isinstance(
                cfg['at'], int) or cfg['at'] < 0:
            raise InitConfigError(f"{where}: 'at' must be an int >= 0 and "
                                  "'by' 'iter' or 'epoch'")
        return cls(cfg['at'], cfg['by'], cfg['select'],
                   float(cfg.get('lr_mult', 1.0)))

    def label(self) -> str:
        """How errors and the log name it."""
        return f'UnfreezeHook milestone (at={self.at}, by={self.by!r})'


def _root(runner: Any) -> Any:
    return runner.model.module if is_model_wrapper(runner.model) \
        else runner.model


@HOOKS.register_module(name='UnfreezeHook', force=True)
class UnfreezeHook(Hook):
    """Unfreeze selections of frozen parameters at milestones.

    Args:
        milestones (list[dict]): ``dict(at=N, by='iter'|'epoch',
            select=SELECTOR, lr_mult=1.0)`` (module docstring).

    Raises:
        InitConfigError: for no milestones or a bad one (naming it).

    Example:
        >>> hook = UnfreezeHook([dict(at=2, by='epoch', select='all')])
        >>> len(hook.milestones)
        1
    """
    priority = 'NORMAL'

    def __init__(self, milestones: Sequence[Dict[str, Any]]) -> None:
        if not milestones:
            raise InitConfigError('UnfreezeHook: milestones is empty')
        self.milestones = [Milestone.parse(i, dict(m))
                           for i, m in enumerate(milestones)]
        self.applied: List[Milestone] = []

    def constructor(self, runner: Any) -> ProvenanceOptimWrapperConstructor:
        """The constructor that built the runner's optim wrapper."""
        built = built_by(runner.optim_wrapper)
        if built is None:
            raise InitConfigError(
                "UnfreezeHook needs optim_wrapper=dict(constructor="
                "'ProvenanceOptimWrapperConstructor', paramwise_cfg=dict("
                'freeze=...)): it unfreezes what freeze froze')
        return built

    def after_load_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        """On resume, apply again the milestones the saved run applied, so
        the optimizer state (loaded next, by name) finds its groups."""
        # MMEngine's EMAHook reads the same flag: load_from without resume
        # starts a new run, where no milestone has been reached.
        if not getattr(runner, '_resume', False):
            return
        for record in checkpoint.get('meta', {}).get(RECORD_KEY, []):
            match = [m for m in self.milestones if asdict(m) == record]
            if not match:
                raise InitConfigError(
                    f'the resumed checkpoint was saved after the UnfreezeHook '
                    f'milestone {record!r}, which is not among this '
                    "UnfreezeHook's milestones: add it back to custom_hooks, "
                    'or resume from a checkpoint saved before it')
            if match[0] not in self.applied:
                self.apply(runner, match[0], 'resume')

    def before_save_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        """Record the milestones applied so far."""
        checkpoint.setdefault('meta', {})[RECORD_KEY] = [
            asdict(m) for m in self.applied]

    def before_train(self, runner: Any) -> None:
        """Check every milestone still ahead before the first iteration."""
        self.constructor(runner)
        table = param_table(_root(runner))
        ahead = sorted((m for m in self.milestones if m not in self.applied),
                       key=lambda m: (m.by, m.at))
        earlier: set = set()
        for m in ahead:
            end = runner.max_iters if m.by == 'iter' else runner.max_epochs
            if m.by == 'epoch' and isinstance(runner.train_loop,
                                              IterBasedTrainLoop):
                raise InitConfigError(f"{m.label()}: by='epoch' in an "
                                      'iteration-based train loop')
            if m.at >= end:  # e.g. a smoke test with fewer iterations
                print_log(f'{m.label()} is never reached: training stops '
                          f'at {m.by} {end}, so select={m.select!r} stays '
                          'frozen for the whole run', logger='current',
                          level=logging.WARNING)
            earlier.update(id(p) for p in self.frozen_selection(m, table,
                                                                earlier))

    def before_train_epoch(self, runner: Any) -> None:
        self.reach(runner, 'epoch', runner.epoch)

    def before_train_iter(self, runner: Any, batch_idx: int,
                          data_batch: Optional[Any] = None) -> None:
        self.reach(runner, 'iter', runner.iter)

    def reach(self, runner: Any, by: str, now: int) -> None:
        """Apply the milestones of kind ``by`` reached at ``now``."""
        for m in self.milestones:
            if m.by == by and m.at <= now and m not in self.applied:
                self.apply(runner, m, f'{by} {now}' + (
                    f' (milestone at {m.at} was passed before this run)'
                    if m.at < now else ''))

    def frozen_selection(self, m: Milestone, table: Any,
                         earlier: frozenset = frozenset()
                         ) -> List[ParamInfo]:
        """The frozen parameters ``m`` selects, leaving out those an
        ``earlier`` milestone unfreezes (ids); an error if none."""
        chosen = select(m.select, table, m.label())
        frozen = [p for p in chosen if not p.param.requires_grad
                  and id(p) not in earlier]
        if not frozen:
            names = ', '.join(fold_names([p.name for p in chosen])[:4])
            raise InitConfigError(
                f'{m.label()}: select={m.select!r} matches only parameters '
                f'that train already or that an earlier milestone '
                f'unfreezes ({names}): nothing to unfreeze')
        return frozen

    def apply(self, runner: Any, m: Milestone, when: str) -> None:
        """Unfreeze ``m``'s selection and add its optimizer groups."""
        root = _root(runner)
        frozen = self.frozen_selection(m, param_table(root))
        params = [p.param for p in frozen]
        unfreeze_params(root, params)
        groups = self.constructor(runner).unfrozen_groups(root, params)
        optimizer = runner.optim_wrapper.optimizer
        base_lr = optimizer.defaults['lr']
        for group in groups:
            group['lr'] = group.get('lr', base_lr) * m.lr_mult
        schedulers = runner.param_schedulers or []
        if isinstance(schedulers, dict):
            raise InitConfigError('UnfreezeHook supports one optimizer, not '
                                  'a dict of param schedulers')
        added = add_param_groups(optimizer, groups, schedulers)
        self.applied.append(m)
        count = sum(p.numel() for p in params)
        options = '; '.join(f'lr={g["lr"]:.6g} weight_decay='
                            f'{g.get("weight_decay", 0):.6g}' for g in added)
        print_log(f'UnfreezeHook: at {when}: {len(params)} tensors '
                  f'({human_count(count)} elements) train from now on, in '
                  f'{len(added)} new optimizer groups ({options}): '
                  f'{", ".join(fold_names([p.name for p in frozen])[:6])}',
                  logger='current', level=logging.INFO)
