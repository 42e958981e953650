"""Safe checkpoint reading: nothing in a checkpoint file can execute code.

``torch.load(weights_only=True)`` (the default since torch 2.6) refuses the
checkpoints an MMEngine ``Runner`` writes, because they hold numpy scalars,
``HistoryBuffer`` and ``ConfigDict`` objects next to the weights. Turning
``weights_only`` off runs arbitrary code from the file. This module reads with
torch's own loader and a *restricted* unpickler instead:

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
import collections
import copyreg
import datetime
import os
import pickle
import struct
import types
import zipfile
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch.utils.weak import WeakIdKeyDictionary

from ..errors import CheckpointError
from .zip_checks import is_torch_zip, verify_torch_zip

__all__ = [
    'UnreconstructedObject', 'read_checkpoint', 'extract_state_dict',
    'load_from_safe_local', 'CheckpointMemoryError'
]


class CheckpointMemoryError(CheckpointError, MemoryError):
    """Out of memory while reading a checkpoint: still a ``MemoryError``
    (never swallowed as a corrupt file), with a message naming the file."""


class UnreconstructedObject:
    """Inert stand-in for a pickled global that was not allowed to run.

    Example:
        >>> obj = unreconstructed_class('posix', 'system')('echo hi')
        >>> obj.qualname, obj.args
        ('posix.system', ('echo hi',))
    """
    qualname = '?'

    def __new__(cls, *args: Any, **kwargs: Any) -> 'UnreconstructedObject':
        self = object.__new__(cls)
        self.args = args
        self.state: Any = None
        self.items: List[Any] = []
        return self

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __call__(self, *args: Any, **kwargs: Any) -> 'UnreconstructedObject':
        return type(self)(*args)  # calling a stand-in yields a stand-in

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items.append((key, value))

    def append(self, value: Any) -> None:
        self.items.append(value)

    def extend(self, values: Any) -> None:
        self.items.extend(values)

    def __repr__(self) -> str:
        return f'<unreconstructed {self.qualname}>'


_STUB_CLASSES: Dict[str, type] = {}


def unreconstructed_class(module: str, name: str) -> type:
    """The (cached) inert class standing for global ``module.name``."""
    qualname = f'{module}.{name}'
    if qualname not in _STUB_CLASSES:
        _STUB_CLASSES[qualname] = type(f'Unreconstructed[{qualname}]',
                                       (UnreconstructedObject, ),
                                       {'qualname': qualname})
    return _STUB_CLASSES[qualname]


def _data_only_globals() -> Dict[str, Any]:
    """Globals rebuilt for real: pure data, no side effects when built."""
    from torch._weights_only_unpickler import _get_allowed_globals
    allowed = dict(_get_allowed_globals())
    allowed.update({
        'builtins.frozenset': frozenset,
        'builtins.slice': slice,
        'collections.defaultdict': collections.defaultdict,
        'collections.deque': collections.deque,
        'copyreg._reconstructor': copyreg._reconstructor,
        'datetime.datetime': datetime.datetime,
        'datetime.date': datetime.date,
        'datetime.timedelta': datetime.timedelta,
    })
    try:
        import numpy as np
        for mod in ('numpy.core.multiarray', 'numpy._core.multiarray'):
            allowed[f'{mod}._reconstruct'] = _numpy_attr('_reconstruct')
            allowed[f'{mod}.scalar'] = _numpy_attr('scalar')
        allowed['numpy.ndarray'] = np.ndarray
        allowed['numpy.dtype'] = np.dtype
        for name in dir(np.dtypes):
            if name.endswith('DType'):
                allowed[f'numpy.dtypes.{name}'] = getattr(np.dtypes, name)
    except ImportError:  # numpy is optional for torch
        pass
    try:
        from mmengine.config.config import ConfigDict
        from mmengine.logging.history_buffer import HistoryBuffer
        allowed['mmengine.logging.history_buffer.HistoryBuffer'] = HistoryBuffer
        allowed['mmengine.config.config.ConfigDict'] = ConfigDict
    except ImportError:
        pass
    allowed = {k: v for k, v in allowed.items() if v is not None}
    # only HistoryBuffer needs it; never numpy/torch (ndarray.tofile writes files)
    getattr_owners = tuple(
        v for k, v in allowed.items() if k.endswith('.HistoryBuffer'))

    def safe_getattr(obj: Any, name: str) -> Any:
        """``getattr`` for public attributes of HistoryBuffer only (it
        pickles its statistics methods this way)."""
        if (isinstance(obj, type) and obj in getattr_owners
                and isinstance(name, str) and not name.startswith('_')):
            return getattr(obj, name)
        return unreconstructed_class('builtins', 'getattr')(obj, name)

    allowed['builtins.getattr'] = allowed['__builtin__.getattr'] = \
        safe_getattr
    return allowed


def _numpy_attr(name: str) -> Any:
    import numpy as np
    core = getattr(np, '_core', None) or np.core
    return getattr(core.multiarray, name)


def _restricted_pickle_module(
        seen: List[str]) -> Tuple[types.ModuleType, Dict[str, Any]]:
    """A ``pickle``-like module whose Unpickler only builds data-only globals."""
    allowed = _data_only_globals()

    class RestrictedUnpickler(pickle.Unpickler):

        def find_class(self, module: str, name: str) -> Any:
            full = f'{module}.{name}'
            if full in allowed:
                return allowed[full]
            seen.append(full)
            return unreconstructed_class(module, name)

    mod = types.ModuleType('mmext_init_restricted_pickle')
    mod.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]
    mod.load = lambda f, **kw: RestrictedUnpickler(f, **kw).load(
    )  # type: ignore[attr-defined]
    return mod, allowed


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

    Returns the unpickled object and the sorted names of the globals that were
    replaced by :class:`UnreconstructedObject` (empty when ``trust``). A
    damaged file is a :class:`CheckpointError` naming it (zip files are
    checked first, see :mod:`mmext_init.zip_checks`).

    Example:
        >>> ckpt, skipped = read_checkpoint('epoch_12.pth')
        >>> skipped  # a Runner checkpoint loads with nothing skipped
        []
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f'{label}: checkpoint file not found: {path}')
    seen: List[str] = []
    try:
        if is_torch_zip(path):
            verify_torch_zip(path, label)
        mmap = _is_local_cpu_zip(path, map_location)
        module = pickle if trust else _restricted_pickle_module(seen)[0]
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
        >>> ckpt = load_from_safe_local('det.pth')
        >>> file_key(ckpt['state_dict']['backbone.conv1.weight'])
        'backbone.conv1.weight'
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
                       label: str = 'checkpoint',
                       use_ema: bool = False) -> Dict[str, torch.Tensor]:
    """The tensor state dict inside a checkpoint object.

    Unwraps ``state_dict`` / ``model`` / ``model_state_dict`` and a leading
    ``module.`` on every key (DataParallel/DDP). Raises :class:`CheckpointError`
    for an empty state dict or a value that is not a tensor.

    Example:
        >>> extract_state_dict({'state_dict': {'module.fc.weight': w}}, 'x.pth')
        {'fc.weight': w}
    """
    sd = _unwrap(ckpt)
    if isinstance(sd, UnreconstructedObject):
        raise CheckpointError(
            f'{label}: {path} holds a {sd.qualname} object instead of a state '
            'dict; it was not reconstructed because unpickling it could run '
            'code. If you trust this file, set trust_checkpoint=True.')
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
    torch >= 2.6 without running code from them.

    Example:
        >>> ckpt = load_from_safe_local('work_dirs/x/epoch_1.pth')
        >>> ckpt['meta']['epoch']
        1
    """
    path = os.path.expanduser(filename)
    obj, skipped = read_checkpoint(path, map_location)
    _stamp_file_keys(obj)  # the ledger names a backbone's own loads by them
    if skipped:
        from mmengine.logging import print_log
        print_log(
            f'mmext_init: read {path} without running code from it; objects '
            f'of these types were not reconstructed: {", ".join(skipped)}. '
            'Tensors are unaffected.',
            logger='current',
            level=30)
    return obj
