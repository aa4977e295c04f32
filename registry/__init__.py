"""Named registries (spaces, blocks, datasets, latency backends, scorings), in the manner of timm's: one lookup
that fails the same way everywhere, naming what was asked for and listing what is known.

Every package may import it; it imports nothing of the project.
"""

from __future__ import annotations

from typing import Callable, TypeVar

T = TypeVar("T")


class UnknownName(KeyError):
    """A name that is not in a registry; the message lists the names that are."""

    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        super().__init__(name)
        self.kind, self.name, self.known = kind, name, known

    def __str__(self) -> str:
        return f"unknown {self.kind} {self.name!r}; known {self.kind}s: {', '.join(self.known) or 'none'}"


class Registry(dict[str, T]):
    """`{name: entry}` whose lookup of a missing name raises `UnknownName`; `register(name)` is a decorator."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def __missing__(self, name: str) -> T:
        raise UnknownName(self.kind, name, sorted(self))

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding its target under `name`."""

        def wrap(entry: T) -> T:
            self[name] = entry
            return entry

        return wrap
