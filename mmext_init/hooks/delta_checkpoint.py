"""``DeltaCheckpointHook``: save only what trained.

Every ``interval`` iterations (or epochs), and after the last one, it
writes ``delta_iter_N.pth`` (``delta_epoch_N.pth``) into ``work_dir``,
counted like MMEngine's ``CheckpointHook``, on rank 0:

* ``state_dict``: the trainable parameters (``requires_grad``) and the
  buffers of the modules that have a trainable parameter of their own (a
  BatchNorm that trains), named as in ``model.state_dict()``;
* ``meta``: ``mmext_delta`` (the format version), ``insert`` (the
  ``insert`` entries the model was built with), ``iter``, ``epoch``,
  ``ema`` and ``base``: the checkpoint files the rest was loaded from
  (provenance ledger) and the
  :func:`~mmext_init.checkpoint.fingerprint.tensors_hash` of every model
  tensor the delta leaves out.

With an ``EMAHook`` (``meta['ema']`` True), ``state_dict`` holds the
averages of those tensors, as the Runner checkpoint's ``state_dict`` does
(what validation, test and deployment use; the raw values, to resume, are
in its ``ema_state_dict``). ``base`` is still hashed on the model's tensors
(the base it trained on): the EMA copy holds the same values (``lerp_`` of
equal values), but a ``-0.0`` there becomes ``0.0``; a value that differs
is named in a warning. The ``EMAHook`` must update first (priority NORMAL
above VERY_LOW; checked before training).

Load it on its base with ``Pretrained(checkpoint=[base, delta])``; alone it
is an error.

With ``per_set=True`` it writes one delta per insert set instead
(``delta_iter_N.<set>.pth``: the tensors that train of the entries with
that ``name``, ``meta['set']`` the name) and ``delta_iter_N.pth`` for the
other tensors that train (a new head; none: no file). A set's delta is
fingerprinted on the model's own tensors only (everything not inserted,
the trained rest included), never on another set's: ``meta['base']
['inserted']`` lists the inserted tensors the fingerprint leaves out. So
``Pretrained(checkpoint=[base, rest, delta_a])`` loads set ``a`` alone and
``[base, rest, delta_a, delta_b]`` both.

Example (config):
    >>> custom_hooks = [dict(type='DeltaCheckpointHook', interval=500,
    ...                      by_epoch=False)]
"""
import logging
import os
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn
from mmengine.config import ConfigDict
from mmengine.dist import is_main_process
from mmengine.hooks import EMAHook, Hook
from mmengine.logging import print_log
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from ..checkpoint.fingerprint import DELTA_KEY, DELTA_VERSION, tensors_hash
from ..errors import InitConfigError
from ..provenance.inserted import inserted_entries, insert_config
from ..provenance.ledger import CHECKPOINT, get_provenance


def delta_names(model: nn.Module) -> List[str]:
    """``model.state_dict()`` names of the tensors that train: trainable
    parameters, and the buffers of modules with a trainable parameter of
    their own.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
        >>> net[0].requires_grad_(False)
        Linear(in_features=2, out_features=2, bias=True)
        >>> delta_names(net)
        ['1.weight', '1.bias', '1.running_mean', '1.running_var', '1.num_batches_tracked']
    """
    training = set()
    for path, module in model.named_modules(remove_duplicate=False):
        if any(p.requires_grad for p in module.parameters(recurse=False)):
            training.update(f'{path}.{n}' if path else n
                            for n, _ in module.named_buffers(recurse=False))
    state = model.state_dict(keep_vars=True)
    return [name for name, value in state.items()
            if (isinstance(value, nn.Parameter) and value.requires_grad)
            or name in training]


def loaded_from(model: nn.Module, names: List[str]) -> List[str]:
    """The checkpoint files the tensors not in ``names`` were loaded from,
    in model order (the provenance ledger; none without one)."""
    try:
        ledger = get_provenance(model)
    except LookupError:
        return []
    skip = set(names)
    files: Dict[str, None] = {}
    for name, entry in ledger.entries.items():
        if entry.kind == CHECKPOINT and name not in skip:
            files.setdefault(str(entry.source))
    return list(files)


def _own_storage(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` on the CPU with a storage of its own (``torch.save``
    writes a view's whole storage)."""
    tensor = tensor.detach().cpu()
    if tensor.untyped_storage().nbytes() != tensor.nbytes:
        tensor = tensor.clone()
    return tensor


def _warn_differing(state: Dict[str, torch.Tensor],
                    averaged: Dict[str, torch.Tensor],
                    names: List[str]) -> None:
    """Warn about the tensors ``names`` whose averaged value is not the
    model's (``-0.0`` and ``0.0`` are equal)."""
    differ = [n for n in names
              if not torch.equal(state[n], averaged[n].to(state[n].device))]
    if differ:
        print_log(
            f'DeltaCheckpointHook: {len(differ)} tensors that do not train '
            f"differ in the EMA copy ({', '.join(differ[:5])}"
            f"{', ...' if len(differ) > 5 else ''}): base + delta is not "
            'the averaged model there', 'current', logging.WARNING)


def delta_checkpoint(model: nn.Module,
                     insert: Any = None,
                     at_iter: int = 0,
                     at_epoch: int = 0,
                     averaged: Optional[nn.Module] = None,
                     names: Optional[List[str]] = None,
                     left_out: Optional[List[str]] = None
                     ) -> Optional[Dict[str, Any]]:
    """The delta checkpoint of ``model`` (None when nothing trains); with
    ``averaged`` (its EMA copy, same names), the averages of the tensors
    that train. ``names`` (default: every tensor that trains) are the
    tensors it holds and ``left_out`` (default: all the others) those its
    base fingerprint covers.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
        >>> net[0].requires_grad_(False)
        Linear(in_features=2, out_features=2, bias=True)
        >>> delta = delta_checkpoint(net, at_iter=4)
        >>> sorted(delta['state_dict']), delta['meta']['base']['tensors']
        (['1.bias', '1.weight'], 2)
        >>> import copy
        >>> ema = copy.deepcopy(net)
        >>> _ = ema[1].bias.data.fill_(7.0)
        >>> delta = delta_checkpoint(net, averaged=ema)
        >>> delta['state_dict']['1.bias'], delta['meta']['ema']
        (tensor([7.]), True)
    """
    names = delta_names(model) if names is None else names
    if not names:
        return None
    state, trained = model.state_dict(), set(names)
    if left_out is None:
        left_out = [name for name in state if name not in trained]
    base = dict(files=loaded_from(model, names),
                hash=tensors_hash(left_out, state.__getitem__),
                tensors=len(left_out))
    saved = state
    if averaged is not None:
        saved = averaged.state_dict()
        _warn_differing(state, saved, left_out)
    return dict(
        state_dict={name: _own_storage(saved[name]) for name in names},
        meta={DELTA_KEY: DELTA_VERSION, 'insert': insert, 'iter': at_iter,
              'epoch': at_epoch, 'ema': averaged is not None, 'base': base})


def insert_set_of(model: nn.Module) -> Dict[str, str]:
    """``model.state_dict()`` name -> insert set, for every tensor that
    an ``insert`` entry added."""
    return {name: note.set_name
            for name, note in inserted_entries(model).items()}


def set_deltas(model: nn.Module, insert: Any = None, at_iter: int = 0,
               at_epoch: int = 0, averaged: Optional[nn.Module] = None
               ) -> Dict[Optional[str], Dict[str, Any]]:
    """One delta checkpoint per insert set that trains (key: its name)
    and, under ``None``, one of the other tensors that train (see the
    module docstring); empty when nothing trains.

    Example:
        >>> from mmext_init.plugin.insertion import apply_insert
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
        >>> apply_insert(net, [dict(type='LoRA', targets='0', rank=1, name='a'),
        ...                    dict(type='LoRA', targets='1', rank=1, name='b')])
        >>> for name, p in net.named_parameters():  # only set 'a' trains
        ...     p.requires_grad = name.startswith('0.lora')
        >>> deltas = set_deltas(net)
        >>> list(deltas), sorted(deltas['a']['state_dict'])
        (['a'], ['0.lora_A.weight', '0.lora_B.weight'])
        >>> deltas['a']['meta']['base']['inserted']
        ['0.lora_A.weight', '0.lora_B.weight', '1.lora_A.weight', '1.lora_B.weight']
    """
    sets = insert_set_of(model)
    parts: Dict[Optional[str], List[str]] = {}
    for name in delta_names(model):
        parts.setdefault(sets.get(name), []).append(name)
    own = [n for n in model.state_dict() if n not in sets]
    deltas = {}
    for set_name, names in parts.items():
        chosen = set(names)
        left_out = own if set_name is not None else \
            [n for n in own if n not in chosen]
        delta = delta_checkpoint(model, insert, at_iter, at_epoch, averaged,
                                 names, left_out)
        delta['meta']['set'] = set_name
        delta['meta']['base']['inserted'] = sorted(sets)
        deltas[set_name] = delta
    return deltas


def ema_hook(runner: Any) -> Optional[EMAHook]:
    """The runner's ``EMAHook`` (the last one: its averages are the ones
    its checkpoints hold), None without one."""
    found = [hook for hook in runner.hooks if isinstance(hook, EMAHook)]
    return found[-1] if found else None


def _insert_cfg(model: nn.Module) -> Any:
    """The ``insert`` entries ``model`` was built with, as plain data (None
    if built without)."""
    insert = insert_config(model)
    return ConfigDict(insert=insert).to_dict()['insert']  # nested too


@HOOKS.register_module(name='DeltaCheckpointHook', force=True)
class DeltaCheckpointHook(Hook):
    """Save the tensors that train (and the base fingerprint) every
    ``interval`` iterations or epochs, and after the last one.

    Args:
        interval (int): save every ``interval`` iterations (epochs with
            ``by_epoch``); -1: only at the end (with ``save_last``).
        by_epoch (bool): count epochs, not iterations. Defaults to True.
        save_last (bool): also save after the last iteration (epoch).
        per_set (bool): one delta per insert set (see the module
            docstring). Defaults to False.

    Example:
        >>> hook = DeltaCheckpointHook(interval=2, by_epoch=False)
        >>> hook.filename(8), hook.filename(8, 'seg')
        ('delta_iter_8.pth', 'delta_iter_8.seg.pth')
    """
    priority = 'VERY_LOW'  # as CheckpointHook: after the optimizer step

    def __init__(self,
                 interval: int = -1,
                 by_epoch: bool = True,
                 save_last: bool = True,
                 per_set: bool = False) -> None:
        self.interval = int(interval)
        self.by_epoch = bool(by_epoch)
        self.save_last = bool(save_last)
        self.per_set = bool(per_set)

    def filename(self, step: int, set_name: Optional[str] = None) -> str:
        """The file name of the delta after ``step`` iterations (epochs),
        of insert set ``set_name``."""
        unit = 'epoch' if self.by_epoch else 'iter'
        of_set = '' if set_name is None else f'.{set_name}'
        return f'delta_{unit}_{step}{of_set}.pth'

    def before_train(self, runner: Any) -> None:
        ema = ema_hook(runner)
        if (ema is not None and not self.by_epoch
                and runner.hooks.index(ema) > runner.hooks.index(self)):
            raise InitConfigError(
                'DeltaCheckpointHook runs before EMAHook after each '
                'iteration (priority): its deltas would hold the averages '
                "before the iteration's update. Give it a lower priority "
                "than the EMAHook's (its default: VERY_LOW).")

    def after_train_iter(self,
                         runner: Any,
                         batch_idx: int,
                         data_batch: Any = None,
                         outputs: Any = None) -> None:
        if self.by_epoch:
            return
        if self.every_n_train_iters(runner, self.interval) or (
                self.save_last and self.is_last_train_iter(runner)):
            self.save(runner, runner.iter + 1, runner.iter + 1, runner.epoch)

    def after_train_epoch(self, runner: Any) -> None:
        if not self.by_epoch:
            return
        if self.every_n_epochs(runner, self.interval) or (
                self.save_last and self.is_last_train_epoch(runner)):
            self.save(runner, runner.epoch + 1, runner.iter, runner.epoch + 1)

    def save(self, runner: Any, step: int, at_iter: int,
             at_epoch: int) -> None:
        """Write the delta after ``step`` iterations (epochs), rank 0."""
        if not is_main_process():
            return
        model = runner.model.module if is_model_wrapper(
            runner.model) else runner.model
        averaged = getattr(getattr(ema_hook(runner), 'ema_model', None),
                           'module', None)
        args = (model, _insert_cfg(model), at_iter, at_epoch, averaged)
        if self.per_set:
            deltas = set_deltas(*args)
        else:
            delta = delta_checkpoint(*args)
            deltas = {} if delta is None else {None: delta}
        if not deltas:
            runner.logger.warning('DeltaCheckpointHook: no tensor trains; '
                                  'no delta written')
        for set_name, delta in deltas.items():
            path = os.path.join(runner.work_dir,
                                self.filename(step, set_name))
            torch.save(delta, path + '.part')
            os.replace(path + '.part', path)  # never a half-written delta
            base = delta['meta']['base']
            of_set = '' if set_name is None else f" of set '{set_name}'"
            runner.logger.info(
                f'DeltaCheckpointHook: saved {path}: '
                f"{len(delta['state_dict'])} tensors that train{of_set}"
                f"{' (EMA)' if averaged is not None else ''}; base: "
                f"{base['tensors']} tensors from "
                f"{', '.join(base['files']) or 'no checkpoint'} "
                f"(sha256 {base['hash'][:12]})")
