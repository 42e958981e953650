"""The mmcv 1.x backend's rows of the patch table, :data:`MMCV1_PATCHES`,
registered with :func:`mmext_init.plugin.patches.register_backend` on
import (``import mmext_init`` imports this module when mmcv 1.x is
installed), so :func:`mmext_init.install`, :func:`mmext_init.uninstall`
and :func:`mmext_init.stock_mmengine` apply and undo them with the
MMEngine rows. The torch-level rows (``nn.Module._load_from_state_dict``
and the others) are shared: they are in :data:`~mmext_init.plugin.patches.PATCHES`.

Example:
    >>> import mmext_init
    >>> from mmcv.runner import BaseModule
    >>> BaseModule.init_weights is mmext_init.InitWeightsMixin.init_weights
    True
    >>> [(p.owner_name, p.attribute) for p in MMCV1_PATCHES][:3]
    [('mmcv.BaseModule', 'init_weights'), ('mmcv.BaseModule', '__init_subclass__'), ('mmcv.INITIALIZERS', 'Pretrained')]
    >>> with mmext_init.stock_mmengine():
    ...     BaseModule.init_weights is mmext_init.InitWeightsMixin.init_weights
    False
"""
from typing import Dict, Tuple

from mmcv.cnn.utils.weight_init import INITIALIZERS
from mmcv.runner import BaseModule, CheckpointLoader
from mmcv.utils import Registry
from mmengine.logging import MMLogger
from mmengine.registry import WEIGHT_INITIALIZERS

from ..checkpoint.remote import REMOTE_SCHEMES
from ..checkpoint.safe_load import load_from_safe_local, load_from_safe_scheme
from ..initializers.pretrained import PretrainedInit
from ..plugin.mixin import InitWeightsMixin
from ..plugin.overrides import unwrap_overrides, wrap_overrides
from ..plugin.patches import register_backend
from ..plugin.rows import ClassDict, Effect, Patch, Row, replace_with
from .insertion import wrap_build_insert_mmcv1
from .run_log import forward_to_run_log, stop_forwarding

#: the init types mmext_init adds to MMEngine's ``WEIGHT_INITIALIZERS``
#: (``Zero``, ``Identity``, ..., and those of the insert types, such as
#: ``DoRAMagnitude``: ``import mmext_init`` imports the insert types
#: first), by their registered names; ``Pretrained`` has its own row
NEW_INIT_TYPES: Dict[str, type] = {
    name: cls for name, cls in WEIGHT_INITIALIZERS.module_dict.items()
    if cls.__module__.startswith('mmext_init.') and name != 'Pretrained'}


def add_init_types() -> None:
    """Register :data:`NEW_INIT_TYPES` in mmcv's ``INITIALIZERS``."""
    INITIALIZERS.module_dict.update(NEW_INIT_TYPES)


def remove_init_types() -> None:
    """Take :data:`NEW_INIT_TYPES` out of mmcv's ``INITIALIZERS`` again."""
    for name, cls in NEW_INIT_TYPES.items():
        if INITIALIZERS.module_dict.get(name) is cls:
            del INITIALIZERS.module_dict[name]


_SCHEMES = ClassDict(CheckpointLoader, '_schemes')
_SCHEMES_NAME = 'mmcv.CheckpointLoader._schemes'

MMCV1_PATCHES: Tuple[Row, ...] = (
    Patch(BaseModule, 'init_weights',
          replace_with(InitWeightsMixin.init_weights),
          "the contract on mmcv 1.x (stock returns after a Pretrained "
          "init_cfg: the children's init_weights never run)",
          name='mmcv.BaseModule'),
    Effect(BaseModule, '__init_subclass__',
           lambda: wrap_overrides(BaseModule),
           lambda: unwrap_overrides(BaseModule),
           "every mmcv 1.x subclass's own init_weights is wrapped (classes "
           'defined later too) to start a session; undo: the originals '
           'back, the hook removed', name='mmcv.BaseModule'),
    Patch(INITIALIZERS.module_dict, 'Pretrained',
          replace_with(PretrainedInit),
          "the extended Pretrained type in mmcv's INITIALIZERS",
          name='mmcv.INITIALIZERS'),
    Effect(INITIALIZERS.module_dict, ', '.join(NEW_INIT_TYPES),
           add_init_types, remove_init_types,
           "the new init types in mmcv's INITIALIZERS (mmcv.cnn.initialize "
           'builds them); undo: removed', name='mmcv.INITIALIZERS'),
    Patch(_SCHEMES, '', replace_with(load_from_safe_local),
          'local files read by the safe unpickler (mmcv 1.x runners write '
          'numpy scalars in meta: torch >= 2.6 refuses them with '
          'weights_only)', name=_SCHEMES_NAME),
    *(Patch(_SCHEMES, scheme, replace_with(load_from_safe_scheme),
            "URLs and model-zoo names (mmcv 1.x's tables are MMEngine's): "
            'the same mapping, cache and download, then the safe unpickler',
            name=_SCHEMES_NAME)
      for scheme in REMOTE_SCHEMES if scheme in CheckpointLoader._schemes),
    Patch(Registry, 'build', wrap_build_insert_mmcv1,
          "a model config's insert=[...] is applied after its build",
          name='mmcv.Registry'),
    Effect(MMLogger, 'handlers', forward_to_run_log, stop_forwarding,
           "MMEngine's current logger (mmext_init's reports) also writes to "
           "the mmcv 1.x run's log file; undo: the forwarding handler "
           'removed'),
)

register_backend('mmcv1', MMCV1_PATCHES)
