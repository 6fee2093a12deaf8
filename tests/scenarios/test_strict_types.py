"""Careless types are mistakes, named by their field: no bool for a number, no quoted
number, no over-long name; and a privacy budget no noise multiplier can reach is refused
at validation with the smallest epsilon the plan reaches (checked against Opacus's own
get_noise_multiplier, which refuses below it and plans just above it)."""

from __future__ import annotations

import pytest
import yaml
from opacus.accountants.utils import get_noise_multiplier

from clients.checks import check_privacy_budget
from clients.data.tasks import train_sizes
from clients.training.privacy import planned_sample_rate, planned_steps, smallest_reachable_epsilon
from scenarios.loader import ScenarioError, load_scenario
from server.cli.commands import main
from tests.conftest import ROOT

QUICK = yaml.safe_load((ROOT / "scenarios" / "quick.yaml").read_text())


@pytest.mark.parametrize("path, value, says", [
    (("federation", "rounds"), True, "federation.rounds: must be a valid integer"),
    (("seed",), "0", "seed: must be a valid integer"),
    (("federation", "optimizer", "lr"), "0.5", "federation.optimizer.lr: must be a valid number"),
    (("name",), "x" * 5000, "name: string should have at most 64 characters"),
])
def test_careless_types_are_refused_by_field(tmp_path, capsys, path, value, says) -> None:
    document = yaml.safe_load(yaml.safe_dump(QUICK))
    target = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    file = tmp_path / "careless.yaml"
    file.write_text(yaml.safe_dump(document))
    with pytest.raises(ScenarioError) as refused:
        load_scenario(file)
    assert any(line.startswith(says) for line in refused.value.errors), refused.value.errors
    assert main(["validate", str(file)]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err


def test_an_unreachable_epsilon_is_refused_naming_the_smallest_reachable(tmp_path) -> None:
    document = yaml.safe_load(yaml.safe_dump(QUICK))
    document["privacy"] = {"target_epsilon": 1e-300}
    file = tmp_path / "tiny-budget.yaml"
    file.write_text(yaml.safe_dump(document))
    scenario = load_scenario(file)
    q = max(planned_sample_rate(train_sizes(scenario, p), scenario.federation.batch_size)
            for p in range(scenario.federation.num_clients))
    steps = planned_steps(scenario)
    floor = smallest_reachable_epsilon(scenario.privacy, q, steps)
    (line,) = check_privacy_budget(scenario)
    assert line.startswith(f"privacy.target_epsilon: must be at least {floor:.3g}")
    # The oracle: Opacus refuses just below the floor and plans just above it.
    with pytest.raises(ValueError, match="too low"):
        get_noise_multiplier(target_epsilon=floor * 0.9, target_delta=1e-5, sample_rate=q,
                             steps=steps, accountant="rdp")
    get_noise_multiplier(target_epsilon=floor * 1.1, target_delta=1e-5, sample_rate=q,
                         steps=steps, accountant="rdp")
    document["privacy"] = {"target_epsilon": 8.0}
    file.write_text(yaml.safe_dump(document))
    assert check_privacy_budget(load_scenario(file)) == []
    document["privacy"] = {"target_epsilon": 1e-300}
    file.write_text(yaml.safe_dump(document))
    assert main(["validate", str(file)]) == 2


def test_the_planned_sizes_are_the_tokenized_training_sets() -> None:
    from clients.data.tasks import client_data

    scenario = load_scenario(ROOT / "scenarios" / "quick.yaml")
    for partition in range(scenario.federation.num_clients):
        tokenized = len(client_data(scenario, partition).train)
        assert train_sizes(scenario, partition) == [tokenized]
