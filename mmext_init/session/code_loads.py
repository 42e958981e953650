"""Loads that ``init_weights`` overrides perform themselves count as loaded.

While an init session runs an ``init_weights`` override, each
``nn.Module._load_from_state_dict`` call goes through :func:`observe_load`
(from the plugin's one wrapper of it): a ``load_state_dict`` or
``load_checkpoint`` called by init code (mmdet/mmseg Swin, mmseg ViT) becomes a tracked *checkpoint* source, so the tensors it
writes get ``checkpoint`` provenance (with their keys as written in the
file, where the tensor is still the one read from it) and are protected from
later initializers. Once copied, the source tensors give their pages back
when they were read through a map of that checkpoint (see
:mod:`mmext_init.checkpoint.page_release`). What the load left out (keys the module did not take,
shapes that did not fit) is collected too, so that :func:`code_load_records`
reports it and enforces ``strict``, ``on_mismatch`` and ``min_loaded`` as for
mmext_init's own loads (a ``prefix`` the override ignored is a warning, and
its record carries none).

Example:
    >>> is_under('backbone.layers.0.weight', 'backbone')
    True
"""
import itertools
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Tuple

import torch
import torch.nn as nn
from mmengine.logging import print_log
from torch.nn.parameter import is_lazy

from ..loading.key_matching import element_fraction
from ..loading.load_checks import check_load_options, is_counter
from ..provenance.ledger import CHECKPOINT, LoadRecord, ProvenanceLedger
from ..checkpoint.safe_load import file_key
from .self_loading import (SelfLoad, ignored_prefix, nothing_loaded_error,
                           unmatched_load_error)
from ..provenance.tracking import InitSource


@dataclass
class CodeLoadFindings:
    """What the loads of one ``init_weights`` override left out: keys no
    module took, and (key, checkpoint shape, model shape) not copied; and
    what it was given."""
    unexpected: List[str] = field(default_factory=list)
    mismatched: List[Tuple[str, Tuple[int, ...], Tuple[int, ...]]] = field(
        default_factory=list)
    # the keys of each dict given to load_state_dict, and the BatchNorm
    # counters torch filled in from themselves (no load)
    offered: List[List[str]] = field(default_factory=list)
    self_filled: List[str] = field(default_factory=list)
    matched: int = 0  # tensors (counters aside) a given dict had a key for


def override_owner(module: nn.Module) -> str:
    """Name of the class whose ``init_weights`` a module runs.

    Example:
        >>> from mmengine.model import BaseModule
        >>> class Own(BaseModule):
        ...     def init_weights(self):
        ...         pass
        >>> class Child(Own):
        ...     pass
        >>> override_owner(Child())
        'Own'
    """
    for cls in type(module).__mro__:
        if 'init_weights' in cls.__dict__:
            return cls.__name__
    return type(module).__name__


def is_under(name: str, path: str) -> bool:
    """Whether the dotted ``name`` is ``path`` or below it ('' is the root).

    Example:
        >>> is_under('backbone.conv1.weight', 'backbone'), is_under('b2', 'b')
        (True, False)
    """
    return not path or name == path or name.startswith(path + '.')


def _shape_mismatch(value: Any, tensor: torch.Tensor) -> bool:
    """Whether torch's ``_load_from_state_dict`` refuses ``value`` for
    ``tensor`` on shape (lazy tensors take any; a 0-d one takes ``[x]``)."""
    if not isinstance(value, torch.Tensor) or is_lazy(tensor):
        return False
    shape = value.shape
    if tensor.dim() == 0 and value.dim() == 1:
        shape = value.shape[1:]
    return shape != tensor.shape


@dataclass
class _Targets:
    """The tensors of one module that one ``_load_from_state_dict`` call
    may write: model name -> key in the given dict / key as in the file,
    and the counters BatchNorm filled in from themselves."""
    keys: Dict[str, str] = field(default_factory=dict)
    file_keys: Dict[str, str] = field(default_factory=dict)
    self_filled: Dict[str, Tuple[Any, ...]] = field(default_factory=dict)


def _targets(module: nn.Module, state_dict: Dict[str, Any], prefix: str,
             tracker: Any, found: CodeLoadFindings) -> _Targets:
    """What the load will write. A value that *is* the module's own tensor
    (BatchNorm puts its ``num_batches_tracked`` into the dict when the key
    is absent) is no load: its write is undone in the ledger afterwards."""
    out = _Targets()
    persistent = itertools.chain(
        module._parameters.items(),
        ((k, v) for k, v in module._buffers.items()
         if k not in module._non_persistent_buffers_set))
    for local, tensor in persistent:
        name = tracker.name_of(tensor) if tensor is not None else None
        key = prefix + local
        if name is None or key not in state_dict:
            continue
        if state_dict[key] is tensor:
            out.self_filled[name] = (tracker.written.get(name),
                                     tracker.written_at.get(name),
                                     name in tracker.protected,
                                     tracker.loaded_by_code.get(name))
            found.self_filled.append(name)
            continue
        out.keys[name] = key
        out.file_keys[name] = file_key(state_dict[key]) or key
        if _shape_mismatch(state_dict[key], tensor):
            found.mismatched.append((out.file_keys[name],
                                     tuple(state_dict[key].shape),
                                     tuple(tensor.shape)))
    return out


def _undo_self_copies(tracker: Any, targets: _Targets) -> None:
    """A tensor copied onto itself keeps the provenance it had before."""
    for name, (prov, at, protected, by_code) in targets.self_filled.items():
        for table, old in ((tracker.written, prov),
                           (tracker.written_at, at),
                           (tracker.loaded_by_code, by_code)):
            if old is None:
                table.pop(name, None)
            else:
                table[name] = old
        if not protected:
            tracker.protected.discard(name)


def observes_loads(session: Any) -> bool:
    """Whether ``session`` (or None) takes loads as checkpoint sources now:
    while an init source (an ``init_weights`` override) runs."""
    return session is not None and session.tracker.current is not None


def observe_load(session: Any, module: nn.Module, state_dict: Dict[str, Any],
                 prefix: str, unexpected_keys: Any,
                 load: Callable[[], Any]) -> Any:
    """Run ``load`` (one ``_load_from_state_dict`` call on ``module``) as a
    tracked checkpoint source of ``session`` and collect what it left out.
    Called by the plugin's ``_load_from_state_dict`` wrapper."""
    tracker = session.tracker
    owner = session.loading_override() or module
    found = session.code_findings.setdefault(session.path_of(owner),
                                             CodeLoadFindings())
    if not prefix:  # the top of one load_state_dict call
        found.offered.append(list(state_dict))
    targets = _targets(module, state_dict, prefix, tracker, found)
    found.matched += sum(not is_counter(n) for n in targets.keys)
    before = len(unexpected_keys) if isinstance(unexpected_keys, list) else 0
    src = InitSource(CHECKPOINT, session.override_checkpoint(),
                     session.path_of(owner), keys=targets.file_keys)
    with tracker.source(src):
        out = load()
    _undo_self_copies(tracker, targets)
    if isinstance(unexpected_keys, list):
        found.unexpected += [file_key(state_dict.get(k)) or k
                             for k in unexpected_keys[before:]]
    pages = session.mapped_file(src.source)
    for key in targets.keys.values():
        if isinstance(state_dict.get(key), torch.Tensor):
            pages.release(state_dict[key])
    return out


def code_load_records(session: Any, tensors: Dict[str, torch.Tensor],
                      ledger: ProvenanceLedger) -> List[LoadRecord]:
    """One record per ``Pretrained`` entry an override loaded itself, after
    the checks of the entry's options (``strict``, ``on_mismatch``,
    ``min_loaded``) and that it loaded anything at all (BatchNorm counters
    alone do not count).
    """
    _check_loads_without_entry(session)
    records = []
    for module, path, entry in session.code_entries:
        label = session.label(path, 'Pretrained')
        names = [n for n in tensors if is_under(n, path)]
        loaded = [n for n in names if n in session.tracker.loaded_by_code]
        params = {f'{path}.{n}' if path else n
                  for n, _ in module.named_parameters()}
        sizes = {n: tensors[n].numel() for n in params if n in tensors}
        fraction = element_fraction(sizes, set(loaded))
        found = session.code_findings.get(path, CodeLoadFindings())
        if all(is_counter(n) for n in loaded):  # counters alone: nothing
            raise nothing_loaded_error(
                SelfLoad.of(session, module, override_owner(module), entry),
                found.offered, found.self_filled)
        missing = [n for n in names if ledger.entries[n].kind != CHECKPOINT
                   and not is_counter(n)]
        check_load_options(entry, label, fraction, missing, found.unexpected,
                           found.mismatched,
                           {n: tuple(tensors[n].shape) for n in missing})
        warning = ignored_prefix(
            SelfLoad.of(session, module, override_owner(module), entry))
        if warning:
            print_log(warning, logger='current', level=logging.WARNING)
        records.append(  # no prefix: the override applied none
            LoadRecord(path, entry.checkpoint,
                       f'{override_owner(module)}.init_weights',
                       None, loaded, missing, list(found.unexpected),
                       list(found.mismatched), [], fraction))
    return records


def _check_loads_without_entry(session: Any) -> None:
    """An ``init_weights`` override that loaded a checkpoint it took from its
    own arguments (mmdet ``DetectoRS_ResNet`` turns ``init_cfg`` into
    ``self.pretrained``, so no ``Pretrained`` entry is left to plan) and
    matched no tensor of the module is an error, not a silent non-load."""
    with_entry = {path for _, path, _ in session.code_entries}
    for path, found in session.code_findings.items():
        if path in with_entry or found.matched or not any(found.offered):
            continue
        module = session.root.get_submodule(path) if path else session.root
        raise unmatched_load_error(
            session.label(path, f'{override_owner(module)}.init_weights'),
            getattr(module, 'pretrained', None), found.offered,
            list(module.state_dict(keep_vars=True)))
