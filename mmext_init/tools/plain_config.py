"""What a merged checkpoint needs: its ``meta`` (which config loads it,
the base checkpoint's ``dataset_meta``) and its config as one file: CONFIG
with its ``_base_`` chain resolved and ``model.insert`` holding only the
entries kept (``insert`` cannot be deleted through ``_base_``). With none kept,
``mmext_init`` leaves ``custom_imports`` and its hooks leave
``custom_hooks``: the libraries' own ``tools/test.py`` runs it without the
plugin.

Example:
    >>> plain_config_path('w/merged.pth', '')
    'w/merged.py'
"""
import copy
import os
from typing import Any, Dict, List, Optional

from mmengine.config import Config
from mmengine.registry import HOOKS

from ..checkpoint.formats import open_checkpoint
from ..errors import CheckpointError


def plain_config_path(out: str, out_config: Optional[str]) -> str:
    """``--out-config``'s file: as given, else ``--out`` with ``.py``."""
    return out_config or os.path.splitext(out)[0] + '.py'


def is_plugin_hook(cfg: Any) -> bool:
    """Whether a ``custom_hooks`` entry is one of mmext_init's hooks
    (``UnfreezeHook``, ``DeltaCheckpointHook``...: training only).

    Example:
        >>> import mmext_init
        >>> is_plugin_hook(dict(type='UnfreezeHook', milestones=[]))
        True
        >>> is_plugin_hook(dict(type='EMAHook'))
        False
    """
    kind = cfg.get('type') if isinstance(cfg, dict) else None
    cls = HOOKS.get(kind) if isinstance(kind, str) else kind
    return isinstance(cls, type) and cls.__module__.startswith('mmext_init.')


def plain_config(config: str, kept: List[dict],
                 options: Optional[dict] = None) -> Config:
    """CONFIG (``options`` merged: ``--cfg-options``) as one config, its
    ``model.insert`` only ``kept``; without kept entries, no ``mmext_init``
    import and none of its hooks."""
    plain = Config.fromfile(config, import_custom_modules=False)
    if options:
        plain.merge_from_dict(copy.deepcopy(options))
    plain.model.pop('insert', None)
    if kept:
        plain.model['insert'] = kept
        return plain
    if plain.get('custom_hooks'):  # they would need the plugin
        plain.custom_hooks = [h for h in plain.custom_hooks
                              if not is_plugin_hook(h)]
    imports = plain.get('custom_imports', {}).get('imports')
    if imports is not None:
        rest = [m for m in ([imports] if isinstance(imports, str)
                            else imports) if m != 'mmext_init']
        if rest:
            plain.custom_imports['imports'] = rest
        else:
            plain.pop('custom_imports')
    return plain


def plain_data(value: Any) -> bool:
    """Whether ``value`` is made of dicts, lists, tuples, str, numbers,
    bools and None only (``torch.load(weights_only=True)`` reads it).

    Example:
        >>> plain_data({'classes': ('a', 'b'), 'palette': [(1, 2, 3)]})
        True
    """
    if isinstance(value, dict):
        return all(isinstance(k, str) and plain_data(v)
                   for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return all(plain_data(v) for v in value)
    return value is None or type(value) in (str, int, float, bool)


def base_meta(path: str) -> Dict[str, Any]:
    """The base checkpoint's ``dataset_meta`` if it is plain data."""
    try:
        meta = open_checkpoint(path).meta or {}
    except CheckpointError:
        return {}
    data = meta.get('dataset_meta') if isinstance(meta, dict) else None
    return {'dataset_meta': data} if data and plain_data(data) else {}


def needs(config: str, kept: List[dict]) -> str:
    """The sentence saying which model config loads the merged file."""
    if not kept:
        return (f'the model of {config} without model.insert (loads in '
                'stock MMEngine, no plugin)')
    return (f'the model of {config} with model.insert = {kept!r} only (the '
            'kept entries; mmext_init imported)')
