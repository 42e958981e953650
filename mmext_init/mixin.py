"""The mixin carrying mmext_init's ``init_weights`` and its installation
onto MMEngine's ``BaseModule``.

Importing :mod:`mmext_init` calls :func:`install`; it is idempotent and
survives ``importlib.reload`` (the stock originals are kept on
``BaseModule`` the first time and never captured again).

Example:
    >>> import mmext_init
    >>> with mmext_init.stock_mmengine():      # A/B against stock MMEngine
    ...     stock_model.init_weights()
"""
import contextlib
from typing import Any, Dict, Iterator

from mmengine.model import BaseModule
from mmengine.registry import WEIGHT_INITIALIZERS
from mmengine.runner.checkpoint import CheckpointLoader

from .pretrained import PretrainedInit
from .safe_load import load_from_safe_local
from .overrides import wrap_overrides
from .session import _STOCK_MODE, current_session, run_init_weights

_STOCK = '_mmext_stock'


class InitWeightsMixin:
    """``init_weights`` under mmext_init's contract.

    Every parameter and persistent buffer is either loaded bit-exact from a
    checkpoint or given its most specific declared init, and the provenance
    ledger records which (:func:`mmext_init.get_provenance`). Installed on
    ``BaseModule`` at import; inherit it explicitly to give a plain
    ``nn.Module`` the same behaviour (it reads ``self.init_cfg`` if set).

    Example:
        >>> class Adapter(InitWeightsMixin, nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.init_cfg = dict(type='Constant', val=0, layer='Linear')
        ...         self.fc = nn.Linear(4, 4)
        >>> Adapter().init_weights()
    """

    def init_weights(self) -> None:
        """Initialize this module tree (see README's contract)."""
        session = current_session()
        if session is None:
            run_init_weights(self)
        else:
            session.init_module(self)

    init_weights._mmext_contract = True  # type: ignore[attr-defined]


def _current() -> Dict[str, Any]:
    return {
        'init_weights': BaseModule.__dict__['init_weights'],
        'Pretrained': WEIGHT_INITIALIZERS.module_dict['Pretrained'],
        'local': CheckpointLoader._schemes[''],
    }


def _apply(parts: Dict[str, Any]) -> None:
    BaseModule.init_weights = parts['init_weights']
    WEIGHT_INITIALIZERS.register_module(
        name='Pretrained', module=parts['Pretrained'], force=True)
    CheckpointLoader.register_scheme(
        prefixes='', loader=parts['local'], force=True)


def install() -> None:
    """Patch ``BaseModule`` and register the extended ``Pretrained`` and the
    safe local checkpoint loader (idempotent)."""
    if _STOCK not in BaseModule.__dict__:
        from mmengine.model.weight_init import PretrainedInit as Stock
        from mmengine.runner.checkpoint import load_from_local
        setattr(
            BaseModule, _STOCK, {
                'init_weights': BaseModule.__dict__['init_weights'],
                'Pretrained': Stock,
                'local': load_from_local,
            })
    _apply({
        'init_weights': InitWeightsMixin.init_weights,
        'Pretrained': PretrainedInit,
        'local': load_from_safe_local,
    })
    wrap_overrides(BaseModule)
    from . import deferred_guards  # deferred constructor init's safety net
    deferred_guards.install()


@contextlib.contextmanager
def stock_mmengine() -> Iterator[None]:
    """Temporarily restore stock MMEngine behaviour (for A/B comparisons).

    Restores ``BaseModule.init_weights``, the stock ``Pretrained`` and the
    stock local checkpoint loader; re-applies what was there on exit.

    Example:
        >>> with stock_mmengine():
        ...     model.init_weights()   # exactly what MMEngine 0.10.7 does
    """
    saved = _current()
    _apply(BaseModule.__dict__[_STOCK])
    _STOCK_MODE.append(True)
    try:
        yield
    finally:
        _STOCK_MODE.pop()
        _apply(saved)
