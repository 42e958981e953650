"""Every change mmext_init makes to other libraries' classes and registries,
in one table (:data:`PATCHES`), applied by :func:`install` and undone by
:func:`uninstall`.

A :class:`Patch` row names the owner (a class, or a registry's
dictionary), the attribute or key, the function that makes the replacement
from the original, and the reason. The originals are kept on MMEngine's
``BaseModule`` the first time and never captured again, so importing twice
or ``importlib.reload`` wraps nothing twice. An :class:`Effect` row is a
change that is no one attribute replaced: the ``init_weights`` overrides of
every ``BaseModule`` subclass wrapped (:mod:`.overrides`, through
``BaseModule.__init_subclass__`` for classes defined later), the class of
a pending parameter (and of its session aliases), and torch's global
forward and optimizer-step pre-hooks of the deferred engine; the row says
how :func:`uninstall` undoes it.

The mmcv 1.x backend's rows (mmcv's ``BaseModule``, ``INITIALIZERS``,
``CheckpointLoader`` schemes, ``Registry.build``) are
:data:`mmext_init.mmcv1.patches.MMCV1_PATCHES`, registered here when mmcv
1.x is installed; :func:`install`/:func:`uninstall` apply :func:`all_rows`.

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
    >>> [p.attribute for p in PATCHES if isinstance(p, Effect)][:2]
    ['__init_subclass__', '__class__']
"""
import contextlib
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.model import BaseModule
from mmengine.model.averaged_model import BaseAveragedModel
from mmengine.optim import OptimWrapper
from mmengine.registry import WEIGHT_INITIALIZERS, Registry
from mmengine.runner import Runner
from mmengine.runner.checkpoint import CheckpointLoader
from torch.nn.modules import module as torch_module
from torch.nn.parallel import DistributedDataParallel
from torch.optim import optimizer as torch_optimizer

from ..checkpoint.remote import REMOTE_SCHEMES
from ..checkpoint.safe_load import load_from_safe_local, load_from_safe_scheme
from ..context import CONTEXT, current_session
from ..deferred import guards
from ..deferred.replay import materialize, remove_global_hook
from ..initializers.pretrained import PretrainedInit
from ..session.code_loads import observe_load, observes_loads
from ..training.startup import wrap_initialize_count_status
from .insertion import wrap_build_insert
from .mixin import InitWeightsMixin
from .rows import ClassDict, Effect, Patch, Row, replace_with
from .runner_load import wrap_load_or_resume
from .overrides import unwrap_overrides, wrap_overrides

_ORIGINALS = '_mmext_originals'  # on BaseModule: {(owner, attribute): value}


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


def _compute_pending() -> None:
    materialize()


_SCHEMES = ClassDict(CheckpointLoader, '_schemes')

PATCHES: Tuple[Patch, ...] = (
    Patch(BaseModule, 'init_weights',
          replace_with(InitWeightsMixin.init_weights),
          'the contract: load bit-exact or give the declared init, report'),
    Patch(WEIGHT_INITIALIZERS.module_dict, 'Pretrained',
          replace_with(PretrainedInit),
          'the extended Pretrained type under its stock name',
          name='WEIGHT_INITIALIZERS'),
    Patch(_SCHEMES, '',
          replace_with(load_from_safe_local),
          'local files read by the safe unpickler (torch >= 2.6 refuses '
          "Runner checkpoints with weights_only)"),
    *(Patch(_SCHEMES, scheme,
            replace_with(load_from_safe_scheme),
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
    Patch(OptimWrapper, 'initialize_count_status',
          wrap_initialize_count_status,
          "a ProvenanceOptimWrapperConstructor's wrapper checks the "
          'predicted provenance and reports what trains before the loop'),
    Effect(BaseModule, '__init_subclass__',
           lambda: wrap_overrides(BaseModule),
           lambda: unwrap_overrides(BaseModule),
           "every subclass's own init_weights is wrapped (classes defined "
           'later too) to start a session; undo: the originals back, the '
           'hook removed'),
    Effect(nn.Parameter, '__class__', None, _compute_pending,
           'a pending parameter is a PendingParameter (reads replay its '
           'init); undo: every pending value computed, each an nn.Parameter '
           'again'),
    Effect(torch.Tensor, '__class__', None, _compute_pending,
           "a session's state_dict alias of a pending parameter is a "
           'PendingAlias; undo: computed, each a plain Tensor again'),
    Effect(torch_module, '_global_forward_pre_hooks', None,
           lambda: remove_global_hook('forward'),
           'a forward pre-hook on every module while anything is pending '
           'computes it first; undo: removed'),
    Effect(torch_optimizer, '_global_optimizer_pre_hooks', None,
           lambda: remove_global_hook('step'),
           'an optimizer step pre-hook while anything is pending computes '
           'it first; undo: removed'),
)
#: the tables of other backends, by name (see the module docstring)
BACKEND_TABLES: Dict[str, Tuple[Row, ...]] = {}


def register_backend(name: str, rows: Tuple[Row, ...]) -> None:
    """Make ``rows`` part of :func:`all_rows` (idempotent by ``name``)."""
    BACKEND_TABLES[name] = tuple(rows)


def all_rows() -> Tuple[Row, ...]:
    """:data:`PATCHES`, then the rows of every registered backend."""
    return PATCHES + tuple(row for rows in BACKEND_TABLES.values()
                           for row in rows)


def _originals() -> Dict[Tuple[str, str], Any]:
    if _ORIGINALS not in BaseModule.__dict__:
        setattr(BaseModule, _ORIGINALS, {})
    return BaseModule.__dict__[_ORIGINALS]


def original(owner: Any, attribute: str) -> Optional[Any]:
    """What ``owner.attribute`` was before mmext_init's first install."""
    for patch in all_rows():
        if (isinstance(patch, Patch) and patch.owner is owner
                and patch.attribute == attribute):
            return _originals().get(patch.key)
    return None


def install() -> None:
    """Apply every row of :func:`all_rows` (idempotent, reload-safe).

    Example:
        >>> install()  # importing mmext_init did; again is harmless
        >>> BaseModule.init_weights is InitWeightsMixin.init_weights
        True
    """
    saved = _originals()
    for patch in all_rows():
        patch.apply(saved)


def uninstall() -> None:
    """Undo every row of :func:`all_rows` (no-op if nothing is installed).
    What deferred init left pending is computed first (the values it would
    have had), since the guards that compute it on use go.

    Example:
        >>> uninstall()
        >>> BaseModule.init_weights is original(BaseModule, 'init_weights')
        True
        >>> install()  # put back what importing mmext_init applied
    """
    materialize()
    saved = _originals()
    for patch in all_rows():
        patch.undo(saved)


@contextlib.contextmanager
def stock_mmengine() -> Iterator[None]:
    """Stock MMEngine and torch inside the block (for A/B comparisons):
    every row of :func:`all_rows` is undone, and applied again on exit.
    What deferred init left pending is computed on entry (the values it
    would have had), since its guards go.

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
