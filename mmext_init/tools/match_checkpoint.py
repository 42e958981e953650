"""Dry-run a ``Pretrained`` entry: what would load, be adapted, stay missing,
be unexpected or shape-mismatched, without loading any weights.

Usage::

    mmext-match CONFIG [--module backbone] [--checkpoint PATH] [--optim] \\
        [--json PATH] [--cfg-options KEY=VALUE ...]

(also ``python -m mmext_init.tools.match_checkpoint`` or, in a checkout,
``python tools/match_checkpoint.py``). ``--json PATH`` also writes the
result as JSON (``-``: to stdout, the text then on stderr); ``--cfg-options``
are merged into the config as in mmdet's tools.

The model is built with its parameters and buffers on the meta device
(:mod:`mmext_init.tools.meta_build`; a constructor that needs their values
is built on CPU instead: ``built_on`` is then ``cpu`` and the JSON's
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
be used at all (a config that does not load, unreadable checkpoint,
transform that cannot apply, bad key options: ``mmext-match: error:
<message>`` on stderr) or,
with ``--optim``, when the optim wrapper config cannot (no
``optim_wrapper.optimizer``, a ``freeze``/``rules``/``layer_decay`` that is
malformed or has a selector matching nothing).
"""
import argparse
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..provenance.report import fold_names
from ..training.report import format_trainable
from ..training.startup import source_lines
from .cli import (add_cfg_options, add_json, run_tool, tool_parser)
from .dry_run import dry_run

__all__ = ['dry_run', 'format_text', 'main']


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


def exit_status(res: Dict[str, Any]) -> int:
    """0 when the entry's ``min_loaded`` (default: anything loads) would be
    met, else 1.

    Example:
        >>> exit_status(dict(min_loaded=None, loaded_fraction=0.0))
        1
    """
    need = res['min_loaded']
    ok = res['loaded_fraction'] >= need if need is not None else \
        res['loaded_fraction'] > 0
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``mmext-match``."""
    parser = tool_parser('mmext-match', __doc__)
    parser.add_argument('config', help='the config file whose model is '
                        'dry-run (its custom_imports are imported)')
    parser.add_argument('--module', default=None,
                        help='dotted path of the submodule whose Pretrained '
                        'entry is dry-run (default: the config\'s '
                        'load_from/resume, else the first module with a '
                        'Pretrained entry)')
    parser.add_argument('--checkpoint', default=None,
                        help='checkpoint file replacing the entry\'s (its '
                        'key options kept)')
    parser.add_argument('--optim', action='store_true',
                        help='also print the trainable report (groups, '
                        'frozen names) the Runner logs when training starts')
    add_json(parser)
    add_cfg_options(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the dry run; returns the exit status (0 the entry's
    ``min_loaded`` would be met, 1 not, 2 an input error)."""

    def body(args: argparse.Namespace) -> Tuple[int, Dict[str, Any]]:
        res = dry_run(args.config, args.module, args.checkpoint, args.optim,
                      args.cfg_options)
        print(format_text(res))
        return exit_status(res), res

    return run_tool(build_parser(), argv, body)


if __name__ == '__main__':
    sys.exit(main())
