"""Per-round checkpoints of a run, and finding the newest intact one.

After every completed round the ServerApp saves where the run stands (`RunState`) as
runs/<id>/checkpoints/round-<R>-task-<t>.pt. Each file is written to a temporary name in the
same folder, flushed to disk, then renamed over its final name (atomic on POSIX), so a
crash at any instant leaves either the previous checkpoint or the new one, never half
of one; only the newest `keep` are kept. What every round of a task shares (OSFT's
preserved bases, a LoRA stream's merged base weights) is saved once per task,
task-<t>.pt, the same way. Files are read back with torch.load(weights_only=True):
tensors and plain Python values only, never arbitrary pickled objects.
"""

from __future__ import annotations

import hashlib
import os
import random
from dataclasses import asdict, dataclass, field
from logging import WARNING
from pathlib import Path

import torch
from flwr.supercore import log

from scenarios.schema import Scenario
from server.runs.layout import RunFolder

FORMAT = 1  # bump when RunState changes shape; older files are then refused by name


@dataclass
class RunState:
    """Where a run stands after its global round `round`: all that resume needs.

    `model` holds what the server owns of the global model (the trained tensors, every
    task's head); the frozen rest is rebuilt from the seed, a LoRA stream's merged base
    weights come from the task file. `ledgers` are the clients' privacy ledgers as they
    last reported them (strategies.ledger_record.PrivacyLedger.to_record), `out_of_budget` the
    partitions that refused this task, `rng` the server's random states (its client
    sampler's, torch's).
    """

    round: int                     # last completed global round
    task: int                      # the task that round belongs to
    task_rounds: int               # rounds of `task` completed
    model: dict[str, torch.Tensor]
    scenario_digest: str
    ledgers: dict[int, dict] = field(default_factory=dict)
    out_of_budget: list[int] = field(default_factory=list)
    rng: dict = field(default_factory=dict)
    format: int = FORMAT


def scenario_digest(scenario: Scenario) -> str:
    """SHA-256 of the validated scenario: a checkpoint only resumes the run it came from."""
    return hashlib.sha256(scenario.model_dump_json().encode()).hexdigest()[:16]


def rng_state(sampler: random.Random) -> dict:
    """The server's random states: its client sampler's and torch's CPU generator."""
    return {"sampling": sampler.getstate(), "torch": torch.get_rng_state()}


def restore_rng(state: dict, sampler: random.Random) -> None:
    sampler.setstate(state["sampling"])
    torch.set_rng_state(state["torch"])


def save_atomically(obj: object, path: Path) -> None:
    """torch.save `obj` to `path` so that `path` is always either absent, the old
    file or the whole new one: write a temporary sibling, fsync, rename, fsync the
    folder (so the rename itself survives a power cut)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as out:
            torch.save(obj, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


class Checkpoints:
    """The checkpoints folder of one run."""

    def __init__(self, run_dir: Path, keep: int) -> None:
        self.folder = RunFolder(Path(run_dir)).checkpoints
        self.keep = keep

    def round_path(self, round_: int, task: int) -> Path:
        return self.folder / f"round-{round_:06d}-task-{task:04d}.pt"

    def task_path(self, task: int) -> Path:
        return self.folder / f"task-{task:04d}.pt"

    def rounds(self) -> list[Path]:
        """Round checkpoints on disk, newest first."""
        return sorted(self.folder.glob("round-*-task-*.pt"), reverse=True)

    def save(self, state: RunState) -> Path:
        """Write round `state.round`, then delete all but the newest `keep` and the task
        files no kept checkpoint needs."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.round_path(state.round, state.task)
        save_atomically(asdict(state), path)
        for old in self.rounds()[self.keep:]:
            old.unlink(missing_ok=True)
        oldest_task = min(int(p.stem.rsplit("-", 1)[1]) for p in self.rounds())
        for task_file in self.folder.glob("task-*.pt"):
            if int(task_file.stem.split("-")[1]) < oldest_task:
                task_file.unlink(missing_ok=True)
        return path

    def latest(self, digest: str) -> RunState | None:
        """The newest checkpoint that loads whole and belongs to this scenario; None if
        there is none at all. A damaged file is skipped with a warning for an older one;
        when there are checkpoints but none loads, or one is of another scenario, this
        raises rather than let a resume start the run over unasked."""
        problems = []
        for path in self.rounds():
            try:
                state = RunState(**torch.load(path, weights_only=True, map_location="cpu"))
                if state.format != FORMAT:
                    raise ValueError(f"format {state.format}, not {FORMAT}")
            except Exception as exc:  # noqa: BLE001 - any damage: fall back to an older one
                log(WARNING, "checkpoint %s is unreadable (%s): trying an older one", path, exc)
                problems.append(f"{path.name}: {exc}")
                continue
            if state.scenario_digest != digest:
                raise ValueError(f"checkpoint {path} belongs to another scenario (digest "
                                 f"{state.scenario_digest}, this run's is {digest})")
            return state
        if problems:
            raise ValueError(f"no checkpoint in {self.folder} loads: " + "; ".join(problems))
        return None

    def remove_temporaries(self) -> None:
        """Half-written files a killed writer left (never read: they are not renamed)."""
        for tmp in self.folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)

    def save_task(self, task: int, digest: str,
                  records: dict[str, dict[str, torch.Tensor]]) -> None:
        """What every train message of task `task` carries besides the global arrays."""
        self.folder.mkdir(parents=True, exist_ok=True)
        save_atomically({"scenario_digest": digest, "records": records}, self.task_path(task))

    def load_task(self, task: int, digest: str) -> dict[str, dict[str, torch.Tensor]] | None:
        """The task's saved records; None when absent or unusable (damaged, or of another
        scenario), with a warning for the latter."""
        try:
            saved = torch.load(self.task_path(task), weights_only=True, map_location="cpu")
            if saved["scenario_digest"] != digest:
                raise ValueError(f"of another scenario ({saved['scenario_digest']})")
            return saved["records"]
        except FileNotFoundError:
            return None
        except Exception as exc:  # noqa: BLE001 - unusable: the caller decides
            log(WARNING, "task file %s is unusable (%s)", self.task_path(task), exc)
            return None
