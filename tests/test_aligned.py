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
    row_length,
)
from fastem._kernels.gaussian import DIAG, FULL, SPREAD_ROWS_MIN_FEATURES, _task_scratch
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


@pytest.mark.parametrize("n", list(range(1, 70)) + [127, 128, 255, 256, 257, 512, 1000])
def test_row_length_is_whole_lines_an_odd_number_of_them(n):
    L = row_length(n)
    lines, rest = divmod(L, VECTOR_BYTES // 8)
    assert rest == 0 and lines % 2 == 1
    assert n <= L < n + 2 * VECTOR_BYTES // 8


@pytest.mark.parametrize("kind", [FULL, DIAG])
@pytest.mark.parametrize("rows", [256, 61])
@pytest.mark.parametrize("d", [5, SPREAD_ROWS_MIN_FEATURES + 1])
def test_per_component_task_scratch_is_aligned_with_its_zeros(kind, rows, d):
    scratch = _task_scratch(kind, d, 3, 10, rows)
    # whole vectors of rows; from SPREAD_ROWS_MIN_FEATURES on, an odd number of them
    L = row_length(rows) if d >= SPREAD_ROWS_MIN_FEATURES else -(-rows // 8) * 8
    assert L % 8 == 0 and rows <= L < rows + 16
    dp = -(-d // 4) * 4
    # The buffers of a block's rows (the small (d,) and (K, d) ones are not swept by rows).
    by_rows = [a for a in scratch if a.dtype == np.float64 and a.shape[-1] == L and a.size]
    # 'diag' and 'spherical' read no acc or DT; their XT is DS's first rows
    assert len(by_rows) == (10 if kind == FULL else 7)
    assert all(_starts_on_a_line(a) for a in by_rows)
    XT, R, acc, dt, ds, wt = (scratch[i] for i in (0, 1, 6, 7, 9, 10))
    assert ds.shape == (dp, L) and not ds.any()
    assert wt.shape == ((dp, L) if kind == FULL else (0, L)) and not wt.any()
    assert (acc.size, dt.size) == ((L, d * L) if kind == FULL else (0, 0))
    # The padding past the block's rows is never loaded: zero from the start.
    assert XT.shape == (d, L) and not XT.any() and (kind == FULL) != np.shares_memory(XT, ds)
    assert R.shape == ((3, L) if kind == FULL else (4, L)) and not R.any()


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
