"""A tiny name → object registry that refuses duplicates (procrastinate, not timm's overwrite)."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from autoprune.errors import UnknownNameError

T = TypeVar("T")


def close_matches(name: str, choices: list[str], n: int = 5) -> str:
    """A ', '-joined list of the names closest to ``name``, for error messages."""
    hits = difflib.get_close_matches(name.lower(), choices, n=n, cutoff=0.5)
    return ", ".join(hits) if hits else ", ".join(sorted(choices)[:n])


class Registry(Generic[T]):
    """Maps names to objects of one kind; ``get`` accepts a name or an instance."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; did you mean: {close_matches(name, self.names())}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
