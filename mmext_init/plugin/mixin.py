"""The mixin carrying mmext_init's ``init_weights``; the patch table
(:mod:`.patches`) puts its method on MMEngine's ``BaseModule``.

Example:
    >>> import torch.nn as nn
    >>> import mmext_init
    >>> class Adapter(InitWeightsMixin, nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.init_cfg = dict(type='Zero', layer='Linear')
    ...         self.fc = nn.Linear(4, 4)
    >>> adapter = Adapter()
    >>> adapter.init_weights()
    >>> int(adapter.fc.weight.count_nonzero())
    0
"""
from ..context import current_session
from ..session.init_session import run_init_weights


class InitWeightsMixin:
    """``init_weights`` under mmext_init's contract.

    Every parameter and persistent buffer is either loaded bit-exact from a
    checkpoint or given its most specific declared init, and the provenance
    ledger records which (:func:`mmext_init.get_provenance`). Installed on
    ``BaseModule`` at import; inherit it explicitly to give a plain
    ``nn.Module`` the same behaviour (it reads ``self.init_cfg`` if set).

    Example:
        >>> import torch.nn as nn
        >>> from mmext_init import get_provenance
        >>> class Gate(InitWeightsMixin, nn.Linear):
        ...     init_cfg = dict(type='Zero')  # on the module itself
        >>> gate = Gate(2, 2)
        >>> gate.init_weights()
        >>> get_provenance(gate).entries['bias'].describe('Gate')
        'Zero from the model root (Gate)'
    """

    def init_weights(self) -> None:
        """Initialize this module tree (see the contract, ``docs/guides/contract.md``)."""
        session = current_session()
        if session is None:
            run_init_weights(self)
        else:
            session.init_module(self)

    init_weights._mmext_contract = True  # type: ignore[attr-defined]
