"""pytest plugin of ``tools/upstream_suites.py``, loaded in both runs (stock
and plugin) of mmdet's tests: ``mmdet.testing`` looks for ``configs/`` three
folders above its own file, where a source checkout has it; an installed
mmdet ships them in ``mmdet/.mim/configs``. Without this every test built
from a config (``get_detector_cfg``, ``get_roi_head_cfg``) fails in both
runs with ``Cannot find config path`` and compares nothing.
"""
import importlib
import os

# the module is mmdet's test helper; its config lookup is what is redirected
UTILS = importlib.import_module('mmdet.testing._utils')
CONFIGS = os.path.abspath(os.path.join(
    os.path.dirname(UTILS.__file__), os.pardir, '.mim', 'configs'))


def pytest_configure(config) -> None:
    if not os.path.isdir(CONFIGS):
        raise FileNotFoundError(f'the installed mmdet has no {CONFIGS}')
    UTILS._get_config_directory = lambda: CONFIGS
