"""Prove that inserting modules did not change a pretrained model at step 0.

Builds the model of CONFIG and of REFERENCE_CONFIG, initializes each through
its own ``init_cfg`` (``init_weights()``), feeds both the same seeded random
input and prints the maximum absolute difference per output. Exit status 1
above ``--atol``, 0 otherwise.

Usage::

    python tools/check_function_preserving.py CONFIG --reference REF_CONFIG \\
        [--module backbone] [--input-shape 1 3 64 64] [--atol 1e-6]

The input shape comes from ``--input-shape``, else from the config
(``crop_size``, the data preprocessor's ``size``, or the first ``Resize`` of
the test pipeline), else 1x3x224x224. ``--module`` names the submodule to
run (default: ``backbone`` when the model has one, else the whole model).
"""
import argparse
import sys
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.config import Config, DictAction
from mmengine.registry import MODELS, init_default_scope


def input_shape_from_cfg(cfg: Config) -> Tuple[int, ...]:
    """(1, 3, H, W) from the config, or 1x3x224x224.

    Example:
        >>> input_shape_from_cfg(Config(dict(crop_size=(64, 32))))
        (1, 3, 64, 32)
    """
    size = cfg.get('crop_size') or cfg.model.get('data_preprocessor',
                                                 {}).get('size')
    if not size:
        pipeline = cfg.get('test_pipeline') or []
        resize = [t for t in pipeline if t.get('type') == 'Resize']
        if resize:
            w, h = resize[0]['scale']  # mmcv Resize scale is (w, h)
            size = (h, w)
    return (1, 3, *size) if size else (1, 3, 224, 224)


def build_initialized(path: str, options: Optional[dict] = None) -> Tuple[
        nn.Module, Config]:
    """Build the model of a config file and run ``init_weights()``."""
    cfg = Config.fromfile(path)
    if options:
        cfg.merge_from_dict(options)
    init_default_scope(cfg.get('default_scope', 'mmengine'))
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.eval()  # not chained: mmdet's ResNet.train() returns None
    return model, cfg


def _flatten(out) -> List[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    return [t for item in out for t in _flatten(item)]


def run(model: nn.Module, module: Optional[str],
        x: torch.Tensor) -> List[torch.Tensor]:
    """Outputs of ``module`` (dotted path; default backbone/whole model)."""
    name = module or ('backbone' if hasattr(model, 'backbone') else '')
    target = model.get_submodule(name) if name else model
    with torch.no_grad():
        return _flatten(target(x))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config')
    parser.add_argument('--reference', required=True)
    parser.add_argument('--module', default=None)
    parser.add_argument('--input-shape', type=int, nargs='+')
    parser.add_argument('--atol', type=float, default=1e-6)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = parser.parse_args(argv)

    model, cfg = build_initialized(args.config, args.cfg_options)
    reference, _ = build_initialized(args.reference, args.cfg_options)
    shape = tuple(args.input_shape or input_shape_from_cfg(cfg))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(args.seed))
    outs, refs = run(model, args.module, x), run(reference, args.module, x)
    if len(outs) != len(refs):
        print(f'different number of outputs: {len(outs)} vs {len(refs)}')
        return 1
    worst = 0.0
    for i, (a, b) in enumerate(zip(outs, refs)):
        if a.shape != b.shape:
            print(f'output {i}: shape {tuple(a.shape)} vs {tuple(b.shape)}')
            return 1
        diff = (a.float() - b.float()).abs().max().item()
        worst = diff if diff != diff else max(worst, diff)  # NaN sticks
        if diff != diff:
            print(f'output {i}: NaN in the outputs')
        print(f'output {i} {tuple(a.shape)}: max abs difference {diff:.3e}')
    ok = worst <= args.atol  # False for NaN
    verdict = 'preserved' if ok else 'CHANGED'
    print(f'function {verdict}: max {worst:.3e} (atol {args.atol:g}) on '
          f'input {shape}')
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
