"""The config a merged checkpoint needs, as one file: CONFIG with its
``_base_`` chain resolved and ``model.insert`` holding only the entries
kept (``insert`` cannot be deleted through ``_base_``). With none kept,
``mmext_init`` leaves ``custom_imports`` and its hooks leave
``custom_hooks``: the libraries' own ``tools/test.py`` runs it without the
plugin.

Example:
    >>> plain_config_path('w/merged.pth', '')
    'w/merged.py'
"""
import os
from typing import Any, List, Optional

from mmengine.config import Config
from mmengine.registry import HOOKS


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


def plain_config(config: str, kept: List[dict]) -> Config:
    """CONFIG as one config, its ``model.insert`` only ``kept``; without
    kept entries, no ``mmext_init`` import and none of its hooks."""
    plain = Config.fromfile(config, import_custom_modules=False)
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
