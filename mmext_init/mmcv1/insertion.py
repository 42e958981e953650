"""``model = dict(..., insert=[...])`` on mmcv 1.x model registries: a
model built through ``mmcv.cnn.MODELS`` or a child of it (mmcls, mmdet 2.x,
mmseg 0.x ``MODELS``, their ``BACKBONES``, ``CLASSIFIERS``, ...) with an
``insert`` key is built without it, then the entries are inserted as on
MMEngine's registries (:mod:`mmext_init.plugin.insertion`).

Example:
    >>> import torch.nn as nn
    >>> import mmext_init
    >>> from mmcv.cnn import MODELS
    >>> @MODELS.register_module(force=True)
    ... class TwoLinears(nn.Sequential):
    ...     def __init__(self):
    ...         super().__init__(nn.Linear(4, 4), nn.Linear(4, 2))
    >>> net = MODELS.build(dict(type='TwoLinears', insert=[
    ...     dict(type='LoRA', targets='1', rank=2)]))
    >>> sorted(net.state_dict())
    ['0.bias', '0.weight', '1.bias', '1.lora_A.weight', '1.lora_B.weight', '1.weight']
"""
from typing import Any, Callable

from mmcv.cnn import MODELS

from ..plugin.insertion import INSERT_KEY, apply_insert, insert_entries


def is_mmcv1_model_registry(registry: Any) -> bool:
    """Whether ``registry`` is ``mmcv.cnn.MODELS`` or a descendant of it.

    Args:
        registry: an ``mmcv.utils.Registry``.

    Returns:
        bool: True for a model registry.

    Example:
        >>> from mmcls.models import BACKBONES
        >>> from mmcv.runner.optimizer import OPTIMIZERS
        >>> is_mmcv1_model_registry(BACKBONES), is_mmcv1_model_registry(OPTIMIZERS)
        (True, False)
    """
    while registry is not None:
        if registry is MODELS:
            return True
        registry = getattr(registry, 'parent', None)
    return False


def wrap_build_insert_mmcv1(original: Callable) -> Callable:
    """``mmcv.utils.Registry.build`` that pops a model config's ``insert``
    and applies it to the built model.

    Args:
        original: the stock ``Registry.build``.

    Returns:
        Callable: the wrapped ``build``.
    """

    def build(self, *args, **kwargs):
        cfg = args[0] if args else kwargs.get('cfg')
        if not (isinstance(cfg, dict) and INSERT_KEY in cfg
                and is_mmcv1_model_registry(self)):
            return original(self, *args, **kwargs)
        entries = insert_entries(cfg)
        plain = type(cfg)({k: v for k, v in cfg.items() if k != INSERT_KEY})
        if args:
            args = (plain, ) + args[1:]
        else:
            kwargs['cfg'] = plain
        model = original(self, *args, **kwargs)
        apply_insert(model, entries)
        return model

    return build
