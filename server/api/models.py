"""The API's response bodies: typed, so /docs shows them and clients can rely on them."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from server.runs.status import RunStatus

Status = RunStatus  # the one enum of run statuses (server.runs.status)


class Health(BaseModel):
    status: Literal["ok"] = "ok"
    runs_dir: str = Field(description="Where this server keeps runs and the store.")
    executing: int = Field(description="Runs pending or running now.")


class RunInfo(BaseModel):
    id: str
    name: str = Field(description="The scenario's name.")
    status: Status
    message: str | None = Field(None, description="Why it failed or stopped, for humans.")
    created: float = Field(description="Unix time the run was queued.")
    started: float | None = None
    ended: float | None = None
    privacy_note: str | None = Field(
        None, description="Private runs only: what epsilon does not cover (un-noised metrics "
        "the scenario let clients report, client rows read by the server, seeded noise); "
        "None when it covers everything the clients released, or the run is not private.")


class RunList(BaseModel):
    runs: list[RunInfo]
    total: int = Field(description="Runs matching the filter, over all pages.")
    limit: int
    offset: int


class RunDetail(RunInfo):
    scenario: dict[str, Any] = Field(description="The scenario as validated.")
    rounds: int = Field(description="Rounds recorded so far (round 0: the initial model).")
    planned_rounds: int | None = Field(
        None, description="Global rounds the scenario plans: its stream tasks' rounds summed "
        "(federation.rounds for a task that gives none), federation.rounds for a single "
        "task; None when the stored scenario does not say.")


class Round(BaseModel):
    round: int = Field(description="Global round, counted across the tasks of a stream.")
    task: int
    train: dict[str, float] = Field(description="Aggregated client metrics of the round.")
    eval: dict[str, float] = Field(description="The global model on the test split.")


class RoundList(BaseModel):
    run_id: str
    rounds: list[Round]


class EpsilonPoint(BaseModel):
    round: int
    epsilon: float = Field(description="DP budget spent up to and including this round.")


class Client(BaseModel):
    partition_id: str
    rounds: list[int] = Field(description="Rounds this client trained in.")
    failures: int
    refusals: int = Field(description="Rounds refused because they would pass its DP budget.")
    epsilon: float | None = Field(None, description="DP budget spent so far (DP runs only).")
    epsilon_by_round: list[EpsilonPoint] = Field(
        default_factory=list, description="The epsilon it reported in each round it was "
        "sampled in (refused rounds too), in round order (DP runs only).")
    last: dict[str, Any] | None = Field(None, description="Its metrics in its last round.")
    reasons: list[str] = Field(default_factory=list, description="Why it failed, per failure.")


class ClientList(BaseModel):
    run_id: str
    clients: list[Client]


class Tasks(BaseModel):
    run_id: str
    names: list[str] = Field(default_factory=list)
    initial: list[float] = Field(default_factory=list, description="Before the stream.")
    matrix: list[list[float]] = Field(
        default_factory=list, description="Row i: accuracy on every task after task i.")
    probe_initial: list[float | None] = Field(
        default_factory=list, description="Linear-probe accuracy on every task before the "
        "stream (empty: the run recorded no probes).")
    probe_matrix: list[list[float | None]] = Field(
        default_factory=list, description="Row i: linear-probe accuracy on every task after "
        "task i (a logistic regression on the features the task head reads).")
    aa: float | None = None
    bwt: float | None = None
    fwt: float | None = Field(None, description="Forward transfer: of the linear probes "
                              "(encoders), of the accuracy matrix (causal LMs); None: "
                              "unavailable, fwt_source says why.")
    fwt_source: str | None = Field(None, description="What FWT was measured on, or why it is "
                                   "unavailable.")
    forgetting: list[float] = Field(default_factory=list)


class Problem(BaseModel):
    """An error: what went wrong; for a scenario, every problem by its path; for a bad
    query parameter, FastAPI's own validation records."""

    detail: str | list[str] | list[dict[str, Any]]


class SweepInfo(BaseModel):
    id: str = Field(description="The sweep's name.")
    status: Status
    message: str | None = Field(None, description="Why it failed or stopped, for humans.")
    created: float = Field(description="Unix time the sweep was first started.")
    updated: float = Field(description="Unix time its status last changed.")


class SweepList(BaseModel):
    sweeps: list[SweepInfo] = Field(description="Newest first.")


class SweepDetail(BaseModel):
    """server.runs.sweep_results: what has finished so far."""

    id: str
    status: Status
    message: str | None = None
    file: str | None = Field(None, description="Its sweep file (relative to the runs folder "
                             "when it lies there, else its name).")
    spec: dict[str, Any] = Field(description="The sweep file as validated.")
    studies: list[dict[str, Any]] = Field(
        description="Per grid cell and method: its tuned settings with their validation "
        "scores, the chosen setting, its report values {metric: {seed: value}}, and its "
        "runs (phase, setting, seed, run_id, status).")
    table: dict[str, Any] = Field(
        description="The report: per study the chosen setting's metrics over the report "
        "seeds (spread: mean, sd, 95 % t-interval), and each method minus the reference "
        "method paired by seed (p-values Holm-corrected per metric).")
    curves: dict[str, dict[str, list[tuple[int, float | None]]]] = Field(
        default_factory=dict, description="Per study and report seed: [round, value] of the "
        "first report metric.")
