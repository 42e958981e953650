"""Run the non-``Pretrained`` entries of an ``init_cfg`` on a module.

Same grammar and order as MMEngine's ``mmengine.model.initialize`` (so values
stay bit-identical for the same seed), plus:

* ``override=dict(name='a.b.c', ...)`` accepts dotted paths;
* a ``layer`` that is no ``nn.Module`` class name at all (``'Conv2D'``) is an
  error suggesting the close match; a real class name matching nothing stays
  silent, as configs rely on;
* every initializer runs as a tracked *source*, so its writes are recorded
  exactly and skipped on tensors the checkpoint provides; one of MMEngine's
  value initializers whose every ``weight``/``bias`` in reach comes from the
  checkpoint is not run at all (it could only write those);
* mmext_init's own types (``Zero``, ``Identity``, ``Orthogonal``,
  ``LoRAPair``, ``CopyFrom``) without ``layer`` and ``override`` apply to the module that
  declares them (stock types keep MMEngine's meaning: nothing);
* an entry that touched no tensor (neither wrote one nor skipped a write the
  checkpoint made moot) is recorded in ``tracker.void_entries``.

Example:
    >>> import torch.nn as nn
    >>> from mmext_init.provenance.tracking import WriteTracker
    >>> head = nn.Sequential(nn.Conv2d(2, 2, 1), nn.Linear(2, 2))
    >>> tracker = WriteTracker(head.state_dict(keep_vars=True))
    >>> apply_init_cfgs(head, [dict(type='Constant', val=0, layer='Conv2d')],
    ...                 '', 'Head', tracker)
    >>> sorted(tracker.written), int(head[0].weight.count_nonzero())
    (['0.bias', '0.weight'], 0)
"""
import copy
from typing import Any, Callable, Dict, List, Optional, Sequence, Set

import torch
import torch.nn as nn
from mmengine.model import weight_init
from mmengine.registry import WEIGHT_INITIALIZERS, build_from_cfg

from ..errors import (InitConfigError, InitConfigTypeError, close_names,
                      entry_label, renamed)
from ..matching import init_layer_names
from ..provenance.ledger import INITIALIZER, VoidEntry
from ..provenance.tracking import InitSource, WriteTracker

_META_KEYS = ('type', 'layer', 'override', 'name')
# initializers that only write ``module.weight``/``module.bias`` (exact types)
_WEIGHT_BIAS_ONLY = (weight_init.ConstantInit, weight_init.XavierInit,
                     weight_init.NormalInit, weight_init.TruncNormalInit,
                     weight_init.UniformInit, weight_init.KaimingInit,
                     weight_init.Caffe2XavierInit)
_CLASS_NAMES: Set[str] = set()
_BARE_HINT = ('; an entry without layer= and override= applies to the module '
              'that declares it: name the layers with layer=... or the '
              'submodule with override=dict(name=...)')


def type_name(cfg: Dict[str, Any]) -> str:
    """The ``type`` of an init cfg as text (types may be given as classes)."""
    t = cfg.get('type')
    return t if isinstance(t, str) else getattr(t, '__name__', repr(t))


def _all_module_class_names() -> Set[str]:
    names: Set[str] = set()
    todo = [nn.Module]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub.__name__ not in names:
                names.add(sub.__name__)
                todo.append(sub)
    names.add('Module')
    return names


def check_layer_names(cfg: Dict[str, Any], label: str) -> None:
    """Raise for a ``layer`` entry that names no ``nn.Module`` class at all.

    Example:
        >>> check_layer_names(dict(type='Kaiming', layer='Conv2D'), 'head')
        Traceback (most recent call last):
        ...
        mmext_init.errors.InitConfigError: head: layer 'Conv2D' is not the name of any nn.Module class; did you mean 'Conv2d'?
    """
    layers = cfg.get('layer')
    if layers is None:
        return
    layers = [layers] if isinstance(layers, str) else list(layers)
    for layer in layers:
        if not isinstance(layer, str):
            raise InitConfigError(f'{label}: layer must be a str, got {layer!r}')
        if layer in _CLASS_NAMES:
            continue
        known = _all_module_class_names()  # classes defined since: look again
        _CLASS_NAMES.update(known)
        if layer not in known:
            close = close_names(layer, known)
            hint = f'; did you mean {close}?' if close else ''
            raise InitConfigError(
                f'{label}: layer {layer!r} is not the name of any nn.Module '
                f'class{hint}')


def _submodule(module: nn.Module, name: str) -> Optional[nn.Module]:
    """The submodule at dotted path ``name``, or None."""
    target: Optional[nn.Module] = module
    for part in name.split('.'):
        target = getattr(target, part, None)
        if not isinstance(target, nn.Module):
            return None
    return target


def resolve_override(module: nn.Module, name: str, label: str) -> nn.Module:
    """The submodule at dotted path ``name`` (error with close names if none).

    Example:
        >>> import torch.nn as nn
        >>> model = nn.Sequential(nn.Sequential(nn.Conv2d(2, 4, 3)))
        >>> resolve_override(model, '0.0', 'init_cfg')
        Conv2d(2, 4, kernel_size=(3, 3), stride=(1, 1))
    """
    target = _submodule(module, name)
    if target is None:
        names = [n for n, _ in module.named_modules() if n]
        close = close_names(name, names)
        hint = f'; did you mean {close}?' if close else ''
        raise InitConfigError(
            f'{label}: override name {name!r} is not a submodule of '
            f'{type(module).__name__}{hint}')
    return target


def _build(cfg: Dict[str, Any], label: str) -> Any:
    if 'type' not in cfg:
        raise InitConfigError(f'{label}: init cfg {dict(cfg)!r} has no "type"')
    try:
        return build_from_cfg(cfg, WEIGHT_INITIALIZERS)
    except KeyError as exc:
        moved = renamed('init type', cfg['type'])
        if moved and cfg['type'] not in WEIGHT_INITIALIZERS.module_dict:
            raise InitConfigError(f'{label}: {moved}') from exc
        known = sorted(WEIGHT_INITIALIZERS.module_dict)
        close = close_names(type_name(cfg), known)
        hint = f'; did you mean {close}?' if close else ''
        raise InitConfigError(
            f'{label}: unknown init type {type_name(cfg)!r}{hint} '
            f'(registered: {", ".join(known)})') from exc
    except TypeError as exc:
        raise InitConfigError(f'{label}: {exc}') from exc


def run_initializer(module: nn.Module,
                    cfg: Dict[str, Any],
                    wholemodule: bool,
                    declared_by: str,
                    label: str,
                    tracker: WriteTracker,
                    note: Optional[str] = None,
                    bare: bool = False) -> Optional[InitSource]:
    """Build one initializer and run it on ``module`` as a tracked source.

    ``bare``: the entry has neither ``layer`` nor ``override``; types with
    ``applies_to_declaring_module`` then initialize the whole module (and,
    with an ``override`` but no ``layer``, nothing here, as the stock types).
    Returns the source, whose counters say what it did (None: not run).
    """
    check_layer_names(cfg, label)
    func = _build(cfg, label)
    if getattr(func, 'applies_to_declaring_module', False) and \
            not wholemodule and not cfg.get('layer'):
        if not bare:
            return None
        wholemodule = True
    args = {k: v for k, v in cfg.items() if k not in _META_KEYS}
    src = InitSource(INITIALIZER, type_name(cfg), declared_by, args, note=note)
    if type(func) in _WEIGHT_BIAS_ONLY and _all_provided(
            _reached(module, func.layer, wholemodule), tracker):
        tracker.skipped_calls += 1
        src.skipped += 1
        return src
    func.wholemodule = wholemodule
    with tracker.source(src):
        try:
            func(module)
        except InitConfigError as exc:  # e.g. CopyFrom's; name the entry
            if str(exc).startswith(label):
                raise
            raise InitConfigError(f'{label}: {exc}') from exc
        except ValueError as exc:  # e.g. Identity on an even kernel
            hint = _BARE_HINT if bare and wholemodule else ''
            raise InitConfigError(f'{label}: {exc}{hint}') from exc
    return src


def _reached(module: nn.Module, layers: Sequence[str],
             wholemodule: bool) -> List[torch.Tensor]:
    """The ``weight``/``bias`` tensors a stock value initializer reaches."""
    found = []
    for sub in module.modules():
        if wholemodule or init_layer_names(sub) & set(layers):
            found += [getattr(sub, attr) for attr in ('weight', 'bias')
                      if isinstance(getattr(sub, attr, None), torch.Tensor)]
    return found


def _all_provided(tensors: List[torch.Tensor], tracker: WriteTracker) -> bool:
    """Whether there are ``tensors`` and every one comes from the checkpoint
    (the initializer could only write those: it is not run at all)."""
    return bool(tensors) and all(
        tracker.name_of(t) in tracker.protected for t in tensors)


def describe_entry(cfg: Dict[str, Any]) -> str:
    """An entry as the report names it.

    Example:
        >>> describe_entry(dict(type='Kaiming', layer='Conv2d', mode='fan_out'))
        "Kaiming, layer='Conv2d'"
        >>> describe_entry(dict(type='Constant', val=0, override=dict(name='up')))
        "Constant, override='up'"
    """
    parts = [type_name(cfg)]
    if cfg.get('layer'):
        parts.append(f"layer={cfg['layer']!r}")
    override = cfg.get('override')
    if isinstance(override, (dict, list, tuple)) and override:
        items = [override] if isinstance(override, dict) else override
        names = [item.get('name') for item in items if isinstance(item, dict)]
        parts.append(f'override={names[0]!r}' if len(names) == 1 else
                     f'override={names!r}')
    return ', '.join(parts)


def void_reason(module: nn.Module, cfg: Dict[str, Any]) -> str:
    """Why an entry that touched no tensor of ``module`` reached nothing."""
    layers = cfg.get('layer')
    if not layers and not cfg.get('override'):
        return ('it has neither layer= nor override=, so MMEngine applies it '
                'to nothing; add layer=... or override=dict(name=...)')
    reasons = []
    if layers:
        layers = [layers] if isinstance(layers, str) else list(layers)
        if any(init_layer_names(m) & set(layers) for m in module.modules()):
            reasons.append(f'its {" and ".join(layers)} layers hold nothing '
                           'it writes')
        else:
            reasons.append(f'no {" or ".join(layers)} layer in it')
    if cfg.get('override'):
        reasons.append('its override wrote nothing')
    return '; '.join(reasons)


def apply_init_cfgs(module: nn.Module,
                    cfgs: Sequence[Dict[str, Any]],
                    path: str,
                    root_name: str,
                    tracker: WriteTracker,
                    note: Optional[str] = None,
                    within: Optional[str] = None,
                    lenient: bool = False) -> None:
    """Apply ``cfgs`` (no ``Pretrained`` among them) to ``module`` at ``path``.

    Mirrors ``mmengine.model.initialize``: each entry on the whole module
    (filtered by ``layer``), then its ``override`` entries on the named
    submodules (``wholemodule``), inheriting the entry's arguments when an
    override holds only ``name``. An entry that touched no tensor is added
    to ``tracker.void_entries``.
    ``note`` is attached to every provenance entry written (e.g. that the
    entry came from ``init_missing``); ``lenient``: the module is one stock
    MMEngine never initializes (in a plain container), so an ``override``
    naming no submodule makes the entry void instead of an error (a stock
    config must not fail for what stock never runs); ``within``: the entries are the
    ``init_missing`` of the ``Pretrained`` entry of that checkpoint.
    """
    field = 'init_cfg' if within is None else 'init_missing'

    def name_entry(kind: str) -> str:
        return entry_label(path, root_name, kind, field, within)

    for cfg in cfgs:
        label = name_entry(type_name(cfg))
        cp_cfg = copy.deepcopy(dict(cfg))
        override = cp_cfg.pop('override', None)
        missing: List[str] = []
        sources = [run_initializer(module, cp_cfg, False, path, label, tracker,
                                   note, bare=override is None)]
        if override is not None:
            sources += _run_overrides(module, override, cp_cfg, path, label,
                                      name_entry, tracker, note,
                                      missing if lenient else None)
        if not any(src.touched for src in sources if src is not None):
            reason = '; '.join(missing) or void_reason(module, cfg)
            tracker.void_entries.append(VoidEntry(
                path, describe_entry(cfg), reason, field, within))


def _run_overrides(module: nn.Module, override: Any, cfg: Dict[str, Any],
                   path: str, label: str, name_entry: Callable[[str], str],
                   tracker: WriteTracker, note: Optional[str],
                   missing: Optional[List[str]] = None
                   ) -> List[Optional[InitSource]]:
    """The ``override`` part of one entry (``cfg`` without it; ``label``
    names the entry, ``name_entry(kind)`` names one of its overrides). With
    ``missing`` (a list), an override naming no submodule is skipped and
    said there instead of raising."""
    if not isinstance(override, (dict, list, tuple)):
        raise InitConfigTypeError(
            f'{label}: override must be a dict or a list of dicts')
    cfg.pop('layer', None)
    sources = []
    for item in [override] if isinstance(override, dict) else override:
        ov = copy.deepcopy(dict(item))
        name = ov.pop('name', None)
        if name is None:
            raise InitConfigError(
                f'{label}: override {dict(item)!r} has no "name"')
        if not ov:
            ov.update(cfg)
        elif 'type' not in ov:
            raise InitConfigError(
                f'{label}: override {dict(item)!r} needs a "type"')
        if missing is not None and not isinstance(
                _submodule(module, name), nn.Module):
            missing.append(f'override name {name!r} is not a submodule of '
                           f'{type(module).__name__} (stock MMEngine never '
                           'runs this entry: the module sits in a plain '
                           'container)')
            continue
        target = resolve_override(module, name, label)
        ov_label = name_entry(f'{type_name(ov)} override {name!r}')
        sources.append(run_initializer(target, ov, True, path, ov_label,
                                       tracker, note))
    return sources
