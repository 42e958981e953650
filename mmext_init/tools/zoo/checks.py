"""Plugin worker of the zoo sweep, run in a fresh process after the stock
one (:mod:`~mmext_init.tools.zoo.stock`) on the same folder::

    python -m mmext_init.tools.zoo.checks PACKAGE CONFIG OUT_DIR

Running it imports mmext_init (the plugin is active). It reads
``OUT_DIR/stock.json`` and the stock checkpoint and forward outputs, builds
the config as the stock run did and writes ``OUT_DIR/plugin.json``: checks
``shipped``, ``vs_stock``, ``deferral``, ``model_pretrained`` and
``backbone_pretrained`` (:mod:`~mmext_init.tools.zoo.verdicts`) and the
plugin's timings.
"""
import copy
import json
import os
import sys
from typing import Any, Dict, Optional, Sequence

import torch
from mmengine.registry import MODELS

from mmext_init.deferred import declares_checkpoint
from mmext_init.provenance.ledger import get_provenance
from mmext_init.tools.zoo.models import (build_and_init, differing,
                                         first_line, forward_outputs,
                                         overrides_init_weights, seed_all,
                                         setup_scope, state_of, with_init_cfg)
from mmext_init.tools.zoo.stock import (STOCK_CKPT, STOCK_FORWARD,
                                        shipped_config, without_backbone_refs)
from mmext_init.tools.zoo.urls import find_refs, strip_refs
from mmext_init.tools.zoo.verdicts import (LogCapture, check_backbone,
                                           check_deferral,
                                           check_ledger_values, check_shipped,
                                           check_vs_stock, deferral,
                                           skipped_draws, verdict)

BACKBONE_PREFIX = 'backbone.'


def run_plugin(package: str, config: str, out: str,
               stock: Dict[str, Any]) -> Dict[str, Any]:
    """Checks 2-5 and the plugin's timings."""
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
    default = _observe(model, package)
    declared = declares_checkpoint(cfg.model)
    if declared:  # as shipped, this build deferred: build again without
        del model
        with deferral('0'):
            model, _ = build_and_init(cfg.model)
    off = _observe(model, package) if declared else default
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
        default = _observe(model, package)
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
    bare_ledger = get_provenance(
        bare_model)
    del bare_model
    skipped = skipped_draws(off[2], bare_ledger, set(stock['called']),
                            set(stock['body_ran']))
    if not skipped:
        return result
    return check_vs_stock(off[:2], stock_result, off[2], model, stock,
                          skipped)


def _observe(model: torch.nn.Module, package: str) -> tuple:
    """(state, forward outputs, ledger) of a plugin build."""
    return (state_of(model), forward_outputs(model, package)[0],
            get_provenance(model))


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
    ledger = get_provenance(model)
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
    ledger = get_provenance(model)
    return check_backbone(model, ledger, None, ckpt, stock_state,
                          self_loading, capture.seen)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``PACKAGE CONFIG OUT_DIR``: write ``OUT_DIR/plugin.json``."""
    package, config, out = list(argv if argv is not None
                                else sys.argv[1:])[:3]
    torch.set_num_threads(1)
    with open(os.path.join(out, 'stock.json')) as f:
        result = run_plugin(package, config, out, json.load(f))
    with open(os.path.join(out, 'plugin.json'), 'w') as f:
        json.dump(result, f, indent=1)
    return 0


if __name__ == '__main__':
    sys.exit(main())
