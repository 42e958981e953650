"""The proof of ``mmext-merge`` (:mod:`mmext_init.tools.merge_inserted`):
the inserted model and the
merged one (CONFIG with only the kept ``insert`` entries, loading the
merged file), in float64 and eval mode, on one seeded input, through the
whole model (``mode='tensor'``) where it runs, else the smallest of
``backbone`` and ``extract_feat`` holding every folded target.

Example:
    >>> import torch.nn as nn
    >>> proof_modules(nn.Linear(2, 2), [], None)
    [None]
"""
import argparse
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.model import BaseModel

from ..errors import CheckpointError, InitConfigError
from ..provenance.report import fold_names
from . import check_function_preserving as cfp
from .cli import ToolError


class MergeError(ToolError):
    """A config or checkpoint problem: exit status 2."""


def model_options(cfg: Config, insert: List[dict],
                  init_cfg: Optional[dict]) -> Dict[str, Any]:
    """``cfg_options`` replacing ``model`` by CONFIG's with ``insert``
    (dropped when empty) and, if given, the root ``init_cfg``."""
    model = {k: v for k, v in cfg.model.to_dict().items() if k != 'insert'}
    if insert:
        model['insert'] = insert
    if init_cfg is not None:
        model['init_cfg'] = init_cfg
    return {'model': dict(_delete_=True, **model)}


def build_loaded(cfg: Config, options: Dict[str, Any],
                 seed: int) -> Tuple[nn.Module, Config]:
    """:func:`~mmext_init.tools.check_function_preserving.build_initialized`
    of CONFIG (``cfg``, its ``filename`` naming it), its config and
    checkpoint errors raised as MergeError."""
    try:
        return cfp.build_initialized(cfg, options, seed)
    except (InitConfigError, CheckpointError, OSError) as error:
        raise MergeError(f'{cfg.filename}: {error}') from error


def proof_modules(model: nn.Module, targets: Sequence[str],
                  module: Optional[str]) -> List[Optional[str]]:
    """What gets the proof input, in order of preference: ``module`` if
    given; else the whole model (``tensor``), then, should it not run on
    the input, the smallest of ``backbone`` and ``extract_feat`` (backbone
    + neck) that holds every folded target."""
    if module is not None:
        return [module]
    out: List[Optional[str]] = \
        [cfp.TENSOR] if isinstance(model, BaseModel) else []
    if isinstance(getattr(model, 'backbone', None), nn.Module) and all(
            t.startswith('backbone.') for t in targets):
        out.append('backbone')
    elif callable(getattr(model, 'extract_feat', None)) and all(
            t.startswith(('backbone.', 'neck.')) for t in targets):
        out.append('extract_feat')
    return out or [None]


def run_in_float64(model: nn.Module, modules: Sequence[Optional[str]],
                   x: torch.Tensor, source: str, targets: Sequence[str] = ()
                   ) -> Tuple[Optional[str], List, List[str]]:
    """The first of ``modules`` of ``model`` (float64, eval) that runs on
    ``x``, its output tensors and the ``targets`` (module paths) that did
    not run; ToolError naming ``--input-shape``/``--module`` if none
    runs."""
    model.double()
    model.eval()
    ran = set()
    handles = [model.get_submodule(path).register_forward_hook(
        lambda *_, path=path: ran.add(path)) for path in targets]
    try:  # ToolError: the input runs nowhere, --module names nothing
        module, outs = cfp.first_running(model, modules, x.double(), source)
    finally:
        for handle in handles:
            handle.remove()
    return module, outs, [path for path in targets if path not in ran]


def load_plain(args: argparse.Namespace, cfg: Config, kept: List[dict],
               path: str) -> Optional[nn.Module]:
    """CONFIG's model with only the ``kept`` entries, its root loading
    ``path`` (``Pretrained``, strict: the report names that file), then
    ``load_state_dict(strict=True)`` of it as stock MMEngine reads it
    (``weights_only``); None (said why) if it does not load."""
    print('== the merged model, built as configured, its root loading the '
          'merged file (strict), then load_state_dict(strict=True) of it')
    root = dict(type='Pretrained', checkpoint=path, strict=True)
    plain, _ = build_loaded(cfg, model_options(cfg, kept, root), args.seed)
    state = torch.load(path, map_location='cpu', weights_only=True)
    try:
        plain.load_state_dict(state['state_dict'], strict=True)
    except RuntimeError as error:
        print(f'the merged file does not load into the merged model: {error}')
        return None
    return plain


def prove(args: argparse.Namespace, cfg: Config, kept: List[dict],
          inserted: nn.Module, path: str, targets: Sequence[str]) -> float:
    """Compare ``inserted`` with the merged model loading ``path`` on the
    seeded input; the largest difference (inf: the file does not load, or
    a folded target did not run)."""
    shape = tuple(args.input_shape or cfp.input_shape_from_cfg(cfg))
    source = cfp.input_shape_source(cfg, args.input_shape)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(args.seed))
    module, refs, unreached = run_in_float64(
        inserted, proof_modules(inserted, targets, args.module), x, source,
        targets)
    plain = load_plain(args, cfg, kept, path)
    if plain is None:
        return float('inf')
    worst, _ = cfp.largest_difference(
        run_in_float64(plain, [module], x, source)[1], refs,
        'the inserted model')
    where = 'through ' + cfp.describe_module(inserted, module)
    if unreached:
        print(f'{len(unreached)} folded targets did not run {where}: '
              f'{", ".join(fold_names(unreached))} (pass a --module that '
              'runs them)')
    ok = worst <= args.atol and not unreached  # False for NaN
    print(f'merge {"proven" if ok else "NOT proven"}: max {worst:.3e} '
          f'(atol {args.atol:g}) on input {shape} {where}, float64, eval '
          'mode')
    return worst if not unreached else float('inf')
