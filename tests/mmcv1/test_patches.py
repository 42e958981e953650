"""The mmcv 1.x rows come off with :func:`mmext_init.uninstall` and go
back with :func:`mmext_init.install`, as the MMEngine rows do."""
from mmcv.cnn.utils.weight_init import INITIALIZERS
from mmcv.runner import BaseModule, CheckpointLoader
from mmengine.logging import MMLogger

import mmext_init
from mmext_init.mmcv1.patches import MMCV1_PATCHES, NEW_INIT_TYPES
from mmext_init.mmcv1.run_log import RunLogForwarder
from mmext_init.plugin.patches import all_rows, original
from mmext_init.plugin.rows import Patch


def _forwarding() -> bool:
    return any(isinstance(h, RunLogForwarder)
               for h in MMLogger.get_current_instance().handlers)


def test_uninstall_restores_mmcv1_and_install_reapplies():
    rows = all_rows()
    assert all(any(r is row for r in rows) for row in MMCV1_PATCHES)
    stock_pretrained = original(INITIALIZERS.module_dict, 'Pretrained')
    mmext_init.uninstall()
    try:
        assert BaseModule.init_weights is original(BaseModule, 'init_weights')
        assert INITIALIZERS.module_dict['Pretrained'] is stock_pretrained
        assert not set(NEW_INIT_TYPES) & set(INITIALIZERS.module_dict)
        assert CheckpointLoader._schemes[''].__module__ == \
            'mmcv.runner.checkpoint'
        assert not _forwarding()
    finally:
        mmext_init.install()
    assert BaseModule.init_weights is mmext_init.InitWeightsMixin.init_weights
    assert INITIALIZERS.module_dict['Pretrained'] is mmext_init.PretrainedInit
    assert INITIALIZERS.module_dict['Zero'] is NEW_INIT_TYPES['Zero']
    assert _forwarding()
    for row in MMCV1_PATCHES:
        if isinstance(row, Patch):
            assert row.current() is not original(row.owner, row.attribute)
