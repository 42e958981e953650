"""mmext_init: exact, reported weight initialization for OpenMMLab 2.0.

Activate it from any config::

    custom_imports = dict(imports=['mmext_init'], allow_failed_imports=False)

Importing registers the extended ``Pretrained`` init type (and the new ones)
in MMEngine's root ``WEIGHT_INITIALIZERS`` and patches ``BaseModule`` with
:class:`InitWeightsMixin`; models built through a registry defer PyTorch's
constructor init until ``init_weights`` knows what the checkpoint provides
(:func:`materialize` computes pending values at once). Importing twice or
reloading is harmless.
"""
from .loading.adapt import ADAPT_TRANSFORMS
from .loading.adapt_classes import Classes  # noqa: F401
from .checkpoint.converters import CHECKPOINT_CONVERTERS
from .initializers.copy_from import CopyFromInit, copy_from
from .deferred.construction import materialize
from .errors import CheckpointError, InitConfigError
from .checkpoint.formats import open_checkpoint
from .initializers.layer_types import (identity_init, lora_init, orthogonal_init,
                           zero_init)
from .hooks.lsuv import LSUVInitHook
from .plugin.mixin import InitWeightsMixin
from .plugin.patches import install, stock_mmengine, uninstall
from .initializers.pretrained import PretrainedInit
from .provenance.ledger import LoadRecord, Provenance, ProvenanceLedger, get_provenance
from .provenance.report import fold_names, format_report
from .checkpoint.safe_load import extract_state_dict, read_checkpoint
from .provenance.tracking import add_note

__version__ = '0.1.0'
__all__ = [
    'InitWeightsMixin', 'PretrainedInit', 'stock_mmengine', 'get_provenance',
    'Provenance', 'ProvenanceLedger', 'LoadRecord', 'format_report',
    'fold_names', 'read_checkpoint', 'extract_state_dict', 'add_note',
    'CheckpointError', 'InitConfigError', 'install', 'CopyFromInit',
    'copy_from', 'LSUVInitHook', 'zero_init', 'identity_init',
    'orthogonal_init', 'lora_init', 'ADAPT_TRANSFORMS', 'CHECKPOINT_CONVERTERS',
    'open_checkpoint', 'materialize'
]

install()
