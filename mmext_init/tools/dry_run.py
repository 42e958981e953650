"""The dry run of ``mmext-match`` (:mod:`mmext_init.tools.match_checkpoint`):
what a ``Pretrained`` entry, or the Runner's ``load_from``/``resume``, would
load into the model of a config, from names and shapes only (the model built
on the meta device, :mod:`mmext_init.tools.meta_build`), and the trainable
report ``--optim`` predicts.

Example:
    >>> import torch.nn as nn
    >>> find_entry(nn.Linear(2, 2), None)
    Traceback (most recent call last):
    ...
    mmext_init.errors.InitConfigError: no Pretrained entry in the init_cfg of any module of Linear: nothing to dry-run
"""
import contextlib
import copy
import dataclasses
import logging
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch.nn as nn
from mmengine.config import Config
from mmengine.logging import MMLogger
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS

from ..errors import InitConfigError, entry_label, module_label
from ..loading.key_matching import suggest_mappings
from ..loading.options import (PretrainedOptions, as_cfg_list, build_options,
                               is_pretrained_cfg)
from ..loading.plan import ModuleMatch, match_module, open_source
from ..session.code_loads import override_owner
from ..session.model_names import is_base_like, uses_contract
from ..session.own_loader import (ignored_options_error, own_loader_entries,
                                  reads_checkpoint_itself)
from ..session.runner_load import (LOAD_FROM_CFG, RunnerLoad, register_load,
                                   runner_load)
from ..session.self_loading import SelfLoad, ignored_prefix
from ..training import ProvenanceOptimWrapperConstructor
from ..training.expected import param_table
from ..training.plan import TrainingCfg, make_plan
from ..training.report import report_data
from ..training.startup import loaded_sources
from .cli import load_config
from .meta_build import build_model


def find_entry(model: nn.Module, module: Optional[str]
               ) -> Tuple[str, nn.Module, PretrainedOptions]:
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


def matched(cfg: Config, model: nn.Module, module: Optional[str],
            checkpoint: Optional[str]) -> Tuple[str, nn.Module,
                                                PretrainedOptions, str,
                                                ModuleMatch, Dict[str, Any]]:
    """What the dry run is of: the Runner's ``load_from``/``resume`` (no
    ``module`` given) or ``module``'s ``Pretrained`` entry; its module path,
    module, options, file, match and what the result says about it."""
    load = config_load(cfg, model, None if module else checkpoint)
    if load is not None and not module:  # the Runner's load_from/resume
        match, about = load_match(model, load)
        about['via'] = load.via
        return '', model, load.options(), load.checkpoint, match, about
    path, sub, entry = find_entry(model, module)
    file = checkpoint or entry.checkpoint
    match, about = entry_match(model, path, sub, entry, file)
    return path, sub, entry, file, match, about


def suggestions(match: ModuleMatch, entry: PretrainedOptions,
                about: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The settings that would load more, when less than half loads (none
    for a load that takes no key options: an own loader, the Runner's)."""
    if match.fraction >= 0.5 or about['own_loader'] or \
            about['via'] != 'Pretrained':
        return []
    return [dict(setting=m.describe_change(entry.mapping), loaded_fraction=f)
            for m, f in suggest_mappings(match.model_shapes,
                                         match.ckpt_shapes,
                                         current=entry.mapping,
                                         counted=match.params)]


def dry_run(config: str, module: Optional[str] = None,
            checkpoint: Optional[str] = None, optim: bool = False,
            cfg_options: Optional[dict] = None) -> Dict[str, Any]:
    """Everything the report prints, as a dict (with ``optim``, the
    trainable report under ``trainable``), for the config file ``config``
    with ``cfg_options`` merged.

    Raises:
        ToolError: the config does not load.
        InitConfigError: no ``Pretrained`` entry, bad key options or
            ``optim_wrapper``.
        CheckpointError: the checkpoint cannot be read.

    Example::

        dry_run('configs/mmdet/retinanet_r18_adapters_ft_tiny.py')
        # {'module': 'backbone', ..., 'loaded_fraction': 0.985, ...}
    """
    cfg = load_config(config, cfg_options)
    model, device, why = build_model(cfg)
    path, sub, entry, file, match, about = matched(cfg, model, module,
                                                   checkpoint)
    result = match.result
    out = dict(module=path, module_label=module_label(path,
                                                      type(model).__name__),
               checkpoint=file, built_on=device, built_on_reason=why,
               **about,
               loaded=[n for n in match.model_shapes if n in result.loaded],
               missing=result.missing,
               unexpected=result.unexpected,
               adapted=adapted_entries(match),
               mismatched=[dict(key=k, checkpoint=c, model=m)
                           for k, _, c, m in result.mismatched],
               loaded_fraction=match.fraction,
               min_loaded=entry.min_loaded,
               suggestions=suggestions(match, entry, about))
    if optim:
        if checkpoint and about['via'] == 'Pretrained':
            replace_checkpoint(sub, checkpoint)
        out['trainable'] = trainable_data(model, cfg.get('optim_wrapper'))
    return out
