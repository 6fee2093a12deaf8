"""A real `orthofed serve` (uvicorn, its own process) given a few hundred hostile and
careless requests: no 5xx, no traceback in its log, the server healthy throughout, and
nothing half-recorded (the store holds exactly the runs it answered 202 for).

The bodies: the hand-written hostile scenarios of tests/scenarios/test_hostile_input.py,
every field of the quick scenario given a value of every wrong type (as JSON), seeded
byte-level mutations of the quick scenario's YAML, the issue's four cases checked by
their field, and hostile ids, queries, tokens and content types on every route.
The server is paused (concurrency 0): an accepted run is queued, never started.
"""

from __future__ import annotations

import json
import random
from typing import Any

import httpx
import pytest
import yaml

from tests.integration.helpers import serving
from tests.scenarios.test_hostile_input import HOSTILE, QUICK, WRONG, field_paths, with_value

pytestmark = pytest.mark.integration
TOKEN = {"Authorization": "Bearer it-token"}
YAML = {"Content-Type": "application/yaml", **TOKEN}
JSON = {"Content-Type": "application/json", **TOKEN}


class Raw:
    """JSON text json.dumps cannot write (an int past 4300 digits, 3000 nested lists),
    spliced into the body as it is."""

    def __init__(self, text: str) -> None:
        self.text = text


def as_json(document: Any) -> bytes:
    raws: list[str] = []

    def placeholder(value: Any) -> str:
        raws.append(value.text)
        return f"__raw{len(raws) - 1}__"

    text = json.dumps(document, default=placeholder)
    for i, raw in enumerate(raws):
        text = text.replace(f'"__raw{i}__"', raw)
    return text.encode()


def wrong_type_bodies() -> list[tuple[str, bytes]]:
    """Each field path of the quick scenario x each wrong value."""
    document = yaml.safe_load(QUICK)
    wrong = {**WRONG, "huge-int": Raw("1" + "0" * 5000), "deep-list": Raw("[" * 3000 + "]" * 3000)}
    return [(f"{'.'.join(map(str, path))}={kind}", as_json(with_value(document, path, value)))
            for path in field_paths(document) for kind, value in wrong.items()]


def mutated_yaml(count: int, seed: int = 0) -> list[tuple[str, bytes]]:
    """The quick scenario's YAML with a few bytes flipped, inserted, dropped or cut."""
    rng, original = random.Random(seed), QUICK.encode()
    bodies = []
    for i in range(count):
        body = bytearray(original)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(body))
            action = rng.choice(("flip", "insert", "drop", "cut"))
            if action == "flip":
                body[at] = rng.randrange(256)
            elif action == "insert":
                body[at:at] = rng.choice([b":", b"-", b"[", b"{", b"&a", b"*a", b"!!python/object",
                                          b"\t", b"\x00", b"'", b"1e999", b"\n  "])
            elif action == "drop":
                del body[at:at + rng.randint(1, 20)]
            else:
                del body[at:]
        bodies.append((f"mutation-{i}", bytes(body)))
    return bodies


# The cases: each a 422 whose detail names the field.
NAMED = {
    "name": {**yaml.safe_load(QUICK), "name": "x" * 5000},
    "federation.rounds": {**yaml.safe_load(QUICK),
                          "federation": {**yaml.safe_load(QUICK)["federation"], "rounds": True}},
    "seed": {**yaml.safe_load(QUICK), "seed": "0"},
    "privacy.target_epsilon": {**yaml.safe_load(QUICK), "privacy": {"target_epsilon": 1e-300}},
}


def other_requests() -> list[tuple[str, str, dict, bytes | None]]:
    """(method, path, headers, body) on every route with hostile ids, queries, tokens."""
    ids = ["..%2F..%2Fetc%2Fpasswd", "x" * 5000, "%00", "%E2%80%AE", "run'; DROP TABLE runs;--",
           "%FF%FE", "a/b/c", "CON"]
    requests = [("GET", f"/runs/{i}{tail}", {}, None) for i in ids
                for tail in ("", "/rounds", "/clients", "/tasks", "/events")]
    requests += [("POST", f"/runs/{i}/{verb}", TOKEN, None) for i in ids[:4]
                 for verb in ("cancel", "resume")]
    queries = ["limit=0", "limit=-1", f"limit={10**30}", "limit=abc", "offset=-5",
               f"offset={10**30}", "status=bogus", "name=", "name=" + "x" * 2000,
               "limit=1&limit=2", "status=%00"]
    requests += [("GET", f"/runs?{q}", {}, None) for q in queries]
    post = yaml.safe_dump(yaml.safe_load(QUICK)).encode()
    requests += [
        ("POST", "/runs", {"Content-Type": "application/yaml"}, post),  # no token
        ("POST", "/runs", {"Content-Type": "application/yaml",
                           "Authorization": "Bearer wrong"}, post),
        ("POST", "/runs", {"Content-Type": "application/yaml", "Authorization": "Basic x"}, post),
        ("POST", "/runs", {"Content-Type": "text/plain", **TOKEN}, post),
        ("POST", "/runs", {"Content-Type": "application/xml", **TOKEN}, b"<a/>"),
        ("POST", "/runs", {"Content-Type": "multipart/form-data; boundary=x", **TOKEN}, b"--x--"),
        ("POST", "/runs", JSON, post),  # YAML sent as JSON
        ("POST", "/runs", JSON, b'{"name": "a"} trailing'),
        ("POST", "/runs", JSON, b"[" * 100_000),
        ("POST", "/runs", JSON, b"null"),
        ("POST", "/runs", JSON, b'"a string"'),
        ("POST", "/runs", JSON, b"\xff\xfe{}"),
        ("POST", "/runs?shipped=../../etc/passwd", TOKEN, None),
        ("POST", "/runs?shipped=no-such-scenario", TOKEN, None),
        ("POST", "/runs?shipped=" + "x" * 5000, TOKEN, None),
        ("DELETE", "/runs", TOKEN, None),
        ("PUT", "/runs/x", TOKEN, b"{}"),
        ("GET", "/no/such/route", {}, None),
    ]
    return requests


def test_hundreds_of_hostile_requests_get_no_5xx_and_leave_no_traceback(tmp_path, runs_dir) -> None:
    bodies = [*((case, body, YAML) for case, body in HOSTILE.items()),
              *((case, body, JSON) for case, body in wrong_type_bodies()),
              *((case, body, YAML) for case, body in mutated_yaml(120))]
    accepted, answers = 0, 0
    with serving(runs_dir, env={"ORTHOFED_CONCURRENCY": "0"}) as base, \
            httpx.Client(base_url=base, timeout=60) as client:
        for case, body, headers in bodies:
            answer = client.post("/runs", content=body, headers=headers)
            answers += 1
            assert answer.status_code < 500, (case, answer.status_code, answer.text[:300])
            accepted += answer.status_code == 202
        for field, document in NAMED.items():
            answer = client.post("/runs", content=as_json(document), headers=JSON)
            answers += 1
            assert answer.status_code == 422, (field, answer.text[:300])
            assert any(line.startswith(f"{field}: ") for line in answer.json()["detail"]), \
                (field, answer.json()["detail"])
        for method, path, headers, body in other_requests():
            answer = client.request(method, path, headers=headers, content=body)
            answers += 1
            assert answer.status_code < 500, (method, path[:80], answer.status_code,
                                              answer.text[:300])
        assert client.get("/healthz").status_code == 200
        recorded = client.get("/runs", params={"limit": 1000}).json()["total"]
    assert answers >= 300, answers
    assert recorded == accepted  # a refused body records nothing; an accepted one is queued
    log = (runs_dir.parent / "serve.log").read_text()
    assert "Traceback" not in log and " 500 " not in log, log[-3000:]
