"""Fold a config's inserted weight changes (LoRA, ...) into the weights:
a plain checkpoint.

Builds the model of CONFIG (a config with ``model.insert``, see
:mod:`mmext_init.inserting`), its root loading CHECKPOINT and the deltas
above it (``Pretrained(checkpoint=[CHECKPOINT, *DELTAS], strict=True)``:
later files win per key, each delta is checked against the base it was
trained on, and every tensor of the inserted model must come from them),
folds every entry whose insert type is ``foldable`` into its targets'
tensors (:meth:`~mmext_init.inserting.InsertType.fold`; LoRA:
``W + lora_delta(target)``), in float64 and insertion order, cast back to
each tensor's dtype, and writes ``--out``::

    {'state_dict': {name: tensor}, 'meta': {...}}

with plain ``torch.save`` of tensors and plain data (dicts, lists, tuples,
str, numbers, None): ``torch.load(path, weights_only=True)`` reads it. No
tensor of a folded entry is left.

Then it proves the merge: the inserted model (the loaded weights) and the
model of CONFIG without its folded entries (its root loading ``--out`` with
``Pretrained(strict=True)``, so its init report names the merged file, then
``load_state_dict(torch.load(out, weights_only=True)['state_dict'],
strict=True)`` as stock MMEngine reads it), both in float64 and eval mode,
get the same seeded input; the largest absolute output difference is
printed. ``--module`` and ``--input-shape`` are those of ``mmext-check``
(:mod:`mmext_init.tools.check_function_preserving`; ``tensor``: the whole
model, ``model(x, mode='tensor')``; a submodule path or a model method; the
shape from the config's ``crop_size``/preprocessor ``size``/test ``Resize``). By
default the input goes through the whole model (``tensor``: the trained
heads are proven too); only where that does not run on the input, through
the smallest of ``backbone`` and ``extract_feat`` (backbone + neck) that
holds every folded target, saying so. Each folded target must run, or the
proof fails. An input that runs through none of them (a model whose input
is not an image: give its shape) is an error naming ``--input-shape`` and
``--module`` (exit status 2). When the proof fails (above ``--atol``),
nothing is left at ``--out``.

``--out-config [PATH]`` also writes, once the merge is proven, the config
the merged file needs as one file (default: ``--out`` with ``.py``): CONFIG
with its ``_base_`` chain resolved, ``model.insert`` holding only the kept
entries (none: no ``insert``, and ``mmext_init`` taken out of
``custom_imports``, mmext_init's hooks out of ``custom_hooks``), since
``insert`` cannot be deleted through ``_base_``. The libraries' own
``tools/test.py PATH merged.pth`` runs it without the plugin (training with
it still needs the plugin where it uses ``ProvenanceOptimWrapperConstructor``
or ``Pretrained`` options of mmext_init).

Entries that are not foldable (``Adapter``: a non-linear residual; any
type without ``foldable``) cannot be folded: without ``--keep-adapters``
that is an error naming the entries and their targets. With
``--keep-adapters`` the foldable entries are folded and the other entries' tensors are written unchanged: that file
needs CONFIG's model with ``insert`` holding only the kept entries (in
their order; ``meta['insert']`` has them, and mmext_init imported to build
it). With no kept entry (``meta['insert'] == []``) the file needs CONFIG's
model without ``insert``: stock MMEngine, no plugin.

``--set NAME ...`` merges only the entries of these insert sets (their
``name``; ``'default'``: the entries without one): the other sets' tensors
are left out of ``--out`` and of its config, and the proof's inserted
model runs with those sets switched off
(:func:`~mmext_init.inserting.sets.enable_insert_sets`), so the file is the
model of the chosen sets alone.

``meta`` holds ``mmext_merged`` (1), ``config``, ``checkpoints`` (the
files as given), ``folded`` (the folded target paths), ``insert`` (the kept
entries), ``sets`` (``--set``, ``[]``: all), ``needs`` (a sentence: which
model config loads the file) and the base checkpoint's ``dataset_meta``
when it is plain data.

Usage::

    mmext-merge CONFIG CHECKPOINT [--delta DELTA ...] --out merged.pth \\
        [--out-config [merged.py]] [--atol 1e-5] [--set NAME ...] \\
        [--keep-adapters] \\
        [--module tensor] [--input-shape 1 3 H W] [--seed 0] \\
        [--json PATH] [--cfg-options KEY=VALUE ...]

(also ``python -m mmext_init.tools.merge_inserted`` or, in a checkout,
``python tools/merge_inserted.py``). ``--cfg-options`` are merged into
CONFIG (and into the config ``--out-config`` writes). ``--json PATH`` also
writes the result as JSON (``-``: to stdout, the text and the init reports
then on stderr): ``proven``, ``max_abs_difference``, ``atol``, ``out`` (None
when nothing was written), ``out_config``, ``tensors`` and the file's
``meta``.

Run it from the directory the config's relative paths (its own
``Pretrained`` checkpoints) resolve from, as when training. Exit status:
0 merged and proven, 1 the proof failed (no file written), 2 a config or
checkpoint error (``mmext-merge: error: <message>`` on stderr, naming the
file or entry).

Example (tiny RetinaNet-Swin, LoRA on every window attention's qkv and
proj, run where ``checkpoints/retinanet_swin_stock_tiny.pth`` is; the init
reports left out)::

    $ mmext-merge configs/mmdet/retinanet_swin_lora_tiny.py \\
        base.pth --delta delta_iter_4.pth --out merged.pth
    == the inserted model, its root loading base.pth + delta_iter_4.pth
    ...
    folded 8 LoRA branches of insert[0] LoRA(rank=4, alpha=8) into the weights of backbone.stages.{0..3}.blocks.0.attn.w_msa.{qkv,proj}
    == the merged model, built and initialized as configured, then load_state_dict(strict=True) of the merged file
    ...
    output 0 (1, 64, 16, 16): max abs difference 6.297e-09
    output 1 (1, 128, 8, 8): max abs difference 1.103e-08
    output 2 (1, 256, 4, 4): max abs difference 1.439e-08
    merge proven: max 1.439e-08 (atol 1e-05) on input (1, 3, 128, 128) through backbone, float64, eval mode
    wrote merged.pth: 99 tensors, 8 LoRA branches folded; it needs the model of configs/mmdet/retinanet_swin_lora_tiny.py without model.insert (loads in stock MMEngine, no plugin)
"""
import argparse
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.config import Config, ConfigDict

from ..inserting.sets import enable_insert_sets
from ..provenance.report import fold_names
from .cli import (add_atol, add_cfg_options, add_json, finite, load_config,
                  run_tool, tool_parser)
from .check_function_preserving import add_input_options
from .merge_fold import (MARK, choose_sets, drop_entries, fold_entries,
                         split_entries, targets_of)
from .merge_proof import MergeError, build_loaded, model_options, prove
from .plain_config import (base_meta, needs, plain_config,
                           plain_config_path)

def insert_of(cfg: Config, config: str) -> List[dict]:
    """CONFIG's ``model.insert`` as plain dicts (MergeError if none)."""
    entries = cfg.model.get('insert')
    if not entries or not isinstance(entries, (list, tuple)):
        raise MergeError(f'{config}: model.insert is {entries!r}: no '
                         'inserted module to merge')
    return ConfigDict(insert=list(entries)).to_dict()['insert']


def unfoldable_error(model: nn.Module, kept: List[int],
                     config: str) -> MergeError:
    """The error for entries that do not fold, without
    ``--keep-adapters``, naming each entry and its targets in ``model``."""
    held = '; '.join(f'{mark} at {", ".join(fold_names(paths))}'
                     for mark, paths in targets_of(model, kept).items())
    return MergeError(
        f'{config}: model.insert holds entries that cannot be folded into '
        f'weights (not a weight change): {held}. --keep-adapters folds the '
        'other entries and keeps these tensors; the written checkpoint then needs '
        'the config with model.insert holding only these entries')


def write(path: str, state: Dict[str, torch.Tensor],
          meta: Dict[str, Any]) -> None:
    """``torch.save({'state_dict': state, 'meta': meta}, path)``."""
    try:
        torch.save({'state_dict': state, 'meta': meta}, path)
    except (OSError, RuntimeError) as error:  # RuntimeError: no directory
        raise MergeError(f'--out {path}: {error}') from error


def write_proven(args: argparse.Namespace, cfg: Config, kept: List[dict],
                 inserted: nn.Module, state: Dict[str, torch.Tensor],
                 meta: Dict[str, Any],
                 kinds: str) -> Tuple[int, Dict[str, Any]]:
    """Write ``--out``, prove it (the merged model loads it under its own
    name, so its report names it), and keep it (exit status 0, and
    ``--out-config`` written) or remove it (1, or on any error); the status
    and the result (see the module's ``--json``); ``kinds`` names the
    folded types (``'LoRA'``, ``'LoRA/SSF'``, ``''``: none)."""
    write(args.out, state, meta)
    try:
        worst = prove(args, cfg, kept, inserted, args.out, meta['folded'])
    except BaseException:
        os.remove(args.out)
        raise
    data = dict(proven=worst <= args.atol, max_abs_difference=finite(worst),
                atol=args.atol, out=None, out_config=None,
                tensors=len(state), meta=meta)
    if not data['proven']:
        os.remove(args.out)
        print(f'nothing written to {args.out}')
        return 1, data
    kept_note = ", the kept entries' tensors unchanged" if kept else ''
    print(f'wrote {args.out}: {len(state)} tensors, '
          f'{len(meta["folded"])} {kinds + " " if kinds else ""}branches '
          f'folded{kept_note}; it needs '
          f'{meta["needs"]}')
    data['out'] = args.out
    if args.out_config is not None:
        data['out_config'] = write_plain_config(args, kept)
        print(f'wrote {data["out_config"]}: that config, for the library\'s '
              f'tools/test.py {data["out_config"]} {args.out}')
    return 0, data


def write_plain_config(args: argparse.Namespace, kept: List[dict]) -> str:
    """:func:`~mmext_init.tools.plain_config.plain_config` (with
    ``--cfg-options``) written to ``--out-config``."""
    path = plain_config_path(args.out, args.out_config)
    try:
        plain_config(args.config, kept, args.cfg_options).dump(path)
    except OSError as error:
        raise MergeError(f'--out-config {path}: {error}') from error
    return path


def check_outputs(args: argparse.Namespace) -> None:
    """MergeError before the run if ``--out``'s or ``--out-config``'s
    folder does not exist."""
    out_config = None if args.out_config is None else \
        plain_config_path(args.out, args.out_config)
    for option, path in (('--out', args.out), ('--out-config', out_config)):
        if path is not None and not os.path.isdir(
                os.path.dirname(os.path.abspath(path))):
            raise MergeError(f'{option} {path}: no such directory')


def print_folded(insert: List[dict], folded: Dict[str, List[str]]) -> None:
    """Say what each folded entry folds into which weights."""
    for mark, paths in folded.items():
        kind = insert[int(MARK.match(mark).group(1))]['type']
        print(f'folded {len(paths)} {kind} branches of {mark} into the '
              f'weights of {", ".join(fold_names(paths))}')
    if not folded:
        print('no foldable entry in model.insert: nothing folded')


def merge(args: argparse.Namespace) -> Tuple[int, Dict[str, Any]]:
    """Check the entries, load, fold, write and prove; the exit status and
    the result."""
    cfg = load_config(args.config, args.cfg_options)
    insert = insert_of(cfg, args.config)
    check_outputs(args)
    chosen, dropped = choose_sets(insert, args.sets, args.config)
    foldable, kept = (
        [i for i in part if i in chosen] for part in split_entries(insert))
    if kept and not args.keep_adapters:  # named in a model as configured
        model, _ = build_loaded(cfg, {}, args.seed)
        raise unfoldable_error(model, kept, args.config)
    files = [args.checkpoint, *args.delta]
    root = dict(type='Pretrained', checkpoint=files, strict=True)
    print(f'== the inserted model, its root loading {" + ".join(files)}')
    inserted, _ = build_loaded(cfg, model_options(cfg, insert, root),
                               args.seed)
    if args.sets:  # the proof's reference: only the chosen sets run
        enable_insert_sets(inserted, args.sets)
        print(f'insert sets merged: {", ".join(args.sets)}; the others '
              'switched off and left out')
    folded = targets_of(inserted, foldable)
    print_folded(insert, folded)
    targets = [path for paths in folded.values() for path in paths]
    state = fold_entries(inserted, insert, folded)
    drop_entries(inserted, state, dropped)
    kept_entries = [insert[i] for i in kept]
    meta = dict(mmext_merged=1, config=args.config, checkpoints=files,
                folded=targets, insert=kept_entries, sets=args.sets,
                needs=needs(args.config, kept_entries),
                **base_meta(args.checkpoint))
    kinds = '/'.join(dict.fromkeys(str(insert[i]['type']) for i in foldable
                                   if targets_of(inserted, [i])))
    return write_proven(args, cfg, kept_entries, inserted, state, meta,
                        kinds)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``mmext-merge``."""
    parser = tool_parser('mmext-merge', __doc__)
    parser.add_argument('config', help='config with model.insert')
    parser.add_argument('checkpoint', help='checkpoint of the inserted model '
                        '(or the base of --delta)')
    parser.add_argument('--delta', nargs='+', action='extend', default=[],
                        help='delta checkpoints stacked on CHECKPOINT, '
                        'later files winning per key')
    parser.add_argument('--out', required=True,
                        help='the merged checkpoint to write')
    parser.add_argument('--out-config', nargs='?', const='', default=None,
                        help='also write the config of the merged file '
                        '(CONFIG without its folded entries) to this path, '
                        'default: --out with .py')
    add_atol(parser)
    parser.add_argument('--set', dest='sets', nargs='+', action='extend',
                        default=[], metavar='NAME',
                        help='merge only these insert sets (entry name=; '
                        "'default' for entries without one): the other "
                        "sets' tensors are left out, and the proof runs "
                        'the inserted model with them switched off')
    parser.add_argument('--keep-adapters', action='store_true',
                        help='fold the foldable entries (LoRA, ...), keep '
                        'the other entries\' tensors')
    add_input_options(parser, 'the whole model, else the smallest of '
                      'backbone/extract_feat holding the folded targets')
    add_json(parser)
    add_cfg_options(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the merge; returns the exit status (0 merged and proven, 1 not
    proven, 2 an input error)."""
    return run_tool(build_parser(), argv, merge)


if __name__ == '__main__':
    sys.exit(main())
