"""Open any common checkpoint format as lazily readable tensors.

* ``.pth/.pt/.bin/.ckpt``: the safe reader (memory-mapped zip files);
* ``.safetensors``: ``safetensors.safe_open`` (memory-mapped; shapes come
  from the header, data is read per tensor);
* sharded checkpoints given by their index (``*.index.json`` with a
  ``weight_map``): only the shards holding requested tensors are opened.

Only the tensors a module copies are materialized; key matching needs
shapes only.

Example:
    >>> tensors = open_checkpoint('model.safetensors.index.json')
    >>> tensors.shapes()['encoder.layer.0.attn.weight']
    (768, 768)
    >>> w = tensors.get('encoder.layer.0.attn.weight')   # reads this one only
"""
import json
import os
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from .errors import CheckpointError
from .safe_load import extract_state_dict, read_checkpoint

Shape = Tuple[int, ...]


class CheckpointTensors:
    """Names, shapes and on-demand tensors of one checkpoint."""

    def __init__(self, path: str, shapes: Dict[str, Shape],
                 getter: Callable[[str], torch.Tensor],
                 origins: Optional[Dict[str, str]] = None) -> None:
        self.path = path
        self._shapes = shapes
        self._get = getter
        self._origins = origins or {}

    def origin(self, key: str) -> str:
        """The key as written in the file (before a converter renamed it)."""
        return self._origins.get(key, key)

    def keys(self) -> List[str]:
        return list(self._shapes)

    def shapes(self) -> Dict[str, Shape]:
        return dict(self._shapes)

    def shape(self, key: str) -> Shape:
        return self._shapes[key]

    def get(self, key: str) -> torch.Tensor:
        """Materialize one tensor (CPU)."""
        return self._get(key)

    def __len__(self) -> int:
        return len(self._shapes)


def _ema_weights(ckpt: Any, path: str, label: str) -> Dict[str, torch.Tensor]:
    """EMA weights of an MMEngine checkpoint, or an error when it has none.

    ``EMAHook`` saves the averaged weights in ``state_dict`` (it swaps them
    with the source weights, kept in ``ema_state_dict``); mmdet 2.x-style
    ``ExpMomentumEMAHook`` keeps them as ``ema_<name_with_underscores>``
    buffers in the state dict.
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


def _open_torch(path: str, map_location: Any, trust: bool, label: str,
                use_ema: bool) -> CheckpointTensors:
    ckpt, _ = read_checkpoint(path, map_location, trust, label)
    state = _ema_weights(ckpt, path, label) if use_ema else \
        extract_state_dict(ckpt, path, label)
    return CheckpointTensors(path, {k: tuple(v.shape)
                                    for k, v in state.items()},
                             state.__getitem__)


def _open_safetensors(path: str, label: str) -> CheckpointTensors:
    try:
        from safetensors import safe_open
    except ImportError as exc:  # pragma: no cover - declared dependency
        raise CheckpointError(
            f'{label}: reading {path} needs the safetensors package') from exc
    if not os.path.isfile(path):
        raise CheckpointError(f'{label}: checkpoint file not found: {path}')
    try:
        handle = safe_open(path, framework='pt', device='cpu')
        shapes = {k: tuple(handle.get_slice(k).get_shape())
                  for k in handle.keys()}
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(
            f'{label}: cannot read {path}: the file is truncated or corrupt '
            f'({type(exc).__name__}: {exc})') from exc
    if not shapes:
        raise CheckpointError(f'{label}: {path} holds an empty state dict')
    return CheckpointTensors(path, shapes, handle.get_tensor)


def _open_index(path: str, map_location: Any, trust: bool,
                label: str) -> CheckpointTensors:
    if not os.path.isfile(path):
        raise CheckpointError(f'{label}: checkpoint file not found: {path}')
    with open(path) as f:
        weight_map: Dict[str, str] = json.load(f).get('weight_map') or {}
    if not weight_map:
        raise CheckpointError(f'{label}: {path} has no weight_map')
    folder = os.path.dirname(path)
    shards: Dict[str, CheckpointTensors] = {}
    for key, shard in weight_map.items():
        shard_path = os.path.join(folder, shard)
        if shard not in shards:
            if not os.path.isfile(shard_path):
                raise CheckpointError(
                    f'{label}: index {path} points at a missing shard '
                    f'{shard} (holding e.g. {key!r})')
            shards[shard] = open_checkpoint(shard_path, map_location, trust,
                                            label)
    shapes = {k: shards[s].shape(k) for k, s in weight_map.items()}
    return CheckpointTensors(path, shapes,
                             lambda k: shards[weight_map[k]].get(k))


def open_checkpoint(path: str,
                    map_location: Any = 'cpu',
                    trust: bool = False,
                    label: str = 'checkpoint',
                    use_ema: bool = False) -> CheckpointTensors:
    """Open a checkpoint of any supported format (see the module docstring).

    Example:
        >>> t = open_checkpoint('epoch_12.pth', use_ema=True)
        >>> len(t)
        320
    """
    path = os.fspath(path)
    if path.endswith('.index.json'):
        return _open_index(path, map_location, trust, label)
    if path.endswith('.safetensors'):
        if use_ema:
            raise CheckpointError(
                f'{label}: use_ema=True but {path} is a safetensors file, '
                'which holds no EMA weights')
        return _open_safetensors(path, label)
    return _open_torch(path, map_location, trust, label, use_ema)
