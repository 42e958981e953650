"""One ``init_weights()`` call on a model tree, start to finish.

1. Plan: every ``Pretrained`` entry handled by MMEngine's init logic reads its
   checkpoint (keys and shapes, memory-mapped) and decides what it provides;
   those tensors become *protected*.
2. Initialize, in MMEngine's order (a module's own entries, then its
   children; the deeper declaration wins), skipping writes to protected
   tensors. ``BaseModule`` children inside plain containers and below
   ``init_weights`` overrides that never recurse are initialized too.
3. Copy every planned tensor once (the outermost ``Pretrained`` wins where two
   provide the same tensor, as in stock MMEngine).
4. Build the provenance ledger, enforce ``on_missing``/``min_loaded`` and
   report.
"""
import contextlib
import logging
from typing import Callable, Dict, Iterator, List, Optional, Set, Tuple

import torch.nn as nn
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper

from ..checkpoint.page_release import MappedFile
from ..context import CONTEXT, current_session
from ..deferred import construction as deferred
from ..loading.copy import apply_loads
from ..loading.options import (PretrainedOptions, as_cfg_list,
                               is_pretrained_cfg)
from ..provenance.ledger import INIT_WEIGHTS, ProvenanceLedger, attach_ledger
from ..provenance.report import emit_report
from ..provenance.tracking import InitSource, WriteTracker
from .cfg_apply import apply_init_cfgs
from .code_loads import CodeLoadFindings, override_owner
from .ledger_build import build_ledger, enforce_on_missing
from .load_plans import SessionPlans
from .model_names import ModelNames, is_base_like, uses_contract
from .own_loader import ignored_options_error
from .runner_load import load_of_model

_INIT_MISSING_NOTE = 'init_missing of Pretrained'


class InitSession:
    """Initializes ``root`` under the contract and records provenance."""

    def __init__(self, root: nn.Module) -> None:
        self.names = ModelNames(root)
        self.root, self.root_name = root, self.names.root_name
        self.path_of, self.label = self.names.path_of, self.names.label
        self.pretrained_entries = self.names.pretrained_entries
        self.tracker = WriteTracker(root.state_dict(keep_vars=True))
        self.plans = SessionPlans(self.names, self.tracker)
        self.handled: Set[int] = set()  # ids of modules whose init_cfg ran
        self.beyond_stock: Set[int] = set()  # ids stock recursion never meets
        self.beyond_roots: List[str] = []  # their outermost paths
        self.code_entries: List[Tuple[nn.Module, str, PretrainedOptions]] = []
        self.code_findings: Dict[str, CodeLoadFindings] = {}  # by path
        self._overrides: List[nn.Module] = []
        # (callable(session, module, since), module, tracker sequence) run
        # after the checkpoint copy: initializers that read loaded values
        self.after_loads: List[Tuple[Callable, nn.Module, int]] = []
        self._mapped: Dict[str, MappedFile] = {}

    def mapped_file(self, path: str) -> MappedFile:
        """Page releaser of the checkpoint file ``path`` (one per file)."""
        if path not in self._mapped:
            self._mapped[path] = MappedFile(path)
        return self._mapped[path]

    # -- 2. initialize -------------------------------------------------------
    def init_module(self, module: nn.Module) -> None:
        """MMEngine's ``BaseModule.init_weights`` body, under the contract."""
        if getattr(module, '_is_init', False):
            print_log(
                f'init_weights of {type(module).__name__} has been called '
                'more than once.',
                logger='current',
                level=logging.WARNING)
            return
        path = self.path_of(module)
        cfgs = as_cfg_list(getattr(module, 'init_cfg', None))
        others = [c for c in cfgs if not is_pretrained_cfg(c)]
        self.handled.add(id(module))  # before planning: its errors are ours
        plans = self.plans.of_module(module) if len(others) < len(cfgs) \
            else []
        apply_init_cfgs(module, others, path, self.root_name, self.tracker,
                        lenient=id(module) in self.beyond_stock)
        for plan in plans:
            self.apply_init_missing(module, path, plan.entry)
        for child in module.children():
            self.init_child(child)
        module._is_init = True

    def apply_init_missing(self, module: nn.Module, path: str,
                           entry: PretrainedOptions) -> None:
        """The ``init_missing`` entries of ``entry``, declared at ``path``."""
        apply_init_cfgs(module, entry.init_missing, path, self.root_name,
                        self.tracker, _INIT_MISSING_NOTE, entry.checkpoint)

    def init_child(self, child: nn.Module, direct: bool = True) -> None:
        """Stock rule for direct children (call ``init_weights`` if any);
        below a plain container only BaseModules are initialized, because
        stock never reaches other modules there."""
        if is_model_wrapper(child) and not hasattr(child, 'init_weights'):
            child = child.module
        if is_base_like(child) or (direct and hasattr(child, 'init_weights')):
            if not getattr(child, 'is_init', False):
                (self.call_init_weights if direct else self.call_beyond)(child)
        else:  # plain container (or a stock-unreachable module): look inside
            for grandchild in child.children():
                self.init_child(grandchild, direct=False)

    def call_init_weights(self, module: nn.Module) -> None:
        if uses_contract(module):
            module.init_weights()
            return
        path = self.path_of(module)
        self._overrides.append(module)
        try:
            with self.tracker.source(
                    InitSource(INIT_WEIGHTS, override_owner(module), path)):
                module.init_weights()
        except Exception as exc:
            self.check_own_loader(module, path, exc)
            raise
        finally:
            self._overrides.pop()
        self.after_override(module, path)

    def check_own_loader(self, module: nn.Module, path: str,
                         exc: Optional[BaseException] = None) -> None:
        """An override that loaded the checkpoint itself (or failed to)
        ignored the entry's converter/adapt/key_map/match: say so."""
        if id(module) in self.handled:
            return
        for entry in self.pretrained_entries(module):
            error = ignored_options_error(self.label(path, 'Pretrained'),
                                          override_owner(module), path, entry)
            if error is not None:
                raise error from exc

    def after_override(self, module: nn.Module, path: str) -> None:
        """Finish what an ``init_weights`` override left undone."""
        deferred.materialize(module)  # what its own loading left pending
        self.check_own_loader(module, path)
        if id(module) not in self.handled:
            for entry in self.pretrained_entries(module):
                self.code_entries.append((module, path, entry))
                self.apply_init_missing(module, path, entry)
        if hasattr(module, '_is_init'):
            module._is_init = True
        self.sweep(module)

    def sweep(self, module: nn.Module) -> None:
        """Initialize the BaseModules below ``module`` nobody initialized."""
        for child in module.children():
            if is_model_wrapper(child) and not hasattr(child, 'init_weights'):
                child = child.module
            if not is_base_like(child):
                self.sweep(child)
            elif not getattr(child, 'is_init', False):
                self.call_beyond(child)

    def call_beyond(self, module: nn.Module) -> None:
        """Initialize a module stock recursion never reaches (it and all
        below it: their invalid overrides are void, not errors)."""
        outermost = id(module) not in self.beyond_stock
        self.beyond_stock.update(map(id, module.modules()))
        before = self.tracker.sequence
        self.call_init_weights(module)
        if outermost and self.tracker.sequence > before:  # it wrote
            self.beyond_roots.append(self.path_of(module))

    def loading_override(self) -> Optional[nn.Module]:
        """The innermost ``init_weights`` override running now, if any."""
        return self._overrides[-1] if self._overrides else None

    def override_checkpoint(self) -> str:
        """Checkpoint file of the innermost override loading right now."""
        for module in reversed(self._overrides):
            for cfg in as_cfg_list(getattr(module, 'init_cfg', None)):
                if is_pretrained_cfg(cfg) and cfg.get('checkpoint'):
                    return str(cfg['checkpoint'])
            if isinstance(getattr(module, 'pretrained', None), str):
                return module.pretrained  # kept from init_cfg (DetectoRS)
        return 'state dict'

    # -- 3. copy, 4. ledger, checks, report ----------------------------------
    def finish(self) -> ProvenanceLedger:
        """Copy the checkpoints, run what waited for them, build the
        ledger, check ``on_missing``, report."""
        deferred.materialize(self.root)
        tensors = self.root.state_dict(keep_vars=True)
        unwritten = self.plans.unwritten()
        apply_loads(self.plans.all(), tensors, self.tracker,
                    {n for n, t in tensors.items() if id(t) in unwritten})
        for job, module, since in self.after_loads:
            job(self, module, since)
        ledger = build_ledger(self, tensors)
        enforce_on_missing(self, ledger)
        attach_ledger(self.root, ledger)
        emit_report(ledger, self.tracker.skipped_ops,
                    self.tracker.skipped_calls)
        follows = load_of_model(self.root)
        if follows is not None and not follows.done:
            print_log(f'mmext_init: the Runner loads {follows.load.label} '
                      'next; the report after that load is the final one',
                      logger='current', level=logging.INFO)
        return ledger

    @contextlib.contextmanager
    def active(self) -> Iterator['InitSession']:
        with CONTEXT.session_active(self):
            yield self


def run_init_weights(root: nn.Module) -> ProvenanceLedger:
    """``root.init_weights()`` under the contract; returns the ledger."""
    session = InitSession(root)
    with session.plans.refill_on_error():
        with session.active():
            session.plans.plan_declared()
            session.call_init_weights(root)
        return session.finish()


def run_pretrained_alone(module: nn.Module, entry: PretrainedOptions) -> None:
    """A ``Pretrained`` entry called directly (``initialize(m, cfg)``)."""
    session = current_session()
    if session is not None:
        session.plans.add(module, entry)
        return
    session = InitSession(module)
    with session.plans.refill_on_error():
        with session.active():
            session.plans.add(module, entry)
            session.plans.settle()
            session.handled.add(id(module))
            session.apply_init_missing(module, '', entry)
        session.finish()
