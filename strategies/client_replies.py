"""Reading the clients' train replies: who sent what, who failed and why, in what order.

Pure functions of Flower messages; the recording wrapper (strategies.recording) and
its collaborators (strategies.round_policy) build on them. A reply's partition is the
one it names in its `client` record; an error reply names nothing, so its partition is
the one the server sampled its node as (the `sampled` {node id: partition id} map).
"""

from __future__ import annotations

import re

from flwr.app import ConfigRecord, Message, MetricRecord

from strategies import keys

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
REASON_MAX = 500  # characters of an error reason kept in the store

Failure = tuple[int | None, str, str]  # (partition id, node id, reason)


def split_replies(replies: list[Message], sampled: dict[int, int | None] | None = None,
                  ) -> tuple[dict[int, dict], list[Failure]]:
    """({partition_id: metrics} of the results, [(partition_id, node_id, reason)] of errors).
    An error's partition is the one its node was sampled as, from `sampled`
    {node: partition}; None for a node the server did not sample."""
    sampled = sampled or {}
    per_client: dict[int, dict] = {}
    failures: list[Failure] = []
    for msg in replies:
        node = msg.metadata.src_node_id
        if msg.has_error():
            reason = concise_reason(msg.error.reason or f"error code {msg.error.code}")
            failures.append((sampled.get(node), str(node), reason))
            continue
        who = msg.content.config_records.get(keys.CLIENT, ConfigRecord())
        metrics = dict(next(iter(msg.content.metric_records.values()), MetricRecord()))
        metrics.update({k: v for k, v in who.items() if k != keys.PARTITION_ID})
        per_client[partition_of_reply(msg)] = metrics
    return per_client, failures


def silent_nodes(sampled: dict[int, int | None], replies: list[Message]) -> list[Failure]:
    """Failures for the sampled nodes that sent nothing back: Flower drops a message
    whose node vanished or hung past the round timeout without a reply of any kind."""
    answered = {msg.metadata.src_node_id for msg in replies}
    return [(partition, str(node), "no reply within the round timeout (the node "
             "disappeared or hung)")
            for node, partition in sampled.items() if node not in answered]


def concise_reason(reason: str) -> str:
    """An error reason fit for the store and a terminal: Flower's simulation wraps what a
    client raised, or its process's death, in a Ray traceback with colour codes; keep
    what happened."""
    reason = _ANSI.sub("", reason)
    if "ActorDiedError" in reason:
        return ("the client's process died (Ray ActorDiedError: its worker exited "
                "unexpectedly, e.g. killed or out of memory)")
    raised = re.search(r"ClientAppException occurred\. Message: (.*)", reason, re.DOTALL)
    if raised:
        message = raised.group(1).strip().rstrip("'>").strip()
        kind = re.search(rf"^(\w+): {re.escape(message)}$", reason, re.MULTILINE)
        reason = f"the ClientApp raised {kind.group(1) if kind else 'an exception'}: {message}"
    return reason if len(reason) <= REASON_MAX else reason[:REASON_MAX - 3] + "..."


def partition_of_reply(msg: Message) -> int:
    who = msg.content.config_records.get(keys.CLIENT, ConfigRecord())
    return int(who.get(keys.PARTITION_ID, -1))


def is_refusal(msg: Message) -> bool:
    """A DP client that would pass its budget replies with `refused` = 1 and no arrays."""
    metrics = next(iter(msg.content.metric_records.values()), MetricRecord())
    return bool(metrics.get(keys.REFUSED, 0))


def trained_replies(replies: list[Message]) -> list[Message]:
    """The replies that carry a trained update: neither errors nor refusals."""
    return [m for m in replies if not m.has_error() and not is_refusal(m)]


def in_partition_order(replies: list[Message]) -> list[Message]:
    """The replies sorted by partition. A float sum depends on its order, and replies
    arrive in whatever order the clients finish; sorted, a resumed run adds up the same."""
    return sorted(replies, key=partition_of_reply)


def reported_ledgers(replies: list[Message]) -> dict[int, dict]:
    """{partition: privacy ledger} of the replies that carry one (DP clients)."""
    return {partition_of_reply(m): dict(m.content[keys.PRIVACY_STATE])
            for m in replies if not m.has_error() and keys.PRIVACY_STATE in m.content}
