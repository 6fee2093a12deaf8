"""bench/cl_stream.py's scenarios and tables: a '<method>-dp' method is that method's
scenario under the benchmark's DP-SGD plan, and the tables name the stream's own length."""

from __future__ import annotations

import sys

from scenarios.schema import Scenario
from tests.conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))  # the benchmark imports its siblings as a script does
from bench import cl_stream  # noqa: E402


def test_a_dp_method_is_its_base_method_under_the_benchmarks_privacy_plan() -> None:
    strategies = {"osft": "osft", "seqft": "fedavg", "seqlora": "fedavg-lora", "fedsvd": "fedsvd",
                  "fedsvd-osft": "fedsvd-osft"}
    assert set(cl_stream.METHODS) == {*strategies, *(f"{m}-dp" for m in strategies)}
    for base, strategy in strategies.items():
        private = cl_stream.document_for("minilm", f"{base}-dp", 1, None, None, "long-7")
        plain = cl_stream.document_for("minilm", base, 1, None, None, "long-7")
        assert private["privacy"] == cl_stream.PRIVACY and plain["privacy"] is None
        assert private["strategy"] == plain["strategy"] and plain["strategy"]["name"] == strategy
        assert private["name"] == plain["name"].replace("-cl-", "-cl-dp-")
        assert Scenario.model_validate(private).stream.order == "long-7"


def test_the_markdown_title_counts_the_streams_tasks() -> None:
    names = ["MNLI", "QQP", "yelp", "amazon", "SST-2", "dbpedia", "agnews"]
    cells = [[0.5] * len(names) for _ in names]
    runs = {f"osft/seed{s}": {"names": names, "initial": [0.1] * len(names), "matrix": cells,
                              "aa": 0.5, "bwt": 0.0, "fwt": 0.0, "forgetting": 0.0,
                              "minutes": 1.0} for s in (0, 1)}
    results = cl_stream.ResultsFile("never-written", resume=False)
    results.history = [{"command": "python bench/cl_stream.py", "commit": "abc",
                        "uncommitted_changes": False, "started": "2026-12-06", "cpus": 2}]
    text = cl_stream.markdown(results, cl_stream.summarise(runs), "minilm")
    assert text.startswith("# OSFT vs its baselines on a 7-task stream (MiniLM)")
    assert "| OSFT | 2 | 50.00 ± 0.00" in text
