"""The register-panel product behind the expanded kernel, against NumPy's."""

import numpy as np
import pytest

from fastem._kernels._panels import LANES, PANEL_ROWS, panel_product


@pytest.mark.parametrize("n_cols", [LANES, 2 * LANES, 3 * LANES], ids=["8", "16", "16+8"])
@pytest.mark.parametrize("a_transposed", [False, True], ids=["A-rows", "A-strided"])
def test_panel_product_adds_the_matrix_product(n_cols, a_transposed):
    """out += A[:, :n] @ B[:n] for both panel widths, an A read through any strides, and a
    shared dimension n shorter than A's and B's."""
    rng = np.random.default_rng(0)
    M, n_full, n = 2 * PANEL_ROWS, 37, 29
    A = rng.normal(size=(n_full, M)).T if a_transposed else rng.normal(size=(M, n_full))
    B = rng.normal(size=(n_full, n_cols))
    start = rng.normal(size=(M, n_cols))
    out = start.copy()
    panel_product(A, B, out, n)
    np.testing.assert_allclose(out, start + A[:, :n] @ B[:n], rtol=1e-13, atol=1e-13)


def test_panel_product_sums_in_index_order():
    """Each entry is the shared dimension summed in order (with fused multiply-adds): the
    result is exact on integers and does not depend on the panel an entry falls in."""
    rng = np.random.default_rng(1)
    A = rng.integers(-50, 50, size=(PANEL_ROWS, 40)).astype(np.float64)
    B = rng.integers(-50, 50, size=(40, 2 * LANES)).astype(np.float64)
    out = np.zeros((PANEL_ROWS, 2 * LANES))
    panel_product(A, B, out, 40)
    assert np.array_equal(out, A @ B)
    narrow = np.zeros((PANEL_ROWS, LANES))
    panel_product(A, np.ascontiguousarray(B[:, :LANES]), narrow, 40)
    assert np.array_equal(narrow, out[:, :LANES])
