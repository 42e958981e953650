"""Docstring examples (``pytest --doctest-modules mmext_init``): the init
report an example's ``init_weights()`` logs carries a timestamp, so it is
kept out of the compared output (examples show the ledger instead). The
OpenMMLab 1.x backend's modules import mmcv 1.x: their examples are
collected only where it is installed (``tools/test.sh`` runs them in the
mmcv 1.x venv)."""
import logging

import pytest
from mmengine.logging import MMLogger

from mmext_init.mmcv1 import mmcv1_installed

collect_ignore = [] if mmcv1_installed() else ['mmext_init/mmcv1']


@pytest.fixture(autouse=True)
def _quiet_report_in_doctests(request):
    if type(request.node).__name__ != 'DoctestItem':
        yield
        return
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(level)
