"""The errors fst_jax raises for input a user can fix; `fst-train` prints each as one line.

Kept free of heavy imports so every module (model loaders, the checkpointer, config checks) can
raise the same classes and `fst_jax.main` can catch them all with one ``except UserError``.
"""

from __future__ import annotations

from typing import Any


class UserError(Exception):
    """Bad input (config, files, environment); the message says what to change."""


class ConfigError(UserError, ValueError):
    """An fst-train config that cannot run.

    ``ConfigError(what, key, value, fix)`` renders as ``<what> (<key>=<value>): <fix>``, the
    one-line form `fst-train: error: ...` prints; ``ConfigError(message)`` is kept as is.
    """

    def __init__(
        self, what: str, key: str | None = None, value: Any = None, fix: str | None = None
    ) -> None:
        self.what, self.key, self.value, self.fix = what, key, value, fix
        super().__init__(self.render())

    def render(self) -> str:
        out = self.what
        if self.key is not None:
            shown = repr(self.value) if isinstance(self.value, str) else str(self.value)
            out += f" ({self.key}={shown})"
        if self.fix:
            out += f": {self.fix}"
        return out


class CheckpointError(UserError, ValueError, RuntimeError):
    """A model file or run checkpoint that is missing, truncated, foreign or inconsistent.

    One class for the model loaders and the run checkpointer (it subclasses both ValueError and
    RuntimeError, what each raised before, so existing handlers keep working).
    """
