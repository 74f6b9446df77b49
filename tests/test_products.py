"""The kernels' own products, against NumPy's: the register panels of the expanded kernel and
the 8-lane tiles, dot products and centred moments of the statistics."""

import numpy as np
import pytest
from numba import njit

from fastem._kernels._llvm import accumulator_groups
from fastem._kernels._panels import (
    FEW_ROWS,
    LANES,
    MAX_SINGLE_ROWS,
    PANEL_ROWS,
    _panel_intrinsic,
    _panel_max_intrinsic,
    few_log_density_product,
    log_density_product,
    panel_product,
    quadratic_log_density_product,
    scale_rows,
)
from fastem._kernels._prefetch import idle_state
from fastem._kernels._tiles import (TILE, _lane_sums_intrinsic, _moment_sums_intrinsic,
                                   centred_moments, lane_sum, moments_about_zero, row_dot,
                                   row_sums, short_tile_products, tile_products)
from fastem._params import PADDED_LOG_DENSITY


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
    panel_product(A, B, out, M, n, idle_state())
    np.testing.assert_allclose(out, start + A[:, :n] @ B[:n], rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("n_cols", [LANES, 3 * LANES], ids=["8", "16+8"])
@pytest.mark.parametrize("k", [1, 5, PANEL_ROWS, PANEL_ROWS + 3, 2 * PANEL_ROWS])
def test_log_density_product_writes_the_product_and_each_columns_max(n_cols, k):
    """out = A[:, :n] @ B[:n], written over whatever out held, and mx = the column-wise
    maximum of its first k rows, across panels, given padding rows as the expanded layout
    makes them (PADDED_LOG_DENSITY times B's constant row): a panel wholly past k is not
    folded, whatever it holds."""
    rng = np.random.default_rng(6)
    M, n = 2 * PANEL_ROWS, 21
    A = rng.normal(size=(M, 30))
    A[k:] = 0.0
    A[k:, 0] = PADDED_LOG_DENSITY
    first_unfolded = -(-k // PANEL_ROWS) * PANEL_ROWS
    A[first_unfolded:] = rng.normal(size=(M - first_unfolded, 30)) + 100.0  # far above
    B = rng.normal(size=(30, n_cols))
    B[0] = 1.0  # the constant feature
    out = np.full((M, n_cols), np.nan)
    mx = np.full(n_cols + 3, np.nan)
    log_density_product(A, B, out, n, mx, k, 0, idle_state())
    expected = A[:, :n] @ B[:n]
    np.testing.assert_allclose(out, expected, rtol=1e-13, atol=1e-13)
    assert np.array_equal(mx[:n_cols], out[:k].max(axis=0))
    assert np.all(np.isnan(mx[n_cols:]))  # nothing past N written


@pytest.mark.parametrize("n_cols", [LANES, 3 * LANES], ids=["8", "16+8"])
@pytest.mark.parametrize("k", range(1, FEW_ROWS + 1))
def test_few_log_density_product_is_the_panel_of_eight_cut_short(n_cols, k):
    """With at most FEW_ROWS components, the short panel writes out's first FEW_ROWS rows, the
    bits of those of :func:`log_density_product`, and the same column-wise maxima; the rows
    past them are left as they were."""
    rng = np.random.default_rng(11)
    n = 21
    A = rng.normal(size=(PANEL_ROWS, 30))
    A[k:] = 0.0
    A[k:, 0] = PADDED_LOG_DENSITY
    B = rng.normal(size=(30, n_cols))
    B[0] = 1.0  # the constant feature
    whole, whole_mx = np.empty((PANEL_ROWS, n_cols)), np.empty(n_cols)
    log_density_product(A, B, whole, n, whole_mx, k, 0, idle_state())
    out, mx = np.full((PANEL_ROWS, n_cols), np.nan), np.full(n_cols + 3, np.nan)
    few_log_density_product(A, B, out, n, mx, k, idle_state())
    assert np.array_equal(out[:FEW_ROWS], whole[:FEW_ROWS])
    assert np.all(np.isnan(out[FEW_ROWS:]))
    assert np.array_equal(mx[:n_cols], whole_mx)
    assert np.all(np.isnan(mx[n_cols:]))  # nothing past N written


@pytest.mark.parametrize("d", [5, 8, 12, 16, 21])
def test_log_density_product_over_stacked_triangles_skips_only_zeros(d):
    """With `triangles` = d, A is lower-triangular (d, d) matrices stacked and zero-padded to
    whole panels (as the per-component kernel's precision factors): each panel stops after
    its last row's diagonal, which gives the bits of the whole sweep. Panels that straddle two
    matrices (d not a multiple of 8) sweep all d steps."""
    rng = np.random.default_rng(10)
    n_mats = 3
    M = (n_mats * d + PANEL_ROWS - 1) // PANEL_ROWS * PANEL_ROWS
    A = np.zeros((M, d))
    A[: n_mats * d] = np.vstack([np.tril(rng.normal(size=(d, d))) for _ in range(n_mats)])
    B = rng.normal(size=(d, 3 * LANES))
    whole, whole_mx = np.empty((M, 3 * LANES)), np.empty(3 * LANES)
    log_density_product(A, B, whole, d, whole_mx, n_mats * d, 0, idle_state())
    out, mx = np.full((M, 3 * LANES), np.nan), np.full(3 * LANES, np.nan)
    log_density_product(A, B, out, d, mx, n_mats * d, d, idle_state())
    assert np.array_equal(out, whole) and np.array_equal(mx, whole_mx)
    np.testing.assert_allclose(out, A @ B, rtol=1e-13, atol=1e-13)


def test_log_density_product_max_treats_nan_like_the_sweep():
    """As ``m = x_0; if x_k > m: m = x_k``: a NaN in a later row (here in both panels) is
    passed over, a NaN in row 0 stays."""
    rng = np.random.default_rng(7)
    M, n = 2 * PANEL_ROWS, 6
    B = rng.normal(size=(n, LANES))
    out, mx = np.empty((M, LANES)), np.empty(LANES)
    A = rng.normal(size=(M, n))
    A[[3, 11], 0] = np.nan
    log_density_product(A, B, out, n, mx, M, 0, idle_state())
    np.testing.assert_allclose(out, A @ B, rtol=1e-13, atol=1e-13)
    # the maximum of the kernel's own products: NumPy's BLAS may round them otherwise
    assert np.array_equal(mx, np.nanmax(out, axis=0))
    A[0, 0] = np.nan
    log_density_product(A, B, out, n, mx, M, 0, idle_state())
    assert np.all(np.isnan(mx))


@pytest.mark.parametrize("m", [1, PANEL_ROWS + MAX_SINGLE_ROWS, PANEL_ROWS + MAX_SINGLE_ROWS + 1,
                               2 * PANEL_ROWS, 33],
                         ids=["one-row", "panel+single-rows", "panel+padded-panel", "panels",
                              "diag-d16"])
@pytest.mark.parametrize("n_cols", [LANES, 3 * LANES], ids=["8", "16+8"])
def test_panel_product_adds_the_first_rows(m, n_cols):
    """out[:m] += A[:m, :n] @ B[:n] for an A zero past row m: whole panels, then single rows
    or one more panel over the padding; the rest of out as it was."""
    rng = np.random.default_rng(2)
    M = 5 * PANEL_ROWS
    A = rng.normal(size=(M, 29))
    A[m:] = 0.0
    B = rng.normal(size=(29, n_cols))
    start = rng.normal(size=(M, n_cols))
    out = start.copy()
    panel_product(A, B, out, m, 29, idle_state())
    np.testing.assert_allclose(out[:m], start[:m] + A[:m] @ B, rtol=1e-13, atol=1e-13)
    assert np.array_equal(out[m:], start[m:])


@njit
def _scale_rows(B, s, out, n):
    scale_rows(B, s, out, n)


@pytest.mark.parametrize("n_cols", [LANES, 3 * LANES], ids=["8", "24"])
def test_scale_rows_scales_the_first_rows_only(n_cols):
    """out[i] = s[i] * B[i] for i < n; out's rows from n on are left as they were."""
    rng = np.random.default_rng(8)
    B, s = rng.normal(size=(13, n_cols)), rng.normal(size=13)
    out = np.full((13, n_cols), np.nan)
    _scale_rows(B, s, out, 11)
    assert np.array_equal(out[:11], s[:11, None] * B[:11])
    assert np.all(np.isnan(out[11:]))


@pytest.mark.parametrize("d", [1, 5, 12])
@pytest.mark.parametrize("n_cols", [LANES, 3 * LANES], ids=["8", "16+8"])
def test_quadratic_log_density_product_is_the_stored_features_product(d, n_cols):
    """Forming each y_a y_b in registers gives the bits of storing the 'full' features
    (1, y, y_a y_b for a <= b) and taking their product, maxima included."""
    rng = np.random.default_rng(9)
    M, F = 2 * PANEL_ROWS, 1 + d + d * (d + 1) // 2
    Y = np.zeros((d + 1, n_cols))
    Y[0] = 1.0
    Y[1:] = rng.normal(size=(d, n_cols))
    a, b = np.triu_indices(d)
    Phi = np.vstack([Y, Y[1 + a] * Y[1 + b]])
    A = rng.normal(size=(M, F + 3))
    expected, expected_mx = np.empty((M, n_cols)), np.empty(n_cols)
    log_density_product(A, Phi, expected, F, expected_mx, M - 3, 0, idle_state())
    out, mx = np.full((M, n_cols), np.nan), np.full(n_cols, np.nan)
    quadratic_log_density_product(A, Y, out, d, mx, M - 3, idle_state())
    assert np.array_equal(out, expected) and np.array_equal(mx, expected_mx)
    np.testing.assert_allclose(out, A[:, :F] @ Phi, rtol=1e-12, atol=1e-12)


def test_panel_product_sums_in_index_order():
    """Each entry is the shared dimension summed in order (with fused multiply-adds): the
    result is exact on integers and does not depend on the panel an entry falls in."""
    rng = np.random.default_rng(1)
    A = rng.integers(-50, 50, size=(PANEL_ROWS, 40)).astype(np.float64)
    B = rng.integers(-50, 50, size=(40, 2 * LANES)).astype(np.float64)
    out = np.zeros((PANEL_ROWS, 2 * LANES))
    panel_product(A, B, out, PANEL_ROWS, 40, idle_state())
    assert np.array_equal(out, A @ B)
    narrow = np.zeros((PANEL_ROWS, LANES))
    panel_product(A, np.ascontiguousarray(B[:, :LANES]), narrow, PANEL_ROWS, 40,
                  idle_state())
    assert np.array_equal(narrow, out[:, :LANES])


@pytest.mark.parametrize("nb", [256, 253, 5], ids=["whole-vectors", "tail", "tail-only"])
@pytest.mark.parametrize("upper", [False, True], ids=["full", "upper"])
@pytest.mark.parametrize("add", [False, True], ids=["set", "add"])
def test_tile_products_match_numpy(nb, upper, add):
    """out = (or +=) A[:, :nb] B[:, :nb]^T: lanes, the masked step past the last whole vector, an
    out smaller than the padded operands, and only the upper tiles when asked."""
    rng = np.random.default_rng(2)
    A = rng.normal(size=(3 * TILE, 260))
    B = A.copy() if upper else rng.normal(size=(2 * TILE, 260))
    start = rng.normal(size=(3 * TILE - 1, B.shape[0] - 1))
    out = start.copy()
    tile_products(A, B, nb, out, upper, add)
    expected = (A[:, :nb] @ B[:, :nb].T)[: out.shape[0], : out.shape[1]] + (start if add else 0)
    if upper:  # the tiles below the diagonal are not written
        rows, cols = np.indices(out.shape)
        written = rows // TILE <= cols // TILE
        np.testing.assert_allclose(out[written], expected[written], rtol=1e-13, atol=1e-13)
        assert np.array_equal(out[~written], start[~written])
    else:
        np.testing.assert_allclose(out, expected, rtol=1e-13, atol=1e-13)


def test_lane_sums_are_exact_on_integers_and_fixed_in_order():
    """Lanes and the masked last step, in a fixed order: exact where every partial sum is, and
    the same bits from a tile and from a single dot product of the same rows."""
    rng = np.random.default_rng(3)
    A = rng.integers(-50, 50, size=(TILE, 101)).astype(np.float64)
    B = rng.integers(-50, 50, size=(TILE, 101)).astype(np.float64)
    out = np.zeros((TILE, TILE))
    tile_products(A, B, 101, out, False, False)
    assert np.array_equal(out, A @ B.T)
    real = rng.normal(size=(TILE, 101))
    tile_products(real, B, 101, out, False, False)
    for a in range(TILE):
        for b in range(TILE):
            assert row_dot(real, a, B, b, 101) == out[a, b]


@pytest.mark.parametrize("rows", [1, 2, 3, 5, 6, 7], ids=lambda r: f"out-rows-{r}")
def test_short_tile_products_have_the_bits_of_whole_tiles(rows):
    """An out ending 1 or 2 rows into a group of 4 rows of A runs that group in 1 x 4 or
    2 x 4 tiles: every entry has the bits of the same product into an out of whole row
    groups, and nothing past out's rows is written."""
    rng = np.random.default_rng(4)
    A = rng.normal(size=(2 * TILE, 253))
    B = rng.normal(size=(2 * TILE, 253))
    whole = np.zeros((2 * TILE, 2 * TILE - 1))
    tile_products(A, B, 253, whole, False, False)
    buffer = np.full(2 * TILE * (2 * TILE - 1), np.nan)
    out = buffer[: rows * (2 * TILE - 1)].reshape(rows, 2 * TILE - 1)
    short_tile_products(A, B, 253, out, idle_state())
    assert np.array_equal(out, whole[:rows])
    assert np.isnan(buffer[out.size:]).all()


@pytest.mark.parametrize("n", [256, 253, 5, 0], ids=["whole-vectors", "tail", "tail-only",
                                                     "empty"])
def test_lane_sum(n):
    """sum a[:n] in lanes: exact on integers, nothing read past n (a NaN there), and the same
    bits as the single dot product with ones."""
    rng = np.random.default_rng(5)
    a = np.r_[rng.integers(-1000, 1000, size=n).astype(np.float64), np.nan]
    assert lane_sum(a, n) == a[:n].sum()
    real = np.r_[rng.normal(size=n), np.nan]
    ones = np.ones((1, n + 1))
    assert lane_sum(real, n) == row_dot(real[None, :], 0, ones, 0, n)
    assert lane_sum(real, n) == pytest.approx(real[:n].sum(), rel=1e-13, abs=1e-13)


@pytest.mark.parametrize("n_rows", [1, 3, 4, 6, 9])
def test_row_sums_are_each_rows_lane_sum(n_rows):
    """Four rows per sweep, a last partial sweep reading no row past A's last (its stand-in
    rows' sums are discarded) and no column past nb (NaN there): each sum the bits of that
    row's own lane sum."""
    rng = np.random.default_rng(6)
    nb = 61
    A = np.c_[rng.normal(size=(n_rows, nb)), np.full((n_rows, 3), np.nan)]
    out = np.full(n_rows, np.nan)
    row_sums(A, nb, out)
    for a in range(n_rows):
        assert out[a] == lane_sum(np.ascontiguousarray(A[a]), nb)
    assert out == pytest.approx(A[:, :nb].sum(axis=1), rel=1e-13)


@pytest.mark.parametrize("d", [1, 2, 3, 4, 7],
                         ids=["one-feature", "two", "three", "four", "four+three"])
@pytest.mark.parametrize("nb", [256, 61], ids=["whole-vectors", "tail"])
def test_centred_moments_match_numpy(d, nb):
    """Each component's sum r (x - mu) and sum r (x - mu)^2 over the first nb columns (the
    scratch's padding past them is not read), four features per sweep, then two, then one; a
    feature's sums are the same bits whichever sweep it is in; and the single dot product."""
    rng = np.random.default_rng(4)
    K = 3
    padding = 11
    XT_padded = np.hstack([rng.normal(size=(d, nb)) + 5.0, np.full((d, padding), 1e300)])
    R_padded = np.hstack([rng.random(size=(K, nb)), np.ones((K, padding))])
    XT, R = XT_padded[:, :nb], R_padded[:, :nb]
    mu = rng.normal(size=(K, d)) + 5.0
    first, second = np.full((K, d), np.nan), np.full((K, d), np.nan)
    centred_moments(XT_padded, R_padded, mu, nb, first, second)
    t = XT[None, :, :] - mu[:, :, None]  # (K, d, nb)
    np.testing.assert_allclose(first, np.einsum("ki,kji->kj", R, t), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(second, np.einsum("ki,kji->kj", R, t**2), rtol=1e-12, atol=1e-12)
    alone_first, alone_second = np.empty((K, 1)), np.empty((K, 1))
    for j in range(d):
        centred_moments(np.ascontiguousarray(XT_padded[j:j + 1]), R_padded,
                        np.ascontiguousarray(mu[:, j:j + 1]), nb, alone_first, alone_second)
        assert np.array_equal(alone_first[:, 0], first[:, j])
        assert np.array_equal(alone_second[:, 0], second[:, j])
    assert row_dot(R_padded, 1, XT_padded, d - 1, nb) == pytest.approx(R[1] @ XT[d - 1],
                                                                        rel=1e-13)


@pytest.mark.parametrize(("K", "d"), [(1, 1), (3, 2), (4, 5), (5, 7), (6, 3), (8, 16)])
@pytest.mark.parametrize("nb", [256, 61], ids=["whole-vectors", "tail"])
def test_moments_about_zero_match_numpy(K, d, nb):
    """Each component's sum r x and sum r x^2 in tiles of 4 or 1 components by 2 features
    (R and Z zero past their real rows), each sum the bits of its own component and feature
    alone; nothing written past the outputs' shape, nothing read past nb."""
    rng = np.random.default_rng(5)
    Z = np.zeros(((d + 1) // 2 * 2, 264))
    Z[:d] = rng.normal(size=(d, 264)) + 2.0
    Z[:d, nb:] = np.nan  # past nb: never read
    R = np.zeros(((K + 3) // 4 * 4, 264))
    R[:K] = rng.random(size=(K, 264))
    first, second = np.full((K + 1, d + 1), np.nan), np.full((K + 1, d + 1), np.nan)
    moments_about_zero(R, Z, nb, first[:K, :d], second[:K, :d], idle_state())
    assert np.isnan(first[K]).all() and np.isnan(first[:, d]).all()
    assert np.isnan(second[K]).all() and np.isnan(second[:, d]).all()
    np.testing.assert_allclose(first[:K, :d], R[:K, :nb] @ Z[:d, :nb].T, rtol=1e-13)
    np.testing.assert_allclose(second[:K, :d], R[:K, :nb] @ (Z[:d, :nb] ** 2).T, rtol=1e-13)
    alone_first, alone_second = np.empty((1, 1)), np.empty((1, 1))
    for k in range(K):
        R_k = np.zeros((4, 264))
        R_k[0] = R[k]
        for j in range(d):
            Z_j = np.zeros((2, 264))
            Z_j[0] = Z[j]
            moments_about_zero(R_k, Z_j, nb, alone_first, alone_second, idle_state())
            assert alone_first[0, 0] == first[k, j] and alone_second[0, 0] == second[k, j]


@pytest.mark.parametrize("shape", [(8, 2), (8, 1), (4, 2), (4, 4), (2, 4), (1, 4), (3, 5)])
@pytest.mark.parametrize("limit", [1, 3, 4, 6, 16])
@pytest.mark.parametrize("column_cost", [1, 4])
def test_accumulator_groups_cover_the_grid_once(shape, limit, column_cost):
    """Every accumulator of the grid is in exactly one group, and no group holds more than
    the limit; a grid within the limit is one group."""
    groups = accumulator_groups(*shape, column_cost=column_cost, limit=limit)
    cells = [(u, v) for rows, columns in groups for u in rows for v in columns]
    assert sorted(cells) == [(u, v) for u in range(shape[0]) for v in range(shape[1])]
    assert all(len(rows) * len(columns) <= limit for rows, columns in groups)
    assert (len(groups) == 1) == (shape[0] * shape[1] <= limit)


def _grouped_products(limit):
    """Compiled calls of the register panels, lane-sum tiles and centred moment sums, each
    sweeping its accumulators in groups of at most `limit`."""
    add_panel = _panel_intrinsic(2, True, limit=limit)
    quadratic_panel = _panel_max_intrinsic(2, "quadratic", limit=limit)
    tile = _lane_sums_intrinsic(TILE, TILE, limit=limit)
    squares_tile = _lane_sums_intrinsic(TILE, 2, squares=True, limit=limit)
    moments = _moment_sums_intrinsic(4, limit=limit)

    @njit
    def products(A, B, out, Y, quad, mx, XT, R, mu, n):
        add_panel(A, B, out, 0, 0, A.shape[1])
        quadratic_panel(A, Y, quad, 0, 0, 3, mx, PANEL_ROWS)
        return tile(XT, R, 0, 0, n), squares_tile(R, XT, 0, 0, n), moments(XT, 0, R, 1, mu, n)

    return products


def test_accumulator_groups_change_no_bits():
    """The panels, tiles and moment sums sweep their accumulators in groups that fit the CPU's
    registers (``_llvm.ACCUMULATORS``: 16 with AVX-512, 4 with AVX2): the results are the
    bits of one sweep over them all, whatever the groups, on any CPU."""
    rng = np.random.default_rng(7)
    n = 253  # a masked last step in the tiles
    A = rng.normal(size=(PANEL_ROWS, 40))
    B = rng.normal(size=(40, 2 * LANES))
    Y = rng.normal(size=(4, 2 * LANES))  # the constant row and d = 3 features
    XT = rng.normal(size=(TILE, 256))
    R = rng.random(size=(TILE, 256))
    mu = rng.normal(size=TILE)
    start = rng.normal(size=(PANEL_ROWS, 2 * LANES))

    def run(limit):
        out, quad, mx = start.copy(), np.empty((PANEL_ROWS, 2 * LANES)), np.empty(2 * LANES)
        sums = _grouped_products(limit)(A, B, out, Y, quad, mx, XT, R, mu, n)
        return [out, quad, mx] + [np.array(s) for s in sums]

    whole = run(10**6)
    np.testing.assert_allclose(whole[0], start + A @ B, rtol=1e-13, atol=1e-13)
    for limit in (1, 4, 16):
        assert all(np.array_equal(a, b) for a, b in zip(run(limit), whole)), limit
