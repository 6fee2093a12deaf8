"""OSFT's claim, read off a finished run folder: the singular triplets task t preserved
are still singular triplets of the global model after task t.

At task t's start the server kept, for each target matrix, its top k_t singular triplets
(u_i, s_i, v_i) of W_start = the global model after task t-1 (ALGORITHMS.md section 2).
They stay triplets of W_end, the model after task t, exactly when W_end v_i = s_i u_i for
each i; the check takes a fresh dense SVD of W_start (an oracle independent of the bases
the clients were sent) and reports, per matrix,

    error = ||W_end V_k^T - U_k diag(S_k)||_F / ||S_k||_2      (float64)
    moved = ||W_end - W_start||_F / ||W_end||_F                (did it train at all)

for the matrices task t preserved part of (0 < k < min(d_out, d_in)).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from server.runs.layout import RunFolder


def preserved_triplet_errors(run_dir: Path, task: int, device: str = "cpu",
                             ) -> dict[str, dict[str, float]]:
    """{matrix name: {"k", "error", "moved"}} of task `task` (>= 1) of the run in
    `run_dir`; SVDs on `device`."""
    folder = RunFolder(Path(run_dir))
    start = torch.load(folder.after_task(task - 1), map_location=device)
    end = torch.load(folder.after_task(task), map_location=device)
    plan = json.loads(folder.osft_plan(task).read_text())
    out = {}
    for name, k in plan["ranks"].items():
        if not 0 < k < min(plan["shapes"][name]):
            continue
        w_start, w_end = start[name].double(), end[name].double()
        u, s, vh = torch.linalg.svd(w_start, full_matrices=False)
        error = (w_end @ vh[:k].T - u[:, :k] * s[:k]).norm() / s[:k].norm()
        moved = (w_end - w_start).norm() / w_end.norm()
        out[name] = {"k": k, "error": float(error), "moved": float(moved)}
    return out
