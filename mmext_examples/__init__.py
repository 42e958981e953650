"""Example inserted modules for the configs in ``configs/``.

Name it in ``custom_imports`` next to ``mmext_init``::

    custom_imports = dict(imports=['mmext_init', 'mmext_examples'],
                          allow_failed_imports=False)

Importing registers ``ConvAdapter`` in MMEngine's root ``MODELS`` and, when
the libraries are installed, ``ResNetWithAdapters``/``SwinWithAdapters`` in
mmdet's ``MODELS`` and ``MiTWithAdapters`` in mmseg's.
"""
import importlib.util

from .adapters import ConvAdapter, apply_adapters

__all__ = ['ConvAdapter', 'apply_adapters']

if importlib.util.find_spec('mmdet') is not None:
    from .mmdet_models import ResNetWithAdapters, SwinWithAdapters  # noqa
    __all__ += ['ResNetWithAdapters', 'SwinWithAdapters']
if importlib.util.find_spec('mmseg') is not None:
    from .mmseg_models import MiTWithAdapters  # noqa
    __all__ += ['MiTWithAdapters']
