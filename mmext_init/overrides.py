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
    >>> wrap_overrides(BaseModule)   # done by mmext_init.install()
    >>> swin.init_weights()          # loads, then adapters get their init_cfg
"""
import functools
import sys
from typing import Callable

from mmengine.model import BaseModule

from . import session as _session
from .code_loads import override_owner
from .self_loading import SelfLoad, key_error

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
        session = _session.current_session()
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
        outside = _session.current_session() is None
        if outside and not _session.stock_mode() and not under_construction(
                self):
            _session.run_init_weights(self)
        elif not outside and not _session.stock_mode():
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
    todo, seen = [base], set()
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub not in seen:
                seen.add(sub)
                wrap_class(sub)
                todo.append(sub)
    if '__init_subclass__' not in base.__dict__:

        def __init_subclass__(cls, **kwargs) -> None:
            super(base, cls).__init_subclass__(**kwargs)
            wrap_class(cls)

        base.__init_subclass__ = classmethod(__init_subclass__)
