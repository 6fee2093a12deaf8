"""Flower Arrays read without a copy and written with one, for the server's hot path.

An Array of stype "numpy.ndarray" holds a whole .npy file: a header (magic, version,
a dict literal with 'descr', 'fortran_order', 'shape'), then the values in C order
(when fortran_order is False). `Array.numpy()` runs np.load on it: a header parse
(ast.literal_eval) and a copy; `Array(ndarray)` runs np.save: a header write and two
copies. For FedSVD's 128 LoRA factors of a LLaMA-7B (16 MB) those are a third of its
extra cost over the plain mean (bench/refactorize.py). Here the values are read as a
view of the bytes, and an array of the same dtype and shape as a template is written
with the template's header: Flower's own format, byte for byte, so every reader of the
message (np.load included) sees the same thing.
"""

from __future__ import annotations

import math

import numpy as np
from flwr.app import Array

NPY_MAGIC = b"\x93NUMPY"


def _header_length(array: Array) -> int | None:
    """Where the values start in `array.data`, or None when the payload is not the plain
    form read here (another stype, Fortran order, a byte order other than the dtype's,
    or a header that does not describe this array's shape)."""
    if array.stype != "numpy.ndarray":
        return None
    dtype = np.dtype(array.dtype)
    offset = len(array.data) - math.prod(array.shape) * dtype.itemsize
    header = array.data[:offset] if offset > len(NPY_MAGIC) else b""
    plain = (header.startswith(NPY_MAGIC)
             and f"'descr': '{dtype.str}'".encode() in header
             and b"'fortran_order': False" in header
             and f"'shape': {tuple(array.shape)}".encode() in header)
    return offset if plain else None


def read_only_values(array: Array) -> np.ndarray:
    """`array.numpy()`'s values as a read-only view of `array.data` (no copy), or, for a
    payload that is not the plain form, `array.numpy()` itself."""
    offset = _header_length(array)
    if offset is None:
        return array.numpy()
    return np.frombuffer(array.data, dtype=array.dtype, count=math.prod(array.shape),
                         offset=offset).reshape(array.shape)


def with_values(template: Array, values: np.ndarray) -> Array:
    """An Array like `template` (dtype, shape, header) holding `values`: one copy.
    Falls back to `Array(values)` (np.save) when the dtype or shape differ or the
    template is not the plain form."""
    offset = _header_length(template)
    if (offset is None or values.dtype != np.dtype(template.dtype)
            or tuple(values.shape) != tuple(template.shape)):
        return Array(values)
    data = b"".join([template.data[:offset], np.ascontiguousarray(values)])
    return Array(dtype=template.dtype, shape=tuple(template.shape), stype=template.stype,
                 data=data)
