"""Packing a message's arrays into one object per record gives back the same Arrays, field
for field and byte for byte, and the deployment grid packs what it sends and unpacks what
it receives, so a strategy sees what it would unpacked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from server.serverapp.federation import PartitionOrderedGrid
from strategies.packed_arrays import LAYOUT_SUFFIX, PACKED, is_packed, pack, unpack
from tests.strategies.replies import as_server


def model_like_content() -> RecordDict:
    generator = torch.Generator().manual_seed(0)
    arrays = ArrayRecord({
        "layer.0.weight": torch.randn(7, 5, generator=generator),
        "layer.0.bias": torch.randn(5, generator=generator).to(torch.float64),
        "steps": torch.arange(3),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
    })
    arrays["numpy"] = Array(np.array([[1, 2], [3, 4]], dtype=np.int16))
    return RecordDict({"arrays": arrays, "bases": ArrayRecord({"one": torch.ones(2)}),
                       "config": ConfigRecord({"lr": 0.5}),
                       "metrics": MetricRecord({"loss": 1.25})})


def fields(record: ArrayRecord) -> dict[str, tuple]:
    return {k: (a.dtype, tuple(a.shape), a.stype, a.data) for k, a in record.items()}


def test_a_round_trip_gives_back_every_array_bit_for_bit() -> None:
    content = model_like_content()
    packed = pack(content)
    assert list(packed["arrays"].keys()) == [PACKED]  # 6 arrays, one object
    assert "arrays" + LAYOUT_SUFFIX in packed and is_packed(packed)
    assert len(packed["bases"]) == 1 and "bases" + LAYOUT_SUFFIX not in packed  # nothing to gain
    restored = unpack(packed)
    assert list(restored.keys()) == list(content.keys())
    assert list(restored["arrays"].keys()) == list(content["arrays"].keys())  # order kept
    assert fields(restored["arrays"]) == fields(content["arrays"])
    for key, tensor in restored["arrays"].to_torch_state_dict().items():
        assert torch.equal(tensor, content["arrays"].to_torch_state_dict()[key])
    assert restored["config"]["lr"] == 0.5 and restored["metrics"]["loss"] == 1.25


def test_content_that_was_not_packed_comes_back_as_it_is() -> None:
    content = model_like_content()
    assert not is_packed(content)
    assert fields(unpack(content)["arrays"]) == fields(content["arrays"])


def test_a_layout_that_does_not_cover_the_bytes_is_refused() -> None:
    packed = pack(model_like_content())
    data = packed["arrays"][PACKED].data
    packed["arrays"] = ArrayRecord({PACKED: Array(dtype="uint8", shape=(len(data) + 1,),
                                                  stype=PACKED, data=data + b"\0")})
    with pytest.raises(ValueError, match="the layout covers .* bytes of"):
        unpack(packed)


class EchoGrid:
    """A deployment grid stand-in: records what is pushed, replies with a client's
    answer to each (what clients.app does: unpack, train, pack the reply if the message
    came packed)."""

    def __init__(self) -> None:
        self.pushed: list[RecordDict] = []
        self.waiting: list[Message] = []

    def push_messages(self, messages):
        ids = []
        for index, message in enumerate(messages):
            self.pushed.append(message.content)
            received = unpack(message.content)
            reply = RecordDict({"arrays": ArrayRecord(
                {k: Array(np.full(3, float(index))) for k in received["arrays"].keys()})})
            answer = pack(reply) if is_packed(message.content) else reply
            self.waiting.append(Message(answer, reply_to=message))
            ids.append(message.metadata.message_id)
        return ids

    def pull_messages(self, ids):
        replies, self.waiting = self.waiting, []
        return replies


@pytest.mark.parametrize("packing", [True, False])
def test_the_grid_packs_what_it_sends_and_unpacks_the_replies(packing: bool) -> None:
    as_server()
    inner = EchoGrid()
    grid = PartitionOrderedGrid(inner, {0: 1, 1: 2}, pack=packing)
    sent = [Message(model_like_content(), dst_node_id=n, message_type="train") for n in (1, 2)]
    replies = grid.send_and_receive(sent, timeout=5)
    assert all(is_packed(content) == packing for content in inner.pushed)
    assert [len(content["arrays"]) for content in inner.pushed] == [1 if packing else 6] * 2
    assert len(replies) == 2
    for index, reply in enumerate(replies):
        # The strategy sees every array of the client's reply, unpacked.
        assert not is_packed(reply.content) and len(reply.content["arrays"]) == 6
        assert all(np.array_equal(a.numpy(), np.full(3, float(index)))
                   for a in reply.content["arrays"].values())


def test_only_the_deployment_engine_packs(monkeypatch) -> None:
    """Simulation's InMemoryGrid never packs; any other grid (the deployment engine's)
    packs unless ORTHOFED_PACK_ARRAYS=0."""
    from flwr.superlink.grid.inmemory_grid import InMemoryGrid

    from server.serverapp.app import PACK_ENV, packs_arrays

    simulation, deployment = InMemoryGrid.__new__(InMemoryGrid), EchoGrid()
    monkeypatch.delenv(PACK_ENV, raising=False)
    assert not packs_arrays(simulation) and packs_arrays(deployment)
    monkeypatch.setenv(PACK_ENV, "0")
    assert not packs_arrays(simulation) and not packs_arrays(deployment)
