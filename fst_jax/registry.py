"""One name → object registry for the five user-facing registries (models, losses, advantages,
tasks, reflection LMs), so they all behave alike.

Why one helper: a config names these by string, so a typo must fail with the nearest known name
(``Unknown loss 'cipso'; did you mean 'cispo'? registered: cispo, dr_grpo, ...``), and registering a
name twice must fail instead of silently replacing the first entry (a plugin that shadows
``cispo`` would otherwise change every run that names it). `nearest` is also what
`fst_jax.config_checks` uses for its config-key hints, so every "did you mean" reads the same.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")


def nearest(name: object, choices: Sequence[str], *, cutoff: float = 0.6) -> str | None:
    """The closest of `choices` to `name` (difflib ratio >= `cutoff`), or None."""
    near = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=cutoff)
    return near[0] if near else None


class UnknownNameError(KeyError, ValueError):
    """A name no registry entry has. A KeyError for lookups and a ValueError for config values,
    so callers written against either keep working; `str()` is the plain message."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Names of one `kind` (e.g. "loss") → entries; duplicates are an error."""

    def __init__(self, kind: str, *, normalize: Callable[[str], str] = str) -> None:
        self.kind = kind
        self._normalize = normalize
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        key = self._normalize(name)
        if key in self._entries:
            raise ValueError(
                f"{self.kind} {name!r} is already registered; pick another name "
                f"(registered: {', '.join(self.names())})"
            )
        self._entries[key] = entry
        return entry

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of `add`."""

        def deco(entry: T) -> T:
            return self.add(name, entry)

        return deco

    def get(self, name: str) -> T:
        key = self._normalize(str(name))
        if key not in self._entries:
            raise UnknownNameError(self.unknown_message(name))
        return self._entries[key]

    def unknown_message(self, name: object) -> str:
        near = nearest(self._normalize(str(name)), self.names(), cutoff=0.4)
        hint = f"; did you mean {near!r}?" if near else ";"
        return f"Unknown {self.kind} {name!r}{hint} registered: {', '.join(self.names())}"

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._normalize(name) in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
