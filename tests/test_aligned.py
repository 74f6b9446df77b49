"""The kernels' scratch buffers: the shapes asked for, zeros where asked, and every one
starting on a cache line whatever Numba's own arrays do."""

import numpy as np
import pytest
from numba import njit

from fastem._kernels._aligned import (
    VECTOR_BYTES,
    aligned_array,
    aligned_empty,
    aligned_matrix,
    aligned_zeros,
)
from fastem._kernels.gaussian import DIAG, FULL, _task_scratch
from fastem._kernels.gaussian_expanded import _task_buffers


@njit
def _made(n, rows, cols, count):
    """`count` of each kind, interleaved with odd-sized Numba arrays that shift the heap."""
    out = []
    for i in range(count):
        out.append(aligned_empty(n + i))
        out.append(np.empty(3 + i))
        out.append(aligned_matrix(rows, cols + i).ravel())
        out.append(aligned_zeros(rows + i, cols).ravel())
    return out


def _starts_on_a_line(a):
    return a.ctypes.data % VECTOR_BYTES == 0


def test_aligned_buffers_start_on_a_cache_line_and_have_their_shape():
    made = _made(5, 3, 7, 6)
    for i in range(6):
        empty, _, matrix, zeros = made[4 * i: 4 * i + 4]
        assert empty.shape == (5 + i,) and _starts_on_a_line(empty)
        assert matrix.shape == (3 * (7 + i),) and _starts_on_a_line(matrix)
        assert zeros.shape == ((3 + i) * 7,) and _starts_on_a_line(zeros)
        assert not zeros.any()


@njit
def _shapes_of_negative_sizes():
    return aligned_empty(-3).shape[0], aligned_zeros(-2, 5).shape


def test_negative_sizes_make_empty_buffers():
    n, shape = _shapes_of_negative_sizes()
    assert n == 0 and shape == (0, 5)


@pytest.mark.parametrize("kind", [FULL, DIAG])
def test_per_component_task_scratch_is_aligned_with_its_zeros(kind):
    scratch = _task_scratch(kind, 5, 3, 10, 256)
    # The buffers of a block's rows (the small (d,) and (K, d) ones are not swept by rows).
    rows = [a for a in scratch if a.dtype == np.float64 and a.shape[-1] == 256 and a.size]
    # 'diag' and 'spherical' read no acc or DT; their XT is DS's first rows
    assert len(rows) == (10 if kind == FULL else 7)
    assert all(_starts_on_a_line(a) for a in rows)
    XT, R, acc, dt, ds, wt = (scratch[i] for i in (0, 1, 6, 7, 9, 10))
    assert ds.shape == (8, 256) and not ds.any()
    assert wt.shape == ((8, 256) if kind == FULL else (0, 256)) and not wt.any()
    assert (acc.size, dt.size) == ((256, 5 * 256) if kind == FULL else (0, 0))
    assert XT.shape == (5, 256) and (kind == FULL) != np.shares_memory(XT, ds)
    assert R.shape == ((3, 256) if kind == FULL else (4, 256)) and not R.any()


def test_expanded_task_buffers_are_aligned_and_rt_is_zero():
    buffers = _task_buffers(160, 16, 0, 128)
    floats = [a for a in buffers if a.dtype == np.float64 and a.size > 1]
    assert len(floats) == 6 and all(_starts_on_a_line(a) for a in floats)
    assert buffers[3].shape == (128 * 16,) and not buffers[3].any()


@pytest.mark.parametrize("shape", [(3,), (5, 7), (4, 16, 9)])
@pytest.mark.parametrize("zeroed", [False, True])
def test_aligned_numpy_arrays_start_on_a_cache_line(shape, zeroed):
    for _ in range(8):  # NumPy's own arrays start on 16 bytes: some fall off a line
        a = aligned_array(shape, zeroed=zeroed)
        assert a.shape == shape and a.dtype == np.float64 and a.flags.c_contiguous
        assert _starts_on_a_line(a)
        if zeroed:
            assert not a.any()
