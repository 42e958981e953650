"""Dry-run a ``Pretrained`` entry: what would load, be adapted, stay missing,
be unexpected or shape-mismatched, without loading any weights.

Usage::

    python tools/match_checkpoint.py CONFIG [--module backbone] \\
        [--checkpoint PATH] [--optim] [--json]

The model is built with its parameters and buffers on the meta device
(``tools/meta_build.py``; a constructor that needs their values is built
on CPU instead: ``built_on`` is then ``cpu`` and the JSON's
``built_on_reason`` says why), the checkpoint is read for names and shapes
only. The module defaults to the first one whose ``init_cfg`` holds a
``Pretrained`` entry; ``--checkpoint`` replaces the entry's file and keeps
its key options. When less than half of the module would load, the
settings that would load the most (no ``prefix``, another ``prefix``, a
``revise_keys``, ``match='suffix'``), and more than the entry's own, are
printed with their coverage, ranked by it.
Names are listed in module order, as in the report. The JSON's ``module``
is the module path (``''`` for the model root) and ``module_label`` its
human name (``the model root (RetinaNet)``).

A module whose own ``init_weights`` reads the checkpoint (mmdet/mmseg
``SwinTransformer``, mmseg ``VisionTransformer``...) applies its own key
handling and ignores ``prefix``: the dry run predicts what it loads (the
file's keys as they are, else with the
module's path stripped, as Swin does with a whole-model checkpoint; see
:func:`mmext_init.session.own_loader.own_loader_entries`), names the
loader (``own_loader``), prints the warning the run logs for an ignored
``prefix`` and suggests no key options (the loader would ignore them); the
other key options it cannot apply are the run's error (exit status 2).

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
``trainable``. The dry run above it still needs a ``Pretrained`` entry, or
a ``load_from``.

A config with ``load_from`` (mmdet's fine-tuning recipe) or ``resume``: without
``--module``, the dry run is of that load, the Runner's own after
``init_weights()`` (``via`` is ``load_from`` or ``resume``): MMEngine's
``strict=False`` and ``revise_keys`` on names and shapes, the ``adapt``
transforms of ``load_from_cfg``; ``--checkpoint`` replaces its file. With
``--optim`` the prediction includes it whatever the module dry-run, as the
optimizer constructor's does, and the report adds per file how it reached
the model and how many of its tensors are frozen (``sources``).

Exit status: 0 when the entry's ``min_loaded`` (default: anything loads)
would be met, 1 when it would not (nothing loading included: whatever the
``prefix``, the suggestions then say what would), 2 when the entry cannot
be used at all (unreadable checkpoint, transform that cannot apply, bad key
options) or,
with ``--optim``, when the optim wrapper config cannot (no
``optim_wrapper.optimizer``, a ``freeze``/``rules``/``layer_decay`` that is
malformed or has a selector matching nothing).
"""
import argparse
import contextlib
import copy
import dataclasses
import json
import logging
import sys
from typing import (Any, Callable, Dict, Iterator, List, Optional, Sequence,
                    Tuple)

import torch.nn as nn
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS

from mmext_init.errors import (CheckpointError, InitConfigError, entry_label,
                               module_label)
from mmext_init.loading.key_matching import suggest_mappings
from mmext_init.loading.options import (PretrainedOptions, as_cfg_list,
                                        build_options, is_pretrained_cfg)
from mmext_init.loading.plan import ModuleMatch, match_module, open_source
from mmext_init.provenance.report import fold_names
from mmext_init.session.code_loads import override_owner
from mmext_init.session.model_names import is_base_like, uses_contract
from mmext_init.session.runner_load import (LOAD_FROM_CFG, RunnerLoad,
                                            register_load, runner_load)
from mmext_init.session.own_loader import (ignored_options_error,
                                           own_loader_entries,
                                           reads_checkpoint_itself)
from mmext_init.session.self_loading import SelfLoad, ignored_prefix
from mmext_init.training import ProvenanceOptimWrapperConstructor
from mmext_init.training.expected import param_table
from mmext_init.training.plan import TrainingCfg, make_plan
from mmext_init.training.report import format_trainable, report_data
from mmext_init.training.startup import loaded_sources, source_lines

from meta_build import build_model


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
    data = report_data(type(model).__name__, plan, optimizer)
    sources = loaded_sources(model, plan)
    if sources:
        data['sources'] = sources
    return data


def config_load(cfg: Config, model: nn.Module,
                checkpoint: Optional[str]) -> Optional[RunnerLoad]:
    """The load the Runner makes after ``init_weights()`` (``load_from``,
    ``resume``), its file replaced by ``checkpoint``, recorded for
    ``model`` (the optimizer prediction includes it)."""
    load = runner_load(cfg.get('load_from'), bool(cfg.get('resume', False)),
                       cfg.get('work_dir'), cfg.get(LOAD_FROM_CFG))
    if load is not None and checkpoint:
        load = dataclasses.replace(load, checkpoint=checkpoint)
    if load is not None:
        register_load(model, load)
    return load


def load_match(model: nn.Module, load: RunnerLoad
               ) -> Tuple[ModuleMatch, Dict[str, Any]]:
    """The match of the Runner's load into the whole model."""
    entry = load.options()
    match = match_module(model, open_source(entry, load.label), entry,
                         load.label)
    return match, dict(own_loader=None, warnings=[], mapping=(
        f'{load.via}: strict=False, {entry.mapping.describe()}'))


def own_loader_match(model: nn.Module, path: str, sub: nn.Module,
                     entry: PretrainedOptions, label: str,
                     file: str) -> Tuple[ModuleMatch, Dict[str, Any]]:
    """The match of the entry as ``sub``'s own ``init_weights`` is
    predicted to load it (the first of
    :func:`~mmext_init.session.own_loader.own_loader_entries` that loads
    anything), and what the result says about it."""
    owner = f'{override_owner(sub)}.init_weights'
    error = ignored_options_error(label, override_owner(sub), path, entry)
    if error is not None:  # the run stops with it
        raise error
    options = own_loader_entries(entry, path)
    for option in options:
        match = match_module(sub, open_source(option, label, file), option,
                             label)
        if match.result.loaded or match.assignment.partial:
            break
    load = SelfLoad(label, override_owner(sub), path, type(model).__name__,
                    entry, list(match.model_shapes), False)
    keys = ('its path stripped from the file\'s keys'
            if option.mapping.prefix else 'the file\'s keys as they are')
    return match, dict(
        own_loader=owner, warnings=[w for w in [ignored_prefix(load)] if w],
        mapping=f'read by {owner} itself, predicted with {keys}')


def entry_match(model: nn.Module, path: str, sub: nn.Module,
                entry: PretrainedOptions,
                file: str) -> Tuple[ModuleMatch, Dict[str, Any]]:
    """The match of ``sub``'s ``Pretrained`` entry (read from ``file``), as
    mmext_init or the module's own loader loads it."""
    label = entry_label(path, type(model).__name__, 'Pretrained')
    if is_base_like(sub) and not uses_contract(sub) and \
            reads_checkpoint_itself(sub):
        match, about = own_loader_match(model, path, sub, entry, label, file)
    else:
        match = match_module(sub, open_source(entry, label, file), entry,
                             label)
        about = dict(own_loader=None, warnings=[],
                     mapping=entry.mapping.describe())
    return match, dict(about, via='Pretrained')


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
    model, device, why = build_model(cfg)
    root = type(model).__name__
    load = config_load(cfg, model, None if module else checkpoint)
    if load is not None and not module:  # the Runner's load_from/resume
        path, sub, entry, file = '', model, load.options(), load.checkpoint
        match, about = load_match(model, load)
        about['via'] = load.via
    else:
        path, sub, entry = find_entry(model, module)
        file = checkpoint or entry.checkpoint
        match, about = entry_match(model, path, sub, entry, file)
    result = match.result
    out = dict(module=path, module_label=module_label(path, root),
               checkpoint=file, built_on=device, built_on_reason=why,
               **about,
               loaded=[n for n in match.model_shapes if n in result.loaded],
               missing=result.missing,
               unexpected=result.unexpected,
               adapted=adapted_entries(match),
               mismatched=[dict(key=k, checkpoint=c, model=m)
                           for k, _, c, m in result.mismatched],
               loaded_fraction=match.fraction,
               min_loaded=entry.min_loaded, suggestions=[])
    if match.fraction < 0.5 and not about['own_loader'] and \
            about['via'] == 'Pretrained':  # stock's load takes no options
        out['suggestions'] = [
            dict(setting=m.describe_change(entry.mapping),
                 loaded_fraction=f)
            for m, f in suggest_mappings(match.model_shapes,
                                         match.ckpt_shapes,
                                         current=entry.mapping,
                                         counted=match.params)
        ]
    if optim:
        if checkpoint and about['via'] == 'Pretrained':
            replace_checkpoint(sub, checkpoint)
        out['trainable'] = trainable_data(model, cfg.get('optim_wrapper'))
    return out


def format_text(res: Dict[str, Any]) -> str:
    """The human text of a :func:`dry_run` result."""
    lines = [f'warning: {w}' for w in res['warnings']]
    lines.append(f"{res['module'] or res['module_label']} <- "
                 f"{res['checkpoint']} ({res['mapping']}; model built on "
                 f"{res['built_on']}): {res['loaded_fraction']:.1%} of "
                 'parameter elements would load')
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
        lines += [''] + source_lines(res['trainable'].get('sources', []))
        lines.append(format_trainable(res['trainable']))
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
