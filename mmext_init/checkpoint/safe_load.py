"""Safe checkpoint reading: nothing in a checkpoint file can execute code.

``torch.load(weights_only=True)`` (the default since torch 2.6) refuses the
checkpoints an MMEngine ``Runner`` writes, because they hold numpy scalars,
``HistoryBuffer`` and ``ConfigDict`` objects next to the weights. Turning
``weights_only`` off runs arbitrary code from the file. This module reads with
torch's own loader and a *restricted* unpickler
(:mod:`.restricted_pickle`) instead:

* torch's tensor rebuild functions, numpy arrays/scalars and a few plain data
  classes (``HistoryBuffer``, ``ConfigDict``, ``datetime``) are rebuilt;
* every other global (``os.system``, a crafted ``__reduce__``, an unknown
  class) becomes an inert :class:`UnreconstructedObject` that records its
  name and arguments and never runs anything.

Tensors are therefore always extracted; a state-dict value that was not a
tensor is an error that explains ``trust_checkpoint=True``.
Zip checkpoints on local disk are memory-mapped, so only the bytes of the
tensors a module actually copies are read.
"""
import os
import pickle
import struct
import zipfile
from typing import Any, Dict, List, Optional, Tuple

import torch
from mmengine.logging import print_log
from torch.utils.weak import WeakIdKeyDictionary

from ..errors import CheckpointError, CheckpointNotFoundError
from .fingerprint import delta_alone_error, delta_meta
from .remote import backbone_part, resolve_checkpoint
from .restricted_pickle import (UnreconstructedObject,
                                restricted_pickle_module,
                                unreconstructed_class)
from .zip_checks import is_torch_zip, verify_torch_zip

__all__ = [
    'UnreconstructedObject', 'unreconstructed_class', 'read_checkpoint',
    'extract_state_dict', 'load_from_safe_local', 'load_from_safe_scheme',
    'CheckpointMemoryError'
]


class CheckpointMemoryError(CheckpointError, MemoryError):
    """Out of memory while reading a checkpoint: still a ``MemoryError``
    (never swallowed as a corrupt file), with a message naming the file."""


def _is_local_cpu_zip(path: str, map_location: Any) -> bool:
    cpu = map_location in (None, 'cpu') or (isinstance(
        map_location, torch.device) and map_location.type == 'cpu')
    return cpu and zipfile.is_zipfile(path)


# What torch's readers raise on a damaged file: its own checks (RuntimeError,
# AssertionError in the legacy reader), the unpickler's (UnpicklingError,
# EOFError, struct.error), and whatever a damaged pickle makes the rebuild
# functions raise (LookupError: an unknown codec name, KeyError, IndexError;
# TypeError, ValueError, ArithmeticError; ImportError: a damaged global name
# with trust_checkpoint). Never MemoryError or KeyboardInterrupt.
READ_ERRORS = (RuntimeError, AssertionError, EOFError, pickle.UnpicklingError,
               zipfile.BadZipFile, struct.error, ValueError, LookupError,
               OSError, TypeError, AttributeError, ArithmeticError,
               ImportError)


def read_checkpoint(path: str,
                    map_location: Any = 'cpu',
                    trust: bool = False,
                    label: str = 'checkpoint') -> Tuple[Any, List[str]]:
    """Read a torch checkpoint file without executing code from it.

    Args:
        path (str): the file; missing or damaged: a :class:`CheckpointError`.
        map_location: as for :func:`torch.load`. Defaults to 'cpu'.
        trust (bool): unpickle any object (plain pickle). Defaults to False.
        label (str): how errors name the file. Defaults to 'checkpoint'.

    Returns:
        tuple: the object, and the sorted names of the globals not rebuilt.

    Example:
        >>> import fractions, tempfile; path = tempfile.mkdtemp() + '/e.pth'
        >>> torch.save({'w': torch.ones(1), 'f': fractions.Fraction(1)}, path)
        >>> assert read_checkpoint(path)[1] == ['fractions.Fraction']
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(
            f'{label}: checkpoint file not found: {path}')
    seen: List[str] = []
    try:
        if is_torch_zip(path):
            verify_torch_zip(path, label)
        mmap = _is_local_cpu_zip(path, map_location)
        module = pickle if trust else restricted_pickle_module(seen)
        obj = torch.load(
            path,
            map_location=map_location,
            weights_only=False,
            pickle_module=module,
            mmap=mmap)
    except CheckpointError:
        raise
    except MemoryError as exc:  # e.g. a damaged length field in a pickle
        raise CheckpointMemoryError(
            f'{label}: out of memory reading checkpoint {path}: a damaged '
            'size field in the file, or a checkpoint larger than the free '
            'memory') from exc
    except READ_ERRORS as exc:
        hint = '' if trust else (' or holds objects that cannot be rebuilt '
                                 'without running code (trust_checkpoint=True)')
        raise CheckpointError(
            f'{label}: cannot read checkpoint {path}: the file is truncated or '
            f'corrupt{hint} ({type(exc).__name__}: {exc})') from exc
    return obj, sorted(set(seen))


_WRAPPER_KEYS = ('state_dict', 'model', 'module', 'model_state_dict')
_FILE_KEYS = WeakIdKeyDictionary()  # tensor read -> its key in the file


def refuse_object_state(sd: Any, path: str, label: str) -> None:
    """Raise if the state dict ``sd`` read from ``path`` is an object left
    unreconstructed (unpickling it could run code).

    Example:
        >>> evil = unreconstructed_class('posix', 'system')('touch x')
        >>> refuse_object_state(evil, 'x.pth', 'load_checkpoint')
        Traceback (most recent call last):
        ...
        mmext_init.errors.CheckpointError: load_checkpoint: x.pth holds a posix.system object instead of a state dict; it was not reconstructed because unpickling it could run code. If you trust this file, set trust_checkpoint=True.
    """
    if isinstance(sd, UnreconstructedObject):
        raise CheckpointError(
            f'{label}: {path} holds a {sd.qualname} object instead of a state '
            'dict; it was not reconstructed because unpickling it could run '
            'code. If you trust this file, set trust_checkpoint=True.')


def _unwrap(ckpt: Any) -> Any:
    """The object under ``state_dict`` / ``model`` / ... (two levels)."""
    sd = ckpt
    for _ in range(2):  # e.g. {'model': {'state_dict': ...}} is seen in the wild
        if isinstance(sd, dict):
            for key in _WRAPPER_KEYS:
                if isinstance(sd.get(key), dict):
                    sd = sd[key]
                    break
    return sd


def file_key(tensor: Any) -> Optional[str]:
    """The key ``tensor`` had in the checkpoint file it was read from by
    :func:`load_from_safe_local` (None if it was made since, e.g. resized).

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), 'det.pth')
        >>> torch.save({'state_dict': {'conv1.weight': torch.ones(1)}}, path)
        >>> w = load_from_safe_local(path)['state_dict']['conv1.weight']
        >>> file_key(w), file_key(w * 2)
        ('conv1.weight', None)
    """
    return _FILE_KEYS.get(tensor) if isinstance(tensor, torch.Tensor) else None


def _stamp_file_keys(ckpt: Any) -> None:
    sd = _unwrap(ckpt)
    if isinstance(sd, dict):
        for key, value in sd.items():
            if isinstance(value, torch.Tensor) and isinstance(key, str):
                _FILE_KEYS[value] = key


def extract_state_dict(ckpt: Any,
                       path: str,
                       label: str = 'checkpoint') -> Dict[str, torch.Tensor]:
    """The tensor state dict inside a checkpoint object.

    Args:
        ckpt: the checkpoint (``state_dict``/``model``/... entries unwrapped,
            a DDP ``module.`` prefix on every key removed, non-tensors left).
        path (str): the file, named in errors.
        label (str): how errors name the file. Defaults to 'checkpoint'.

    Raises:
        CheckpointError: for no or an empty state dict, or an object entry.

    Example:
        >>> extract_state_dict({'model': {'module.w': torch.ones(1)}}, 'x.pth')
        {'w': tensor([1.])}
    """
    sd = _unwrap(ckpt)
    refuse_object_state(sd, path, label)
    if not isinstance(sd, dict):
        raise CheckpointError(
            f'{label}: {path} holds no state dict (found {type(sd).__name__})')
    tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    bad = {
        k: v
        for k, v in sd.items() if isinstance(v, UnreconstructedObject)
    }
    if bad:
        key, obj = next(iter(bad.items()))
        raise CheckpointError(
            f'{label}: {path}: state-dict entry {key!r} is a {obj.qualname} '
            'object that was not reconstructed because unpickling it could run '
            'code. If you trust this file, set trust_checkpoint=True.')
    if not tensors:
        raise CheckpointError(f'{label}: {path} holds an empty state dict')
    odd = [k for k in tensors if not isinstance(k, str)]
    if odd:
        raise CheckpointError(
            f'{label}: {path}: state-dict key {odd[0]!r} is not a string; '
            'the file is corrupt')
    if all(k.startswith('module.') for k in tensors):
        tensors = {k[len('module.'):]: v for k, v in tensors.items()}
    return tensors


def load_from_safe_local(filename: str, map_location: Any = None) -> Any:
    """Safe replacement of MMEngine's local ``CheckpointLoader`` scheme.

    Used by ``load_checkpoint``, ``Runner.load_checkpoint`` (``load_from``,
    ``resume``), ``init_detector`` and backbones that load checkpoints in
    their own ``init_weights``; it makes Runner checkpoints loadable under
    torch >= 2.6 without running code from them. A delta checkpoint
    (``DeltaCheckpointHook``) is an error: alone it is no model.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), 'epoch_1.pth')
        >>> torch.save({'meta': {'epoch': 1}, 'state_dict': {}}, path)
        >>> load_from_safe_local(path)['meta']['epoch']
        1
    """
    path = os.path.expanduser(filename)
    obj, skipped = read_checkpoint(path, map_location)
    refuse_object_state(obj, path, 'load_checkpoint')  # the whole file
    for key in _WRAPPER_KEYS if isinstance(obj, dict) else ():
        refuse_object_state(obj.get(key), path, 'load_checkpoint')
    meta = delta_meta(obj)
    if meta is not None:  # only what trained: useless without its base
        raise delta_alone_error(path, meta, 'load_checkpoint')
    _stamp_file_keys(obj)  # the ledger names a backbone's own loads by them
    if skipped:
        print_log(
            f'mmext_init: read {path} without running code from it; objects '
            f'of these types were not reconstructed: {", ".join(skipped)}. '
            'Tensors are unaffected.',
            logger='current',
            level=30)
    return obj


def load_from_safe_scheme(filename: str, map_location: Any = None) -> Any:
    """Safe replacement of MMEngine's ``CheckpointLoader`` schemes other
    than local files (``http(s)://``, ``open-mmlab://``, ``torchvision://``,
    ``mmcls://``, ``pavi://``, ``s3://``): the same name mapping, cache and
    download as stock (:mod:`.remote`), then the file read as
    :func:`load_from_safe_local` reads it. ``mmcls://`` keeps the
    ``backbone.`` keys, prefix stripped, as stock does.

    Example (a URL whose file is in torch hub's cache):
        >>> import os, tempfile
        >>> from mmext_init.checkpoint.remote import hub_cache_path
        >>> os.environ['TORCH_HOME'] = tempfile.mkdtemp()
        >>> url = 'https://download.openmmlab.com/x/det.pth'
        >>> os.makedirs(os.path.dirname(hub_cache_path(url)))
        >>> torch.save({'meta': {'epoch': 3}, 'state_dict': {}},
        ...            hub_cache_path(url))
        >>> load_from_safe_scheme(url)['meta']['epoch']
        3
    """
    found = resolve_checkpoint(filename, 'load_checkpoint')
    if found.loaded is not None:
        return found.loaded
    ckpt = load_from_safe_local(found.path, map_location)
    if found.backbone_only:
        sd = ckpt.get('state_dict', ckpt) if isinstance(ckpt, dict) else ckpt
        return dict(state_dict=backbone_part(sd))
    return ckpt
