"""Several checkpoint files read as one: a base, then deltas trained on it
(``Pretrained(checkpoint=[base, delta, ...])``).

Keys of a later file replace those of the files below it; :meth:`file_of`
and :meth:`StackedTensors.part_of` name the file that provides a key. Each
delta (a file whose ``meta`` says ``mmext_delta``, written by
``DeltaCheckpointHook``) is checked against the stack below it before
anything loads: the :func:`~.fingerprint.tensors_hash` of the tensors
below that the delta leaves out must be the ``meta.base.hash`` it recorded.
A delta first (or alone) is an error: it needs its base.

Example:
    >>> import os, tempfile, torch
    >>> folder = tempfile.mkdtemp()
    >>> base, head = f'{folder}/base.pth', f'{folder}/head.pth'
    >>> torch.save({'state_dict': {'a': torch.zeros(2), 'b': torch.zeros(1)}},
    ...            base)
    >>> torch.save({'state_dict': {'b': torch.ones(1)}}, head)
    >>> stack = open_stack([base, head])
    >>> stack.keys(), stack.get('b'), os.path.basename(stack.file_of('b'))
    (['a', 'b'], tensor([1.]), 'head.pth')
"""
from typing import Any, Dict, Iterator, List, Mapping, Sequence

from ..errors import CheckpointError
from .fingerprint import (base_files, delta_alone_error, delta_meta,
                          tensors_hash)
from .formats import CheckpointTensors, Shape, open_checkpoint


def stack_label(paths: Sequence[str]) -> str:
    """How a stack of files is named in labels, records and reports.

    Example:
        >>> stack_label(['r50.pth', 'delta_iter_8.pth'])
        'r50.pth + delta_iter_8.pth'
    """
    return ' + '.join(paths)


class _StackShapes(Mapping):
    """Shapes of a stack, read from the file providing each key (a sharded
    part opens a shard only when asked)."""

    def __init__(self, owner: Dict[str, CheckpointTensors]) -> None:
        self._owner = owner

    def __getitem__(self, key: str) -> Shape:
        return self._owner[key].shape(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._owner)

    def __len__(self) -> int:
        return len(self._owner)


def key_owners(parts: List[CheckpointTensors]) -> Dict[str, CheckpointTensors]:
    """Each key of the stack ``parts`` (bottom first) -> the part providing
    it: a later file replaces the key."""
    return {key: part for part in parts for key in part.keys()}


class StackedTensors(CheckpointTensors):
    """Checkpoint files stacked bottom first; later files win per key.

    ``path`` is :func:`stack_label` of the files; ``parts`` the opened
    files, ``owner`` maps each key to the part that provides it.
    """

    def __init__(self, parts: List[CheckpointTensors]) -> None:
        owner = key_owners(parts)
        super().__init__(
            stack_label([p.path for p in parts]), _StackShapes(owner),
            lambda k: owner[k].get(k),
            dtypes=lambda k: owner[k].dtype(k),
            release=lambda k, t: owner[k].release(k, t),
            file_of=lambda k: owner[k].file_of(k))
        self.parts, self.owner = parts, owner

    def part_of(self, key: str) -> str:
        """The file (as given in the list) that provides ``key``; for a
        sharded part its index, where :meth:`file_of` names the shard."""
        return self.owner[key].path

    def origin(self, key: str) -> str:
        return self.owner[key].origin(key)

    def shapes(self) -> Mapping[str, Shape]:
        return self._shapes


def check_base(below: List[CheckpointTensors], delta: CheckpointTensors,
               meta: Dict[str, Any], label: str) -> None:
    """``delta`` was trained on the stack ``below``: the hash of the
    tensors below that it leaves out equals its ``meta.base.hash`` (the
    tensors ``meta.base.inserted`` names, another insert set's, left out:
    a per-set delta's fingerprint covers the model's own tensors only)."""
    base = meta.get('base') if isinstance(meta.get('base'), dict) else {}
    recorded = base.get('hash')
    below_name = stack_label([p.path for p in below])
    if not isinstance(recorded, str):
        raise CheckpointError(
            f'{label}: delta checkpoint {delta.path} records no base hash '
            "(meta['base']['hash']); it cannot be checked against "
            f'{below_name}')
    owner = key_owners(below)
    own = set(delta.keys()) | set(base.get('inserted') or ())
    left_out = [key for key in owner if key not in own]
    digest = tensors_hash(left_out, lambda k: owner[k].get(k),
                          lambda k, t: owner[k].release(k, t))
    if digest == recorded:
        return
    count = base.get('tensors')
    counts = (f'; it left out {count} tensors, {below_name} has '
              f'{len(left_out)} it does not hold'
              if isinstance(count, int) and count != len(left_out) else '')
    recorded_files = ', '.join(base_files(meta)) or 'none recorded'
    raise CheckpointError(
        f'{label}: delta checkpoint {delta.path} was trained from another '
        f'base than {below_name}: the tensors it leaves out differ from the '
        f'ones it was trained with (base hash {digest[:12]}, recorded '
        f'{recorded[:12]}{counts}; base files recorded in the delta: '
        f'{recorded_files}). Stack it on the checkpoint it was trained '
        'from, with the same tensor names (a full checkpoint of the model).')


def open_stack(paths: Sequence[str],
               map_location: Any = 'cpu',
               trust: bool = False,
               label: str = 'checkpoint',
               use_ema: bool = False) -> CheckpointTensors:
    """Open ``paths`` (bottom first) as one checkpoint, each delta checked
    against the files below it; a single file is returned as opened.
    ``use_ema`` applies to the first file (the base).

    Example (a delta alone):
        >>> import os, tempfile, torch
        >>> path = os.path.join(tempfile.mkdtemp(), 'delta_iter_2.pth')
        >>> torch.save({'state_dict': {'fc.weight': torch.ones(1)},
        ...             'meta': {'mmext_delta': 1,
        ...                      'base': {'files': ['r18.pth'], 'hash': ''}}},
        ...            path)
        >>> open_stack([path], label='Pretrained')  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        mmext_init.errors.CheckpointError: Pretrained: ... is a delta checkpoint (only the tensors that trained, written by DeltaCheckpointHook) and needs its base (recorded: r18.pth): ...
    """
    parts: List[CheckpointTensors] = []
    for index, path in enumerate(paths):
        part = open_checkpoint(path, map_location, trust, label,
                               use_ema and index == 0)
        meta = delta_meta({'meta': part.meta})
        if meta is not None:
            if not parts:
                raise delta_alone_error(part.path, meta, label)
            check_base(parts, part, meta, label)
        parts.append(part)
    return parts[0] if len(parts) == 1 else StackedTensors(parts)

