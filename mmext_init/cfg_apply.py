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
  checkpoint is not run at all (it could only write those).

Example:
    >>> apply_init_cfgs(head, [dict(type='Normal', std=0.01, layer='Conv2d')],
    ...                 'bbox_head', 'RetinaNet', tracker)
"""
import copy
import difflib
from typing import Any, Dict, Iterable, List, Optional, Sequence, Set

import torch
import torch.nn as nn
from mmengine.model import weight_init
from mmengine.registry import WEIGHT_INITIALIZERS, build_from_cfg

from .errors import InitConfigError, entry_label
from .provenance import INITIALIZER
from .tracking import InitSource, WriteTracker

_META_KEYS = ('type', 'layer', 'override', 'name')
# initializers that only write ``module.weight``/``module.bias`` (exact types)
_WEIGHT_BIAS_ONLY = (weight_init.ConstantInit, weight_init.XavierInit,
                     weight_init.NormalInit, weight_init.TruncNormalInit,
                     weight_init.UniformInit, weight_init.KaimingInit,
                     weight_init.Caffe2XavierInit)
_CLASS_NAMES: Set[str] = set()


def as_cfg_list(init_cfg: Any) -> List[Dict[str, Any]]:
    """``init_cfg`` (None, dict or list of dicts) as a list of dicts."""
    if not init_cfg:
        return []
    if isinstance(init_cfg, dict):
        return [init_cfg]
    if isinstance(init_cfg, (list, tuple)):
        for cfg in init_cfg:
            if not isinstance(cfg, dict):
                raise InitConfigError(
                    f'init_cfg entries must be dicts, got {cfg!r}')
        return list(init_cfg)
    raise InitConfigError(
        f'init_cfg must be a dict or a list of dicts, got {type(init_cfg)}')


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
        >>> check_layer_names(dict(type='Kaiming', layer='Conv2D'), 'init_cfg of head')
        Traceback (most recent call last):
        InitConfigError: init_cfg of head: layer 'Conv2D' is not the name of any nn.Module class; did you mean 'Conv2d'?
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
            close = _close(layer, known)
            hint = f'; did you mean {close}?' if close else ''
            raise InitConfigError(
                f'{label}: layer {layer!r} is not the name of any nn.Module '
                f'class{hint}')


def _close(word: str, options: Iterable[str]) -> str:
    options = list(options)
    lowered = {o.lower(): o for o in options}
    if word.lower() in lowered:
        return repr(lowered[word.lower()])
    found = difflib.get_close_matches(word, options, n=3, cutoff=0.6)
    return ' or '.join(repr(f) for f in found)


def resolve_override(module: nn.Module, name: str, label: str) -> nn.Module:
    """The submodule at dotted path ``name`` (error with close names if none).

    Example:
        >>> resolve_override(model, 'layer1.0.conv1', 'init_cfg of backbone')
        Conv2d(64, 64, kernel_size=(3, 3), ...)
    """
    target: Optional[nn.Module] = module
    for part in name.split('.'):
        target = getattr(target, part, None)
        if not isinstance(target, nn.Module):
            target = None
            break
    if target is None:
        names = [n for n, _ in module.named_modules() if n]
        close = _close(name, names)
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
        known = sorted(WEIGHT_INITIALIZERS.module_dict)
        close = _close(type_name(cfg), known)
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
                    note: Optional[str] = None) -> None:
    """Build one initializer and run it on ``module`` as a tracked source."""
    check_layer_names(cfg, label)
    func = _build(cfg, label)
    if type(func) in _WEIGHT_BIAS_ONLY and _all_provided(module, tracker):
        tracker.skipped_calls += 1
        return
    func.wholemodule = wholemodule
    args = {k: v for k, v in cfg.items() if k not in _META_KEYS}
    src = InitSource(INITIALIZER, type_name(cfg), declared_by, args, note=note)
    with tracker.source(src):
        try:
            func(module)
        except InitConfigError:
            raise
        except ValueError as exc:  # e.g. Identity on an even kernel
            raise InitConfigError(f'{label}: {exc}') from exc


def _all_provided(module: nn.Module, tracker: WriteTracker) -> bool:
    """Whether every ``weight``/``bias`` tensor in ``module``'s subtree
    comes from the checkpoint."""
    for sub in module.modules():
        for attr in ('weight', 'bias'):
            t = getattr(sub, attr, None)
            if isinstance(t, torch.Tensor) and \
                    tracker.name_of(t) not in tracker.protected:
                return False
    return True


def apply_init_cfgs(module: nn.Module,
                    cfgs: Sequence[Dict[str, Any]],
                    path: str,
                    root_name: str,
                    tracker: WriteTracker,
                    note: Optional[str] = None) -> None:
    """Apply ``cfgs`` (no ``Pretrained`` among them) to ``module`` at ``path``.

    Mirrors ``mmengine.model.initialize``: each entry on the whole module
    (filtered by ``layer``), then its ``override`` entries on the named
    submodules (``wholemodule``), inheriting the entry's arguments when an
    override holds only ``name``.
    ``note`` is attached to every provenance entry written (e.g. that the
    entry came from ``init_missing``).
    """
    for cfg in cfgs:
        label = entry_label(path, root_name, type_name(cfg))
        cp_cfg = copy.deepcopy(dict(cfg))
        override = cp_cfg.pop('override', None)
        run_initializer(module, cp_cfg, False, path, label, tracker, note)
        if override is None:
            continue
        if not isinstance(override, (dict, list, tuple)):
            raise InitConfigError(
                f'{label}: override must be a dict or a list of dicts')
        cp_cfg.pop('layer', None)
        for item in [override] if isinstance(override, dict) else override:
            ov = copy.deepcopy(dict(item))
            name = ov.pop('name', None)
            if name is None:
                raise InitConfigError(
                    f'{label}: override {dict(item)!r} has no "name"')
            if not ov:
                ov.update(cp_cfg)
            elif 'type' not in ov:
                raise InitConfigError(
                    f'{label}: override {dict(item)!r} needs a "type"')
            target = resolve_override(module, name, label)
            ov_label = entry_label(path, root_name, f'{type_name(ov)} '
                                   f'override {name!r}')
            run_initializer(target, ov, True, path, ov_label, tracker, note)
