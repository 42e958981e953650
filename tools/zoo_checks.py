"""Per-config worker of ``tools/zoo_sweep.py``, run in a fresh process.

    python tools/zoo_checks.py stock  PACKAGE CONFIG OUT_DIR
    python tools/zoo_checks.py plugin PACKAGE CONFIG OUT_DIR

``stock`` never imports mmext_init (checked): it builds the config with every
``Pretrained`` removed (seed 0), writes the state dict as a Runner-style
checkpoint (``OUT_DIR/stock.pth``, numpy values in ``meta``) and a plain one
(``stock_plain.pth``, for timing stock's own ``Pretrained`` load, which
cannot read numpy ``meta`` under torch >= 2.6), the forward outputs, which
modules its recursion reached, and timings. ``plugin`` imports mmext_init and
runs checks 2-5 against those files (see tools/zoo_sweep.py). Each writes
``OUT_DIR/<mode>.json``.
"""
import importlib
import json
import os
import sys
from typing import Any, Dict, Optional

import torch
from mmengine.registry import MODELS

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from zoo_models import (build_and_init, differing, first_line,  # noqa: E402
                        forward_outputs, load_config, overrides_init_weights,
                        runner_checkpoint, seed_all, setup_scope, state_of,
                        stock_reach, with_init_cfg)
from zoo_verdicts import (LogCapture, check_backbone, check_deferral,  # noqa
                          check_ledger_values, check_vs_stock, deferral,
                          verdict)

STOCK_CKPT = 'stock.pth'
STOCK_PLAIN = 'stock_plain.pth'
STOCK_FORWARD = 'stock_forward.pth'
BACKBONE_PREFIX = 'backbone.'


def run_stock(package: str, config: str, out: str) -> Dict[str, Any]:
    """Stock build, files for the plugin run, timings; ``skip`` on failure."""
    assert 'mmext_init' not in sys.modules, 'stock run imported mmext_init'
    try:
        setup_scope(package)
        cfg = load_config(config, package)
        model, seconds = build_and_init(cfg.model)
    except Exception as exc:  # stock cannot build it: the config is skipped
        return {'skip': first_line(exc)}
    called, body_ran = stock_reach(model)
    state = state_of(model)
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
                has_backbone=has_backbone,
                mmext_init_imported='mmext_init' in sys.modules)


def run_plugin(package: str, config: str, out: str,
               stock: Dict[str, Any]) -> Dict[str, Any]:
    """Checks 2-5 and the plugin's timings."""
    # Imported here, not at the top: the stock mode of this same file must
    # never import mmext_init.
    mmext_init = importlib.import_module('mmext_init')
    setup_scope(package)
    cfg = load_config(config, package)
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
    if mmext_init.deferred.declares_checkpoint(cfg.model):  # a key left
        del model  # as shipped, this build deferred: build again without
        with deferral('0'):
            model, _ = build_and_init(cfg.model)
    off = state_of(model), forward_outputs(model, package)[0]
    checks['vs_stock'] = check_vs_stock(
        off, (stock_state, stock_out), mmext_init.get_provenance(model),
        model, stock)
    del model
    with deferral('1'):
        model, _ = build_and_init(cfg.model)
    checks['deferral'] = check_deferral(
        (state_of(model), forward_outputs(model, package)[0]), off)
    del model, off
    checks['model_pretrained'], result['pretrained_seconds'] = \
        model_pretrained(cfg.model, ckpt, stock_state, stock_out, package)
    if stock['has_backbone']:
        checks['backbone_pretrained'] = backbone_pretrained(
            cfg.model, ckpt, stock_state)
    else:
        checks['backbone_pretrained'] = verdict(None, 'no backbone')
    return result


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
