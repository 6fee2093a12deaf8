"""The base of every scenario section."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Strict, field_validator


T = TypeVar("T")
# Strict scenarios (below) take no bool for a number and no quoted number; what YAML and
# JSON cannot spell exactly is admitted from its spelling: a path from text, a tuple from
# a list (its items still strict).
LaxPath = Annotated[Path, Strict(False)]
Items = Annotated[tuple[T, ...], Strict(False)]


class Spec(BaseModel):
    """Base of every scenario section: frozen, unknown keys refused, and strict types: a
    researcher who writes `rounds: true` or `seed: "0"` has made a mistake, and is told
    so by the field's path instead of having it read as 1 or 0."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @field_validator("*")
    @classmethod
    def _paths_the_os_accepts(cls, value: Any) -> Any:
        """A NUL byte or an over-long name passes as text, but the OS refuses it with an
        error far from the field (resolving, opening); refuse it here, by the field's path."""
        for path in value if isinstance(value, tuple) else (value,):
            if isinstance(path, Path):
                problem = path_problem(str(path))
                if problem:
                    raise ValueError(problem)
        return value


PATH_MAX, NAME_MAX = 4096, 255  # Linux's limits on a whole path and on one of its names


def path_problem(text: str) -> str | None:
    """Why the OS would refuse `text` as a path, or None."""
    if "\x00" in text:
        return "a path must not contain a NUL byte ('\\x00')"
    if len(text) > PATH_MAX:
        return f"a path must be at most {PATH_MAX} characters, got {len(text)}"
    longest = max(text.split("/"), key=len)
    if len(longest.encode("utf-8", "surrogatepass")) > NAME_MAX:
        return f"each name in a path must be at most {NAME_MAX} bytes, got {longest[:20]!r}..."
    return None
