"""The load plan of one ``Pretrained`` entry: which model tensor takes which
checkpoint tensor, decided from names and shapes (memory-mapped, before any
initializer runs), with ``strict``/``min_loaded`` and the ``adapt``
transforms checked on shapes.

Example:
    >>> import tempfile, os, torch, torch.nn as nn
    >>> path = os.path.join(tempfile.mkdtemp(), 'fc.pth')
    >>> torch.save({'weight': torch.ones(2, 3)}, path)
    >>> plan = plan_load(nn.Linear(3, 2), 'fc', PretrainedOptions(path),
    ...                  'init_cfg of fc (Pretrained)')
    >>> plan.copies, plan.record.missing
    ({'fc.weight': 'weight'}, ['fc.bias'])
"""
from dataclasses import dataclass, field, replace
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from ..checkpoint.converters import convert_source
from ..checkpoint.formats import CheckpointTensors
from ..checkpoint.stacked import StackedTensors, open_stack
from ..errors import CheckpointError, InitConfigError, NonFiniteTensorError
from ..matching import partial_hint
from ..provenance.ledger import LoadRecord
from .adapt import AdaptTransform, Adapted, dry_run, region_numel
from .key_matching import MatchResult, Shape, match_keys
from .load_checks import check_coverage, is_counter
from .options import PretrainedOptions


@dataclass
class LoadPlan:
    """What one ``Pretrained`` entry will copy: ``{model name: checkpoint
    key}`` (model names relative to the session root) from ``source``."""
    module_path: str
    entry: PretrainedOptions
    label: str
    source: CheckpointTensors
    copies: Dict[str, str] = field(default_factory=dict)
    record: Optional[LoadRecord] = None
    # model name -> transform, for copies whose shape needs adapting; the
    # partial ones are not protected (their rest keeps the declared init)
    adapted: Dict[str, AdaptTransform] = field(default_factory=dict)
    partial: Dict[str, str] = field(default_factory=dict)

    def fetch(self,
              name: str,
              model_shape: Tuple[int, ...],
              check: bool = True) -> Tuple[torch.Tensor, Optional[Adapted]]:
        """The checkpoint tensor for model tensor ``name`` (adapted if its
        entry says so), read now and checked for NaN/Inf unless
        ``check_finite=False`` (or ``check=False``: the caller checks the
        copy, see :meth:`non_finite`)."""
        key = self.copies.get(name) or self.partial[name]
        src = self.source.get(key)
        if check and self.entry.check_finite and not all_finite(src):
            raise self.non_finite(key)
        transform = self.adapted.get(name)
        if transform is None:
            return src, None
        local = name[len(self.module_path) + 1:] if self.module_path else name
        try:
            done = transform(local, src, tuple(model_shape))
        except ValueError as exc:
            raise InitConfigError(f'{self.label}: {exc}') from exc
        return done.tensor, done

    def source_file(self, name: str) -> str:
        """The file the ledger names for model tensor ``name``: the entry's
        checkpoint, or for a list of files the one providing the tensor."""
        key = self.copies.get(name) or self.partial[name]
        return self.file_of_key(key)

    def file_of_key(self, key: str) -> str:
        """The file providing checkpoint ``key`` (see :meth:`source_file`)."""
        if isinstance(self.source, StackedTensors):
            return self.source.part_of(key)
        return self.entry.checkpoint

    def non_finite(self, key: str,
                   spoiled: Tuple[torch.Tensor, ...] = ()) -> CheckpointError:
        """The error for checkpoint tensor ``key`` holding NaN/Inf
        (``spoiled``: the model tensors the load already wrote)."""
        return NonFiniteTensorError(
            f'{self.label}: {self.file_of_key(key)}: tensor {key!r} holds '
            'NaN or Inf values (set check_finite=False to load it anyway)',
            spoiled)


def all_finite(t: torch.Tensor) -> bool:
    """No NaN/Inf in ``t``: one ``sum`` (NaN and Inf propagate; about twice
    as fast as ``aminmax``, 25x ``isfinite(t).all()``), and ``aminmax`` only
    when the sum is not finite (it may have overflowed).

    Example:
        >>> all_finite(torch.tensor([1.0, float('nan')]))
        False
    """
    if not t.is_floating_point() or t.numel() == 0:
        return True
    if bool(torch.isfinite(t.sum())):
        return True
    lo, hi = torch.aminmax(t)
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def _full(path: str, name: str) -> str:
    return f'{path}.{name}' if path else name


def open_source(entry: PretrainedOptions, label: str,
                checkpoint: Optional[str] = None) -> CheckpointTensors:
    """The entry's checkpoint (or ``checkpoint``), opened lazily and passed
    through its converter (run on meta tensors first: only names and shapes
    are read here). A list of files is opened as one stack, each delta
    checked against its base (:mod:`mmext_init.checkpoint.stacked`)."""
    files = (entry.checkpoints if not checkpoint
             or checkpoint == entry.checkpoint else (checkpoint, ))
    source = open_stack(files, entry.map_location, entry.trust_checkpoint,
                        label, entry.use_ema)
    if entry.converter is None:
        return source
    return convert_source(source, entry.converter)


@dataclass
class TransformAssignment:
    """What :func:`assign_transforms` decides: each adapted model tensor's
    transform and description, the partial ones (name -> checkpoint key),
    and the match's new ``loaded``, ``partly`` and ``mismatched``."""
    adapted: Dict[str, AdaptTransform] = field(default_factory=dict)
    descriptions: Dict[str, str] = field(default_factory=dict)
    partial: Dict[str, str] = field(default_factory=dict)
    loaded: Dict[str, str] = field(default_factory=dict)
    partly: Dict[str, int] = field(default_factory=dict)
    mismatched: List[Tuple[str, str, Shape, Shape]] = field(
        default_factory=list)

    def applied_to(self, result: MatchResult) -> MatchResult:
        """A copy of ``result`` with this assignment's ``loaded``,
        ``partly`` and ``mismatched``."""
        return replace(result, loaded=dict(self.loaded),
                       partly=dict(self.partly),
                       mismatched=list(self.mismatched))


def assign_transforms(result: MatchResult, entry: PretrainedOptions,
                      model_shapes: Mapping[str, Shape],
                      label: str) -> TransformAssignment:
    """Give each shape-mismatched tensor its ``adapt`` transform (and each
    equal-shaped one a transform that still changes it, e.g. ``Classes``
    reordering classes), checked on shapes only; ``result`` is not changed.

    Fully adapted tensors are loaded, partial ones are not (they are listed
    with their checkpoint key and the elements the checkpoint provides). A
    transform selecting no tensor of the module, or that cannot apply to the
    shapes, is an error.

    Example:
        >>> entry = PretrainedOptions('fc.pth', adapt=[dict(type='Grow',
        ...                                                 keys='weight')])
        >>> shapes = {'weight': (4, 3), 'bias': (4, )}
        >>> found = match_keys(shapes, {'weight': (2, 3)}, entry.mapping)
        >>> done = assign_transforms(found, entry, shapes, 'fc')
        >>> done.partial, done.partly, done.descriptions
        ({'weight': 'weight'}, {'weight': 6}, {'weight': "Grow(overlap='2x3')"})
        >>> found.mismatched, done.applied_to(found).mismatched
        ([('weight', 'weight', (2, 3), (4, 3))], [])
    """
    check_selection(entry.adapt, model_shapes, label)
    todo = [(n, k, c, m, True) for n, k, c, m in result.mismatched]
    todo += [(n, k, model_shapes[n], model_shapes[n], False)
             for n, k in result.loaded.items()]
    out = TransformAssignment(loaded=dict(result.loaded),
                              partly=dict(result.partly))
    for name, key, ckpt_shape, model_shape, mismatched in todo:
        transform = next((t for t in entry.adapt if t.selects(name)), None)
        done = shape_run(transform, name, ckpt_shape, model_shape, label)
        if done is None:
            if mismatched:
                out.mismatched.append((name, key, ckpt_shape, model_shape))
            continue
        out.adapted[name] = transform
        out.descriptions[name] = done.description
        if done.region is not None:
            out.partial[name] = key
            out.loaded.pop(name, None)
            out.partly[name] = region_numel(done.region, model_shape)
        else:
            out.loaded[name] = key
    return out


def check_selection(transforms: Sequence[AdaptTransform],
                    model_shapes: Mapping[str, Shape], label: str) -> None:
    """Each transform selects some tensor of the module."""
    for transform in transforms:
        if not any(transform.selects(n) for n in model_shapes):
            hint = next(filter(None, (partial_hint(p, model_shapes)
                                      for p in transform.patterns)), '')
            raise InitConfigError(
                f'{label}: adapt transform {type(transform).__name__} with '
                f'keys={transform.keys!r} matches no tensor of the module'
                + hint)


def shape_run(transform: Optional[AdaptTransform], name: str,
              ckpt_shape: Shape, model_shape: Shape,
              label: str) -> Optional[Adapted]:
    """The shape-only run of ``transform`` on tensor ``name``; None when
    there is no transform or it leaves the tensor as it is. A transform that
    cannot apply fails here, before any initializer ran (and in the dry
    run)."""
    if transform is None:
        return None
    try:
        if not transform.changes(ckpt_shape, model_shape):
            return None
        return dry_run(transform, name, ckpt_shape, model_shape)
    except ValueError as exc:
        raise InitConfigError(f'{label}: {exc}') from exc


@dataclass
class ModuleMatch:
    """A checkpoint matched to one module, ``adapt`` transforms applied:
    the shapes of both, the module's parameter names, the match, the
    transform assignment and the loaded fraction of parameter elements."""
    model_shapes: Dict[str, Shape]
    ckpt_shapes: Mapping[str, Shape]
    params: List[str]
    result: MatchResult
    assignment: TransformAssignment
    fraction: float


def match_module(module: nn.Module, source: CheckpointTensors,
                 entry: PretrainedOptions, label: str) -> ModuleMatch:
    """Match ``source`` (names and shapes only) to ``module`` with the key
    options and ``adapt`` transforms of ``entry``: what :func:`plan_load`
    plans from and the dry run (``tools/match_checkpoint.py``) reports.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), 'fc.pth')
        >>> torch.save({'weight': torch.ones(2, 3)}, path)
        >>> entry = PretrainedOptions(path)
        >>> found = match_module(nn.Linear(3, 2), open_source(entry, 'fc'),
        ...                      entry, 'fc')
        >>> found.result.loaded, found.result.missing, found.fraction
        ({'weight': 'weight'}, ['bias'], 0.75)
    """
    model_shapes = {k: tuple(v.shape)
                    for k, v in module.state_dict(keep_vars=True).items()}
    ckpt_shapes = source.shapes()
    try:
        result = match_keys(model_shapes, ckpt_shapes, entry.mapping)
    except ValueError as exc:  # two checkpoint keys map to one model key
        raise InitConfigError(f'{label}: {exc}') from exc
    assignment = assign_transforms(result, entry, model_shapes, label)
    result = assignment.applied_to(result)
    params = [n for n, _ in module.named_parameters()]
    return ModuleMatch(model_shapes, ckpt_shapes, params, result, assignment,
                       result.loaded_fraction(model_shapes, params))


def plan_load(module: nn.Module, path: str, entry: PretrainedOptions,
              label: str) -> LoadPlan:
    """Read the checkpoint (memory-mapped) and decide what it provides.

    Checks ``strict`` and ``min_loaded`` before any tensor is written.
    """
    source = open_source(entry, label)
    match = match_module(module, source, entry, label)
    result, assignment = match.result, match.assignment
    check_coverage(result, match.fraction, match.model_shapes,
                   match.ckpt_shapes, entry, label, bool(assignment.partial))
    copies = {_full(path, name): key for name, key in result.loaded.items()}
    return LoadPlan(
        path, entry, label, source, copies,
        load_record(path, entry, result, match.fraction),
        {_full(path, n): t for n, t in assignment.adapted.items()},
        {_full(path, n): k for n, k in assignment.partial.items()})


def load_record(path: str, entry: PretrainedOptions, result: MatchResult,
                fraction: float) -> LoadRecord:
    """The ledger's record of a planned load into the module at ``path``
    (names relative to the session root)."""
    return LoadRecord(
        module=path,
        checkpoint=entry.checkpoint,
        via='Pretrained',
        prefix=entry.prefix,
        loaded=[_full(path, n) for n in result.loaded],
        missing=[_full(path, m) for m in result.missing if not is_counter(m)],
        unexpected=result.unexpected,
        mismatched=[(_full(path, k), c, m) for k, _, c, m in result.mismatched],
        loaded_fraction=fraction)
