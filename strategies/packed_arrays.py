"""A message's arrays packed into one Array per ArrayRecord, and back, bit for bit.

Flower's deployment engine moves a message object by object: every Array is an object,
and so is each of its chunks (5 MiB at most), each pushed and pulled with a request of
its own at every hop (ServerApp -> SuperLink -> SuperNode -> ClientApp and back). A
model of L tensors costs about 2L requests per hop however small the tensors are.
Packing concatenates the serialized bytes of an ArrayRecord's arrays into a single
Array (which Flower chunks by size alone) and writes what it takes to cut them apart
again (names, dtypes, shapes, stypes, byte lengths) into a ConfigRecord beside it.
Nothing is converted: unpacking gives back Arrays with the same fields and bytes.

Only the deployment engine packs (server.serverapp.packing_grid and clients.app); on
the simulation engine messages stay in memory and are not packed.
"""

from __future__ import annotations

import json

from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

PACKED = "packed"          # the one Array of a packed ArrayRecord
LAYOUT_SUFFIX = ".layout"  # the ConfigRecord beside it: `<record name>.layout`
LAYOUT = "arrays"          # its one entry: the layout as JSON


def pack(content: RecordDict) -> RecordDict:
    """`content` with each ArrayRecord of two or more arrays packed (the others, and
    every other record, as they are)."""
    packed = RecordDict()
    for name, record in content.items():
        if isinstance(record, ArrayRecord) and len(record) > 1:
            packed[name], packed[name + LAYOUT_SUFFIX] = _pack_record(record)
        else:
            packed[name] = record
    return packed


def unpack(content: RecordDict) -> RecordDict:
    """The RecordDict that `pack` was given (a RecordDict that was not packed comes back
    as it is)."""
    unpacked = RecordDict()
    for name, record in content.items():
        if name.endswith(LAYOUT_SUFFIX) and name.removesuffix(LAYOUT_SUFFIX) in content:
            continue
        layout = content.get(name + LAYOUT_SUFFIX)
        unpacked[name] = _unpack_record(record, layout) if layout is not None else record
    return unpacked


def is_packed(content: RecordDict) -> bool:
    return any(name.endswith(LAYOUT_SUFFIX) for name in content)


def _pack_record(record: ArrayRecord) -> tuple[ArrayRecord, ConfigRecord]:
    layout = [[key, array.dtype, list(array.shape), array.stype, len(array.data)]
              for key, array in record.items()]
    data = b"".join(array.data for array in record.values())
    packed = Array(dtype="uint8", shape=(len(data),), stype=PACKED, data=data)
    return ArrayRecord({PACKED: packed}), ConfigRecord({LAYOUT: json.dumps(layout)})


def _unpack_record(record: ArrayRecord, layout: ConfigRecord) -> ArrayRecord:
    data, start, arrays = memoryview(record[PACKED].data), 0, {}
    for key, dtype, shape, stype, nbytes in json.loads(str(layout[LAYOUT])):
        arrays[key] = Array(dtype=dtype, shape=tuple(shape), stype=stype,
                            data=bytes(data[start:start + nbytes]))
        start += nbytes
    if start != len(data):
        raise ValueError(f"packed arrays: the layout covers {start} bytes of {len(data)}")
    return ArrayRecord(arrays)
