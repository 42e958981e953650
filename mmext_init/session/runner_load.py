"""The checkpoint a Runner loads after ``init_weights()``: ``load_from``
(mmdet's fine-tuning recipe) or the checkpoint ``resume`` continues from,
as MMEngine's ``Runner.load_or_resume`` chooses it, and its load plan.

MMEngine loads it with ``strict=False`` and ``revise_keys=[(r'^module.',
'')]``: a tensor whose (revised) key is in the checkpoint with the same shape
is loaded, a shape mismatch is skipped with a warning. The plan applies the
same rule on names and shapes (no tensor data is read), so what the load
will write is known before the optimizer is built. The config key
``load_from_cfg = dict(adapt=[...])``, which stock MMEngine ignores, adapts
tensors as ``Pretrained``'s ``adapt`` does (``Classes`` for a changed head);
it applies to ``load_from``, not to a resume (the resumed checkpoint holds
the model's own tensors).

Example:
    >>> import os, tempfile, torch, torch.nn as nn
    >>> path = os.path.join(tempfile.mkdtemp(), 'base.pth')
    >>> torch.save({'state_dict': {'module.0.weight': torch.ones(3, 2),
    ...                            '0.bias': torch.ones(4)}}, path)
    >>> load = runner_load(path, resume=False, work_dir=None)
    >>> load.via, load.revise_keys
    ('load_from', (('^module.', ''),))
    >>> plan = plan_runner_load(nn.Sequential(nn.Linear(2, 3)), load)
    >>> plan.copies, plan.record.mismatched
    ({'0.weight': 'module.0.weight'}, [('0.bias', (4,), (3,))])
"""
import inspect
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence, Tuple

import torch.nn as nn
from mmengine.model import is_model_wrapper
from mmengine.runner import Runner

from ..context import CONTEXT
from ..errors import InitConfigError
from ..loading.options import PretrainedOptions
from ..loading.plan import LoadPlan, load_record, match_module, open_source

LOAD_FROM_CFG = 'load_from_cfg'
LOAD_FROM_KEYS = ('adapt', )
LOAD_FROM, RESUME = 'load_from', 'resume'


@dataclass(frozen=True)
class RunnerLoad:
    """One load by the Runner: the file as the config names it, ``via``
    (``'load_from'`` or ``'resume'``), MMEngine's ``revise_keys`` and the
    ``adapt`` entries of ``load_from_cfg`` (``load_from`` only)."""
    checkpoint: str
    via: str
    revise_keys: Tuple[Tuple[str, str], ...]
    adapt: Tuple[Dict[str, Any], ...] = ()

    @property
    def label(self) -> str:
        """How errors name it, e.g. ``load_from='base.pth'``."""
        return f'{self.via}={self.checkpoint!r}'

    def options(self) -> PretrainedOptions:
        """The load as a root-level ``Pretrained`` entry with stock's
        options (``strict=False``; what is not loaded keeps its init)."""
        try:
            return PretrainedOptions(self.checkpoint,
                                     revise_keys=self.revise_keys,
                                     adapt=list(self.adapt) or None,
                                     on_missing='ignore')
        except InitConfigError as exc:
            where = f'{LOAD_FROM_CFG} (for {self.label})' if self.adapt \
                else self.label
            raise InitConfigError(f'{where}: {exc}') from exc


def stock_revise_keys(runner_cls: type = Runner) -> Tuple[Tuple[str, str],
                                                          ...]:
    """The ``revise_keys`` default of ``runner_cls.load_checkpoint``, which
    ``load_or_resume`` and ``resume`` use."""
    default = inspect.signature(
        runner_cls.load_checkpoint).parameters['revise_keys'].default
    return tuple((str(p), str(r)) for p, r in default)


def adapt_entries(load_from_cfg: Any) -> Tuple[Dict[str, Any], ...]:
    """The ``adapt`` entries of the config's ``load_from_cfg``, checked.

    Example:
        >>> adapt_entries(dict(adapt=[dict(type='Grow', keys='fc.*')]))
        ({'type': 'Grow', 'keys': 'fc.*'},)
        >>> adapt_entries(dict(prefix='backbone.'))
        Traceback (most recent call last):
        ...
        mmext_init.errors.InitConfigError: load_from_cfg: unknown key 'prefix' (load_from_cfg = dict(adapt=[...]); the other options of a load_from are stock MMEngine's)
    """
    if load_from_cfg is None:
        return ()
    if not isinstance(load_from_cfg, dict):
        raise InitConfigError(
            f'{LOAD_FROM_CFG} must be a dict (dict(adapt=[...])), got '
            f'{load_from_cfg!r}')
    for key in load_from_cfg:
        if key not in LOAD_FROM_KEYS:
            raise InitConfigError(
                f'{LOAD_FROM_CFG}: unknown key {key!r} ({LOAD_FROM_CFG} = '
                'dict(adapt=[...]); the other options of a load_from are '
                "stock MMEngine's)")
    adapt = load_from_cfg.get('adapt') or ()
    if not isinstance(adapt, (list, tuple)) or not all(
            isinstance(a, dict) for a in adapt):
        raise InitConfigError(f'{LOAD_FROM_CFG}.adapt must be a list of '
                              f'dicts, got {adapt!r}')
    return tuple(dict(a) for a in adapt)


def latest_checkpoint(work_dir: Optional[str]) -> Optional[str]:
    """What MMEngine's ``find_latest_checkpoint`` finds (without its log
    line): the file named in ``<work_dir>/last_checkpoint``."""
    if not work_dir:
        return None
    save_file = os.path.join(work_dir, 'last_checkpoint')
    if not os.path.exists(save_file):
        return None
    with open(save_file) as f:
        return f.read().strip()


def runner_load(load_from: Optional[str], resume: bool,
                work_dir: Optional[str], load_from_cfg: Any = None,
                revise_keys: Optional[Sequence[Tuple[str, str]]] = None
                ) -> Optional[RunnerLoad]:
    """The load ``Runner.load_or_resume`` makes, None if none (resume
    without ``load_from`` takes the work dir's last checkpoint)."""
    revise = tuple(revise_keys) if revise_keys is not None \
        else stock_revise_keys()
    adapt = adapt_entries(load_from_cfg)
    if resume:
        found = load_from if load_from is not None else \
            latest_checkpoint(work_dir)
        return RunnerLoad(str(found), RESUME, revise) if found else None
    if load_from is None:
        return None
    return RunnerLoad(str(load_from), LOAD_FROM, revise, adapt)


def load_of_runner(runner: Runner) -> Optional[RunnerLoad]:
    """The load ``runner.load_or_resume()`` makes (None once it loaded)."""
    if getattr(runner, '_has_loaded', False):
        return None
    cfg = getattr(runner, 'cfg', None) or {}
    return runner_load(runner._load_from, runner._resume, runner.work_dir,
                       cfg.get(LOAD_FROM_CFG), stock_revise_keys(type(runner)))


def unwrapped(model: nn.Module) -> nn.Module:
    """The model inside a DDP-like wrapper."""
    return model.module if is_model_wrapper(model) else model


@dataclass
class ModelLoad:
    """The Runner load of one model, and whether it has happened."""
    load: RunnerLoad
    done: bool = False


_LOAD_ATTR = '_mmext_runner_load'  # on the model, as the ledger is


def register_load(root: nn.Module, load: RunnerLoad,
                  done: bool = False) -> ModelLoad:
    """Record on ``root`` that ``load`` loads (or loaded) into it."""
    root.__dict__[_LOAD_ATTR] = ModelLoad(load, done)
    return root.__dict__[_LOAD_ATTR]


def runner_of(root: nn.Module) -> Optional[Runner]:
    """The latest Runner built (MMEngine gives an optim wrapper constructor
    the model alone), if ``root`` is its model."""
    runner = CONTEXT.runner()
    model = getattr(runner, 'model', None)
    if isinstance(model, nn.Module) and unwrapped(model) is root:
        return runner
    return None


def load_of_model(root: nn.Module) -> Optional[ModelLoad]:
    """The Runner load of ``root``: recorded, or found from the Runner
    built on it (and recorded)."""
    if _LOAD_ATTR in root.__dict__:
        return root.__dict__[_LOAD_ATTR]
    runner = runner_of(root)
    load = load_of_runner(runner) if runner is not None else None
    return register_load(root, load) if load is not None else None


def plan_runner_load(root: nn.Module, load: RunnerLoad) -> LoadPlan:
    """The plan of ``load`` into ``root``: stock's rule on names and shapes
    (a checkpoint matching nothing is no error, as in stock), with the
    ``adapt`` transforms of ``load_from_cfg``."""
    entry = load.options()
    source = open_source(entry, load.label)
    match = match_module(root, source, entry, load.label)
    record = load_record('', entry, match.result, match.fraction)
    record.via = load.via
    return LoadPlan('', entry, load.label, source, dict(match.result.loaded),
                    record, dict(match.assignment.adapted),
                    dict(match.assignment.partial))
