"""The base fingerprint of a delta checkpoint (``DeltaCheckpointHook``).

A delta holds only the tensors that trained; ``meta.base.hash`` is
:func:`tensors_hash` of every model tensor it leaves out. The hook computes
it on ``{name: tensor}`` of ``model.state_dict()`` minus the delta's keys;
the loader recomputes it on ``{key: tensor}`` of the files stacked below the
delta (``state_dict`` unwrapped) minus the delta's keys. Equal hashes: the
delta was trained on that base, bit for bit.

Example:
    >>> state = {'fc.weight': torch.ones(2, 2), 'fc.bias': torch.zeros(2)}
    >>> digest = tensors_hash(['fc.weight'], state.__getitem__)
    >>> same = {'fc.weight': torch.ones(2, 2)}
    >>> flat = {'fc.weight': torch.ones(4)}  # the same bytes, another shape
    >>> digest == tensors_hash(['fc.weight'], same.get)
    True
    >>> digest == tensors_hash(['fc.weight'], flat.get)
    False
"""
import hashlib
import json
import os
from typing import Any, Callable, Dict, Iterable, Optional

import torch

from ..errors import CheckpointError

DELTA_KEY = 'mmext_delta'  # in a delta's ``meta``: the format version
DELTA_VERSION = 1


def tensor_bytes(tensor: torch.Tensor) -> Any:
    """The raw bytes of ``tensor`` (any dtype, on the CPU, contiguous) as a
    buffer ``hashlib`` reads without another copy.

    Example:
        >>> bytes(tensor_bytes(torch.tensor([1], dtype=torch.int16)))
        b'\\x01\\x00'
    """
    flat = tensor.detach().resolve_conj().resolve_neg().cpu().contiguous()
    return flat.reshape(-1).view(torch.uint8).numpy()


def tensors_hash(names: Iterable[str],
                 get: Callable[[str], torch.Tensor],
                 release: Optional[Callable[[str, torch.Tensor],
                                            Any]] = None) -> str:
    """sha256 over ``(name, dtype, shape, raw bytes)`` of each named tensor,
    in sorted name order (``get`` reads one; ``release`` is called after
    hashing it, e.g. to give memory-mapped pages back).

    Each tensor adds a length-prefixed JSON header ``[name, dtype, shape]``
    and then its bytes, so no two different sets hash alike by
    concatenation.
    """
    digest = hashlib.sha256()
    for name in sorted(names):
        tensor = get(name)
        header = json.dumps([name, str(tensor.dtype),
                             list(tensor.shape)]).encode()
        digest.update(len(header).to_bytes(8, 'little'))
        digest.update(header)
        digest.update(tensor_bytes(tensor))
        if release is not None:
            release(name, tensor)
    return digest.hexdigest()


def delta_meta(ckpt: Any) -> Optional[Dict[str, Any]]:
    """The ``meta`` of a delta checkpoint object, None for any other.

    Example:
        >>> delta_meta({'meta': {'mmext_delta': 1}, 'state_dict': {}})
        {'mmext_delta': 1}
        >>> delta_meta({'meta': {'epoch': 3}}) is None
        True
    """
    meta = ckpt.get('meta') if isinstance(ckpt, dict) else None
    if isinstance(meta, dict) and meta.get(DELTA_KEY):
        return meta
    return None


def base_files(meta: Dict[str, Any]) -> list:
    """The base file names a delta's ``meta`` records (basenames).

    Example:
        >>> base_files({'base': {'files': ['/ckpt/r18.pth'], 'hash': 'x'}})
        ['r18.pth']
    """
    base = meta.get('base') if isinstance(meta.get('base'), dict) else {}
    files = base.get('files') or []
    return [os.path.basename(str(f)) for f in files]


def delta_alone_error(path: str, meta: Dict[str, Any],
                      label: str) -> CheckpointError:
    """The error for a delta checkpoint loaded without its base.

    Example:
        >>> print(delta_alone_error('w/delta_iter_4.pth',
        ...                         {'base': {'files': ['r18.pth']}}, 'load'))
        load: w/delta_iter_4.pth is a delta checkpoint (only the tensors that trained, written by DeltaCheckpointHook) and needs its base (recorded: r18.pth): load both, base first, with init_cfg=dict(type='Pretrained', checkpoint=['<base>.pth', 'w/delta_iter_4.pth']). It cannot be loaded alone, by load_from or resume.
    """
    recorded = ', '.join(base_files(meta)) or 'no file recorded'
    return CheckpointError(
        f'{label}: {path} is a delta checkpoint (only the tensors that '
        'trained, written by DeltaCheckpointHook) and needs its base '
        f'(recorded: {recorded}): load both, base first, with '
        "init_cfg=dict(type='Pretrained', checkpoint=['<base>.pth', "
        f"'{path}']). It cannot be loaded alone, by load_from or resume.")
