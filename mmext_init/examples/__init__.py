"""Example inserted modules for the configs in ``configs/``.

Name the submodule a config needs in ``custom_imports`` next to
``mmext_init``::

    custom_imports = dict(
        imports=['mmext_init', 'mmext_init.examples.mmdet_models'],
        allow_failed_imports=False)

This package registers ``ConvAdapter`` in MMEngine's root ``MODELS`` and
imports neither mmdet nor mmseg; :mod:`mmext_init.examples.mmdet_models`
registers ``ResNetWithAdapters``/``SwinWithAdapters`` in mmdet's ``MODELS``,
:mod:`mmext_init.examples.mmseg_models` ``MiTWithAdapters`` in mmseg's.

Example:
    >>> import mmext_init.examples
    >>> mmext_init.examples.__all__
    ['ConvAdapter', 'apply_adapters']
"""
from .adapters import ConvAdapter, apply_adapters

__all__ = ['ConvAdapter', 'apply_adapters']
