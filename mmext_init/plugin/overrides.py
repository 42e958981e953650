"""Make ``init_weights`` overrides start a tracked session when called first.

A class such as mmdet's ``SwinTransformer`` overrides ``init_weights`` and
never calls ``BaseModule.init_weights``; when such a module is the one the
user (or the Runner) calls, nothing of mmext_init would run. Each override
is therefore wrapped once: called outside a session it starts one (the
override then runs as a tracked source and the BaseModules it left alone are
initialized afterwards); called inside a session it simply runs (a
``KeyError`` on a checkpoint key it failed to map is made a clear error, see
:func:`run_own_loader`). A call from the module's own
constructor stays a plain call (it is part of the constructor default), as
does any call inside :func:`mmext_init.stock_mmengine`.

Classes defined after import are wrapped through ``__init_subclass__``.

Example:
    >>> import mmext_init, torch.nn as nn
    >>> from mmengine.model import BaseModule
    >>> class Own(BaseModule):   # wrapped when defined
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.fc = nn.Linear(2, 2)
    ...     def init_weights(self):
    ...         nn.init.zeros_(self.fc.weight)
    >>> own = Own()
    >>> own.init_weights()       # a session: tracked, reported
    >>> entry = mmext_init.get_provenance(own).entries['fc.weight']
    >>> entry.kind, entry.source
    ('init_weights', 'Own')
"""
import functools
import sys
from typing import Callable, Iterator

from mmengine.model import BaseModule

from ..context import current_session, stock_mode
from ..session.init_session import run_init_weights
from ..session.code_loads import override_owner
from ..session.self_loading import SelfLoad, key_error

_MARK = '_mmext_wrapped_override'


def under_construction(module: object, depth: int = 64) -> bool:
    """Whether ``module.__init__`` is on the call stack (mmcv's
    ``MultiScaleDeformableAttention`` calls ``self.init_weights()`` there)."""
    frame = sys._getframe(1)
    while frame is not None and depth > 0:
        if (frame.f_code.co_name == '__init__'
                and frame.f_locals.get('self') is module):
            return True
        frame, depth = frame.f_back, depth - 1
    return False


def run_own_loader(fn: Callable, module: BaseModule) -> None:
    """Run an override inside a session. A ``KeyError`` it raises on a
    checkpoint key behind a prefix it does not strip (mmseg ``BEiT``, mmdet
    Swin with ``convert_weights=True`` on a whole-detector checkpoint)
    becomes an error naming the entry and the file, chained to it; any
    other error propagates unchanged."""
    try:
        fn(module)
    except KeyError as exc:
        session = current_session()
        if id(module) in session.handled:  # its entries were mmext_init's
            raise
        for entry in session.pretrained_entries(module):
            load = SelfLoad.of(session, module, override_owner(module), entry)
            error = key_error(load, exc)
            if error is not None:
                raise error from exc
        raise


def _wrap(fn: Callable) -> Callable:

    @functools.wraps(fn)
    def init_weights(self) -> None:
        outside = current_session() is None
        if outside and not stock_mode() and not under_construction(
                self):
            run_init_weights(self)
        elif not outside and not stock_mode():
            run_own_loader(fn, self)
        else:  # stock mode, or a constructor outside a session: plain call
            fn(self)

    setattr(init_weights, _MARK, fn)
    return init_weights


def wrap_class(cls: type) -> None:
    """Wrap ``cls.init_weights`` if ``cls`` itself overrides it (idempotent)."""
    fn = cls.__dict__.get('init_weights')
    if (fn is None or not callable(fn) or getattr(fn, _MARK, None)
            or getattr(fn, '_mmext_contract', False)):
        return
    setattr(cls, 'init_weights', _wrap(fn))


def wrap_overrides(base: type = BaseModule) -> None:
    """Wrap every existing subclass of ``base`` and hook future ones."""
    for cls in _subclasses(base):
        wrap_class(cls)
    if '__init_subclass__' not in base.__dict__:

        def __init_subclass__(cls, **kwargs) -> None:
            super(base, cls).__init_subclass__(**kwargs)
            wrap_class(cls)

        __init_subclass__._mmext_hook = True  # type: ignore[attr-defined]
        base.__init_subclass__ = classmethod(__init_subclass__)


def _subclasses(base: type) -> Iterator[type]:
    todo, seen = [base], set()
    while todo:
        for sub in todo.pop().__subclasses__():
            if sub not in seen:
                seen.add(sub)
                todo.append(sub)
                yield sub


def unwrap_overrides(base: type = BaseModule) -> None:
    """Undo :func:`wrap_overrides`: the original ``init_weights`` of every
    subclass, and no ``__init_subclass__`` hook."""
    for cls in _subclasses(base):
        fn = cls.__dict__.get('init_weights')
        if getattr(fn, _MARK, None) is not None:
            setattr(cls, 'init_weights', getattr(fn, _MARK))
    hook = base.__dict__.get('__init_subclass__')
    if getattr(getattr(hook, '__func__', None), '_mmext_hook', False):
        delattr(base, '__init_subclass__')
