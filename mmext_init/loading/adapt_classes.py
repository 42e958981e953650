"""The ``Classes`` adapt transform: classifier rows for a new class list.

A tensor's rows (dim 0) are read as ``groups x classes x inner + extra``:
``groups`` blocks (RetinaNet's anchors: groups-major), each holding every
class with ``inner`` consecutive rows (class-specific box regression: 4
deltas per class, class-major), then ``extra`` trailing rows copied as they
are (a background row). The shapes alone cannot tell ``9 anchors x C`` from
``C classes x 9``: when a class owns more than one row and neither ``groups``
nor ``inner`` says how, every reading that would give other rows is listed in
an error instead of being guessed.

Example (3 checkpoint classes of 2 rows each, 2 model classes):
    >>> Classes('cls.bias', index_map=[1, 0])(
    ...     'cls.bias', torch.arange(6.), (4, ))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: Classes on cls.bias: checkpoint (6,) -> model (4,): each class has 2 rows, which can be read 2 ways that copy different rows: inner=2 (class-major: 3 classes x 2 rows each); groups=2 (groups-major: 2 groups x 3 classes). State which with groups= or inner= ...
    >>> Classes('cls.bias', index_map=[1, 0], inner=2)(
    ...     'cls.bias', torch.arange(6.), (4, )).tensor
    tensor([2., 3., 0., 1.])
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch

from .adapt import ADAPT_TRANSFORMS, Adapted, AdaptTransform, Shape

MAX_HINTS = 3


@dataclass(frozen=True)
class RowLayout:
    """One reading of the rows: ``groups x classes x inner + extra``, with
    ``old`` checkpoint classes and ``new`` model classes."""
    groups: int
    inner: int
    extra: int
    old: int
    new: int

    def describe(self) -> str:
        """E.g. ``'80->4 classes x 4 inner'`` or ``'9 groups x 80->5 classes'``."""
        classes = f'{self.old}->{self.new}' if self.old != self.new \
            else str(self.new)
        parts = [f'{self.groups} groups'] if self.groups > 1 else []
        parts.append(f'{classes} classes')
        if self.inner > 1:
            parts.append(f'{self.inner} inner')
        extra = f' + {self.extra} extra' if self.extra else ''
        return ' x '.join(parts) + extra

    def arguments(self) -> str:
        """The ``Classes`` arguments selecting this split of a class's rows,
        with what they mean in the checkpoint, e.g. ``inner=4 (class-major:
        80 classes x 4 rows each)``."""
        k, old = self.groups * self.inner, self.old
        if self.inner == 1:
            return f'groups={k} (groups-major: {k} groups x {old} classes)'
        if self.groups == 1:
            return f'inner={k} (class-major: {old} classes x {k} rows each)'
        return (f'groups={self.groups}, inner={self.inner} ({self.groups} '
                f'groups x {old} classes x {self.inner} rows each)')

    def sources(self, index_map: Sequence[int]) -> List[int]:
        """For each model row, the checkpoint row it comes from (-1: new)."""
        rows = [-1 if old < 0 else (g * self.old + old) * self.inner + i
                for g in range(self.groups) for old in index_map
                for i in range(self.inner)]
        start = self.groups * self.old * self.inner
        return rows + list(range(start, start + self.extra))


def readings(n_new: int, model_rows: int, ckpt_rows: int, extra: int,
             num_old: Optional[int] = None) -> List[RowLayout]:
    """Every ``groups x inner`` split of the rows that fits both shapes with
    ``extra`` trailing rows (all splits share the number of old classes).

    Example:
        >>> [r.describe() for r in readings(4, 16, 320, 0)]
        ['80->4 classes x 4 inner', '2 groups x 80->4 classes x 2 inner', '4 groups x 80->4 classes']
    """
    body_m, body_c = model_rows - extra, ckpt_rows - extra
    if n_new <= 0 or body_m <= 0 or body_c <= 0 or body_m % n_new:
        return []
    per_class = body_m // n_new
    if body_c % per_class:
        return []
    old = body_c // per_class
    if num_old is not None and old != num_old:
        return []
    return [RowLayout(g, per_class // g, extra, old, n_new)
            for g in range(1, per_class + 1) if per_class % g == 0]


def _positive(name: str, value: Optional[int]) -> Optional[int]:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f'Classes: {name} must be a positive integer or '
                         f'None, got {value!r}')
    return value


@ADAPT_TRANSFORMS.register_module()
class Classes(AdaptTransform):
    """Classifier rows (dim 0) for a new class list: rows of surviving
    classes are copied (by name, or ``index_map[new] = old`` with -1 for a
    new class); new classes keep their declared init (``region`` is then a
    boolean mask over dim 0). Applies to equal shapes too (reordered or
    replaced classes). Rows are ``groups x classes x inner + extra``: when a
    class has more than one row, state ``groups`` (RetinaNet's
    ``retina_cls``: ``groups=num_anchors``) or ``inner`` (class-specific box
    regression: ``inner=4``); ``extra=1`` for a trailing background row.
    In a config: ``dict(type='Classes', keys=..., old_classes=...,
    new_classes=...)``.

    Example:
        >>> t = Classes('fc.bias', old_classes=['cat', 'dog', 'car'],
        ...             new_classes=['dog', 'bus'])
        >>> done = t('fc.bias', torch.tensor([0., 1., 2.]), (2, ))
        >>> done.tensor, done.region, done.description
        (tensor([1., 0.]), tensor([ True, False]), "Classes(classes='1 kept', new=['bus'], rows='3->2 classes')")
    """

    def __init__(self, keys, index_map: Optional[Sequence[int]] = None,
                 old_classes: Optional[Sequence[str]] = None,
                 new_classes: Optional[Sequence[str]] = None,
                 groups: Optional[int] = None, inner: Optional[int] = None,
                 extra: int = 0) -> None:
        super().__init__(keys)
        self.num_old: Optional[int] = None  # known from old_classes
        self.new_names: Optional[List[str]] = None
        self.explicit_map = index_map is not None
        if index_map is None:
            if old_classes is None or new_classes is None:
                raise ValueError('Classes needs index_map or old_classes and '
                                 'new_classes')
            old = list(old_classes)
            self.num_old, self.new_names = len(old), list(new_classes)
            index_map = [old.index(c) if c in old else -1
                         for c in new_classes]
        self.index_map = [-1 if i is None else int(i) for i in index_map]
        if not self.index_map or min(self.index_map) < -1:
            raise ValueError(f'Classes: index_map needs one entry per model '
                             f'class, each a checkpoint class or -1, got '
                             f'{self.index_map}')
        self.groups = _positive('groups', groups)
        self.inner = _positive('inner', inner)
        if not isinstance(extra, int) or isinstance(extra, bool) or extra < 0:
            raise ValueError(f'Classes: extra must be an integer >= 0, got '
                             f'{extra!r}')
        self.extra = int(extra)

    def stated(self) -> str:
        """What the arguments fix, for messages."""
        parts = [f'{len(self.index_map)} model classes']
        if self.num_old is not None:
            parts.append(f'{self.num_old} checkpoint classes')
        parts += [f'{k}={v}' for k, v in (('groups', self.groups),
                                          ('inner', self.inner))
                  if v is not None]
        return ', '.join(parts + [f'extra={self.extra}'])

    def layout(self, name: str, ckpt_shape: Shape,
               model_shape: Shape) -> RowLayout:
        """The one reading of the rows that the arguments and shapes allow;
        an error listing the readings when there are several, or those
        that would fit when there is none."""
        if len(ckpt_shape) != len(model_shape) or \
                tuple(ckpt_shape[1:]) != tuple(model_shape[1:]):
            self.error(name, ckpt_shape, model_shape, 'only dim 0 may differ')
        found = [r for r in readings(len(self.index_map), model_shape[0],
                                     ckpt_shape[0], self.extra, self.num_old)
                 if self.groups in (None, r.groups)
                 and self.inner in (None, r.inner)]
        if not found:
            self.error(name, ckpt_shape, model_shape, self.no_fit(
                ckpt_shape[0], model_shape[0]))
        distinct = {tuple(r.sources(self.index_map)): r for r in found}
        if len(distinct) > 1:
            options = '; '.join(r.arguments() for r in distinct.values())
            self.error(name, ckpt_shape, model_shape, (
                f'each class has {found[0].groups * found[0].inner} rows, '
                f'which can be read {len(distinct)} ways that copy different '
                f'rows: {options}. State which with groups= or inner= '
                '(anchors x classes as RetinaNet\'s retina_cls: '
                'groups=<anchors>; class-specific box regression as '
                'Faster R-CNN\'s fc_reg: inner=4)'))
        chosen = found[0]
        if max(self.index_map) >= chosen.old:
            self.error(name, ckpt_shape, model_shape, f'index_map refers to '
                       f'class {max(self.index_map)}; the checkpoint has '
                       f'{chosen.old}')
        return chosen

    def no_fit(self, ckpt_rows: int, model_rows: int) -> str:
        """Why no reading fits, with the arguments of readings that would."""
        need = max(self.index_map) + 1
        hints = []
        for extra in range(min(ckpt_rows, model_rows)):
            fits = readings(len(self.index_map), model_rows, ckpt_rows, extra,
                            self.num_old)
            per_class = fits[0].groups * fits[0].inner if fits else 0
            # extra rows beyond one class's worth: numerically possible,
            # never a real layout (not offered)
            if fits and fits[0].old >= need and extra <= per_class:
                hints.append(self.hint(fits[0]))
            if len(hints) == MAX_HINTS:
                break
        text = (f'{model_rows} model rows and {ckpt_rows} checkpoint rows are '
                f'not groups x classes x inner + extra with {self.stated()}')
        if not hints:
            return text + '; no such reading fits these shapes'
        return text + '; readings that fit: ' + '; '.join(hints)

    def hint(self, reading: RowLayout) -> str:
        """The arguments that select ``reading`` (any split of its rows per
        class), e.g. ``extra=1 (80 checkpoint classes x 1 row + 1 trailing
        row, e.g. a background row)``."""
        per_class = reading.groups * reading.inner
        args = [] if reading.extra == self.extra else \
            [f'extra={reading.extra}']
        if per_class > 1:
            args.append(f'groups= or inner= multiplying to {per_class}')
        elif self.groups not in (None, 1) or self.inner not in (None, 1):
            args.append('no groups/inner')
        meaning = f'{reading.old} checkpoint classes x {per_class} row' + \
            ('s' if per_class > 1 else '')
        if reading.extra:
            meaning += f' + {reading.extra} trailing row' + \
                ('s' if reading.extra > 1 else ', e.g. a background row')
        return f"{', '.join(args) or 'as given'} ({meaning})"

    def rows(self, name: str, ckpt_shape: Shape,
             model_shape: Shape) -> List[int]:
        """For each model row, the checkpoint row it comes from (-1: new)."""
        return self.layout(name, ckpt_shape, model_shape).sources(
            self.index_map)

    def changes(self, ckpt_shape, model_shape):
        try:
            rows = self.rows('', ckpt_shape, model_shape)
        except ValueError:  # the shape-only call that follows raises,
            return True     # naming the tensor
        return rows != list(range(ckpt_shape[0]))

    def describe_layout(self, layout: RowLayout) -> str:
        """The ledger note: the class mapping and the reading applied."""
        if self.explicit_map:
            return self.describe(index_map=self.index_map,
                                 rows=layout.describe())
        new = [n for n, o in zip(self.new_names, self.index_map) if o < 0]
        kept = len(self.index_map) - len(new)
        return self.describe(classes=f'{kept} kept', new=new,
                             rows=layout.describe())

    def __call__(self, name, ckpt, model_shape):
        layout = self.layout(name, tuple(ckpt.shape), tuple(model_shape))
        rows = layout.sources(self.index_map)
        keep = torch.tensor([r >= 0 for r in rows], device='cpu')
        if ckpt.is_meta:
            out = torch.empty(model_shape, dtype=ckpt.dtype, device='meta')
        else:
            out = torch.zeros(model_shape, dtype=ckpt.dtype)
            src = torch.tensor([r for r in rows if r >= 0], dtype=torch.long)
            out[keep] = ckpt[src]
        new = any(o < 0 for o in self.index_map)
        return Adapted(out, keep if new else None,
                       self.describe_layout(layout))
