"""GET /healthz: the server is up, where its runs are, how many are executing."""

from __future__ import annotations

from fastapi import APIRouter

from server.api.dependencies import SettingsDep, StoreDep
from server.api.models import Health
from server.runs.status import ACTIVE

router = APIRouter()


@router.get("/healthz", response_model=Health)
def healthz(settings: SettingsDep, store: StoreDep) -> Health:
    return Health(runs_dir=str(settings.runs_dir), executing=store.count_runs(ACTIVE))
