"""Docstring examples (``pytest --doctest-modules mmext_init``): the init
report an example's ``init_weights()`` logs carries a timestamp, so it is
kept out of the compared output (examples show the ledger instead)."""
import logging

import pytest
from mmengine.logging import MMLogger


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
