"""The kernels' views without reference counts: they must see and change exactly the memory
of the array they come from."""

import numpy as np
import pytest
from numba import njit

from fastem._kernels._views import borrowed, flat, keep_alive, matrix


@njit
def _matrix_of(buffer, rows, cols):
    return matrix(buffer, rows, cols)


@njit
def _flat_of(a):
    return flat(a)


@njit
def _write_through_borrowed(a, w, value):
    """a[w, -1] = value through a borrowed view and a row of it; returns the row's sum."""
    view = borrowed(a)
    row = view[w]
    row[row.shape[0] - 1] = value
    return row.sum()


@njit
def _sum_of_scratch(n):
    """Sum of 0..n-1 written into scratch through a borrowed matrix view, the scratch kept
    alive as the kernels keep theirs."""
    owned = (np.empty(n), np.empty(1))
    view = matrix(borrowed(owned[0]), 1, n)
    for i in range(n):
        view[0, i] = i
    total = view.sum()
    keep_alive(owned)
    return total


@njit
def _write_through_borrowed_tuple(owned):
    """Write through each view of a borrowed tuple (a 2-D and a 1-D int array); return the
    views' shapes."""
    views = borrowed(owned)
    views[0][1, 2] = 7.5
    views[1][0] = -3
    keep_alive(owned)
    return views[0].shape, views[1].shape


def test_borrowed_tuple_is_a_view_of_each_array():
    owned = (np.zeros((2, 3)), np.ones(4, dtype=np.int64))
    shapes = _write_through_borrowed_tuple(owned)
    assert shapes == ((2, 3), (4,))
    assert owned[0][1, 2] == 7.5 and owned[1][0] == -3 and owned[1][1:].tolist() == [1, 1, 1]


def test_matrix_is_the_first_entries_of_its_buffer_row_major():
    buffer = np.arange(20.0)
    m = _matrix_of(buffer, 3, 4)
    np.testing.assert_array_equal(m, buffer[:12].reshape(3, 4))
    assert m.flags.c_contiguous
    m[2, 3] = -1.0
    assert buffer[11] == -1.0


@pytest.mark.parametrize("rows, cols", [(5, 5), (-1, 4), (4, -1)])
def test_matrix_rejects_a_shape_its_buffer_cannot_hold(rows, cols):
    with pytest.raises(ValueError, match="too small"):
        _matrix_of(np.zeros(20), rows, cols)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_borrowed_view_reads_and_writes_the_array(dtype):
    a = np.arange(12, dtype=dtype).reshape(3, 4)
    assert _write_through_borrowed(a, 1, 100.0) == 4 + 5 + 6 + 100
    expected = np.arange(12, dtype=dtype).reshape(3, 4)
    expected[1, 3] = 100.0
    np.testing.assert_array_equal(a, expected)


def test_borrowed_view_of_a_read_only_array():
    @njit
    def total(a):
        return borrowed(a).sum()

    a = np.arange(6.0)
    a.setflags(write=False)
    assert total(a) == 15.0


def test_scratch_held_by_keep_alive_outlives_its_borrowed_views():
    assert _sum_of_scratch(1000) == 999 * 1000 / 2


@pytest.mark.parametrize("shape", [(7,), (3, 4), (2, 3, 5), (4, 0, 2)])
def test_flat_is_every_entry_in_order(shape):
    a = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape)
    f = _flat_of(a)
    np.testing.assert_array_equal(f, a.ravel())
    if f.size:
        f[-1] = -1.0
        assert a.flat[-1] == -1.0
