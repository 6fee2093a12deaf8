"""The research benchmarks as sweep files (bench/sweeps/*.yaml): each expands and
validates; its methods and cells run exactly the shipped scenarios they stand for
(a -dp method or cell is its scenario under the benchmark's privacy plan); and
bench/sweep_results.py copies a sweep's report into bench/results."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.sweep_results import copy_report, significant
from scenarios.loader import load_scenario
from scenarios.schema import Scenario
from scenarios.sweep import Sweep, digest, load_sweep, scenario_document
from tests.conftest import ROOT, SHARED_DATA

SWEEPS = sorted((ROOT / "bench" / "sweeps").glob("*.yaml"))
needs_data = pytest.mark.skipif(not (SHARED_DATA / "cl_benchmark").is_dir(),
                                reason="the sweep files' scenarios read ../shared/data, "
                                "which this checkout lacks")


def shipped(file: str, seed: int, **sections) -> dict:
    """A shipped scenario with the seed and whole sections replaced."""
    document = load_scenario(ROOT / "scenarios" / file).model_dump(mode="json")
    return {**document, "seed": seed, **sections}


def runs(sweep: Sweep) -> dict[tuple[str, str], dict]:
    """(cell, method) -> the scenario of its first report seed (nothing is tuned)."""
    return {(s.cell, s.method): scenario_document(s, {}, sweep.spec.seeds.report[0],
                                                  sweep.spec.name, sweep.folder)
            for s in sweep.studies}


@needs_data
@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_every_bench_sweep_expands_and_validates(path: Path) -> None:
    sweep = load_sweep(path)
    assert sweep.studies and sweep.spec.reference_method in sweep.spec.methods


ONE_SETTING = ("glue_lora", "cl_stream", "cl_stream_long", "cl_stream_smollm2",
               "fedsvd_sst2_cpu", "fedsvd_sst2_paper", "fedsvd_sst2_smollm2")


@needs_data
@pytest.mark.parametrize("name", ONE_SETTING)
def test_the_old_seeded_benchmarks_tune_nothing_and_are_named_as_their_file(name: str) -> None:
    sweep = load_sweep(ROOT / "bench" / "sweeps" / f"{name}.yaml")
    assert sweep.spec.name == name  # `python bench/sweep_results.py NAME` finds its report
    assert not any(s.axes for s in sweep.studies)  # straight to the report seeds


@needs_data
def test_glue_lora_runs_the_cached_regime_per_task_setting_and_method() -> None:
    sweep = load_sweep(ROOT / "bench" / "sweeps" / "glue_lora.yaml")
    assert sweep.spec.seeds.report == (0, 1, 2, 3, 4) and sweep.spec.reference == "fedsvd"
    assert (sweep.spec.report.metrics, sweep.spec.report.last_rounds) == (("eval-acc",), 10)
    for (cell, method), document in runs(sweep).items():
        task, setting = cell.split(".")
        file = "glue-cached-lora-dp.yaml" if setting == "dp" else "glue-cached-lora.yaml"
        strategy = {"name": method, **({"svd_period": 1} if method == "fedsvd" else {})}
        expected = shipped(file, 0, strategy=strategy)
        expected["data"]["source"]["path"] = str(SHARED_DATA / "cl_benchmark" / task)
        assert digest(document) == digest(expected), (cell, method)
    assert len(sweep.studies) == 5 * 3 * 2


@needs_data
@pytest.mark.parametrize(("scale", "stem"), [("cpu", "fedsvd-sst2"), ("paper", "fedsvd-sst2-paper"),
                                             ("smollm2", "smollm2-fedsvd-sst2")])
def test_fedsvd_sst2_methods_run_the_scales_scenarios_dp_ones_the_dp_file(scale, stem) -> None:
    sweep = load_sweep(ROOT / "bench" / "sweeps" / f"fedsvd_sst2_{scale}.yaml")
    assert len(sweep.studies) == 6 and sweep.spec.report.last_rounds == 4
    for (_, method), document in runs(sweep).items():
        base = method.removesuffix("-dp")
        file = f"{stem}-dp.yaml" if method.endswith("-dp") else f"{stem}.yaml"
        strategy = {"name": base, **({"svd_period": 1} if base == "fedsvd" else {})}
        assert digest(document) == digest(shipped(file, 0, strategy=strategy)), method


PLAN = {"target_epsilon": 6.0, "delta": 1.0e-5, "max_grad_norm": 1.0, "accountant": "prv"}
STREAM_FILES = {"osft": "osft-cl-4task.yaml", "seqft": "seqft-cl-4task.yaml",
                "seqlora": "seqlora-cl-4task.yaml", "fedsvd-osft": "fedsvd-osft-cl-4task.yaml",
                "fedsvd": "seqlora-cl-4task.yaml"}


def privacy_plan(document: dict) -> dict | None:
    """The scenario's privacy plan as PLAN's fields (None: non-private)."""
    privacy = Scenario.model_validate(document).privacy
    return None if privacy is None else privacy.model_dump(include=set(PLAN))


def stream_scenario(method: str, **sections) -> dict:
    strategy = {"strategy": {"name": "fedsvd", "svd_period": 1}} if method == "fedsvd" else {}
    return shipped(STREAM_FILES[method], 0, **strategy, **sections)


@needs_data
def test_cl_stream_runs_each_methods_scenario_and_its_dp_cell_the_privacy_plan() -> None:
    sweep = load_sweep(ROOT / "bench" / "sweeps" / "cl_stream.yaml")
    assert sweep.spec.report.metrics == ("tasks.aa", "tasks.bwt", "tasks.fwt")
    documents = runs(sweep)
    assert {cell for cell, _ in documents} == {"non-private", "dp"}
    for (cell, method), document in documents.items():
        privacy = PLAN if cell == "dp" else None
        assert privacy_plan(document) == privacy
        assert digest(document) == digest(stream_scenario(method, privacy=privacy)), (cell, method)


@needs_data
def test_cl_stream_long_runs_long_7_and_its_dp_methods_carry_the_privacy_plan() -> None:
    sweep = load_sweep(ROOT / "bench" / "sweeps" / "cl_stream_long.yaml")
    order = {"order": "long-7", "benchmark_dir": str(SHARED_DATA / "cl_benchmark"),
             "test_fraction": 0.2}
    for (_, method), document in runs(sweep).items():
        base, private = method.removesuffix("-dp"), method.endswith("-dp")
        assert privacy_plan(document) == (PLAN if private else None)
        expected = stream_scenario(base, stream=order, privacy=PLAN if private else None)
        assert digest(document) == digest(expected), method


@needs_data
def test_cl_stream_smollm2_runs_the_shipped_smollm2_scenarios() -> None:
    sweep = load_sweep(ROOT / "bench" / "sweeps" / "cl_stream_smollm2.yaml")
    for (_, method), document in runs(sweep).items():
        assert digest(document) == digest(shipped(f"smollm2-{method}-cl.yaml", 0)), method


def test_a_sweeps_report_lands_in_bench_results_under_sweep_names(tmp_path: Path) -> None:
    folder = tmp_path / "runs" / "sweeps" / "demo"
    folder.mkdir(parents=True)
    (folder / "report.md").write_text("# Sweep demo\n\n![test_curves.png](test_curves.png)\n")
    report = {"id": "demo", "provenance": {"command": "orthofed sweep x", "commit": "abc"},
              "curve": [0.123456789, 2.0], "seeds": 5, "done": True}
    (folder / "report.json").write_text(json.dumps(report))
    (folder / "test_curves.png").write_bytes(b"png")
    written = copy_report("demo", tmp_path / "runs", tmp_path / "results")
    assert [p.name for p in written] == ["demo_sweep.md", "demo_sweep.json",
                                         "demo_sweep_test_curves.png"]
    assert "![test_curves.png](demo_sweep_test_curves.png)" in written[0].read_text()
    assert json.loads(written[1].read_text()) == {**report, "curve": [0.12346, 2.0]}
    assert written[2].read_bytes() == b"png"
    with pytest.raises(SystemExit, match="sweep report other"):
        copy_report("other", tmp_path / "runs", tmp_path / "results")


def test_significant_rounds_floats_only() -> None:
    assert significant(123456.7) == 123460.0 and significant(True) is True
    assert significant({"a": [1.23456789, 3]}) == {"a": [1.2346, 3]}

