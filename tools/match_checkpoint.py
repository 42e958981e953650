"""Dry-run a ``Pretrained`` entry: what would load, be adapted, stay missing,
be unexpected or shape-mismatched, without loading any weights.

Usage::

    python tools/match_checkpoint.py CONFIG [--module backbone] \\
        [--checkpoint PATH] [--optim] [--json]

The model is built on the meta device (no memory for weights; falls back to
CPU when a constructor needs real tensors), the checkpoint is read for names
and shapes only. The module defaults to the first one whose ``init_cfg`` holds
a ``Pretrained`` entry; ``--checkpoint`` replaces the entry's file and keeps
its key options. When less than half of the module would load, the
``prefix`` / ``revise_keys`` / ``match='suffix'`` settings that would load the
most, and more than the entry's own, are printed with their coverage.
Names are listed in module order, as in the report. The JSON's ``module``
is the module path (``''`` for the model root) and ``module_label`` its
human name (``the model root (RetinaNet)``).

``--optim`` adds the trainable report the Runner logs when training starts
(:mod:`mmext_init.training.report`): counts by provenance, one line per
parameter group (lr, weight decay, ``depth`` under ``layer_decay``, names)
and the frozen names, for the provenance predicted from the load plans of
the model's ``Pretrained`` entries: ``init_weights()`` is not called and no
tensor data is read (``--checkpoint`` applies to the prediction too). The
optim wrapper constructor is built as the Runner builds it (``constructor``
and ``paramwise_cfg`` taken out of ``optim_wrapper``) and builds the real
optimizer on the model (meta tensors are fine); the wrapper around it is a
plain ``OptimWrapper`` (its type and options do not change the groups, and
``AmpOptimWrapper`` needs a GPU). With another constructor than
``ProvenanceOptimWrapperConstructor`` (e.g. MMEngine's default), the report
shows that constructor's groups and nothing is frozen by a selector
(parameters with ``requires_grad=False`` still count as frozen). The lrs are
the optimizer's as built: in the real run, ``auto_scale_lr``, the first step
of a ``param_scheduler`` (e.g. a warmup) and a resumed optimizer state may
change them before the report. The JSON holds the report under
``trainable``. The dry run above it still needs a ``Pretrained`` entry.

Exit status: 0 when the entry's ``min_loaded`` (default: anything loads)
would be met, 1 when it would not, 2 when the entry cannot be used at all
(unreadable checkpoint, transform that cannot apply, bad key options) or,
with ``--optim``, when the optim wrapper config cannot (no
``optim_wrapper.optimizer``, a ``freeze``/``rules``/``layer_decay`` that is
malformed or has a selector matching nothing).
"""
import argparse
import contextlib
import copy
import json
import logging
import sys
from typing import (Any, Callable, Dict, Iterator, List, Optional, Sequence,
                    Tuple)

import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.optim import OptimWrapper
from mmengine.registry import (MODELS, OPTIM_WRAPPER_CONSTRUCTORS,
                               init_default_scope)

from mmext_init.errors import (CheckpointError, InitConfigError, entry_label,
                               module_label)
from mmext_init.loading.key_matching import suggest_mappings
from mmext_init.loading.options import (PretrainedOptions, as_cfg_list,
                                        build_options, is_pretrained_cfg)
from mmext_init.loading.plan import ModuleMatch, match_module, open_source
from mmext_init.provenance.report import fold_names
from mmext_init.training import ProvenanceOptimWrapperConstructor
from mmext_init.training.expected import param_table
from mmext_init.training.plan import TrainingCfg, make_plan
from mmext_init.training.report import format_trainable, report_data


def build_model(cfg: Config) -> Tuple[nn.Module, str]:
    """The config's model on the meta device, else on CPU."""
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    try:
        with torch.device('meta'):
            return MODELS.build(cfg.model), 'meta'
    except Exception as exc:  # a constructor that needs real tensors
        why = f'{type(exc).__name__}: {exc}'.splitlines()[0][:120]
        return MODELS.build(cfg.model), f'cpu (meta failed: {why})'


def find_entry(model: nn.Module,
               module: Optional[str]) -> Tuple[str, nn.Module, PretrainedOptions]:
    """The module path, module and its (first) ``Pretrained`` entry."""
    root = type(model).__name__
    try:
        candidates = [(module, model.get_submodule(module))] if module else \
            list(model.named_modules())
    except AttributeError as exc:
        raise InitConfigError(f'--module {module!r}: no such submodule of '
                              f'{root} ({exc})') from exc
    for path, sub in candidates:
        for cfg in as_cfg_list(getattr(sub, 'init_cfg', None)):
            if is_pretrained_cfg(cfg):
                return path, sub, build_options(
                    cfg, entry_label(path, root, 'Pretrained'))
    where = f'--module {module!r}' if module else f'any module of {root}'
    raise InitConfigError(f'no Pretrained entry in the init_cfg of {where}: '
                          'nothing to dry-run')


def adapted_entries(match: ModuleMatch) -> List[Dict[str, Any]]:
    """The adapted tensors in module order: key, transform, whether only
    part comes from the checkpoint, and the transform's description."""
    done = match.assignment
    return [dict(key=k, transform=type(done.adapted[k]).__name__,
                 partial=k in done.partial, description=done.descriptions[k])
            for k in match.model_shapes if k in done.adapted]


def replace_checkpoint(module: nn.Module, file: str) -> None:
    """Point the first ``Pretrained`` entry of ``module``'s ``init_cfg`` at
    ``file`` (the prediction ``--optim`` reports is then the dry run's)."""
    cfgs = [dict(c) for c in as_cfg_list(module.init_cfg)]
    first = next(i for i, c in enumerate(cfgs) if is_pretrained_cfg(c))
    cfgs[first]['checkpoint'] = file
    module.init_cfg = cfgs


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
    """MMEngine's current logger at ERROR while the block runs: the stock
    constructor logs every paramwise option and, as warnings, each
    parameter with ``requires_grad=False`` it skips, on stdout (which may
    be JSON; the report counts those as frozen)."""
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def build_constructor(
        optim_wrapper: Any) -> Callable[[nn.Module], OptimWrapper]:
    """The config's optim wrapper constructor, built as MMEngine's
    ``build_optim_wrapper`` builds it, for a plain ``OptimWrapper``."""
    if not optim_wrapper:
        raise InitConfigError('--optim: the config has no optim_wrapper')
    cfg = copy.deepcopy(dict(optim_wrapper))
    if not isinstance(cfg.get('optimizer'), dict):
        raise InitConfigError(
            '--optim: optim_wrapper has no optimizer config (a constructor '
            'of several optimizers is not supported)')
    constructor = cfg.pop('constructor', 'DefaultOptimWrapperConstructor')
    return OPTIM_WRAPPER_CONSTRUCTORS.build(dict(
        type=constructor, paramwise_cfg=cfg.pop('paramwise_cfg', None),
        optim_wrapper_cfg=dict(type='OptimWrapper',
                               optimizer=cfg['optimizer'])))


def trainable_data(model: nn.Module, optim_wrapper: Any) -> Dict[str, Any]:
    """The trainable report of ``model`` under the config's
    ``optim_wrapper``, for the predicted provenance: the optimizer is built,
    ``init_weights()`` is not called."""
    constructor = build_constructor(optim_wrapper)
    if isinstance(constructor, ProvenanceOptimWrapperConstructor):
        plan = constructor.plan(model)
    else:  # stock groups, nothing selected
        plan = make_plan(model, param_table(model), TrainingCfg())
    with quiet_logs():
        optimizer = constructor(model).optimizer
    return report_data(type(model).__name__, plan, optimizer)


def dry_run(config: str, module: Optional[str] = None,
            checkpoint: Optional[str] = None,
            optim: bool = False) -> Dict[str, Any]:
    """Everything the report prints, as a dict (with ``optim``, the
    trainable report under ``trainable``).

    Example:
        >>> dry_run('configs/mmdet/retinanet_r18_adapters_ft_tiny.py')['loaded_fraction']
        0.985
    """
    cfg = Config.fromfile(config)
    model, device = build_model(cfg)
    path, sub, entry = find_entry(model, module)
    file = checkpoint or entry.checkpoint
    root = type(model).__name__
    label = entry_label(path, root, 'Pretrained')
    match = match_module(sub, open_source(entry, label, file), entry, label)
    result = match.result
    out = dict(module=path, module_label=module_label(path, root),
               checkpoint=file, built_on=device,
               mapping=entry.mapping.describe(),
               loaded=[n for n in match.model_shapes if n in result.loaded],
               missing=result.missing,
               unexpected=result.unexpected,
               adapted=adapted_entries(match),
               mismatched=[dict(key=k, checkpoint=c, model=m)
                           for k, _, c, m in result.mismatched],
               loaded_fraction=match.fraction,
               min_loaded=entry.min_loaded, suggestions=[])
    if match.fraction < 0.5:
        out['suggestions'] = [
            dict(setting=m.describe(), loaded_fraction=f)
            for m, f in suggest_mappings(match.model_shapes,
                                         match.ckpt_shapes,
                                         current=entry.mapping,
                                         counted=match.params)
        ]
    if optim:
        if checkpoint:
            replace_checkpoint(sub, checkpoint)
        out['trainable'] = trainable_data(model, cfg.get('optim_wrapper'))
    return out


def format_text(res: Dict[str, Any]) -> str:
    """The human text of a :func:`dry_run` result."""
    lines = [f"{res['module'] or res['module_label']} <- {res['checkpoint']} "
             f"({res['mapping']}; model built on {res['built_on']}): "
             f"{res['loaded_fraction']:.1%} of parameter elements would load"]
    groups: List[Tuple[str, Sequence[str]]] = [
        ('would load', res['loaded']), ('missing (declared init)',
                                        res['missing']),
        ('unexpected (unused)', res['unexpected'])]
    for title, names in groups:
        lines.append(f'{title}: {len(names)}')
        lines += [f'  {n}' for n in fold_names(list(names))]
    lines.append(f"adapted: {len(res['adapted'])}")
    lines += [f"  {a['key']} <- {a['description']}"
              + (' (part; the rest keeps its declared init)'
                 if a['partial'] else '') for a in res['adapted']]
    lines.append(f"shape mismatched: {len(res['mismatched'])}")
    lines += [f"  {m['key']}: checkpoint {tuple(m['checkpoint'])} vs model "
              f"{tuple(m['model'])}" for m in res['mismatched']]
    for s in res['suggestions']:
        lines.append(f"suggestion: {s['setting']} would load "
                     f"{s['loaded_fraction']:.1%}")
    if 'trainable' in res:
        lines += ['', format_trainable(res['trainable'])]
    return '\n'.join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config')
    parser.add_argument('--module', default=None)
    parser.add_argument('--checkpoint', default=None)
    parser.add_argument('--optim', action='store_true',
                        help='also print the trainable report (groups, '
                        'frozen names) the Runner logs when training starts')
    parser.add_argument('--json', action='store_true')
    args = parser.parse_args(argv)
    try:
        res = dry_run(args.config, args.module, args.checkpoint, args.optim)
    except (InitConfigError, CheckpointError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return 2
    print(json.dumps(res, indent=1) if args.json else format_text(res))
    need = res['min_loaded']
    ok = res['loaded_fraction'] >= need if need is not None else \
        res['loaded_fraction'] > 0
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
