"""TensorBoard: event files in the run's folder, through torch.utils.tensorboard."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class TensorBoardTracker:
    """One SummaryWriter in <run folder>/tensorboard; the scenario as a text summary.

    A resumed run writes a new event file in the same folder: TensorBoard shows the
    redone rounds' latest values."""

    name = "tensorboard"

    def __init__(self, log_dir: Path, scenario: dict[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter  # only when a run asks for it

        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.writer.add_text("scenario", "```json\n" + json.dumps(scenario, indent=2) + "\n```")

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()  # rounds are minutes apart on real models: show each at once

    def close(self, status: str) -> None:
        self.writer.add_text("status", status)
        self.writer.close()
