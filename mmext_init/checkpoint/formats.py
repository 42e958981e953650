"""Open any common checkpoint format as lazily readable tensors.

* ``.pth/.pt/.bin/.ckpt``: the safe reader (memory-mapped zip files);
* ``.safetensors``: ``safetensors.safe_open`` (memory-mapped; shapes and
  dtypes come from the header, data is read per tensor);
* sharded checkpoints given by their index (``*.index.json`` with a
  ``weight_map``): keys come from the index; a shard is opened only when a
  shape, dtype or tensor of a key it holds is asked for.

Only the tensors a module copies are materialized; key matching needs
shapes only. Dtypes are reported, never changed.

Example (a checkpoint in two shards):
    >>> import os, tempfile
    >>> from safetensors.torch import save_file
    >>> folder = tempfile.mkdtemp()
    >>> save_file({'a.weight': torch.ones(2, 3)}, f'{folder}/1.safetensors')
    >>> save_file({'b.bias': torch.zeros(2)}, f'{folder}/2.safetensors')
    >>> index = os.path.join(folder, 'model.safetensors.index.json')
    >>> with open(index, 'w') as f:
    ...     json.dump({'weight_map': {'a.weight': '1.safetensors',
    ...                               'b.bias': '2.safetensors'}}, f)
    >>> tensors = open_checkpoint(index)   # reads the index only
    >>> tensors.keys(), tensors.shape('a.weight')   # opens 1.safetensors
    (['a.weight', 'b.bias'], (2, 3))
    >>> tensors.get('b.bias'), os.path.basename(tensors.file_of('b.bias'))
    (tensor([0., 0.]), '2.safetensors')
"""
import contextlib
import json
import os
from typing import (Any, Callable, Dict, Iterator, List, Mapping, Optional,
                    Tuple, Union)

import torch

from ..errors import CheckpointError, CheckpointNotFoundError
from .page_release import MappedFile, file_mappings
from .remote import LocalCheckpoint, backbone_part, resolve_checkpoint
from .safe_load import extract_state_dict, read_checkpoint

Shape = Tuple[int, ...]
_SAFETENSORS_DTYPES = {
    'F64': torch.float64, 'F32': torch.float32, 'F16': torch.float16,
    'BF16': torch.bfloat16, 'I64': torch.int64, 'I32': torch.int32,
    'I16': torch.int16, 'I8': torch.int8, 'U8': torch.uint8,
    'BOOL': torch.bool, 'F8_E4M3': getattr(torch, 'float8_e4m3fn', None),
    'F8_E5M2': getattr(torch, 'float8_e5m2', None),
    'U16': getattr(torch, 'uint16', None), 'U32': getattr(torch, 'uint32',
                                                          None),
    'U64': getattr(torch, 'uint64', None)
}


class CheckpointTensors:
    """Names, shapes, dtypes and on-demand tensors of one checkpoint.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), 'r18.pth')
        >>> torch.save({'conv1.weight': torch.ones(8, 3, 7, 7).half()}, path)
        >>> t = open_checkpoint(path)
        >>> t.keys(), t.shape('conv1.weight'), t.dtype('conv1.weight')
        (['conv1.weight'], (8, 3, 7, 7), torch.float16)
    """

    def __init__(self,
                 path: str,
                 shapes: Mapping[str, Shape],
                 getter: Callable[[str], torch.Tensor],
                 origins: Optional[Dict[str, str]] = None,
                 dtypes: Union[None, Mapping[str, torch.dtype],
                               Callable[[str], torch.dtype]] = None,
                 release: Optional[Callable[[str, torch.Tensor],
                                            Any]] = None,
                 file_of: Optional[Callable[[str], str]] = None) -> None:
        self.path = path  # as the config names it (a URL stays a URL)
        self.local_path = path  # the file read (a URL's cache file)
        self.keep: Any = None  # a copied remote file's folder, kept alive
        self._shapes = shapes
        self._get = getter
        self._origins = origins or {}
        self._dtypes = dtypes
        self._release = release
        self._file_of = file_of
        self.meta: Dict[str, Any] = {}  # a torch file's ``meta`` dict

    def file_of(self, key: str) -> str:
        """The file holding ``key``: the shard for a sharded checkpoint,
        else :attr:`path`."""
        return self._file_of(key) if self._file_of else self.path

    def origin(self, key: str) -> str:
        """The key as written in the file (before a converter renamed it)."""
        return self._origins.get(key, key)

    def keys(self) -> List[str]:
        return list(self._shapes)

    def shapes(self) -> Mapping[str, Shape]:
        """``{key: shape}`` (a lazy mapping for sharded checkpoints)."""
        return self._shapes if isinstance(self._shapes, _LazyShapes) \
            else dict(self._shapes)

    def shape(self, key: str) -> Shape:
        return self._shapes[key]

    def dtype(self, key: str) -> torch.dtype:
        """The stored dtype of ``key`` (read from the header when possible)."""
        if callable(self._dtypes):
            return self._dtypes(key)
        if self._dtypes is not None:
            return self._dtypes[key]
        return self.get(key).dtype

    def get(self, key: str) -> torch.Tensor:
        """Materialize one tensor (CPU)."""
        return self._get(key)

    def release(self, key: str, tensor: torch.Tensor) -> None:
        """``tensor`` (from :meth:`get`) was copied: give its memory-mapped
        pages back (see :mod:`mmext_init.page_release`)."""
        if self._release is not None:
            self._release(key, tensor)

    def __len__(self) -> int:
        return len(self._shapes)


def _releaser(path: str) -> Optional[Callable[[str, torch.Tensor], Any]]:
    """Page releaser of a just opened file; None if it was read into memory
    (legacy ``.pth``, another ``map_location``): then nothing is mapped, and
    looking for mappings at every copy would only cost time."""
    if not file_mappings(path):
        return None
    pages = MappedFile(path)
    return lambda key, tensor: pages.release(tensor)


class _LazyShapes(Mapping):
    """Shapes of a sharded checkpoint; a shard is opened on first access."""

    def __init__(self, keys: List[str], shape_of: Callable[[str],
                                                           Shape]) -> None:
        self._keys, self._shape_of = keys, shape_of
        self._known = set(keys)

    def __getitem__(self, key: str) -> Shape:
        if key not in self._known:
            raise KeyError(key)
        return self._shape_of(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


def _ema_weights(ckpt: Any, path: str, label: str) -> Dict[str, torch.Tensor]:
    """EMA weights of an MMEngine checkpoint, or an error when it has none.

    ``EMAHook.before_save_checkpoint`` swaps the averaged weights into
    ``state_dict`` (the raw weights go to ``ema_state_dict``, with
    ``module.``-prefixed keys and a ``steps`` counter), so ``state_dict``
    holds the EMA; mmdet 2.x-style ``ExpMomentumEMAHook`` keeps them as
    ``ema_<name_with_underscores>`` buffers in the state dict.
    """
    if isinstance(ckpt, dict) and isinstance(ckpt.get('ema_state_dict'),
                                             dict):
        return extract_state_dict(ckpt, path, label)
    state = extract_state_dict(ckpt, path, label)
    ema = {k: v for k, v in state.items() if k.startswith('ema_')}
    if ema:
        plain = [k for k in state if not k.startswith('ema_')]
        out = {}
        for key in plain:
            buf = 'ema_' + key.replace('.', '_')
            out[key] = ema.get(buf, state[key])
        return out
    raise CheckpointError(
        f'{label}: use_ema=True but {path} has no EMA weights (neither an '
        "'ema_state_dict' from MMEngine's EMAHook nor 'ema_' buffers)")


def _open_torch(found: LocalCheckpoint, map_location: Any, trust: bool,
                label: str, use_ema: bool) -> CheckpointTensors:
    path = found.path
    ckpt = found.loaded if found.loaded is not None else \
        read_checkpoint(path, map_location, trust, label)[0]
    state = _ema_weights(ckpt, path, label) if use_ema else \
        extract_state_dict(ckpt, path, label)
    origins = None
    if found.backbone_only:  # mmcls://: what stock keeps of the file
        state = backbone_part(state)
        origins = {k: 'backbone.' + k for k in state}
        if not state:
            raise CheckpointError(f'{label}: {found.name} ({path}) holds no '
                                  "'backbone.' keys")
    tensors = CheckpointTensors(path, {k: tuple(v.shape)
                                       for k, v in state.items()},
                                state.__getitem__,
                                origins=origins,
                                dtypes={k: v.dtype
                                        for k, v in state.items()},
                                release=_releaser(path))
    meta = ckpt.get('meta') if isinstance(ckpt, dict) else None
    tensors.meta = meta if isinstance(meta, dict) else {}
    return tensors


def _open_safetensors(path: str, label: str) -> CheckpointTensors:
    try:  # imported here: only .safetensors files need it, and a missing
        # package is then an error naming the file
        from safetensors import safe_open
    except ImportError as exc:  # pragma: no cover - declared dependency
        raise CheckpointError(
            f'{label}: reading {path} needs the safetensors package') from exc
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(
            f'{label}: checkpoint file not found: {path}')
    with _read_errors(path, label):
        handle = safe_open(path, framework='pt', device='cpu')
        slices = {k: handle.get_slice(k) for k in handle.keys()}
        shapes = {k: tuple(s.get_shape()) for k, s in slices.items()}
        dtypes = {k: _SAFETENSORS_DTYPES.get(s.get_dtype())
                  for k, s in slices.items()}
    if not shapes:
        raise CheckpointError(f'{label}: {path} holds an empty state dict')

    def get(key: str) -> torch.Tensor:
        with _read_errors(path, label):
            return handle.get_tensor(key)

    return CheckpointTensors(path, shapes, get, dtypes=dtypes,
                             release=_releaser(path))


@contextlib.contextmanager
def _read_errors(path: str, label: str) -> Iterator[None]:
    """safetensors' own error types (never ``MemoryError``) as a
    :class:`CheckpointError` naming the file."""
    try:
        yield
    except MemoryError:
        raise
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(
            f'{label}: cannot read {path}: the file is truncated or corrupt '
            f'({type(exc).__name__}: {exc})') from exc


def _read_weight_map(path: str, label: str) -> Dict[str, str]:
    """The ``weight_map`` of an index file, checked: ``{key: shard file}``,
    all strings."""
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(
            f'{label}: checkpoint file not found: {path}')
    try:
        with open(path, encoding='utf-8') as f:
            index = json.load(f)
    except (ValueError, RecursionError, OSError) as exc:  # Unicode errors too
        raise CheckpointError(f'{label}: {path} is not a valid index file '
                              f'({type(exc).__name__}: {exc})') from exc
    weight_map = index.get('weight_map') if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(
            f'{label}: {path} has no weight_map (an index file is a JSON '
            'object whose "weight_map" maps each key to its shard file)')
    for key, shard in weight_map.items():
        if (not isinstance(shard, str) or not shard
                or shard.endswith('.index.json')):
            raise CheckpointError(
                f'{label}: index {path} maps {key!r} to {shard!r}, which is '
                'not a shard file name; the index is corrupt')
    return weight_map


def _open_index(path: str, map_location: Any, trust: bool,
                label: str) -> CheckpointTensors:
    weight_map = _read_weight_map(path, label)
    folder = os.path.dirname(path)
    first_key = {}
    for key, shard in weight_map.items():
        first_key.setdefault(shard, key)
    for shard, key in first_key.items():  # checked now, opened on demand
        if not os.path.isfile(os.path.join(folder, shard)):
            raise CheckpointError(
                f'{label}: index {path} points at a missing shard '
                f'{shard} (holding e.g. {key!r})')
    shards: Dict[str, CheckpointTensors] = {}

    def shard_of(key: str) -> CheckpointTensors:
        shard = weight_map[key]
        if shard not in shards:
            shards[shard] = open_checkpoint(
                os.path.join(folder, shard), map_location, trust, label)
        if key not in shards[shard]._shapes:
            raise CheckpointError(
                f'{label}: index {path} maps {key!r} to shard {shard}, '
                'which does not hold it')
        return shards[shard]

    shapes = _LazyShapes(list(weight_map), lambda k: shard_of(k).shape(k))
    return CheckpointTensors(path, shapes, lambda k: shard_of(k).get(k),
                             dtypes=lambda k: shard_of(k).dtype(k),
                             release=lambda k, t: shard_of(k).release(k, t),
                             file_of=lambda k: shard_of(k).path)


def open_checkpoint(path: str,
                    map_location: Any = 'cpu',
                    trust: bool = False,
                    label: str = 'checkpoint',
                    use_ema: bool = False) -> CheckpointTensors:
    """Open a checkpoint of any supported format (see the module docstring).

    Args:
        path (str): the file; errors (:class:`CheckpointError`) name it.
        map_location: as for :func:`torch.load`. Defaults to 'cpu'.
        trust (bool): unpickle any object. Defaults to False.
        label (str): how errors name the file. Defaults to 'checkpoint'.
        use_ema (bool): the EMA weights (``ema_`` buffers). Defaults to False.
    Example:
        >>> import tempfile; path = tempfile.mkdtemp() + '/epoch_12.pth'
        >>> torch.save({'w': torch.ones(1), 'ema_w': torch.zeros(1)}, path)
        >>> assert open_checkpoint(path, use_ema=True).get('w') == 0
    """
    name = os.fspath(path)
    found = resolve_checkpoint(name, label)
    local = found.path
    if use_ema and local.endswith(('.safetensors', '.index.json')):
        raise CheckpointError(
            f'{label}: use_ema=True but {name} is a safetensors file or a '
            'sharded index, which holds no EMA weights')
    if local.endswith('.index.json'):
        if not found.is_local:
            raise CheckpointError(
                f'{label}: {name}: a sharded checkpoint is read from a local '
                'folder only (its index names shard files beside it)')
        return _open_index(local, map_location, trust, label)
    if local.endswith('.safetensors'):
        tensors = _open_safetensors(local, label)
    else:
        tensors = _open_torch(found, map_location, trust, label, use_ema)
    tensors.path, tensors.local_path = name, local
    tensors.keep = found.keep
    return tensors
