"""One registry class for every kind of plug-in: techniques, model families, metrics, CLI subcommands.

Works like lm-evaluation-harness's `lm_eval/api/registry.py`: entries are registered by a decorator or directly,
a name registered twice is an error, an entry must be of the registry's base type, a lookup of an unknown name is
a one-line error with the closest name ("did you mean"), and after discovery (importing the modules that register)
the registry is frozen, so nothing registers by accident at run time.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import pkgutil
from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class UnknownName(KeyError):
    """A lookup of a name the registry does not have; str() is the one-line message."""

    def __str__(self) -> str:
        return str(self.args[0])


class Registry(Generic[T]):
    """Name → entry, in registration order (or by `order_key` when given)."""

    def __init__(self, kind: str, base: type | None = None, discover: tuple[str, ...] = (),
                 order_key: Callable[[T], object] | None = None):
        self.kind = kind  # what an entry is, for messages: "technique", "model family", ...
        self.base = base
        self.discover = discover  # modules (or packages: every submodule) imported before the first lookup
        self.order_key = order_key
        self._entries: dict[str, T] = {}
        self._frozen = False

    # -- registering ---------------------------------------------------------------------------------------

    def register(self, name: str, entry: T | None = None) -> Callable[[T], T] | T:
        """`registry.register(name, entry)`, or `@registry.register(name)` on a class or function."""
        if entry is None:
            return lambda obj: self._add(name, obj)
        return self._add(name, entry)

    def _add(self, name: str, entry: T) -> T:
        if self._frozen:
            raise RuntimeError(f"{self.kind} registry is frozen: register '{name}' in a module it discovers")
        if self.base is not None and not (isinstance(entry, self.base) or
                                          isinstance(entry, type) and issubclass(entry, self.base)):
            raise TypeError(f"{self.kind} '{name}' must be a {self.base.__name__}, got {entry!r}")
        if name in self._entries and self._entries[name] is not entry:
            raise ValueError(f"{self.kind} '{name}' registered twice")
        self._entries[name] = entry
        return entry

    @contextlib.contextmanager
    def temporarily(self, name: str, entry: T) -> Iterator[T]:
        """Register an entry for the duration of a block (tests of "adding one is one declaration")."""
        self._load()
        frozen, self._frozen = self._frozen, False
        try:
            self._add(name, entry)
        finally:
            self._frozen = frozen
        try:
            yield entry
        finally:
            self._entries.pop(name, None)

    # -- reading -------------------------------------------------------------------------------------------

    def _load(self) -> None:
        """Import the discovery modules (every module of a package) once, then freeze."""
        if self._frozen:
            return
        for module_name in self.discover:
            module = importlib.import_module(module_name)
            for info in pkgutil.iter_modules(getattr(module, "__path__", [])):
                importlib.import_module(f"{module_name}.{info.name}")
        self._frozen = bool(self.discover)

    def all(self) -> dict[str, T]:
        """Every entry by name, in the registry's order."""
        self._load()
        if self.order_key is None:
            return dict(self._entries)
        return dict(sorted(self._entries.items(), key=lambda item: self.order_key(item[1])))  # type: ignore[misc]

    def registered(self) -> dict[str, T]:
        """The entries registered so far, without discovery (for checks made while registering)."""
        return dict(self._entries)

    def names(self) -> list[str]:
        return list(self.all())

    def __contains__(self, name: object) -> bool:
        return name in self.all()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def values(self) -> list[T]:
        return list(self.all().values())

    def get(self, name: str) -> T:
        """The entry of a name, or UnknownName with the closest name."""
        entries = self.all()
        if name not in entries:
            raise UnknownName(f"unknown {self.kind} '{name}'{self.hint(name)}")
        return entries[name]

    def hint(self, name: str) -> str:
        """'; did you mean 'x'?' or '; known: a, b, c' (for messages that add their own context)."""
        entries = self.all()
        return did_you_mean(str(name), list(entries)) or f"; known: {', '.join(entries) or 'none'}"


def did_you_mean(word: str, options: list[str]) -> str:
    """"; did you mean 'x'?" for the closest option (difflib ratio ≥ 0.6), or '' when nothing is close. The one
    suggestion rule of every message in ablate."""
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""
