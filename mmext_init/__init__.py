"""mmext_init: exact, reported weight initialization for OpenMMLab 2.0.

Activate it from any config::

    custom_imports = dict(imports=['mmext_init'], allow_failed_imports=False)

Importing applies the patch table (:mod:`mmext_init.plugin.patches`): the
extended ``Pretrained`` init type (and the new ones) in MMEngine's root
``WEIGHT_INITIALIZERS``, :class:`InitWeightsMixin`'s ``init_weights`` on
``BaseModule``, the safe local checkpoint loader, and deferred constructor
init for models built through a registry (:func:`materialize` computes
pending values at once). With mmcv 1.x installed, the same for mmcv's
``BaseModule``, ``INITIALIZERS`` and ``CheckpointLoader`` (OpenMMLab 1.x,
:mod:`mmext_init.mmcv1`). Importing twice or reloading is harmless;
:func:`uninstall` and :func:`stock_mmengine` take everything off.

Example:
    >>> import torch.nn as nn
    >>> import mmext_init
    >>> from mmengine.model import BaseModule
    >>> class Head(BaseModule):
    ...     def __init__(self):
    ...         super().__init__(init_cfg=dict(type='Zero', layer='Linear'))
    ...         self.fc = nn.Linear(4, 2)
    >>> head = Head()
    >>> head.init_weights()
    >>> mmext_init.get_provenance(head).entries['fc.weight'].describe('Head')
    'Zero from the model root (Head)'
"""
from .checkpoint.converters import CHECKPOINT_CONVERTERS
from .checkpoint.formats import open_checkpoint
from .checkpoint.safe_load import extract_state_dict, read_checkpoint
from .deferred import materialize
from .errors import CheckpointError, InitConfigError
from .hooks.delta_checkpoint import DeltaCheckpointHook
from .hooks.lsuv import LSUVInitHook
from .hooks.unfreeze import UnfreezeHook
from .initializers.copy_from import CopyFromInit, copy_from
from .initializers.layer_types import (identity_init, lora_pair_init,
                                       orthogonal_init, zero_init)
from .initializers.pretrained import PretrainedInit
from .inserting.registry import INSERT_TYPES, InsertType
from .inserting.sets import enable_insert_sets, insert_sets
from .loading.adapt import ADAPT_TRANSFORMS, AdaptTransform
from .loading.adapt_classes import Classes  # noqa: F401
from .mmcv1 import mmcv1_installed
from .plugin.mixin import InitWeightsMixin
from .plugin.patches import install, stock_mmengine, uninstall
from .provenance.ledger import (LoadRecord, Provenance, ProvenanceLedger,
                                get_provenance)
from .provenance.report import fold_names, format_report
from .provenance.tracking import add_note
from .training.constructor import ProvenanceOptimWrapperConstructor

__version__ = '0.1.0'
__all__ = [
    'InitWeightsMixin', 'PretrainedInit', 'stock_mmengine', 'get_provenance',
    'Provenance', 'ProvenanceLedger', 'LoadRecord', 'format_report',
    'fold_names', 'read_checkpoint', 'extract_state_dict', 'add_note',
    'CheckpointError', 'InitConfigError', 'install', 'uninstall',
    'CopyFromInit', 'copy_from', 'LSUVInitHook', 'zero_init', 'identity_init',
    'orthogonal_init', 'lora_pair_init', 'ADAPT_TRANSFORMS',
    'CHECKPOINT_CONVERTERS', 'open_checkpoint', 'materialize',
    'ProvenanceOptimWrapperConstructor', 'UnfreezeHook', 'DeltaCheckpointHook',
    'INSERT_TYPES', 'InsertType', 'AdaptTransform', 'enable_insert_sets',
    'insert_sets'
]

if mmcv1_installed():  # OpenMMLab 1.x: its rows join the patch table
    from .mmcv1 import optimizer as mmcv1_optimizer  # noqa: F401
    from .mmcv1 import patches as mmcv1_patches  # noqa: F401

install()
