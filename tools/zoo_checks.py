"""Per-config worker of ``tools/zoo_sweep.py``, run in a fresh process.

    python tools/zoo_checks.py stock  PACKAGE CONFIG OUT_DIR
    python tools/zoo_checks.py plugin PACKAGE CONFIG OUT_DIR

``stock`` never imports mmext_init (checked). It builds the config as
shipped: first a build with every checkpoint reference removed gives each
reference's file in the hub cache (``$TORCH_HOME``, set by the sweep;
``tools/zoo_files.py``), then the config is built as shipped (seed 0,
references without a file removed, with the reason) and its state dict is
written as a Runner-style checkpoint (``OUT_DIR/stock.pth``, numpy values in
``meta``) and a plain one (``stock_plain.pth``, for timing stock's own
``Pretrained`` load, which cannot read numpy ``meta`` under torch >= 2.6),
with the forward outputs, the tensors stock took from the generated files,
which modules its recursion reached, and timings. ``plugin`` imports
mmext_init and runs checks 2-5 and ``shipped`` against those files (see
tools/zoo_sweep.py). Each writes ``OUT_DIR/<mode>.json``.
"""
import copy
import importlib
import json
import os
import sys
from typing import Any, Dict, Optional

import torch
from mmengine.registry import MODELS

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from zoo_models import (bit_equal, build_and_init, differing,  # noqa: E402
                        first_line, forward_outputs, load_config,
                        overrides_init_weights, runner_checkpoint, seed_all,
                        setup_scope, state_of, stock_reach, with_init_cfg)
from zoo_files import make_files  # noqa: E402
from zoo_urls import find_refs, strip_refs  # noqa: E402
from zoo_verdicts import (LogCapture, check_backbone, check_deferral,  # noqa
                          check_ledger_values, check_shipped, check_vs_stock,
                          deferral, skipped_draws, verdict)

STOCK_CKPT = 'stock.pth'
STOCK_PLAIN = 'stock_plain.pth'
STOCK_FORWARD = 'stock_forward.pth'
BACKBONE_PREFIX = 'backbone.'


def run_stock(package: str, config: str, out: str) -> Dict[str, Any]:
    """Stock build as shipped, files for the plugin run, timings; ``skip``
    on failure."""
    assert 'mmext_init' not in sys.modules, 'stock run imported mmext_init'
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
                mmext_init_imported='mmext_init' in sys.modules)


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


def run_plugin(package: str, config: str, out: str,
               stock: Dict[str, Any]) -> Dict[str, Any]:
    """Checks 2-5 and the plugin's timings."""
    # Imported here, not at the top: the stock mode of this same file must
    # never import mmext_init.
    mmext_init = importlib.import_module('mmext_init')
    setup_scope(package)
    cfg = shipped_config(config, package, stock['shipped'])
    ckpt = os.path.join(out, STOCK_CKPT)
    stock_state = torch.load(ckpt, mmap=True, weights_only=False)['state_dict']
    stock_out = torch.load(os.path.join(out, STOCK_FORWARD),
                           weights_only=False)
    checks: Dict[str, Dict[str, Any]] = {}
    result: Dict[str, Any] = {'checks': checks}
    try:
        model, result['seconds'] = build_and_init(cfg.model)
    except Exception as exc:  # plugin fails where stock built: a failure
        checks['build'] = verdict(False, f'plugin build: {first_line(exc)}')
        return result
    default = _observe(mmext_init, model, package)
    declared = mmext_init.deferred.declares_checkpoint(cfg.model)
    if declared:  # as shipped, this build deferred: build again without
        del model
        with deferral('0'):
            model, _ = build_and_init(cfg.model)
    off = _observe(mmext_init, model, package) if declared else default
    checks['shipped'] = check_shipped(off[0], stock_state, off[2],
                                      stock['shipped'])
    if declared and checks['shipped']['status'] == 'pass':
        checks['shipped'] = check_shipped(default[0], stock_state,
                                          default[2], stock['shipped'],
                                          'the default build, deferred')
    checks['vs_stock'] = vs_stock(off, (stock_state, stock_out), model,
                                  stock, cfg.model if declared else None)
    del model
    if not declared:
        with deferral('1'):
            model, _ = build_and_init(cfg.model)
        default = _observe(mmext_init, model, package)
        del model
    checks['deferral'] = check_deferral(default[:2], off[:2], off[2])
    del default, off
    checks['model_pretrained'], result['pretrained_seconds'] = \
        model_pretrained(cfg.model, ckpt, stock_state, stock_out, package)
    if stock['has_backbone']:
        checks['backbone_pretrained'] = backbone_pretrained(
            without_backbone_refs(cfg.model), ckpt, stock_state)
    else:
        checks['backbone_pretrained'] = verdict(None, 'no backbone')
    return result


def vs_stock(off: tuple, stock_result: tuple, model: torch.nn.Module,
             stock: Dict[str, Any], shipped_cfg: Optional[Dict]
             ) -> Dict[str, Any]:
    """Check ``vs_stock``; where differences are left unexplained and the
    config loads checkpoints, again with the draws stock makes on loaded
    tensors (from the ledger of a build without the checkpoints)."""
    result = check_vs_stock(off[:2], stock_result, off[2], model, stock)
    if result['status'] != 'fail' or shipped_cfg is None:
        return result
    bare = copy.deepcopy(shipped_cfg)
    strip_refs(bare, find_refs(bare))
    with deferral('0'):
        bare_model, _ = build_and_init(bare)
    bare_ledger = importlib.import_module('mmext_init').get_provenance(
        bare_model)
    del bare_model
    skipped = skipped_draws(off[2], bare_ledger, set(stock['called']),
                            set(stock['body_ran']))
    if not skipped:
        return result
    return check_vs_stock(off[:2], stock_result, off[2], model, stock,
                          skipped)


def _observe(mmext_init: Any, model: torch.nn.Module, package: str) -> tuple:
    """(state, forward outputs, ledger) of a plugin build."""
    return (state_of(model), forward_outputs(model, package)[0],
            mmext_init.get_provenance(model))


def model_pretrained(model_cfg: Dict, ckpt: str,
                     stock_state: Dict[str, torch.Tensor],
                     stock_out: Optional[Dict[str, torch.Tensor]],
                     package: str) -> tuple:
    """Check 4: model-level ``Pretrained`` from the stock checkpoint: every
    tensor bit-exact, the ledger credits the file for all of them and agrees
    with the values, the forward output is stock's."""
    try:
        model, seconds = build_and_init(with_init_cfg(
            model_cfg, None, dict(type='Pretrained', checkpoint=ckpt)))
    except Exception as exc:  # the plugin failed to load its own file
        return verdict(False, first_line(exc)), None
    state = state_of(model)
    diffs = differing(state, stock_state)
    if diffs:
        return verdict(False, f'{len(diffs)} tensors differ from the file, '
                       f'first {diffs[:5]}', differing=diffs[:50]), seconds
    ledger = importlib.import_module('mmext_init').get_provenance(model)
    problem = check_ledger_values(ledger, state, stock_state, full=True)
    if problem:
        return verdict(False, problem), seconds
    outputs, how = forward_outputs(model, package)
    out_diffs = differing(outputs, stock_out) \
        if outputs is not None and stock_out is not None else []
    if out_diffs:
        return verdict(False, f'forward output differs from stock: '
                       f'{out_diffs[:5]}'), seconds
    forward = 'identical' if outputs is not None and stock_out is not None \
        else f'not compared ({how})'
    return verdict(True, f'{len(state)} tensors bit-exact, forward '
                   f'{forward}'), seconds


def backbone_pretrained(model_cfg: Dict, ckpt: str,
                        stock_state: Dict[str, torch.Tensor]
                        ) -> Dict[str, Any]:
    """Check 5: backbone-level ``Pretrained`` with ``prefix='backbone.'``."""
    entry = dict(type='Pretrained', checkpoint=ckpt, prefix=BACKBONE_PREFIX)
    kind = model_cfg['backbone'].get('type')
    with MODELS.switch_scope_and_registry(None) as registry:  # default scope
        backbone_cls = registry.get(kind) if isinstance(kind, str) else kind
    self_loading = isinstance(backbone_cls, type) and \
        overrides_init_weights(backbone_cls)
    capture = LogCapture('mmext_init: initialization report')
    seed_all(0)
    try:
        model = MODELS.build(with_init_cfg(model_cfg, 'backbone', entry))
    except Exception as exc:  # the backbone's constructor refuses init_cfg
        return verdict(None, 'the backbone refuses an init_cfg in its '
                       f'constructor (stock too): {first_line(exc)}')
    try:
        with capture:
            model.init_weights()
    except Exception as exc:  # allowed only as a clear error, see below
        return check_backbone(None, None, exc, ckpt, stock_state,
                              self_loading, capture.seen)
    ledger = importlib.import_module('mmext_init').get_provenance(model)
    return check_backbone(model, ledger, None, ckpt, stock_state,
                          self_loading, capture.seen)


def main(argv=None) -> int:
    mode, package, config, out = (argv or sys.argv[1:])[:4]
    torch.set_num_threads(1)
    if mode == 'stock':
        result = run_stock(package, config, out)
    else:
        with open(os.path.join(out, 'stock.json')) as f:
            result = run_plugin(package, config, out, json.load(f))
    with open(os.path.join(out, f'{mode}.json'), 'w') as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
