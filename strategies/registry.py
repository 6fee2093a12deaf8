"""Build the strategy a scenario names. Unknown names fail with the list of known ones."""

from __future__ import annotations

from flwr.serverapp.strategy import FedAvg

from scenarios.schema import Scenario
from strategies import keys
from strategies.fedavg import FedAvgFull
from strategies.fedavg_lora import FedAvgLora
from strategies.fedex_lora import FedExLora
from strategies.fedsvd import FedSVD
from strategies.fedsvd_osft import FedSvdOsft
from strategies.ffa_lora import FfaLora
from strategies.flora import Flora
from strategies.lora_merging import LoraMerging
from strategies.osft import Osft

STRATEGIES: dict[str, type[FedAvg]] = {
    "fedavg-lora": FedAvgLora,
    "fedavg": FedAvgFull,
    "ffa-lora": FfaLora,
    "fedsvd": FedSVD,
    "osft": Osft,
    "fedsvd-osft": FedSvdOsft,
    "flora": Flora,
    "fedex-lora": FedExLora,
}


def strategy_class(name: str) -> type[FedAvg]:
    """The class registered under `name`."""
    try:
        return STRATEGIES[name]
    except KeyError:
        known = ", ".join(sorted(STRATEGIES))
        raise ValueError(f"strategy.name: unknown {name!r}; known: {known}") from None


def trained_set(name: str) -> str:
    """What clients of strategy `name` train: 'lora', 'lora-merged', 'lora-b' or 'full'."""
    return strategy_class(name).trains


def build_strategy(scenario: Scenario) -> FedAvg:
    """The scenario's strategy, training every node it is shown each round: the
    `clients_per_round` that strategies.round_policy.sampling.ClientSampler samples.

    Clients evaluate their local model inside the train reply; the global model is
    evaluated on the server (evaluate_fn), so Flower's federated evaluate round is off.
    """
    fed = scenario.federation
    params = scenario.strategy.model_dump(exclude={"name"})
    cls = strategy_class(scenario.strategy.name)
    if issubclass(cls, LoraMerging):  # they fold s B A into W themselves
        lora = scenario.model.lora
        params.update(lora_scaling=lora.alpha / lora.rank, seed=scenario.seed)
    return cls(
        fraction_train=1.0,
        min_train_nodes=fed.clients_per_round,
        min_available_nodes=fed.clients_per_round,
        fraction_evaluate=0.0,
        weighted_by_key=keys.NUM_EXAMPLES,
        arrayrecord_key=keys.ARRAYS,
        **params,
    )
