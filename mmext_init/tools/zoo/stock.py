"""Stock worker of the zoo sweep, run in a fresh process by
:mod:`mmext_init.tools.zoo.sweep` through :data:`STOCK_BOOT`::

    python -c "$STOCK_BOOT" PACKAGE CONFIG OUT_DIR

The boot code puts a bare ``mmext_init`` package in ``sys.modules`` (its
``__init__``, which installs the plugin, never runs) and runs this module,
so the process is stock MMEngine: only ``mmext_init.tools.zoo`` (which
imports no other part of mmext_init) is loaded, and that is checked.

It builds the config as shipped: first a build with every checkpoint
reference removed gives each reference's file in the hub cache
(``$TORCH_HOME``, set by the sweep; :mod:`~mmext_init.tools.zoo.files`),
then the config is built as shipped (seed 0, references without a file
removed, with the reason) and its state dict is written as a Runner-style
checkpoint (``OUT_DIR/stock.pth``, numpy values in ``meta``) and a plain one
(``stock_plain.pth``, for timing stock's own ``Pretrained`` load, which
cannot read numpy ``meta`` under torch >= 2.6), with the forward outputs,
the tensors stock took from the generated files, which modules its
recursion reached, and timings, in ``OUT_DIR/stock.json``.
"""
import copy
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

import torch
from mmengine.registry import MODELS

from mmext_init.tools.zoo.files import make_files
from mmext_init.tools.zoo.models import (bit_equal, build_and_init,
                                         first_line, forward_outputs,
                                         load_config, runner_checkpoint,
                                         seed_all, setup_scope, state_of,
                                         stock_reach, with_init_cfg)
from mmext_init.tools.zoo.urls import find_refs, strip_refs

STOCK_CKPT = 'stock.pth'
STOCK_PLAIN = 'stock_plain.pth'
STOCK_FORWARD = 'stock_forward.pth'
ZOO_PACKAGE = 'mmext_init.tools.zoo'
STOCK_BOOT = '; '.join((
    'import importlib.util, runpy, sys, types',
    "spec = importlib.util.find_spec('mmext_init')",
    "bare = types.ModuleType('mmext_init')",
    'bare.__path__ = list(spec.submodule_search_locations)',
    "sys.modules['mmext_init'] = bare",
    f"runpy.run_module('{ZOO_PACKAGE}.stock', run_name='__main__', "
    'alter_sys=True)'))


def plugin_modules() -> List[str]:
    """The parts of mmext_init loaded in this process beyond the sweep's
    own (``mmext_init.tools``, ``mmext_init.tools.zoo.*``) and the bare
    package of :data:`STOCK_BOOT`: empty in a stock run.

    Example:
        >>> plugin_modules()[:1]  # here the package's __init__ ran
        ['mmext_init']
    """
    own = ('mmext_init.tools', ZOO_PACKAGE)
    out = [name for name in sys.modules if name.startswith('mmext_init.')
           and name not in own and not name.startswith(ZOO_PACKAGE + '.')]
    package = sys.modules.get('mmext_init')
    if package is not None and 'install' in vars(package):
        out.insert(0, 'mmext_init')
    return out


def run_stock(package: str, config: str, out: str) -> Dict[str, Any]:
    """Stock build as shipped, files for the plugin run, timings; ``skip``
    on failure."""
    loaded = plugin_modules()
    assert not loaded, f'the stock run loaded mmext_init: {loaded}'
    try:
        setup_scope(package)
        cfg = load_config(config, package)
        shipped, expected = make_config_files(cfg.model)
        model, seconds = build_and_init(cfg.model)
    except Exception as exc:  # stock cannot build it: the config is skipped
        return {'skip': first_line(exc)}
    called, body_ran = stock_reach(model)
    state = state_of(model)
    shipped['loaded'] = [n for n, v in expected.items()
                         if n in state and bit_equal(state[n], v)]
    del expected
    torch.save(runner_checkpoint(state), os.path.join(out, STOCK_CKPT))
    plain = os.path.join(out, STOCK_PLAIN)
    torch.save({'state_dict': state}, plain)
    outputs, how = forward_outputs(model, package)
    torch.save(outputs, os.path.join(out, STOCK_FORWARD))
    has_backbone = isinstance(cfg.model.get('backbone'), dict) and \
        isinstance(getattr(model, 'backbone', None), torch.nn.Module)
    tensors = len(state)
    del model, state
    pretrained_seconds, pretrained_error = None, None
    try:
        _, pretrained_seconds = build_and_init(with_init_cfg(
            cfg.model, None, dict(type='Pretrained', checkpoint=plain)))
    except Exception as exc:  # timing only: recorded, not a verdict
        pretrained_error = first_line(exc)
    return dict(seconds=seconds, pretrained_seconds=pretrained_seconds,
                pretrained_error=pretrained_error, called=sorted(called),
                body_ran=sorted(body_ran), forward=how, tensors=tensors,
                has_backbone=has_backbone, shipped=shipped,
                mmext_init_imported=bool(plugin_modules()))


def make_config_files(model_cfg: Dict) -> tuple:
    """Files in the hub cache for every checkpoint reference of
    ``model_cfg`` (the ones without a file removed from it, in place): the
    ``shipped`` record and ``{tensor name: value a load gives it}``."""
    refs = find_refs(model_cfg)
    if not refs:
        return dict(records=[], unserved=[]), {}
    bare = copy.deepcopy(model_cfg)
    strip_refs(bare, refs)
    seed_all(0)
    served = make_files(MODELS.build(bare), refs)
    strip_refs(model_cfg, served.unserved)
    unserved = [i for i, r in enumerate(refs)
                if any(r is u for u in served.unserved)]
    return dict(records=served.records, unserved=unserved), served.expected


def shipped_config(config: str, package: str,
                   shipped: Dict[str, Any]) -> Any:
    """The config the stock run built: as shipped, minus the references it
    could make no file for."""
    cfg = load_config(config, package)
    refs = find_refs(cfg.model)
    strip_refs(cfg.model, [refs[i] for i in shipped['unserved']])
    return cfg


def without_backbone_refs(model_cfg: Dict) -> Dict:
    """A copy without the references the backbone loads (its own, and a
    segmentor's ``pretrained``), so check 5 can give it its own entry."""
    out = copy.deepcopy(model_cfg)
    strip_refs(out, [r for r in find_refs(out) if r.module_path[:1] == (
        'backbone',) or (r.kind == 'pretrained' and not r.module_path)])
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``PACKAGE CONFIG OUT_DIR``: write ``OUT_DIR/stock.json``."""
    package, config, out = list(argv if argv is not None
                                else sys.argv[1:])[:3]
    torch.set_num_threads(1)
    result = run_stock(package, config, out)
    with open(os.path.join(out, 'stock.json'), 'w') as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
