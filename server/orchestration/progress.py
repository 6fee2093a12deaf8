"""Terminal views of a run: a live progress bar per round, and the final table (rich)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from server.runs.continual import fwt_basis
from server.runs.store import MetricsStore


class RoundProgress:
    """A progress bar that advances as rounds land in the store."""

    def __init__(self, store: MetricsStore, run_id: str, total_rounds: int,
                 console: Console) -> None:
        self.store, self.run_id = store, run_id
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(),
                                 TextColumn("{task.fields[last]}"), console=console)
        self.task = self.progress.add_task("starting Flower", total=total_rounds, last="")

    def __enter__(self) -> RoundProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def tick(self) -> None:
        """Read the store and show the rounds done and the last metrics."""
        rounds = [r for r in self.store.rounds(self.run_id) if r["round"] > 0 and r["eval"]]
        last = ""
        if rounds:
            r = rounds[-1]  # a private run's clients report no loss (scenarios.disclosure)
            loss = r["train"].get("train-loss")
            last = ((f"loss {loss:.3f}  " if loss is not None else "")
                    + f"acc {r['eval'].get('eval-acc', float('nan')):.3f}")
        self.progress.update(self.task, completed=len(rounds), last=last,
                             description="rounds" if rounds else "starting Flower")


def rounds_table(summary: dict[str, Any]) -> Table:
    """Per round: task, clients, failures, mean train loss, global test accuracy."""
    table = Table(title=f"run {summary['run_id']} ({summary['status']})")
    for column in ("round", "task", "clients", "failures", "train loss", "local eval acc",
                   "test acc", "test loss"):
        table.add_column(column, justify="right")
    for r in summary["rounds"]:
        train, ev = r["train"], r["eval"]
        table.add_row(str(r["round"]), str(r["task"]), _fmt(train.get("clients"), "d"),
                      _fmt(train.get("failures"), "d"), _fmt(train.get("train-loss")),
                      _fmt(train.get("local-eval-acc")), _fmt(ev.get("eval-acc")),
                      _fmt(ev.get("eval-loss")))
    return table


def _fmt(value: Any, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def clients_table(summary: dict[str, Any]) -> Table:
    """Per client: rounds joined, failures, refusals and the epsilon spent (under DP);
    the caption says what a private run's epsilon does not cover."""
    excludes = summary.get("privacy", {}).get("excludes")
    table = Table(title="clients", caption="; ".join(excludes) if excludes else None)
    for column in ("partition", "rounds joined", "failures", "refusals", "epsilon spent"):
        table.add_column(column, justify="right")
    for pid, client in summary["clients"].items():
        table.add_row(pid, str(len(client["rounds"])), str(client["failures"]),
                      str(client.get("refusals", 0)), _fmt(client.get("epsilon"), ".3f"))
    return table


def tasks_table(summary: dict[str, Any]) -> Table:
    """The accuracy matrix of a task stream (rows: after each task; "initial": before the
    stream), then the linear-probe matrix FWT is measured on (server.serverapp.probe; a causal
    LM has none: FWT is on the accuracy matrix), with AA, BWT and FWT (or why it is
    unavailable) in the caption."""
    tasks = summary["tasks"]
    fwt = (f"({fwt_basis(tasks.get('fwt_source'))}) {_fmt(tasks['fwt'], '.4f')}"
           if tasks.get("fwt") is not None else f"- ({tasks.get('fwt_source') or 'unavailable'})")
    table = Table(title="accuracy on each task (columns) after each task (rows)",
                  caption=f"AA {_fmt(tasks['aa'], '.4f')}   BWT {_fmt(tasks['bwt'], '.4f')}   "
                          f"FWT {fwt}")
    table.add_column("after", justify="right")
    for name in tasks["names"]:
        table.add_column(name, justify="right")
    _matrix_rows(table, tasks["names"], tasks["initial"], tasks["matrix"], "")
    if tasks.get("probe_initial") or tasks.get("probe_matrix"):
        table.add_section()
        _matrix_rows(table, tasks["names"], tasks["probe_initial"], tasks["probe_matrix"],
                     "probe ")
    return table


def _matrix_rows(table: Table, names: list[str], initial: list, matrix: list[list],
                 prefix: str) -> None:
    if initial:
        table.add_row(f"{prefix}initial", *(_fmt(a) for a in initial))
    for name, row in zip(names, matrix, strict=False):
        table.add_row(f"{prefix}{name}", *(_fmt(a) for a in row))
