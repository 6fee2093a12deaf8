"""What a message weighs on the wire: the bytes of its arrays, measured from the message.

Flower serializes each Array as its `data` bytes (numpy's .npy encoding: the values plus
a small header); configs and metrics are a few scalars. Summing `len(array.data)` over
every ArrayRecord of a message's content is therefore its payload, header included:
measured, not computed from shapes.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, RecordDict


def array_bytes(content: RecordDict) -> int:
    """Sum of len(array.data) over every array of every ArrayRecord in `content`."""
    return sum(len(array.data) for record in content.values()
               if isinstance(record, ArrayRecord) for array in record.values())
