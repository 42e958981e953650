"""The plugin's wrapper of MMEngine's ``Runner.load_or_resume`` (one row of
the patch table): the load ``load_from`` or ``resume`` makes runs as stock
MMEngine runs it, observed (:mod:`mmext_init.session.runner_ledger`), and
the Runner's checkpoints get the ledger
(:class:`~mmext_init.hooks.ledger_meta.LedgerMetaHook`).
"""
import functools
from typing import Any, Callable

from mmengine.runner import Runner

from ..hooks.ledger_meta import add_ledger_hook
from ..session.runner_ledger import ObservedLoad
from ..session.runner_load import load_of_runner, register_load, unwrapped


def wrap_load_or_resume(original: Callable[[Runner], Any]
                        ) -> Callable[[Runner], Any]:
    """``Runner.load_or_resume`` that records what the load wrote."""

    @functools.wraps(original)
    def load_or_resume(self: Runner) -> Any:
        add_ledger_hook(self)
        load = load_of_runner(self)
        if load is None:  # nothing to load, or loaded already
            return original(self)
        root = unwrapped(self.model)
        observed = ObservedLoad(root, load)
        register_load(root, load)
        with observed.observing():
            out = original(self)
        register_load(root, load, done=True)
        observed.finish()
        return out

    return load_or_resume
