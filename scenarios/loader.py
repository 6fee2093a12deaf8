"""Read a scenario file (YAML or TOML) into a frozen `Scenario`, or list every error.

The CLI, the API and the ServerApp all go through `load_scenario`, so a file is judged
the same way everywhere. Errors are collected, never raised one by one: a user fixing a
file sees all of its problems at once, each named by its path (`strategy.rank: ...`).
"""

from __future__ import annotations

import re
import reprlib
import tomllib
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from scenarios import schema
from scenarios.schema import ClBenchmarkSource, JsonlSource, Scenario


class ScenarioError(ValueError):
    """A scenario that cannot be used; `errors` holds one line per problem."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("\n".join(errors))


def load_scenario(source: str | Path | dict[str, Any], base: Path | None = None) -> Scenario:
    """Parse and validate a scenario from a file path or an already-parsed mapping.

    Relative data paths are resolved against the scenario file's folder (against `base`,
    default the current directory, for a mapping). Raises `ScenarioError` listing every
    problem.
    """
    if isinstance(source, dict):
        document, base = source, (base or Path.cwd())
    else:
        path = Path(source)
        document, base = read_document(path), path.resolve().parent
    problems = oversized(document)
    if problems:  # refused before pydantic, which cannot even print such values
        raise ScenarioError(problems)
    try:
        scenario = Scenario.model_validate(document)
    except ValidationError as exc:
        raise ScenarioError([format_error(e) for e in exc.errors()]) from None
    except RecursionError:  # a document nested past Python's stack, not a scenario
        raise ScenarioError([TOO_DEEP]) from None
    return resolve_paths(scenario, base)


TOO_DEEP = ("(top level): nested too deeply to be a scenario (a scenario is a few levels "
            "of sections)")
MAX_DEPTH = 32  # the deepest field, stream.tasks.N.source.train.N, is 6 levels down
MAX_INT_BITS = 10_000  # about 3000 digits; Python will not print an int past 4300


def oversized(document: Any) -> list[str]:
    """`path: problem` for each value no field could take and that breaks the tools that
    would report it: containers nested past MAX_DEPTH (repr and the validators recurse)
    and integers past MAX_INT_BITS (str() refuses them). Walked without recursion."""
    problems, stack = [], [((), document)]
    while stack:
        path, value = stack.pop()
        where = ".".join(map(str, path)) or "(top level)"
        if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
            problems.append(f"{where}: an integer of about {value.bit_length() * 3 // 10} "
                            "digits is not a value of any field")
        elif isinstance(value, dict | list) and len(path) >= MAX_DEPTH:
            problems.append(f"{where}: nested more than {MAX_DEPTH} levels deep; a scenario "
                            "is a few levels of sections")
        elif isinstance(value, dict | list):
            items = value.items() if isinstance(value, dict) else enumerate(value)
            stack.extend(((*path, key), item) for key, item in items)
    return sorted(problems)


MAX_SCENARIO_BYTES = 1_000_000  # real scenarios are a few KB; a bigger file is a mistake


class NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases: `*name` references can expand a small file
    into an exponentially large document ("billion laughs"); scenarios never need them."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(
                None, None, "YAML aliases (*name) are not allowed in scenario files",
                event.start_mark)
        return super().compose_node(parent, index)


def parse_yaml(text: str) -> Any:
    """YAML text -> data, aliases refused (NoAliasLoader)."""
    return yaml.load(text, Loader=NoAliasLoader)  # noqa: S506 - a SafeLoader subclass


def read_document(path: Path) -> dict[str, Any]:
    """Read YAML (.yaml/.yml) or TOML (.toml) into a mapping, with readable errors."""
    if not path.is_file():
        raise ScenarioError([f"{path}: no such scenario file"])
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".toml"):
        raise ScenarioError([f"{path}: unknown scenario format {suffix!r}; use .yaml, .yml or .toml"])
    size = path.stat().st_size
    if size > MAX_SCENARIO_BYTES:
        raise ScenarioError([f"{path}: {size} bytes; a scenario file must be at most "
                             f"{MAX_SCENARIO_BYTES} bytes"])
    try:
        text = path.read_text(encoding="utf-8")
        document = tomllib.loads(text) if suffix == ".toml" else parse_yaml(text)
    except UnicodeDecodeError as exc:
        raise ScenarioError([f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: TOML errors, huge integers
        raise ScenarioError([f"{path}: not valid {suffix[1:].upper()}: {exc}"]) from None
    except RecursionError:
        raise ScenarioError([f"{path}: not valid {suffix[1:].upper()}: nested too deeply to "
                             "be a scenario"]) from None
    if not isinstance(document, dict):
        kind = type(document).__name__
        raise ScenarioError([f"{path}: a scenario must be a mapping of sections, got {kind}"])
    return document


def _discriminator_tags() -> set[str]:
    """The tag values of every discriminated union; pydantic puts them in error paths."""
    tags: set[str] = set()
    for union in (schema.DataSource, schema.Partitioning, schema.StrategySpec):
        for member in typing.get_args(typing.get_args(union)[0]):
            for field in ("kind", "name"):
                if field in member.model_fields:
                    tags.update(typing.get_args(member.model_fields[field].annotation))
    return tags


_TAGS = _discriminator_tags()


# pydantic's wording -> the terse form users read faster ("must be >= 1, got 0").
_SHORTER = (
    ("Input should be greater than or equal to ", "must be >= "),
    ("Input should be less than or equal to ", "must be <= "),
    ("Input should be greater than ", "must be > "),
    ("Input should be less than ", "must be < "),
    ("Input should be ", "must be "),
)
# By error type, where pydantic's wording names a class whose repr varies by Python
# (pathlib.Path is pathlib._local.Path on 3.13).
_BY_TYPE = {"path_type": "must be a path (text)"}


def format_error(error: Any) -> str:
    """One pydantic error as `path.to.field: message, got value`."""
    parts = [str(p) for p in error["loc"] if str(p) not in _TAGS]
    where = ".".join(parts) or "(top level)"
    message = error["msg"].removeprefix("Value error, ")
    if not parts and error["type"] == "value_error":
        return message  # a whole-scenario rule: its message names the fields it relates
    if error["type"] == "extra_forbidden":
        return f"{where}: unknown key (check its spelling and section)"
    if error["type"] == "missing":
        return f"{where}: required field missing"
    if error["type"] == "union_tag_invalid":
        ctx = error["ctx"]
        return (
            f"{where}.{ctx['discriminator'].strip(chr(39))}: unknown {shown(ctx['tag'])}; "
            f"known: {ctx['expected_tags']}"
        )
    if error["type"] == "union_tag_not_found":
        return f"{where}: needs {error['ctx']['discriminator']} to say which kind it is"
    if error["type"] in ("value_error", "assertion_error") or "input" not in error:
        return f"{where}: {message}"
    message = _BY_TYPE.get(error["type"], message)
    for phrase, short in _SHORTER:
        message = message.replace(phrase, short)
    message = re.sub(r"a valid dictionary or (instance of \w+|object to extract fields from)",
                     "a mapping (a section)", message)
    message = message.split(", got ")[0].split(", unable to parse")[0]  # we say what we got
    return f"{where}: {message[:1].lower()}{message[1:]}, got {shown(error['input'])}"


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother, _REPR.maxlist = 3, 60, 60, 4


def shown(value: Any) -> str:
    """A wrong value as the error line quotes it: short whatever it is. A plain repr() can
    fail (RecursionError on lists nested thousands deep, ValueError on integers past
    4300 digits) or print a megabyte."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, int) and value.bit_length() > 200:
        return f"an integer of about {value.bit_length() * 3 // 10} digits"
    try:
        return _REPR.repr(value)[:80]
    except (RecursionError, ValueError):
        return f"a {type(value).__name__}"


def resolve_paths(scenario: Scenario, base: Path) -> Scenario:
    """Make the data sources' relative paths (single task and stream) absolute,
    relative to `base`."""

    def absolute(path: Path) -> Path:
        return path if path.is_absolute() else (base / path).resolve()

    def resolve_source(source):
        if isinstance(source, ClBenchmarkSource):
            return source.model_copy(update={"path": absolute(source.path)})
        if isinstance(source, JsonlSource):
            return source.model_copy(update={"train": tuple(absolute(p) for p in source.train),
                                             "test": absolute(source.test)})
        return source

    data = scenario.data.model_copy(update={"source": resolve_source(scenario.data.source)})
    stream = scenario.stream
    if stream is not None:
        tasks = tuple(t.model_copy(update={"source": resolve_source(t.source)})
                      for t in stream.tasks)
        root = absolute(stream.benchmark_dir) if stream.benchmark_dir else None
        stream = stream.model_copy(update={"tasks": tasks, "benchmark_dir": root})
    return scenario.model_copy(update={"data": data, "stream": stream})


def resolve_scenario_path(path: str) -> Path:
    """Absolute as given; else relative to the working directory, else to the project
    folder (Flower runs apps from an unpacked copy of the project, which has scenarios/)."""
    candidate = Path(path)
    if candidate.is_absolute() or candidate.exists():
        return candidate.resolve()
    # The repository root, as server.runs.layout.PROJECT_ROOT; spelled here because
    # scenarios/ imports nothing else of the project.
    return Path(__file__).resolve().parents[1] / candidate
