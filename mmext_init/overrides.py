"""Make ``init_weights`` overrides start a tracked session when called first.

A class such as mmdet's ``SwinTransformer`` overrides ``init_weights`` and
never calls ``BaseModule.init_weights``; when such a module is the one the
user (or the Runner) calls, nothing of mmext_init would run. Each override
is therefore wrapped once: called outside a session it starts one (the
override then runs as a tracked source and the BaseModules it left alone are
initialized afterwards); called inside a session it simply runs.

Classes defined after import are wrapped through ``__init_subclass__``.

Example:
    >>> wrap_overrides(BaseModule)   # done by mmext_init.install()
    >>> swin.init_weights()          # loads, then adapters get their init_cfg
"""
import functools
from typing import Callable

from mmengine.model import BaseModule

from . import session as _session

_MARK = '_mmext_wrapped_override'


def _wrap(fn: Callable) -> Callable:

    @functools.wraps(fn)
    def init_weights(self) -> None:
        if _session.current_session() is None and not _session.stock_mode():
            _session.run_init_weights(self)
        else:
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
