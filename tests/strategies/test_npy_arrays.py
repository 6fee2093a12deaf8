"""strategies.npy_arrays against Flower's own Array.numpy() and Array(ndarray): the same
values and the same bytes, and the fallback for every payload that is not the plain
form."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array

from strategies.npy_arrays import read_only_values, with_values


@pytest.mark.parametrize("values", [
    np.arange(24, dtype=np.float32).reshape(4, 6),
    np.arange(5, dtype=np.int64),
    np.array(3.5),                                  # 0-d
    np.zeros((2, 0, 3), dtype=np.float16),          # empty
    np.arange(6, dtype=">f8").reshape(2, 3),        # big-endian
])
def test_reads_the_same_values_as_flower_without_a_copy(values) -> None:
    array = Array(values)
    view = read_only_values(array)
    np.testing.assert_array_equal(view, array.numpy())
    assert view.dtype == array.numpy().dtype and view.shape == values.shape
    if values.size:
        assert not view.flags.writeable  # a view of the message bytes, not a copy
        assert np.shares_memory(view, np.frombuffer(array.data, dtype=np.uint8))


def test_a_fortran_ordered_payload_is_read_through_numpy() -> None:
    values = np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4))
    array = Array(values)
    view = read_only_values(array)
    np.testing.assert_array_equal(view, values)  # the order np.load gives, not the raw bytes
    assert view.flags.writeable  # np.load's own copy


def test_writes_the_bytes_flower_would_write() -> None:
    rng = np.random.default_rng(0)
    template = Array(rng.normal(size=(64, 8)).astype(np.float32))
    values = rng.normal(size=(64, 8)).astype(np.float32)
    written = with_values(template, values)
    expected = Array(values)
    assert (written.dtype, written.shape, written.stype) == (expected.dtype, expected.shape,
                                                            expected.stype)
    assert written.data == expected.data
    np.testing.assert_array_equal(written.numpy(), values)


def test_a_non_contiguous_value_is_written_in_c_order() -> None:
    template = Array(np.zeros((4, 3), dtype=np.float64))
    values = np.arange(12, dtype=np.float64).reshape(3, 4).T  # (4, 3), Fortran-ordered view
    assert with_values(template, values).data == Array(np.ascontiguousarray(values)).data


@pytest.mark.parametrize("template, values", [
    (Array(np.zeros((4, 3), np.float32)), np.ones((3, 4), np.float32)),   # other shape
    (Array(np.zeros((4, 3), np.float32)), np.ones((4, 3), np.float64)),   # other dtype
    (Array(np.asfortranarray(np.zeros((4, 3), np.float32))), np.ones((4, 3), np.float32)),
])
def test_a_template_that_does_not_fit_falls_back_to_numpy_save(template, values) -> None:
    written = with_values(template, values)
    assert written.data == Array(values).data
    np.testing.assert_array_equal(written.numpy(), values)


def test_a_header_that_does_not_describe_the_array_is_not_trusted() -> None:
    """An Array whose fields and header disagree (built by hand) is read by np.load."""
    real = Array(np.arange(6, dtype=np.float32).reshape(2, 3))
    mislabelled = Array(dtype=real.dtype, shape=(3, 2), stype=real.stype, data=real.data)
    assert read_only_values(mislabelled).shape == (2, 3)  # what the bytes say
