"""Hostile scenario input: refused with a clear error by the CLI and the API, never a
traceback, a crash or a hang; and a generated-document test of the loader."""

from __future__ import annotations

import os
import re
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clients.checks import check_data
from scenarios.loader import ScenarioError, load_scenario, read_document
from scenarios.schema import Scenario
from server.api.app import create_app
from server.api.confine import outside_roots
from server.api.settings import ServeSettings
from server.cli.commands import main
from tests.conftest import ROOT

QUICK = (ROOT / "scenarios" / "quick.yaml").read_text()
OSFT = (ROOT / "scenarios" / "osft-cl-4task.yaml").read_text()  # a stream by `order`
BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8))

HOSTILE: dict[str, bytes] = {
    "not-yaml": b"model: [unclosed\n  - {",
    "binary": bytes(range(256)) * 4,
    "non-utf8": QUICK.encode() + b"\n# \xff\xfe\xfa",
    "alias-bomb": BOMB.encode(),
    "huge-number": QUICK.replace("rounds: 3", "rounds: 1" + "0" * 400).encode(),
    "zero-clients": QUICK.replace("num_clients: 3", "num_clients: 0").encode(),
    "negative-lr": QUICK.replace("lr: 0.01", "lr: -1").encode(),
    "wrong-type": QUICK.replace("batch_size: 16", "batch_size: [16]").encode(),
    "unknown-key": (QUICK + "\nflux_capacitor: 1.21\n").encode(),
    "a-list": b"- 1\n- 2\n",
    "empty": b"",
    "order-as-list": OSFT.replace("order: order-1", "order: [order-1]").encode(),
    "order-as-mapping": OSFT.replace("order: order-1", "order: {a: 1}").encode(),
    "folder-as-list": OSFT.replace("benchmark_dir: ../../shared", "benchmark_dir: [a]\n# ").encode(),
    "deep-list": ("model: " + "[" * 5000 + "]" * 5000 + "\n").encode(),
    "deep-mapping": ("model: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n").encode(),
    "int-past-limit": QUICK.replace("seed: 0", "seed: 1" + "0" * 5000).encode(),
}
EXPECTED = {  # a fragment of the one-line error each must produce
    "not-yaml": "not valid YAML", "binary": "not UTF-8", "non-utf8": "not UTF-8",
    "alias-bomb": "aliases (*name) are not allowed", "huge-number": "federation.rounds: must be <=",
    "zero-clients": "federation.num_clients: must be >= 1, got 0",
    "negative-lr": "federation.optimizer.lr: must be > 0, got -1",
    "wrong-type": "federation.batch_size:", "unknown-key": "flux_capacitor: unknown key",
    "a-list": "a scenario must be a mapping", "empty": "a scenario must be a mapping",
    "order-as-list": "stream.order: must be 'order-1', 'order-2', 'order-3' or 'long-7', got ['order-1']",
    "order-as-mapping": "stream.order: must be 'order-1', 'order-2', 'order-3' or 'long-7', got a mapping",
    "folder-as-list": "stream.benchmark_dir: must be a path (text), got ['a']",
    "deep-list": "nested too deeply", "deep-mapping": "nested too deeply",
    "int-past-limit": "not valid YAML",
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_the_cli_refuses_each_with_a_clear_line(case, tmp_path, capsys) -> None:
    path = tmp_path / f"{case}.yaml"
    path.write_bytes(HOSTILE[case])
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert EXPECTED[case] in err and "Traceback" not in err, err[:500]


def test_a_100_mb_file_is_refused_without_reading_it(tmp_path, capsys) -> None:
    path = tmp_path / "big.yaml"
    with path.open("wb") as f:
        f.truncate(100 * 2**20)  # sparse: 100 MB on paper
    assert main(["validate", str(path)]) == 2
    assert "a scenario file must be at most 1000000 bytes" in capsys.readouterr().err


def test_the_api_refuses_each_and_keeps_serving(tmp_path) -> None:
    settings = ServeSettings(runs_dir=tmp_path / "runs", concurrency=0)
    with TestClient(create_app(settings)) as client:
        for case, body in HOSTILE.items():
            answer = client.post("/runs", content=body,
                                 headers={"Content-Type": "application/yaml"})
            assert 400 <= answer.status_code < 500, (case, answer.text[:300])
            assert client.get("/healthz").status_code == 200
        too_big = client.post("/runs", content=b"x" * (settings.max_body_bytes + 1),
                              headers={"Content-Type": "application/yaml"})
        assert too_big.status_code == 413
        assert client.get("/runs").json()["total"] == 0  # nothing half-recorded


# ---- every field of every shipped scenario, given a value of the wrong type -----------------


def nested_list(depth: int) -> list:
    """[[[...]]] `depth` deep, built without recursion."""
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


WRONG = {  # a value of every JSON/YAML type, and the sizes that broke repr() and int()
    "list": ["x"], "nested-list": [[1, ["a"]]], "mapping": {"a": 1}, "null": None,
    "string": "x", "int": 7, "float": 1.5, "bool": True, "long-string": "x" * 100_000,
    "huge-int": 10**5000, "deep-list": nested_list(3000),
}
SHIPPED = sorted([*(ROOT / "scenarios").glob("*.yaml"), *(ROOT / "scenarios").glob("*.toml")])
# Whole-scenario rules: their line names the fields it relates instead of one path.
RULES = ("data.source, stream: ", "data.partitioning 'presplit' ")
FIELD_LINE = re.compile(r"^(\(top level\)|[A-Za-z_][\w-]*(\.[\w-]+)*): \S")


def field_paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path of a parsed document: sections, leaves and list items."""
    items = (value.items() if isinstance(value, dict)
             else enumerate(value) if isinstance(value, list) else ())
    return [path for key, item in items
            for path in [(*prefix, key), *field_paths(item, (*prefix, key))]]


def with_value(document: Any, path: tuple, value: Any) -> Any:
    """A copy of `document` with the item at `path` replaced (only the path is copied)."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    copy = dict(document) if isinstance(document, dict) else list(document)
    copy[head] = with_value(document[head], rest, value)
    return copy


def related(line: str, path: str) -> bool:
    """The error names the changed field, a section holding it, or a field inside it."""
    if line.startswith(RULES):
        return True
    where = line.split(": ", 1)[0]
    return where == "(top level)" or any(
        a == b or a.startswith(b + ".") for a, b in ((where, path), (path, where)))


def well_formed(line: str, where: str) -> bool:
    """One short line naming a field (or a whole-scenario rule) related to `where`."""
    return ("\n" not in line and len(line) < 400 and related(line, where)
            and bool(FIELD_LINE.match(line) or line.startswith(RULES)))


@pytest.mark.parametrize("file", SHIPPED, ids=lambda p: p.name)
def test_every_field_of_a_shipped_scenario_refuses_wrong_types_by_path(file) -> None:
    """Each field path x each wrong value: the loader returns a scenario (the value was
    acceptable: the confinement and data checks then run on it too) or raises
    ScenarioError whose every line names a field; never any other exception."""
    document, base = read_document(file), file.parent
    paths = field_paths(document)
    assert paths, file
    for path in paths:
        where = ".".join(map(str, path))
        for kind, value in WRONG.items():
            try:
                scenario = load_scenario(with_value(document, path, value), base=base)
            except ScenarioError as exc:
                bad = [line[:300] for line in exc.errors if not well_formed(line, where)]
                assert exc.errors and not bad, (where, kind, bad)
                continue
            outside_roots(scenario, [base], base, document)
            check_data(scenario, base)


# ---- generated documents ----------------------------------------------------------------

FIELD_NAMES = ["name", "seed", "model", "data", "federation", "strategy", "privacy",
               "resources", "stream", "source", "kind", "rounds", "num_clients", "lr",
               "lora", "rank", "tasks", "order", "path", "train", "test", "target_epsilon"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["generated", "fedsvd", "osft",
                                                           "tiny-bert", "iid", "order-1"]))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=6), inner, max_size=5)),
    max_leaves=25)
documents = st.one_of(
    st.dictionaries(st.sampled_from(FIELD_NAMES), values, max_size=8),
    # mutations of a valid scenario: one section replaced by anything
    st.tuples(st.sampled_from(["model", "data", "federation", "strategy", "resources",
                               "privacy", "stream"]), values).map(
        lambda kv: {**yaml.safe_load(QUICK), kv[0]: kv[1]}),
)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(documents)
def test_the_loader_accepts_or_names_the_field_never_anything_else(document) -> None:
    try:
        scenario = load_scenario(document, base=ROOT / "scenarios")
    except ScenarioError as exc:
        assert exc.errors and all(isinstance(e, str) and ": " in e for e in exc.errors)
        return
    assert isinstance(scenario, Scenario)


def test_generated_runs_do_not_touch_the_disk(tmp_path) -> None:
    """load_scenario only parses: nothing is created (runs_dir is not made by loading)."""
    before = set(os.listdir(tmp_path))
    load_scenario({**yaml.safe_load(QUICK), "runs_dir": str(tmp_path / "new")})
    assert set(os.listdir(tmp_path)) == before
