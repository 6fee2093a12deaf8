"""Hand-built Flower replies, for testing strategies without a simulation."""

from __future__ import annotations

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.supercore.task_identity import TaskIdentity

from strategies import keys


def as_server() -> None:
    """Messages need a task identity; this process plays the ServerApp of run 1."""
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1


def instruction(node_id: int) -> Message:
    as_server()
    return Message(RecordDict({keys.CONFIG: ConfigRecord({})}), dst_node_id=node_id,
                   message_type="train")


def train_reply(node_id: int, partition_id: int, arrays: dict[str, np.ndarray],
                num_examples: int, **metrics: float) -> Message:
    """A client's successful train reply, shaped like clients.app's."""
    content = RecordDict({
        keys.ARRAYS: ArrayRecord({k: Array(v) for k, v in arrays.items()}),
        keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: num_examples, **metrics}),
        keys.CLIENT: ConfigRecord({keys.PARTITION_ID: partition_id, keys.DEVICE: "cpu"}),
    })
    return Message(content, reply_to=instruction(node_id))


def error_reply(node_id: int, reason: str) -> Message:
    """A client's error reply: it says why, not who (the server knows whom it sampled)."""
    return Message(Error(code=1, reason=reason), reply_to=instruction(node_id))


def refusal_reply(node_id: int, partition_id: int, epsilon: float) -> Message:
    """A DP client's reply when its next round would pass its privacy budget."""
    content = RecordDict({
        keys.METRICS: MetricRecord({keys.NUM_EXAMPLES: 10, keys.REFUSED: 1, keys.EPSILON: epsilon}),
        keys.CLIENT: ConfigRecord({keys.PARTITION_ID: partition_id, keys.DEVICE: "cpu"}),
    })
    return Message(content, reply_to=instruction(node_id))
