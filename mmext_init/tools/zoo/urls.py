"""Checkpoint names in a shipped config, where stock MMEngine reads them, and
which module loads each (no mmext_init import: the stock worker uses it).

A *reference* is a string checkpoint of an ``init_cfg`` entry (``Pretrained``
or a type-less ``dict(checkpoint=...)``, read by the module's own
``init_weights``) or a string ``pretrained=`` key. Scheme names are mapped to
URLs with MMEngine's own tables, and a URL to the file torch hub (so stock
MMEngine) reads: ``$TORCH_HOME/hub/checkpoints/<basename of the URL path>``.

Example:
    >>> model = dict(type='M', backbone=dict(type='ResNet', init_cfg=dict(
    ...     type='Pretrained', checkpoint='torchvision://resnet50')))
    >>> [(r.path, r.name, r.module_path) for r in find_refs(model)]
    [(('backbone', 'init_cfg'), 'torchvision://resnet50', ('backbone',))]
    >>> checkpoint_url('torchvision://resnet50')[:33]
    'https://download.pytorch.org/mode'
"""
import os
from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Tuple
from urllib.parse import urlparse

import torch
import torch.nn as nn
from mmengine.registry import MODELS
from mmengine.runner.checkpoint import (get_deprecated_model_names,
                                        get_external_models, get_mmcls_models,
                                        get_torchvision_models)

HTTP = ('http://', 'https://')
OPENMMLAB = ('open-mmlab://', 'openmmlab://')
TORCHVISION = ('torchvision://', 'modelzoo://')
MMCLS = 'mmcls://'
Path = Tuple[Any, ...]  # keys (str) and list indices (int) into cfg.model


@dataclass
class Ref:
    """One checkpoint reference: ``path`` of the node holding it (an
    ``init_cfg`` entry, or the module config for ``pretrained``), ``index``
    in an ``init_cfg`` list, the module config's path and type."""
    path: Path
    name: str
    kind: str  # 'init_cfg' or 'pretrained'
    module_path: Path
    module_type: Any
    entry: dict = field(default_factory=dict)
    index: Optional[int] = None


def find_refs(model_cfg: dict) -> List[Ref]:
    """Every string checkpoint of an ``init_cfg`` entry and every string
    ``pretrained=`` below ``model_cfg``, in config order."""
    refs: List[Ref] = []
    _walk(model_cfg, (), model_cfg, (), refs)
    return refs


def _walk(node: Any, path: Path, module: dict, module_path: Path,
          refs: List[Ref]) -> None:
    if isinstance(node, (list, tuple)):
        for i, item in enumerate(node):
            _walk(item, path + (i,), module, module_path, refs)
        return
    if not isinstance(node, dict):
        return
    if 'type' in node or not path:
        module, module_path = node, path
    for key, value in node.items():
        if key == 'init_cfg':
            _init_refs(value, path + (key,), module, module_path, refs)
        elif key == 'pretrained' and isinstance(value, str):
            refs.append(Ref(path, value, 'pretrained', module_path,
                            module.get('type')))
        else:
            _walk(value, path + (key,), module, module_path, refs)


def _init_refs(value: Any, path: Path, module: dict, module_path: Path,
               refs: List[Ref]) -> None:
    entries = value if isinstance(value, list) else [value]
    for i, entry in enumerate(entries):
        if isinstance(entry, dict) and isinstance(entry.get('checkpoint'),
                                                  str):
            if entry.get('type', 'Pretrained') == 'Pretrained':
                refs.append(Ref(path, entry['checkpoint'], 'init_cfg',
                                module_path, module.get('type'), dict(entry),
                                i if isinstance(value, list) else None))


def checkpoint_url(name: str) -> str:
    """The URL stock MMEngine downloads for ``name`` (its own tables);
    ``ValueError`` for a name it does not download (a local path, a file in
    the MMEngine home, ``pavi://``, storage backends).

    Example:
        >>> checkpoint_url('open-mmlab://resnet50_v1c').split('/')[-1]
        'resnet50_v1c-2cccc1ad.pth'
    """
    if name.startswith(HTTP):
        return name
    if name.startswith(TORCHVISION):
        return _lookup(get_torchvision_models(), name.split('://', 1)[1],
                       name)
    if name.startswith(OPENMMLAB):
        model = name.split('://', 1)[1]
        model = get_deprecated_model_names().get(model, model)
        url = _lookup(get_external_models(), model, name)
        if not url.startswith(HTTP):
            raise ValueError(f'{name} maps to a file in the MMEngine home '
                             f'({url}), not a download')
        return url
    if name.startswith(MMCLS):
        return _lookup(get_mmcls_models(), name[len(MMCLS):], name)
    raise ValueError(f'{name!r} is not a name stock downloads (a local path '
                     'or another scheme)')


def _lookup(table: dict, key: str, name: str) -> str:
    if key not in table:
        raise ValueError(f'{name}: {key!r} is not in MMEngine\'s table')
    return table[key]


def hub_cache_path(url: str) -> str:
    """``$TORCH_HOME/hub/checkpoints/<basename of the URL path>``: where
    ``torch.hub.load_state_dict_from_url`` (so stock) reads ``url``'s file.

    Example:
        >>> os.environ['TORCH_HOME'] = '/t'
        >>> hub_cache_path('https://host/a/r50.pth?x=1')
        '/t/hub/checkpoints/r50.pth'
    """
    return os.path.join(torch.hub.get_dir(), 'checkpoints',
                        os.path.basename(urlparse(url).path))


def strip_refs(model_cfg: dict, refs: Sequence[Ref]) -> None:
    """Remove these references from ``model_cfg`` in place (a ``Pretrained``
    entry dropped, a ``pretrained=`` key set to None)."""
    for ref in sorted(refs, key=lambda r: -(r.index or 0)):
        node = _at(model_cfg, ref.path)
        if ref.kind == 'pretrained':
            node['pretrained'] = None
            continue
        parent = _at(model_cfg, ref.path[:-1])
        if ref.index is None:
            parent['init_cfg'] = None
        else:
            kept = [e for i, e in enumerate(node) if i != ref.index]
            parent['init_cfg'] = kept or None


def _at(cfg: Any, path: Path) -> Any:
    for key in path:
        cfg = cfg[key]
    return cfg


def loader_modules(model: nn.Module, ref: Ref) -> List[str]:
    """Names of the modules of ``model`` that load ``ref`` (stripped build):
    the module at the config path (``roi_head.bbox_head.0``) when its class
    is the config's type, else the modules of that type below the nearest
    ancestor that maps (``backbone.backbone_cfg`` -> ``backbone.backbone``).
    A segmentor's own ``pretrained`` goes to its backbone (as mmseg's
    ``EncoderDecoder`` does). Empty when none is found."""
    path = ref.module_path
    if ref.kind == 'pretrained' and not path and hasattr(model, 'backbone') \
            and any(c.__name__ == 'BaseSegmentor'
                    for c in type(model).__mro__):
        return ['backbone']
    cls = _registered(ref.module_type) if path else type(model)
    modules = dict(model.named_modules())
    name = '.'.join(str(k) for k in path)
    if name in modules and (cls is None or isinstance(modules[name], cls)):
        return [name]
    for cut in range(len(path) - 1, -1, -1):
        parent = '.'.join(str(k) for k in path[:cut])
        if parent in modules and cls is not None:
            return [n for n, m in modules.items() if isinstance(m, cls) and (
                not parent or n.startswith(parent + '.'))]
    return []


def _registered(kind: Any) -> Optional[type]:
    if isinstance(kind, type):
        return kind
    if not isinstance(kind, str):
        return None
    with MODELS.switch_scope_and_registry(None) as registry:  # default scope
        return registry.get(kind)
