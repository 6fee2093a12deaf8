"""A run's status: the one enum, and the moves between its values.

    pending --start--> running --+--> completed    (the ServerApp finished, or every
       |                         |                  client spent its privacy budget)
       |                         +--> failed       (a round failed, the launch failed,
       +--------cancel-----------+--> cancelled     Flower died; Ctrl-C, SIGTERM, HTTP)
    failed | cancelled | running (abandoned) --reopen--> pending   (orthofed resume)

A terminal status is final for writers (a late writer cannot undo it); only `reopen`,
taken by whoever resumes the run, leaves one. The store (server.runs.store) applies
these moves in single SQL statements; everyone else names statuses by this enum.
"""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED)
ACTIVE = (RunStatus.PENDING, RunStatus.RUNNING)  # waiting for, or holding, processes
REOPENABLE = (RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.RUNNING)  # RUNNING: abandoned
