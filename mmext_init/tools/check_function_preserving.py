"""Prove that inserting modules did not change a pretrained model at step 0.

Builds the model of CONFIG and of REFERENCE_CONFIG (each config's
``custom_imports`` and ``default_scope`` honoured), initializes each through
its own ``init_cfg`` (``init_weights()``), sets eval mode, feeds both the
same seeded random input and prints the maximum absolute difference per
output tensor. Exit status 1 above ``--atol`` (or on NaN, or when the outputs
differ in number or shape), 2 on an input error (a config that does not
load, an input that does not run through the model: the error names
``--input-shape`` and ``--module``), printed as ``mmext-check: error:
<message>`` on stderr; 0 otherwise.

Usage::

    mmext-check CONFIG --reference REF_CONFIG [--module backbone] \\
        [--input-shape 1 3 64 64] [--atol 1e-5] [--seed 0] [--json PATH] \\
        [--cfg-options model.backbone.frozen_stages=-1]

(also ``python -m mmext_init.tools.check_function_preserving`` or, in a
checkout, ``python tools/check_function_preserving.py``).

``--module`` is what receives the input: ``tensor`` (the whole model,
``model(x, mode='tensor')`` of an MMEngine ``BaseModel``: backbone, neck and
heads), a dotted submodule path (``backbone``, ``backbone.layer1``) or a
method of the model such as ``extract_feat`` (backbone + neck). Default:
``backbone`` when the model has one, else ``extract_feat`` when it has one,
else the model itself (new heads are initialized from each model's own
seeded stream, which the inserted modules' init may shift: compare them
with ``--module tensor`` where the checkpoint provides them).
The input shape comes from ``--input-shape``, else from CONFIG
(``crop_size``, the data preprocessor's ``size``, or the first ``Resize`` of
the test pipeline), else 1x3x224x224. ``--cfg-options`` apply to both
configs. Parts that neither model takes from a checkpoint must be inserted,
function-preserving ones: anything else random makes the check fail.
``--json PATH`` also writes the result as JSON (``-``: to stdout, the text
then on stderr): ``outputs`` (shape and ``max_abs_difference`` of each),
``max_abs_difference``, ``atol``, ``preserved``, ``input_shape``, ``module``.

Example (a config with inserted modules against its stock one)::

    $ mmext-check inserted.py --reference stock.py
    output 0 (1, 64, 16, 16): max abs difference 0.000e+00
    ...
    function preserved: max 0.000e+00 (atol 1e-05) on input (1, 3, 64, 64) through backbone
"""
import argparse
import copy
import functools
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.model import BaseModel
from mmengine.registry import MODELS, init_default_scope

from .cli import (ToolError, add_atol, add_cfg_options, add_json, finite,
                  load_config, run_tool, tool_parser)

TENSOR = 'tensor'  # --module: the whole model, mode='tensor'


class ProofInputError(ToolError):
    """The input runs through no candidate module: exit status 2."""


def input_shape_from_cfg(cfg: Config) -> Tuple[int, ...]:
    """(1, 3, H, W) from the config, or 1x3x224x224.

    Example:
        >>> input_shape_from_cfg(Config(dict(model={}, crop_size=(64, 32))))
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


def input_shape_source(cfg: Config, given: Optional[Sequence[int]]) -> str:
    """Where :func:`input_shape_from_cfg` (or ``--input-shape``) took the
    input shape from, for messages.

    Example:
        >>> input_shape_source(Config(dict(model={})), None)
        'the default for images, 1x3x224x224: no crop_size, data preprocessor size or test Resize in the config'
    """
    if given:
        return '--input-shape'
    if cfg.get('crop_size'):
        return "the config's crop_size"
    if cfg.model.get('data_preprocessor', {}).get('size'):
        return "the config's data preprocessor size"
    if any(t.get('type') == 'Resize' for t in cfg.get('test_pipeline') or []):
        return "the config's first test Resize"
    return ('the default for images, 1x3x224x224: no crop_size, data '
            'preprocessor size or test Resize in the config')


def build_initialized(cfg: Config, options: Optional[dict] = None,
                      seed: int = 0) -> Tuple[nn.Module, Config]:
    """Build the model of ``cfg`` (a copy, ``options`` merged) under its
    ``default_scope``, run ``init_weights()`` (RNG seeded with ``seed``)
    and set eval mode.

    Example:
        >>> from mmengine.model import BaseModule
        >>> class Net(BaseModule):
        ...     def __init__(self, width=1):
        ...         super().__init__()
        ...         self.fc = nn.Linear(2, width)
        >>> cfg = Config(dict(model=dict(type=Net)))
        >>> model, _ = build_initialized(cfg, {'model.width': 3})
        >>> model.fc.weight.shape, model.training
        (torch.Size([3, 2]), False)
    """
    cfg = copy.deepcopy(cfg)
    if options:
        cfg.merge_from_dict(options)
    if cfg.get('default_scope'):
        init_default_scope(cfg.default_scope)
    torch.manual_seed(seed)
    model = MODELS.build(cfg.model)
    model.init_weights()
    model.eval()  # not chained: mmdet's ResNet.train() returns None
    return model, cfg


def resolve_target(model: nn.Module, module: Optional[str]) -> Callable:
    """What gets the input: ``module`` as a dotted submodule path or a method
    name of ``model``; default backbone, else ``extract_feat``, else model.

    Raises:
        ToolError: ``module`` names nothing of ``model``.

    Example:
        >>> resolve_target(nn.Sequential(nn.Linear(2, 2)), '0')
        Linear(in_features=2, out_features=2, bias=True)
    """
    if module is None:
        if isinstance(getattr(model, 'backbone', None), nn.Module):
            return model.backbone
        return getattr(model, 'extract_feat', model)
    if module == TENSOR and isinstance(model, BaseModel):
        return functools.partial(model, mode='tensor')
    try:
        return model.get_submodule(module)
    except AttributeError:
        method = getattr(model, module, None)
        if callable(method) and not isinstance(method, nn.Module):
            return method
        raise ToolError(f'--module {module!r} is neither a submodule nor a '
                         f'method of {type(model).__name__}') from None


def describe_module(model: nn.Module, module: Optional[str]) -> str:
    """How messages name what gets the input.

    Example:
        >>> describe_module(nn.Linear(2, 2), 'tensor')
        "the whole model (mode='tensor')"
    """
    if module == TENSOR:
        return "the whole model (mode='tensor')"
    if module is None:
        if isinstance(getattr(model, 'backbone', None), nn.Module):
            return 'backbone'
        return 'extract_feat' if callable(getattr(model, 'extract_feat',
                                                  None)) else 'the model'
    return module


def first_running(model: nn.Module, modules: Sequence[Optional[str]],
                  x: torch.Tensor, source: str
                  ) -> Tuple[Optional[str], List[torch.Tensor]]:
    """The first of ``modules`` that runs on ``x`` (no_grad) and its
    outputs; each that does not is said, and if none does,
    :class:`ProofInputError` naming ``--input-shape`` and ``--module``
    (``source``: where the shape came from)."""
    error: Optional[BaseException] = None
    for i, module in enumerate(modules):
        target = resolve_target(model, module)
        try:
            with torch.no_grad():
                return module, flatten(target(x))
        except Exception as exc:  # any forward may reject an input
            error = exc
            why = f'{type(exc).__name__}: {exc}'.splitlines()[0][:300]
            if i + 1 < len(modules):
                print(f'{describe_module(model, module)} does not run on '
                      f'input {tuple(x.shape)} ({why}); trying '
                      f'{describe_module(model, modules[i + 1])}')
    where = ' or '.join(describe_module(model, m) for m in modules)
    raise ProofInputError(
        f'the input {tuple(x.shape)} ({source}) does not run through '
        f'{where}: {why}. Give --input-shape with the shape the model '
        'takes and, for a part of the model, --module (a submodule path, '
        f"a method such as extract_feat, or {TENSOR!r})") from error


def flatten(out: Any) -> List[torch.Tensor]:
    """The tensors of a (nested) tuple/list/dict output, in order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        out = list(out.values())
    return [t for item in out for t in flatten(item)]


def largest_difference(outs: List[torch.Tensor], refs: List[torch.Tensor],
                       other: str) -> Tuple[float, List[Dict[str, Any]]]:
    """Print the max abs difference (float64) of each output pair; return
    the largest (inf when they differ in number or shape, ``other`` naming
    the model of ``refs``; NaN sticks) and, per output, its shape and
    difference.

    Example:
        >>> largest_difference([torch.ones(2)], [torch.zeros(2)], 'ref')
        output 0 (2,): max abs difference 1.000e+00
        (1.0, [{'shape': [2], 'max_abs_difference': 1.0}])
    """
    if len(outs) != len(refs):
        print(f'{len(outs)} outputs vs {len(refs)} in {other}')
        return float('inf'), []
    worst, rows = 0.0, []
    for i, (a, b) in enumerate(zip(outs, refs)):
        if a.shape != b.shape:
            print(f'output {i} has shape {tuple(a.shape)} vs '
                  f'{tuple(b.shape)} in {other}')
            return float('inf'), rows
        diff = (a.double() - b.double()).abs().max().item() \
            if a.numel() else 0.0
        worst = diff if diff != diff else max(worst, diff)  # NaN sticks
        rows.append(dict(shape=list(a.shape), max_abs_difference=diff))
        print(f'output {i} {tuple(a.shape)}: max abs difference {diff:.3e}')
    return worst, rows


def check(args: argparse.Namespace) -> Tuple[int, Dict[str, Any]]:
    """Build, initialize and compare both models; the exit status and the
    result (see the module's ``--json``)."""
    cfg = load_config(args.config, args.cfg_options)
    model, _ = build_initialized(cfg, None, args.seed)
    reference, _ = build_initialized(
        load_config(args.reference, args.cfg_options), None, args.seed)
    shape = tuple(args.input_shape or input_shape_from_cfg(cfg))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(args.seed))
    module, outs = first_running(model, [args.module], x,
                                 input_shape_source(cfg, args.input_shape))
    with torch.no_grad():
        refs = flatten(resolve_target(reference, module)(x))
    worst, rows = largest_difference(outs, refs, 'the reference')
    ok = worst <= args.atol  # False for NaN
    where = describe_module(model, module)
    print(f'function {"preserved" if ok else "CHANGED"}: max {worst:.3e} '
          f'(atol {args.atol:g}) on input {shape} through {where}')
    return (0 if ok else 1), dict(
        outputs=rows, max_abs_difference=finite(worst), atol=args.atol,
        preserved=ok, input_shape=list(shape), module=where)


def add_input_options(parser: argparse.ArgumentParser,
                      default_module: str) -> None:
    """``--module`` (its default described by ``default_module``),
    ``--input-shape`` and ``--seed``: what gets the seeded input."""
    parser.add_argument('--module', default=None,
                        help="what gets the input: 'tensor' (the whole "
                        'model), a dotted submodule path or a model method '
                        f'such as extract_feat (default: {default_module})')
    parser.add_argument('--input-shape', type=int, nargs='+',
                        metavar='N', help='shape of the random input '
                        '(default: from the config, else 1 3 224 224)')
    parser.add_argument('--seed', type=int, default=0,
                        help='seed of the init and of the input '
                        '(default: %(default)s)')


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``mmext-check``."""
    parser = tool_parser('mmext-check', __doc__)
    parser.add_argument('config', help='config with the inserted modules')
    parser.add_argument('--reference', required=True,
                        help='config of the unmodified model')
    add_input_options(parser, 'backbone, else extract_feat, else the model')
    add_atol(parser)
    add_json(parser)
    add_cfg_options(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the check; returns the exit status (0 preserved, 1 changed, 2
    an input error). ``--cfg-options`` apply to both configs."""
    return run_tool(build_parser(), argv, check)


if __name__ == '__main__':
    sys.exit(main())
