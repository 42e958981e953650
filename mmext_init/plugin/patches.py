"""Every change mmext_init makes to other libraries' classes and registries,
in one table (:data:`PATCHES`), applied by :func:`install` and undone by
:func:`uninstall`.

A row names the owner (a class, or a registry's dictionary), the attribute
or key, the function that makes the replacement from the original, and the
reason. The originals are kept on MMEngine's ``BaseModule`` the first time
and never captured again, so importing twice or ``importlib.reload`` wraps
nothing twice. Besides the table, every ``init_weights`` override of a
``BaseModule`` subclass is wrapped (:mod:`.overrides`, through
``BaseModule.__init_subclass__`` for classes defined later).

Example:
    >>> import mmext_init
    >>> from mmengine.model import BaseModule
    >>> uninstall()
    >>> BaseModule.init_weights is original(BaseModule, 'init_weights')
    True
    >>> install()
    >>> BaseModule.init_weights is mmext_init.InitWeightsMixin.init_weights
    True
    >>> [(p.owner_name, p.attribute) for p in PATCHES][:2]
    [('BaseModule', 'init_weights'), ('WEIGHT_INITIALIZERS', 'Pretrained')]
"""
import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.model import BaseModule
from mmengine.model.averaged_model import BaseAveragedModel
from mmengine.registry import WEIGHT_INITIALIZERS, Registry
from mmengine.runner import Runner
from mmengine.runner.checkpoint import CheckpointLoader
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint.remote import REMOTE_SCHEMES
from ..checkpoint.safe_load import load_from_safe_local, load_from_safe_scheme
from ..context import CONTEXT, current_session
from ..deferred import guards
from ..deferred.replay import materialize
from ..initializers.pretrained import PretrainedInit
from ..session.code_loads import observe_load, observes_loads
from .insertion import wrap_build_insert
from .mixin import InitWeightsMixin
from .runner_load import wrap_load_or_resume
from .overrides import unwrap_overrides, wrap_overrides

_ORIGINALS = '_mmext_originals'  # on BaseModule: {(owner, attribute): value}


@dataclass(frozen=True)
class ClassDict:
    """A dict held in a class attribute that its class may replace, found
    when used: MMEngine's ``CheckpointLoader.register_scheme`` rebuilds
    ``CheckpointLoader._schemes`` (sorted) on every call."""
    cls: type
    name: str

    @property
    def __name__(self) -> str:
        return f'{self.cls.__name__}.{self.name}'

    def get(self) -> Dict[str, Any]:
        return getattr(self.cls, self.name)


@dataclass(frozen=True)
class Patch:
    """One replaced attribute (or registry entry) of another library."""
    owner: Any  # a class, a dict (a registry's entries) or a ClassDict
    attribute: str
    make: Callable[[Any], Any]  # original -> replacement
    reason: str

    @property
    def owner_name(self) -> str:
        return getattr(self.owner, '__name__', None) or _DICT_NAMES[id(
            self.owner)]

    def _dict(self) -> Optional[Dict[str, Any]]:
        """The dict the entry is in, for a registry or scheme table."""
        if isinstance(self.owner, ClassDict):
            return self.owner.get()
        return self.owner if isinstance(self.owner, dict) else None

    def current(self) -> Any:
        table = self._dict()
        if table is not None:
            return table[self.attribute]
        return self.owner.__dict__[self.attribute]

    def set(self, value: Any) -> None:
        table = self._dict()
        if table is not None:
            table[self.attribute] = value
        else:
            setattr(self.owner, self.attribute, value)


def _wrap_load_from_state_dict(original: Callable) -> Callable:
    """The one wrapper of ``nn.Module._load_from_state_dict``: the deferred
    engine's guard inside, the init session's load tracking outside."""

    def _load_from_state_dict(module, state_dict, prefix, local_metadata,
                              strict, missing_keys, unexpected_keys,
                              error_msgs):

        def load() -> Any:
            return original(module, state_dict, prefix, local_metadata,
                            strict, missing_keys, unexpected_keys, error_msgs)

        def guarded() -> Any:
            return guards.guard_load(module, state_dict, prefix, load)

        session = current_session()
        if observes_loads(session):
            return observe_load(session, module, state_dict, prefix,
                                unexpected_keys, guarded)
        return guarded()

    return _load_from_state_dict


def _wrap_runner_init(original: Callable) -> Callable:
    """``Runner.__init__`` that makes the Runner the context's latest:
    ``init_provenance.json`` goes to its log directory."""

    def __init__(runner, *args, **kwargs):
        original(runner, *args, **kwargs)
        CONTEXT.runner_built(runner)

    return __init__


def _replace_with(value: Any) -> Callable[[Any], Any]:
    return lambda original: value


_DICT_NAMES = {id(WEIGHT_INITIALIZERS.module_dict): 'WEIGHT_INITIALIZERS'}
_SCHEMES = ClassDict(CheckpointLoader, '_schemes')

PATCHES: Tuple[Patch, ...] = (
    Patch(BaseModule, 'init_weights',
          _replace_with(InitWeightsMixin.init_weights),
          'the contract: load bit-exact or give the declared init, report'),
    Patch(WEIGHT_INITIALIZERS.module_dict, 'Pretrained',
          _replace_with(PretrainedInit),
          'the extended Pretrained type under its stock name'),
    Patch(_SCHEMES, '',
          _replace_with(load_from_safe_local),
          'local files read by the safe unpickler (torch >= 2.6 refuses '
          "Runner checkpoints with weights_only)"),
    *(Patch(_SCHEMES, scheme,
            _replace_with(load_from_safe_scheme),
            'URLs and model-zoo names: stock\'s mapping, cache and download, '
            'then the safe unpickler (stock reads a download with '
            'weights_only=False, running code from it)')
      for scheme in REMOTE_SCHEMES if scheme in CheckpointLoader._schemes),
    Patch(Registry, 'build',
          lambda original: wrap_build_insert(guards.wrap_build(original)),
          'the outermost model build defers constructor init; a model '
          "config's insert=[...] is applied after its build"),
    Patch(nn.Module, '_load_from_state_dict', _wrap_load_from_state_dict,
          'a pending tensor loaded into is dropped; loads by init_weights '
          'overrides are tracked as checkpoint sources'),
    Patch(nn.Module, '_apply', guards.wrap_apply,
          '.to()/.double() keep pending tensors pending'),
    Patch(nn.Module, 'state_dict', guards.wrap_state_dict,
          'pending values are computed before they are read'),
    Patch(nn.Module, '_save_to_state_dict', guards.wrap_save,
          "MMEngine's get_state_dict: computed first, or aliases in a "
          'session'),
    Patch(torch.Tensor, '__deepcopy__', guards.wrap_read,
          'a deep copy reads the values: computed first'),
    Patch(torch.Tensor, '__reduce_ex__', guards.wrap_read,
          'torch.save reads the values: computed first'),
    Patch(nn.Parameter, '__deepcopy__', guards.wrap_deepcopy,
          "EMA's averaged model: a pending copy, else computed first"),
    Patch(nn.Parameter, '__reduce_ex__', guards.wrap_read,
          'torch.save reads the values: computed first'),
    Patch(DistributedDataParallel, '__init__', guards.wrap_ddp_init,
          "rank 0's broadcast of raw memory is no write"),
    Patch(BaseAveragedModel, '__init__', guards.wrap_averaged_init,
          "EMAHook's averaged model copies pending parameters lazily"),
    Patch(Runner, 'load_or_resume', wrap_load_or_resume,
          'the load of load_from/resume is recorded in the ledger and '
          'reported; checkpoints keep the ledger in meta'),
    Patch(Runner, '__init__', _wrap_runner_init,
          "init_provenance.json is written into the Runner's log directory "
          'only'),
)


def _originals() -> Dict[Tuple[str, str], Any]:
    if _ORIGINALS not in BaseModule.__dict__:
        setattr(BaseModule, _ORIGINALS, {})
    return BaseModule.__dict__[_ORIGINALS]


def _key(patch: Patch) -> Tuple[str, str]:
    return patch.owner_name, patch.attribute


def original(owner: Any, attribute: str) -> Optional[Any]:
    """What ``owner.attribute`` was before mmext_init's first install."""
    for patch in PATCHES:
        if patch.owner is owner and patch.attribute == attribute:
            return _originals().get(_key(patch))
    return None


def install() -> None:
    """Apply every patch and wrap the ``init_weights`` overrides
    (idempotent, reload-safe)."""
    saved = _originals()
    for patch in PATCHES:
        saved.setdefault(_key(patch), patch.current())
        patch.set(patch.make(saved[_key(patch)]))
    wrap_overrides(BaseModule)


def uninstall() -> None:
    """Put back every original (no-op if nothing is installed). What
    deferred init left pending is computed first (the values it would have
    had), since the guards that compute it on use go."""
    materialize()
    saved = _originals()
    for patch in PATCHES:
        if _key(patch) in saved:
            patch.set(saved[_key(patch)])
    unwrap_overrides(BaseModule)


@contextlib.contextmanager
def stock_mmengine() -> Iterator[None]:
    """Stock MMEngine and torch inside the block (for A/B comparisons):
    every patch of :data:`PATCHES` and every ``init_weights`` wrapper is
    taken off, and put back on exit. What deferred init left pending is
    computed on entry (the values it would have had), since its guards go.

    Example:
        >>> import torch.nn as nn
        >>> from mmengine.model import BaseModule
        >>> with stock_mmengine():
        ...     BaseModule.init_weights is original(BaseModule, 'init_weights')
        True
    """
    outermost = not CONTEXT.stock_mode()
    if outermost:
        materialize()
        uninstall()
    try:
        with CONTEXT.stock():
            yield
    finally:
        if outermost:
            install()
