"""The base of every scenario section."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Spec(BaseModel):
    """Base of every scenario section: frozen, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)
