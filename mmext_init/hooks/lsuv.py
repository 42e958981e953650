"""``LSUVInitHook``: data-driven rescaling of the layers the checkpoint did
not provide (LSUV, Mishkin & Matas 2015, "All you need is a good init").

Before the first training iteration it takes one batch from the train
dataloader and, layer by layer in forward order, rescales the weight of each
selected layer until its output has unit variance (forward passes in eval
mode, so BatchNorm statistics and dropout are left alone). Only layers whose weight
the provenance ledger marks as *not loaded* are touched, never loaded ones,
and never all-zero weights (a zero-init residual branch must stay zero).
Under DDP the statistics are all-reduced, so every rank applies the same
scale. Each rescale is recorded as a note in the ledger.

Example (config):
    >>> custom_hooks = [dict(type='LSUVInitHook', layers=['Conv2d', 'Linear'],
    ...                      include=r'backbone\\.adapters\\..*', tol=0.1)]
"""
import re
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from mmengine.dist import all_reduce
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from ..errors import InitConfigError
from ..matching import class_matches, full_match, name_regex, partial_hint
from ..provenance.ledger import CHECKPOINT, get_provenance
from ..provenance.report import write_json


@HOOKS.register_module(name='LSUVInitHook', force=True)
class LSUVInitHook(Hook):
    r"""Rescale not-loaded layers to unit output variance on one batch.

    Args:
        layers (list[str]): class names of the layers to consider (a
            layer's class or any of its bases).
        include (str, optional): regex that must match the whole module
            path of a layer (``re.fullmatch``); one that matches no layer
            is an error.
        tol (float): stop when ``|var - 1| < tol``. Defaults to 0.1.
        max_iters (int): rescaling rounds per layer. Defaults to 10.

    Example:
        >>> custom_hooks = [dict(type='LSUVInitHook', include=r'head\..*')]
    """
    priority = 'VERY_HIGH'

    def __init__(self,
                 layers: Sequence[str] = ('Conv2d', 'Linear'),
                 include: Optional[str] = None,
                 tol: float = 0.1,
                 max_iters: int = 10) -> None:
        self.layers = tuple(layers)
        try:
            self.include = name_regex(include) if include else None
        except re.error as exc:
            raise InitConfigError(f'LSUVInitHook: include={include!r} is no '
                                  f'regex: {exc}') from exc
        self.tol = float(tol)
        self.max_iters = int(max_iters)

    def select(self, model: nn.Module) -> List[str]:
        """Paths of the layers LSUV will rescale, in module order."""
        ledger = get_provenance(model)
        chosen, paths = [], []
        for path, module in model.named_modules():
            weight = getattr(module, 'weight', None)
            if (not class_matches(module, self.layers)
                    or not isinstance(weight, torch.Tensor)):
                continue
            paths.append(path)
            if self.include and not full_match(self.include, path):
                continue
            entry = ledger.entries.get(f'{path}.weight')
            if entry is None or entry.kind == CHECKPOINT:
                continue
            if not bool(weight.detach().any()):  # zero init stays zero
                continue
            chosen.append(path)
        if self.include and not any(full_match(self.include, p)
                                    for p in paths):
            raise InitConfigError(
                f'LSUVInitHook: include={self.include.pattern!r} matches no '
                f'{" or ".join(self.layers)} layer of {type(model).__name__}'
                + partial_hint(self.include, paths))
        return chosen

    def before_train(self, runner) -> None:
        model = runner.model.module if is_model_wrapper(
            runner.model) else runner.model
        batch = next(iter(runner.train_dataloader))
        data = model.data_preprocessor(batch, True)
        ledger = get_provenance(model)
        done = []
        was_training = model.training
        model.eval()  # measure without touching BN running stats or dropout
        try:
            scales = {
                path: self._rescale(model, model.get_submodule(path), data)
                for path in self.select(model)
            }
        finally:
            model.train(was_training)
        for path, scale in scales.items():
            if scale is None:
                runner.logger.warning(
                    f'LSUVInitHook: {path} is not reached by the forward '
                    'pass; left as is')
                continue
            key = f'{path}.weight'
            ledger.entries[key] = ledger.entries[key].with_note(
                f'LSUVInitHook scaled x{scale:.4g}')
            done.append(path)
        runner.logger.info(f'LSUVInitHook: rescaled {len(done)} layers: '
                           f'{", ".join(done)}')
        write_json(ledger)

    @torch.no_grad()
    def _rescale(self, model: nn.Module, layer: nn.Module,
                 data: Dict[str, Any]) -> Optional[float]:
        captured: List[torch.Tensor] = []
        handle = layer.register_forward_hook(
            lambda m, i, o: captured.append(o.detach().float()))
        total = 1.0
        try:
            for _ in range(self.max_iters):
                captured.clear()
                _forward(model, data)
                if not captured:
                    return None
                var = _global_var(captured[0])
                if var <= 0 or abs(var - 1.0) < self.tol:
                    break
                factor = var**-0.5
                layer.weight.mul_(factor)
                total *= factor
        finally:
            handle.remove()
        return total


def _forward(model: nn.Module, data: Any) -> Any:
    if isinstance(data, dict):
        return model(**data, mode='tensor')
    if isinstance(data, (list, tuple)):
        return model(*data, mode='tensor')
    return model(data, mode='tensor')


def _global_var(out: torch.Tensor) -> float:
    """Variance of ``out`` over all ranks (sums all-reduced)."""
    stats = torch.stack([out.sum(), (out * out).sum(),
                         torch.tensor(float(out.numel()))]).double()
    all_reduce(stats)
    total, total_sq, count = stats.tolist()
    mean = total / count
    return total_sq / count - mean * mean
