"""The cached bottom layers' features on disk, shared by every process and run whose
bottom layers are the same (`model.feature_cache: disk`).

With `model.cached_layers`, most of a run's compute is the first pass of each example
through the frozen bottom layers: a client's Poisson batches reach most of its rows over
50 rounds, and each run, each of the server's and clients' processes, starts with an
empty in-memory cache. A sweep repeats that for every setting and seed, although the
bottom layers and the examples never change. This store keeps each example's features
(float32, its real tokens only) in one SQLite file per set of bottom layers, named by a
hash of their weights and the layer count, under ORTHOFED_CACHE/features: the server,
the clients and concurrent runs read and add to it (WAL; a row is written once, the
first writer wins). Values are what the bottom layers output for that example; the
examples of one batch do not interact (right padding, see clients.models.cached_layers),
so a stored row equals a recomputed one up to float rounding of the batch's matmuls.
"""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import torch
from torch import nn

from clients.models.decoders import cache_root

SCHEMA = "CREATE TABLE IF NOT EXISTS features (key BLOB PRIMARY KEY, tokens INTEGER, value BLOB)"
BATCH_QUERY_LIMIT = 500  # SQLite's bound parameters per statement stay well under 999


def bottom_fingerprint(bottom: nn.Module, count: int) -> str:
    """A hash of the bottom layers' weights (and how many): the store's file name, so a
    different model, revision or layer count never reads another's features."""
    digest = hashlib.sha256(f"layers={count}".encode())
    for name, tensor in bottom.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


class FeatureStore:
    """Per example key (its token ids and types), its bottom-layer features on disk."""

    def __init__(self, path: Path, hidden_size: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path, self.hidden_size = path, hidden_size
        self.db = sqlite3.connect(path, timeout=120, isolation_level=None,
                                  check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(SCHEMA)

    def __deepcopy__(self, memo: dict) -> FeatureStore:
        return self  # a handle on one shared file: a copied model shares it

    def __getstate__(self) -> dict:  # pickled (Ray, torch.save): the path, not the connection
        return {"path": self.path, "hidden_size": self.hidden_size}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["hidden_size"])

    @classmethod
    def for_bottom(cls, bottom: nn.Module, count: int, hidden_size: int) -> FeatureStore:
        name = f"{bottom_fingerprint(bottom, count)}.sqlite"
        return cls(cache_root() / "features" / name, hidden_size)

    def load(self, keys: list[bytes]) -> dict[bytes, torch.Tensor]:
        """The stored features of those of `keys` that are on disk (CPU tensors)."""
        found: dict[bytes, torch.Tensor] = {}
        for start in range(0, len(keys), BATCH_QUERY_LIMIT):
            chunk = keys[start:start + BATCH_QUERY_LIMIT]
            marks = ",".join("?" * len(chunk))
            rows = self.db.execute(
                f"SELECT key, tokens, value FROM features WHERE key IN ({marks})", chunk)
            for key, tokens, value in rows:
                flat = torch.frombuffer(bytearray(value), dtype=torch.float32)
                found[bytes(key)] = flat.view(tokens, self.hidden_size)
        return found

    def save(self, features: dict[bytes, torch.Tensor]) -> None:
        """Store new features in one transaction; a key already there is left as it is."""
        rows = [(key, value.shape[0], value.detach().to("cpu", torch.float32).contiguous()
                 .numpy().tobytes()) for key, value in features.items()]
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany("INSERT OR IGNORE INTO features VALUES (?, ?, ?)", rows)
