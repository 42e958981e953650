"""Names in one model tree: module paths, config entry labels, and the
``Pretrained`` entries a module declares.

Example:
    >>> import torch.nn as nn
    >>> model = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    >>> names = ModelNames(model)
    >>> names.path_of(model[0]), names.label('0', 'Pretrained')
    ('0', "init_cfg of '0' (Pretrained)")
"""
from typing import Dict, List

import torch.nn as nn
from mmengine.model import BaseModule

from ..errors import entry_label
from ..loading.options import (PretrainedOptions, as_cfg_list, build_options,
                               is_pretrained_cfg)


def uses_contract(module: nn.Module) -> bool:
    """Whether ``module.init_weights`` is mmext_init's (not an override).

    Example:
        >>> import mmext_init
        >>> from mmengine.model import BaseModule
        >>> uses_contract(BaseModule())
        True
    """
    impl = getattr(type(module), 'init_weights', None)
    return bool(getattr(impl, '_mmext_contract', False))


def is_base_like(module: nn.Module) -> bool:
    """A ``BaseModule``, or a module using mmext_init's ``init_weights``."""
    return isinstance(module, BaseModule) or uses_contract(module)


def pretrained_cfgs(module: nn.Module) -> List[dict]:
    """The ``Pretrained`` entries of ``module``'s own ``init_cfg``, as
    written.

    Example:
        >>> fc = nn.Linear(2, 2)
        >>> fc.init_cfg = [dict(type='Pretrained', checkpoint='a.pth'),
        ...                dict(type='Kaiming')]
        >>> pretrained_cfgs(fc)
        [{'type': 'Pretrained', 'checkpoint': 'a.pth'}]
    """
    return [cfg for cfg in as_cfg_list(getattr(module, 'init_cfg', None))
            if is_pretrained_cfg(cfg)]


class ModelNames:
    """Paths of the modules of ``root`` (the first path of a shared one)."""

    def __init__(self, root: nn.Module) -> None:
        self.root = root
        self.root_name = type(root).__name__
        self._paths: Dict[int, str] = {}
        for name, module in root.named_modules(remove_duplicate=False):
            self._paths.setdefault(id(module), name)

    def path_of(self, module: nn.Module) -> str:
        """Dotted path of ``module`` from the root ('' for the root)."""
        return self._paths.get(id(module), f'<{type(module).__name__}>')

    def label(self, path: str, kind: str) -> str:
        """The config entry at ``path`` as error messages name it."""
        return entry_label(path, self.root_name, kind)

    def pretrained_entries(self,
                           module: nn.Module) -> List[PretrainedOptions]:
        """The ``Pretrained`` entries of ``module``'s own ``init_cfg``."""
        path = self.path_of(module)
        return [build_options(cfg, self.label(path, 'Pretrained'))
                for cfg in pretrained_cfgs(module)]
