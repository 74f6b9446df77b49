"""The prefetching of the next block's rows: every line of them asked for over the calls a
block makes, none past them, and nothing it changes in a block's results."""

import numpy as np
import pytest
from numba import njit

import fastem._kernels.gaussian as kernels
from fastem._kernels._panels import log_density_product, panel_calls, panel_product
from fastem._kernels._prefetch import (END, LINE, NEXT, PER_CALL, UNLIMITED, aim, idle_state,
                                       prefetch_lines)
from fastem._kernels._tiles import short_tile_products


def _aim_and_call(X, r0, r1, calls, made):
    """(first address, next address, end, lines a call) after aiming at rows r0:r1 for
    `calls` calls and making `made` of them."""
    state = idle_state()
    _aim(state, X, r0, r1, calls)
    start = state[NEXT]
    _call(state, made)
    return start, state[NEXT], state[END], state[PER_CALL]


@njit
def _aim(state, X, r0, r1, calls):
    aim(state, X, r0, r1 - r0, calls, UNLIMITED)


@njit
def _call(state, times):
    """`times` calls, as a kernel's loops make them."""
    p, end, per_call = state[NEXT], state[END], state[PER_CALL]
    for _ in range(times):
        p = prefetch_lines(p, end, per_call)
    state[NEXT] = p


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("d, calls", [(4, 16), (5, 7), (16, 24), (64, 96), (9, 1)])
def test_calls_ask_for_every_line_of_the_rows_once(dtype, d, calls):
    X = np.zeros((600, d), dtype=dtype)
    r0, r1 = 256, 512
    start, after, end, per_call = _aim_and_call(X, r0, r1, calls, calls)
    row_bytes = d * X.itemsize
    assert end - start == (r1 - r0) * row_bytes
    lines = -(-(end - start) // LINE)
    assert per_call == -(-lines // calls)
    # all of the rows asked for by the last call, and nothing past their last line
    assert after >= end
    assert after - start == lines * LINE
    # one call fewer leaves lines for the read, unless the last call had none to ask for
    _, short, _, _ = _aim_and_call(X, r0, r1, calls, calls - 1)
    assert short - start == min(lines, (calls - 1) * per_call) * LINE


def test_no_calls_ask_for_nothing():
    X = np.zeros((600, 16))
    start, after, end, per_call = _aim_and_call(X, 0, 256, 0, 5)
    assert per_call == 0 and after == start < end


@pytest.mark.parametrize("n_features", [2, 3, 4, 5, 16])
def test_prefetching_changes_no_log_density(n_features):
    """A block's log-densities, prefetching rows of its own X on the way, equal those with
    the prefetching aimed nowhere, to the bit."""
    rng = np.random.default_rng(3)
    d, nb, K = n_features, 64, 3
    X = rng.normal(size=(4 * nb, d))
    XT = np.ascontiguousarray(X[:nb].T)
    aux, prec = rng.normal(size=(K, d)), rng.random(size=(K, 1, d)) + 0.5
    const = rng.normal(size=K)
    results = []
    for aimed in (False, True):
        pf = idle_state()
        if aimed:
            _aim(pf, X, nb, 2 * nb, K if d < 4 else K * (d // 4 + d % 4))
        logp = np.full((K, nb), np.nan)
        kernels._logp_diagonal(kernels.DIAG, XT, aux, prec, const, logp, pf)
        results.append(logp)
        if aimed:
            assert pf[NEXT] >= pf[END]  # the sweeps asked for all of the rows
    np.testing.assert_array_equal(results[0], results[1])


def test_prefetching_changes_no_product():
    """The expanded kernel's products, prefetching rows of an array on the way, equal those
    with the prefetching aimed nowhere, to the bit; the log-density product's panels ask for
    every line they were aimed at."""
    rng = np.random.default_rng(4)
    F, K, nb = 13, 16, 64
    A = rng.normal(size=(K, F))
    B = rng.normal(size=(F, nb))
    X = rng.normal(size=(4 * nb, 5))
    results = []
    for aimed in (False, True):
        pf = idle_state()
        out, mx = np.empty((K, nb)), np.empty(nb)
        if aimed:
            _aim(pf, X, nb, 2 * nb, panel_calls(K, nb))
        log_density_product(A, B, out, F, mx, K, 0, pf)
        if aimed:
            assert pf[NEXT] >= pf[END]
            _aim(pf, X, nb, 2 * nb, 3)
        padded_B = np.vstack([B, np.zeros((3, nb))])  # whole panels and tiles of rows
        stats = np.zeros((16, K))
        panel_product(padded_B, np.ascontiguousarray(out.T), stats, F, nb, pf)
        tiles = np.zeros((F, K))
        short_tile_products(padded_B, out, nb, tiles, pf)
        results.append((out, mx, stats, tiles))
    for plain, fetching in zip(*results):
        np.testing.assert_array_equal(plain, fetching)
