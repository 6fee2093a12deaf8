"""The scenario-file reference in the README, generated from the schema itself.

`python -m scenarios.reference` prints it, `... --update README.md` rewrites the README's
copy; a test keeps the README in step, so the
reference can never drift from what the loader accepts.
"""

from __future__ import annotations

import sys
import types
import typing
from pathlib import Path

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from scenarios.schema import Scenario


def _members(annotation) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _members(arg)]


def _default(field) -> str:
    if field.default is PydanticUndefined and field.default_factory is None:
        return "required"
    if field.default_factory is not None:
        return "see below"
    value = field.default
    return f"`{list(value) if isinstance(value, tuple) else value}`"


def _is_tag(annotation) -> bool:
    """A union member's tag (`kind: Literal["iid"]`): one literal value, shown in the
    section title. A Literal of several values is an ordinary choice field."""
    return typing.get_origin(annotation) is typing.Literal and len(typing.get_args(annotation)) == 1


def _type_name(annotation) -> str:
    """How a field's type reads to someone writing YAML: a tuple is a list, Annotated
    markers (strictness) are dropped, a union reads 'x or y'."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Literal:
        return " or ".join(f"'{value}'" for value in args)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in args)
    if origin is tuple:
        return f"list of {_type_name(args[0])}" if args else "list"
    if annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")


def rows(model: type[BaseModel], prefix: str) -> list[str]:
    """Markdown table rows for `model`'s fields, then its sub-sections."""
    lines, nested = [], []
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        subs = _members(field.annotation)
        if _is_tag(field.annotation):
            continue  # shown in its section title
        if subs:
            nested.append((path, subs))
            continue
        lines.append(f"| `{path}` | {_type_name(field.annotation)} | {_default(field)} | "
                     f"{field.description} |")
    for path, subs in nested:
        for sub in subs:
            tag = next((f for f in ("kind", "name") if f in sub.model_fields
                        and _is_tag(sub.model_fields[f].annotation)), None)
            title = path
            if tag:
                value = typing.get_args(sub.model_fields[tag].annotation)[0]
                title = f"{path} ({tag}: {value})"
            doc = " ".join((sub.__doc__ or "").split())
            lines.append(f"| **{title}** | | | {doc} |")
            lines.extend(rows(sub, f"{path}."))
    return lines


def render() -> str:
    header = ["| field | type | default | meaning |", "|---|---|---|---|"]
    return "\n".join(header + rows(Scenario, ""))


def update_readme(path: Path) -> None:
    """Replace the table between the README's reference markers with `render()`."""
    text = path.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{START}{render()}{END}{tail}")


START, END = "<!-- reference:start -->\n", "\n<!-- reference:end -->"

if __name__ == "__main__":
    if sys.argv[1:2] == ["--update"]:
        update_readme(Path(sys.argv[2]))
    else:
        print(render())
