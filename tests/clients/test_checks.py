"""Checks repeated in one process (a sweep's expanded scenarios, the API's requests)
answer as a fresh process would: a data file changed between two checks is read again.
Validation imports no heavy library it does not need, so that it cannot quietly slow
down again. No absolute times here: bench/validate_speed.py measures them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from clients.checks import RATE_ONE_SLACK, check_scenario, check_scenarios
from clients.data.tasks import train_sizes
from clients.training.privacy import planned_sample_rate, planned_steps, smallest_reachable_epsilon
from scenarios.loader import load_scenario
from tests.conftest import ROOT, SHARED_DATA

HEAVY = ("torch", "transformers", "flwr_datasets", "datasets", "matplotlib", "seaborn",
         "opacus", "peft")


def imported_after(code: str) -> list[str]:
    """Which HEAVY libraries a fresh interpreter has imported after running `code`."""
    probe = f"{code}\nimport sys; print([m for m in {HEAVY!r} if m in sys.modules])"
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1].replace("'", '"'))


def test_validating_the_quick_scenario_imports_no_heavy_library() -> None:
    assert imported_after("import clients.checks") == []
    assert imported_after("from server.cli.commands import main\n"
                          "assert main(['validate', 'scenarios/quick.yaml']) == 0") == []


@pytest.mark.skipif(not (SHARED_DATA / "cl_benchmark" / "SST-2").is_dir(),
                    reason="shared data not present")
def test_a_private_minilm_scenario_needs_neither_transformers_nor_flwr_datasets() -> None:
    """MiniLM's module names come from its config.json, and the privacy plan settles at
    rate 1 without reading the data: only Opacus (and torch under it) is imported."""
    loaded = imported_after("from clients.checks import check_scenario\n"
                            "from scenarios.loader import load_scenario\n"
                            "assert check_scenario(load_scenario("
                            "'scenarios/glue-cached-lora-dp.yaml')) == []")
    assert set(loaded) <= {"torch", "opacus"}


def test_a_causal_lms_prompt_check_reads_no_rows(quick_document, write_scenario) -> None:
    """The prompts need the label texts alone: a generated task's topics, a CL-benchmark
    folder's labels.json; neither datasets nor flwr-datasets (seaborn) is imported."""
    quick_document["model"] = {"name": "tiny-llama", "max_length": 48}
    path = write_scenario(quick_document)
    loaded = imported_after("from clients.checks import check_scenario\n"
                            "from scenarios.loader import load_scenario\n"
                            f"assert check_scenario(load_scenario({str(path)!r})) == []")
    assert not set(loaded) & {"datasets", "flwr_datasets", "matplotlib", "seaborn"}, loaded


def test_label_names_read_without_rows_are_the_loaded_tasks(quick_document, tmp_path) -> None:
    from clients.data.tasks import cached_task, label_names

    write_task(tmp_path / "task", 30, labels=("x", "y"))
    for source in ({"kind": "generated", "num_labels": 3, "first_topic": 6},
                   {"kind": "cl-json", "path": str(tmp_path / "task")}):
        quick_document["data"]["source"] = source
        spec = load_scenario(quick_document).data
        assert label_names(spec, 3) == cached_task(spec, 3).label_names


def test_check_scenarios_answers_each_as_one_by_one(quick_document, tmp_path) -> None:
    bad_schema = yaml.safe_load(yaml.safe_dump(quick_document))
    bad_schema["federation"]["rounds"] = 0
    bad_disk = yaml.safe_load(yaml.safe_dump(quick_document))
    bad_disk["data"]["source"] = {"kind": "cl-json", "path": "nowhere"}
    other_lr = yaml.safe_load(yaml.safe_dump(quick_document))
    other_lr["federation"]["optimizer"]["lr"] = 0.5
    results = check_scenarios([quick_document, bad_schema, bad_disk, other_lr], base=tmp_path)
    assert results == [[], ["federation.rounds: must be >= 1, got 0"],
                       [f"data.source.path: no such folder {str(tmp_path / 'nowhere')!r}"], []]
    assert check_scenarios([load_scenario(quick_document)]) == [[]]


def write_task(folder: Path, train_rows: int, labels=("a", "b", "c")) -> None:
    """A CL-benchmark task folder: labels.json, train.json, test.json."""
    folder.mkdir(exist_ok=True)
    rows = [{"sentence": f"row {i}", "label": labels[i % len(labels)]} for i in range(train_rows)]
    before = {name: (folder / name).stat().st_mtime_ns for name in ("labels.json", "train.json")
              if (folder / name).exists()}
    (folder / "labels.json").write_text(json.dumps(list(labels)))
    (folder / "train.json").write_text(json.dumps(rows))
    (folder / "test.json").write_text(json.dumps(rows[:30]))
    for name, mtime in before.items():  # a clock tick may not have moved mtime yet
        os.utime(folder / name, ns=(mtime + 10**9, mtime + 10**9))


def fresh_errors(path: Path) -> list[str]:
    """check_scenario's lines from a new interpreter: nothing cached."""
    code = ("import json, sys\nfrom clients.checks import check_scenario\n"
            "from scenarios.loader import load_scenario\n"
            f"print(json.dumps(check_scenario(load_scenario({str(path)!r}))))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_changed_data_file_changes_the_privacy_plan_of_a_repeated_check(
        quick_document, write_scenario, tmp_path) -> None:
    """600 rows give each of 3 clients a low sampling rate, 30 rows rate 1; a target
    between the two floors passes, then fails once train.json shrinks, in one process
    as in a fresh one, and passes again when it grows back."""
    folder = tmp_path / "task"
    quick_document["data"]["source"] = {"kind": "cl-json", "path": str(folder)}
    quick_document["privacy"] = {"target_epsilon": 1.0, "accountant": "rdp"}

    def floor(train_rows: int) -> float:
        write_task(folder, train_rows)
        scenario = load_scenario(write_scenario(quick_document))
        q = max(planned_sample_rate(train_sizes(scenario, p), scenario.federation.batch_size)
                for p in range(scenario.federation.num_clients))
        return smallest_reachable_epsilon(scenario.privacy, q, planned_steps(scenario))

    many, few = floor(600), floor(30)
    assert many < few  # a few parts in a billion apart: the target goes between
    quick_document["privacy"]["target_epsilon"] = (many + few) / 2
    path = write_scenario(quick_document)
    write_task(folder, 600)
    assert check_scenario(load_scenario(path)) == []
    write_task(folder, 30)
    errors = check_scenario(load_scenario(path))
    assert len(errors) == 1 and errors[0].startswith("privacy.target_epsilon: must be at least")
    assert "at sampling rate up to 1" in errors[0]
    assert errors == fresh_errors(path)
    write_task(folder, 600)
    assert check_scenario(load_scenario(path)) == []


def test_a_changed_label_file_changes_the_prompt_check_of_a_repeated_check(
        quick_document, write_scenario, tmp_path) -> None:
    """A causal LM's prompts name every label: longer label texts in labels.json no
    longer fit model.max_length, and a repeated check says so."""
    folder = tmp_path / "task"
    quick_document["model"] = {"name": "tiny-llama", "max_length": 48}
    quick_document["data"]["source"] = {"kind": "cl-json", "path": str(folder)}
    path = write_scenario(quick_document)
    write_task(folder, 60)
    assert check_scenario(load_scenario(path)) == []
    write_task(folder, 60, labels=tuple(f"a rather long label text number {i}" for i in range(3)))
    errors = check_scenario(load_scenario(path))
    assert len(errors) == 1 and errors[0].startswith("model.max_length: 48 tokens leave no room")
    assert errors == fresh_errors(path)


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_no_sampling_rate_needs_more_epsilon_than_rate_one(quick_document, accountant) -> None:
    """The privacy check's shortcut: the floor at any rate stays within RATE_ONE_SLACK of
    the floor at rate 1 (q = 0.5 is left out: Opacus takes seconds there)."""
    quick_document["privacy"] = {"target_epsilon": 1.0, "accountant": accountant}
    spec = load_scenario(quick_document).privacy
    for delta, steps in ((1e-5, 30), (1e-5, 1500), (0.5, 30)):  # delta 0.5: floors below 0
        spec = spec.model_copy(update={"delta": delta})
        rate_one = smallest_reachable_epsilon(spec, 1.0, steps)
        for q in (0.001, 0.0123, 0.1, 0.333, 0.9):
            floor = smallest_reachable_epsilon(spec, q, steps)
            assert floor <= rate_one + abs(rate_one) * RATE_ONE_SLACK, (delta, steps, q)


def test_a_fixed_noise_multiplier_has_no_budget_to_refuse(quick_document, write_scenario) -> None:
    """privacy.noise_multiplier: no target epsilon, so no plan to refuse, however much
    epsilon the sigma will spend (a small sigma over 200 rounds): the check passes without
    Opacus or the data. The same plan with a target below its floor is refused."""
    from clients.checks import check_privacy_budget

    quick_document["federation"]["rounds"] = 200
    quick_document["privacy"] = {"noise_multiplier": 0.05}
    path = write_scenario(quick_document)
    assert check_privacy_budget(load_scenario(path)) == []
    assert imported_after("from clients.checks import check_scenario\n"
                          "from scenarios.loader import load_scenario\n"
                          f"assert check_scenario(load_scenario({str(path)!r})) == []") == []
    quick_document["privacy"] = {"target_epsilon": 1e-300}
    (line,) = check_privacy_budget(load_scenario(write_scenario(quick_document)))
    assert line.startswith("privacy.target_epsilon: must be at least")
