"""The OpenMMLab 1.x backend: mmext_init on mmcv 1.x (mmdet 2.x, mmseg 0.x,
mmcls 0.x), next to the MMEngine backend of :mod:`mmext_init.plugin`.

The core (sessions, ledger, report, safe reading, key mapping, adaptation,
insertion, training plans) is shared; what is specific to mmcv 1.x is here:
the patch rows (:mod:`.patches`: mmcv's ``BaseModule.init_weights`` and
its subclasses' overrides, ``INITIALIZERS``, ``CheckpointLoader`` schemes),
``insert=[...]`` on mmcv 1.x model registries (:mod:`.insertion`) and the
optimizer constructor (:mod:`.optimizer`). ``import mmext_init`` imports
:mod:`.patches` only when :func:`mmcv1_installed`; this module imports no
mmcv, so it imports with mmcv 2.x (or none) too.

Example:
    >>> isinstance(mmcv1_installed(), bool)
    True
"""
import importlib.util
import os


def mmcv1_installed() -> bool:
    """Whether the importable ``mmcv`` is 1.x, told from its ``mmcv/runner``
    package (2.x has none) without importing mmcv.

    Returns:
        bool: True for mmcv (or mmcv-full) 1.x, False for 2.x or none.

    Example:
        >>> mmcv1_installed() <= (importlib.util.find_spec('mmcv') is not None)
        True
    """
    spec = importlib.util.find_spec('mmcv')
    if spec is None or not spec.submodule_search_locations:
        return False
    return any(os.path.isfile(os.path.join(folder, 'runner', '__init__.py'))
               for folder in spec.submodule_search_locations)
