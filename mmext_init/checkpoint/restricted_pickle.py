"""The restricted unpickler of :mod:`.safe_load`: only data is rebuilt.

torch's tensor rebuild functions, numpy arrays/scalars and a few plain data
classes (``HistoryBuffer``, ``ConfigDict``, ``datetime``) are rebuilt; every
other global (``os.system``, a crafted ``__reduce__``, an unknown class)
becomes an inert :class:`UnreconstructedObject` that records its name and
arguments and never runs anything.

Example:
    >>> import io, pickle, fractions
    >>> seen = []
    >>> unpickler = restricted_pickle_module(seen).Unpickler(
    ...     io.BytesIO(pickle.dumps([1.5, fractions.Fraction(1, 3)])))
    >>> unpickler.load(), seen
    ([1.5, <unreconstructed fractions.Fraction>], ['fractions.Fraction'])
"""
import collections
import copyreg
import datetime
import pickle
import types
from typing import Any, Dict, List

from mmengine.config.config import ConfigDict
from mmengine.logging.history_buffer import HistoryBuffer
from torch._weights_only_unpickler import _get_allowed_globals

try:  # numpy is optional for torch
    import numpy as np
except ImportError:  # pragma: no cover - installed with mmengine
    np = None

__all__ = ['UnreconstructedObject', 'unreconstructed_class',
           'restricted_pickle_module']


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


def _numpy_globals() -> Dict[str, Any]:
    """numpy's array and scalar rebuild functions and dtypes (none without
    numpy)."""
    if np is None:
        return {}
    core = getattr(np, '_core', None) or np.core
    allowed: Dict[str, Any] = {}
    for mod in ('numpy.core.multiarray', 'numpy._core.multiarray'):
        allowed[f'{mod}._reconstruct'] = core.multiarray._reconstruct
        allowed[f'{mod}.scalar'] = core.multiarray.scalar
    allowed['numpy.ndarray'] = np.ndarray
    allowed['numpy.dtype'] = np.dtype
    for name in dir(np.dtypes):
        if name.endswith('DType'):
            allowed[f'numpy.dtypes.{name}'] = getattr(np.dtypes, name)
    return allowed


def _data_only_globals() -> Dict[str, Any]:
    """Globals rebuilt for real: pure data, no side effects when built."""
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
    allowed.update(_numpy_globals())
    allowed['mmengine.logging.history_buffer.HistoryBuffer'] = HistoryBuffer
    allowed['mmengine.config.config.ConfigDict'] = ConfigDict
    allowed = {k: v for k, v in allowed.items() if v is not None}

    def safe_getattr(obj: Any, name: str) -> Any:
        """``getattr`` for public attributes of HistoryBuffer only (it
        pickles its statistics methods this way; never numpy/torch:
        ``ndarray.tofile`` writes files)."""
        if (obj is HistoryBuffer and isinstance(name, str)
                and not name.startswith('_')):
            return getattr(obj, name)
        return unreconstructed_class('builtins', 'getattr')(obj, name)

    allowed['builtins.getattr'] = allowed['__builtin__.getattr'] = \
        safe_getattr
    return allowed


def restricted_pickle_module(seen: List[str]) -> types.ModuleType:
    """A ``pickle``-like module (for ``torch.load(pickle_module=...)``) whose
    Unpickler only builds data-only globals; it appends the name of every
    other global it meets to ``seen``."""
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
    return mod
