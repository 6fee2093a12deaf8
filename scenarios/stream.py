"""A scenario as a sequence of tasks: what every component iterates over.

A single-task scenario is a stream of one task (data.source for federation.rounds
rounds), so the ServerApp, the clients and the privacy planner handle both the same way.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from scenarios.schema import DataSpec, Scenario


@dataclass(frozen=True)
class TaskPlan:
    """One task as the run executes it: its name, its data settings (the scenario's
    `data` section with the task's source) and its rounds."""

    name: str
    data: DataSpec
    rounds: int


@functools.lru_cache(maxsize=16)
def task_plans(scenario: Scenario) -> tuple[TaskPlan, ...]:
    """The tasks of `scenario` in order."""
    fed = scenario.federation
    if scenario.stream is None:
        return (TaskPlan(scenario.name, scenario.data, fed.rounds),)
    return tuple(
        TaskPlan(task.name, scenario.data.model_copy(update={
            "source": task.source, "instruction": task.instruction or scenario.data.instruction}),
            task.rounds or fed.rounds)
        for task in scenario.stream.tasks
    )


def total_rounds(scenario: Scenario) -> int:
    """Rounds over the whole stream."""
    return sum(plan.rounds for plan in task_plans(scenario))


def total_rounds_of_document(document: dict) -> int | None:
    """`total_rounds` of a scenario as stored (validated, as JSON), read off the JSON by
    the same rule as `task_plans` (a task's rounds, else federation.rounds): the API
    answers it per request, where validating again would cost more than the answer.
    None when the document has no federation.rounds (a run recorded by hand)."""
    per_task = (document.get("federation") or {}).get("rounds")
    if not isinstance(per_task, int):
        return None
    tasks = (document.get("stream") or {}).get("tasks") or [{}]
    return sum(task.get("rounds") or per_task for task in tasks)


def task_plan(scenario: Scenario, task_id: int) -> TaskPlan:
    """Task `task_id` of the stream; a clear error for an id out of range."""
    plans = task_plans(scenario)
    if not 0 <= task_id < len(plans):
        raise ValueError(f"task-id {task_id} is not a task of {scenario.name!r} "
                         f"(it has {len(plans)})")
    return plans[task_id]
