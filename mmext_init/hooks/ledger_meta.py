"""``LedgerMetaHook``: every Runner checkpoint carries the model's
provenance ledger in ``meta['mmext_provenance']``
(:mod:`mmext_init.provenance.stored`), so that ``resume=True`` keeps the
provenance of the run it continues (where each tensor's value came from
before training changed it) and ``freeze``/``rules`` select what they
selected in that run.

It needs no declaring: the plugin adds it to the Runner when the Runner
loads or resumes (``Runner.load_or_resume``, at the start of ``train()``,
``val()`` and ``test()``).

Example:
    >>> import torch.nn as nn
    >>> from types import SimpleNamespace
    >>> from mmext_init.provenance.ledger import (ProvenanceLedger,
    ...                                           attach_ledger)
    >>> model = nn.Linear(2, 2)
    >>> attach_ledger(model, ProvenanceLedger('Linear'))
    >>> checkpoint = {'meta': {}}
    >>> LedgerMetaHook().before_save_checkpoint(SimpleNamespace(model=model),
    ...                                         checkpoint)
    >>> checkpoint['meta']['mmext_provenance']['root']
    'Linear'
"""
from typing import Any

from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper

from ..provenance.ledger import get_provenance
from ..provenance.stored import store_ledger


class LedgerMetaHook(Hook):
    """Writes the model's ledger into the ``meta`` of each checkpoint."""

    priority = 'VERY_LOW'

    def before_save_checkpoint(self, runner: Any, checkpoint: dict) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) \
            else runner.model
        try:
            ledger = get_provenance(model)
        except LookupError:  # init_weights() did not run under mmext_init
            return
        store_ledger(checkpoint.setdefault('meta', {}), ledger)


def add_ledger_hook(runner: Any) -> None:
    """Give ``runner`` a :class:`LedgerMetaHook` (once)."""
    if not any(isinstance(h, LedgerMetaHook) for h in runner.hooks):
        runner.register_hook(LedgerMetaHook(), LedgerMetaHook.priority)
