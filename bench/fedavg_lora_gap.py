"""How inexact FedAvg-LoRA's aggregation is in the shipped SST-2 regime, round by round.

FedAvg-LoRA averages A and B apart, so the model gets mean(B) mean(A) where the clients'
updates average to mean(B A) (ALGORITHMS.md section 1); FFA-LoRA and FedSVD are exact.
This runs `--rounds` rounds of scenarios/fedavg-lora-sst2.yaml through the ClientApp's
own round (clients.app.train_round) and FedAvg-LoRA's own aggregation, and prints
per round, over the LoRA pairs:

    inexactness = ||mean_k(B_k) mean_k(A_k) - mean_k(B_k A_k)|| / ||mean_k(B_k A_k) - B_t A_t||

(the error the server makes, relative to the update it should make), how far A has moved
from its initialisation, ||A_t - A_0|| / ||A_0||, and the test accuracy. Weighted means
by num-examples, as the strategy does.

Usage: python bench/fedavg_lora_gap.py [--rounds 4] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from flwr.app import ArrayRecord, ConfigRecord, RecordDict  # noqa: E402

from clients.app import train_round  # noqa: E402
from clients.data.tasks import server_test_set  # noqa: E402
from clients.models.factory import build_model, global_state, load_trainable  # noqa: E402
from clients.training.loop import evaluate  # noqa: E402
from scenarios.loader import load_scenario  # noqa: E402
from strategies import keys  # noqa: E402
from strategies.round_policy.sampling import ShuffledDeck  # noqa: E402


def pairs(state: dict[str, torch.Tensor]) -> list[tuple[str, str]]:
    return [(n, n.replace(".lora_A.", ".lora_B.")) for n in state if ".lora_A." in n]


def weighted(states: list[dict], weights: list[float], fn) -> torch.Tensor:
    return sum(w * fn(s) for s, w in zip(states, weights, strict=True)) / sum(weights)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    document = load_scenario(ROOT / "scenarios" / "fedavg-lora-sst2.yaml").model_dump(mode="json")
    scenario = load_scenario({**document, "seed": args.seed})
    server = build_model(scenario.model, 2, scenario.seed, "lora")
    initial = global_state(server)
    deck, test_set = ShuffledDeck(scenario.seed), server_test_set(scenario)
    print(f"{'round':>5} {'inexactness':>12} {'|A-A0|/|A0|':>12} {'test acc':>9}")
    for server_round in range(1, args.rounds + 1):
        start = global_state(server)
        replies, sizes = [], []
        for partition in deck.deal(scenario.federation.num_clients,
                                   scenario.federation.clients_per_round):
            content = RecordDict({keys.ARRAYS: ArrayRecord(start), keys.CONFIG: ConfigRecord(
                {keys.SERVER_ROUND: server_round, keys.TASK_ID: 0})})
            reply = train_round(scenario, partition, content, RecordDict())
            replies.append(reply[keys.ARRAYS].to_torch_state_dict())
            sizes.append(float(reply[keys.METRICS][keys.NUM_EXAMPLES]))
        averaged = {n: weighted(replies, sizes, lambda s, n=n: s[n].double()) for n in replies[0]}
        error = update = moved = base = 0.0
        for a, b in pairs(averaged):
            exact = weighted(replies, sizes, lambda s, a=a, b=b: s[b].double() @ s[a].double())
            error += (averaged[b] @ averaged[a] - exact).pow(2).sum().item()
            update += (exact - start[b].double() @ start[a].double()).pow(2).sum().item()
            moved += (averaged[a] - initial[a].double()).pow(2).sum().item()
            base += initial[a].double().pow(2).sum().item()
        load_trainable(server, {n: v.float() for n, v in averaged.items()})  # FedAvg-LoRA's step
        accuracy = evaluate(server, test_set, torch.device("cpu")).accuracy
        print(f"{server_round:>5} {(error / update) ** 0.5:12.4f} {(moved / base) ** 0.5:12.4f} "
              f"{accuracy:9.3f}", flush=True)


if __name__ == "__main__":
    main()
