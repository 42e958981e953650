"""What is in force right now, process-wide: the init sessions in progress
and :func:`mmext_init.stock_mmengine`. A leaf module: the deferred engine
(which must not defer inside a session, nor in stock mode) and the session
layer both read it, and it imports nothing of the package.

Example:
    >>> CONTEXT.current_session() is None, CONTEXT.stock_mode()
    (True, False)
    >>> with CONTEXT.stock():
    ...     CONTEXT.stock_mode()
    True
"""
import contextlib
import weakref
from typing import Any, ContextManager, Iterator, List, Optional


@contextlib.contextmanager
def pushed(items: List[Any], item: Any) -> Iterator[Any]:
    """``item`` is in ``items`` inside the block (appended, then removed).

    Example:
        >>> stack = []
        >>> with pushed(stack, 'a'):
        ...     stack
        ['a']
        >>> stack
        []
    """
    items.append(item)
    try:
        yield item
    finally:
        items.remove(item)


class PluginContext:
    """The stack of active init sessions (innermost last), the depth of
    nested ``stock_mmengine()`` blocks, and the latest MMEngine ``Runner``
    (held weakly)."""

    def __init__(self) -> None:
        self._sessions: List[Any] = []
        self._stock_depth = 0
        self._runner: Optional[weakref.ReferenceType] = None

    def runner(self) -> Optional[Any]:
        """The latest ``Runner`` built, while it exists."""
        return self._runner() if self._runner is not None else None

    def runner_built(self, runner: Any) -> None:
        """``runner`` is the latest ``Runner`` (set by the patched
        ``Runner.__init__``)."""
        self._runner = weakref.ref(runner)

    def current_session(self) -> Optional[Any]:
        """The session of the ``init_weights()`` call in progress, if any."""
        return self._sessions[-1] if self._sessions else None

    def stock_mode(self) -> bool:
        """Whether :func:`mmext_init.stock_mmengine` is in force."""
        return self._stock_depth > 0

    def session_active(self, session: Any) -> ContextManager[Any]:
        """``session`` is the current one inside the block."""
        return pushed(self._sessions, session)

    @contextlib.contextmanager
    def stock(self) -> Iterator[None]:
        """Stock mode inside the block (nestable)."""
        self._stock_depth += 1
        try:
            yield
        finally:
            self._stock_depth -= 1


CONTEXT = PluginContext()
current_session = CONTEXT.current_session
stock_mode = CONTEXT.stock_mode
