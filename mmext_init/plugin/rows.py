"""The row types of the patch table (:mod:`.patches`): :class:`Patch`, one
replaced attribute or registry entry of another library, and
:class:`Effect`, a change that is no one attribute replaced.

Example:
    >>> class Owner:
    ...     value = 1
    >>> row = Patch(Owner, 'value', replace_with(2), 'a toy patch')
    >>> saved = {}
    >>> row.apply(saved); Owner.value, saved
    (2, {('Owner', 'value'): 1})
    >>> row.undo(saved); Owner.value
    1
"""
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Callable, Dict, Optional, Tuple, Union


@dataclass(frozen=True)
class ClassDict:
    """A dict held in a class attribute that its class may replace, found
    when used: MMEngine's ``CheckpointLoader.register_scheme`` rebuilds
    ``CheckpointLoader._schemes`` (sorted) on every call."""
    cls: type
    name: str

    @property
    def __name__(self) -> str:
        return f'{self.cls.__name__}.{self.name}'

    def get(self) -> Dict[str, Any]:
        return getattr(self.cls, self.name)


class Named:
    """The name of a row: its owner's (``name`` if given, for an owner
    whose ``__name__`` another row's owner has too) and the attribute."""
    owner: Any
    attribute: str
    name: Optional[str]

    @property
    def owner_name(self) -> str:
        return self.name or self.owner.__name__

    @property
    def key(self) -> Tuple[str, str]:
        """Where the original is saved: ``(owner name, attribute)``."""
        return self.owner_name, self.attribute


@dataclass(frozen=True)
class Patch(Named):
    """One replaced attribute (or registry entry) of another library."""
    owner: Any  # a class, a dict (a registry's entries) or a ClassDict
    attribute: str
    make: Callable[[Any], Any]  # original -> replacement
    reason: str
    name: Optional[str] = None  # the owner's name when not its __name__

    def _dict(self) -> Optional[Dict[str, Any]]:
        """The dict the entry is in, for a registry or scheme table."""
        if isinstance(self.owner, ClassDict):
            return self.owner.get()
        return self.owner if isinstance(self.owner, dict) else None

    def current(self) -> Any:
        table = self._dict()
        return (self.owner.__dict__ if table is None else table)[
            self.attribute]

    def set(self, value: Any) -> None:
        table = self._dict()
        if table is not None:
            table[self.attribute] = value
        else:
            setattr(self.owner, self.attribute, value)

    def apply(self, saved: Dict[Tuple[str, str], Any]) -> None:
        """Replace the attribute (its original saved the first time)."""
        saved.setdefault(self.key, self.current())
        self.set(self.make(saved[self.key]))

    def undo(self, saved: Dict[Tuple[str, str], Any]) -> None:
        """Put the original back (if it was ever replaced)."""
        if self.key in saved:
            self.set(saved[self.key])


@dataclass(frozen=True)
class Effect(Named):
    """A change to another library's class that is no one attribute
    replacement: ``make`` applies it (None: made by the deferred engine,
    per parameter, while it defers), ``undo`` takes every trace of it off;
    ``reason`` says what it does and how ``undo`` undoes it."""
    owner: Union[type, ModuleType]
    attribute: str
    make: Optional[Callable[[], None]]
    undo_all: Callable[[], None]
    reason: str
    name: Optional[str] = None  # the owner's name when not its __name__

    def apply(self, saved: Dict[Tuple[str, str], Any]) -> None:
        if self.make is not None:
            self.make()

    def undo(self, saved: Dict[Tuple[str, str], Any]) -> None:
        self.undo_all()


Row = Union[Patch, Effect]


def replace_with(value: Any) -> Callable[[Any], Any]:
    """A ``make`` that ignores the original and returns ``value``."""
    return lambda original: value
