"""The kernels' fused log-sum-exp against the plain whole-block loops it replaced, written
with the scalar exp and log: the same bits, including below the responsibility floor, at -inf
and NaN; and its sum of a block's log-likelihoods (a fit's), against the sum of the rows'."""

import math

import numpy as np
import pytest
from numba import njit

from fastem._kernels._config import FASTMATH
from fastem._kernels._logsumexp import GROUPS, LOG_RESPONSIBILITY_FLOOR, normalize_columns
from fastem._kernels._math import exp_nonpositive, log_at_least_one
from fastem._kernels.gaussian import _largest


@njit
def _fused(logp, R, ll, mx, K, inverses, by_rows=True, n_valid=0):
    return normalize_columns(logp, R, ll, mx, K, inverses, by_rows, n_valid)


@njit(fastmath=FASTMATH, error_model="numpy")  # as the kernels compile
def _loops(logp, R, ll, m):
    """The log-sum-exp one component at a time over the whole block, given each row's
    largest log-density m."""
    K, n = logp.shape
    s = np.zeros(n)
    for k in range(K):
        for i in range(n):
            t = logp[k, i] - m[i]
            e = exp_nonpositive(t) if t >= LOG_RESPONSIBILITY_FLOOR else 0.0
            R[k, i] = e
            s[i] += e
    for i in range(n):
        ll[i] = m[i] + log_at_least_one(s[i])
        s[i] = 1.0 / s[i]
    for k in range(K):
        for i in range(n):
            R[k, i] *= s[i]


def _log_densities(rng, K, n_rows):
    logp = rng.normal(scale=30.0, size=(K, n_rows)) - 5.0
    logp[:, ::7] -= 600.0  # rows far from every component
    logp[0, 1::7] -= 600.0  # a component far below the rest: below the floor, 0
    logp[rng.integers(K), 3::11] = -np.inf
    logp[:, 5] = -np.inf  # a row no component explains: log(0), then NaN
    logp[rng.integers(K), 9] = np.nan
    return logp


@pytest.mark.parametrize("K", [1, 5, 8, 16])
@pytest.mark.parametrize("groups", [2, GROUPS, GROUPS + 3, 4 * GROUPS + 1])
def test_fused_log_sum_exp_gives_the_same_bits(K, groups):
    rng = np.random.default_rng(K * 100 + groups)
    n_rows = 8 * groups
    logp = _log_densities(rng, K, n_rows)
    R_ref, ll_ref, largest = np.empty((K, n_rows)), np.empty(n_rows), np.empty(n_rows)
    _largest(logp, largest, np.empty(0, dtype=np.int64))
    _loops(logp, R_ref, ll_ref, largest)

    R, ll = np.full((K, n_rows), -7.0), np.full(n_rows, -7.0)
    _fused(logp, R, ll, largest, K, np.empty(0))
    np.testing.assert_array_equal(R, R_ref)
    np.testing.assert_array_equal(ll, ll_ref)
    # Handing back 1 / s instead of scaling: the exps, whose products with it are R, to the bit.
    exps, ll_too, inverses = np.full((K, n_rows), -7.0), np.full(n_rows, -7.0), np.empty(n_rows)
    _fused(logp, exps, ll_too, largest, K, inverses)
    with np.errstate(invalid="ignore"):  # the row no component explains: 0 * inf
        np.testing.assert_array_equal(exps * inverses, R_ref)
    np.testing.assert_array_equal(ll_too, ll_ref)
    # What the comparison covered: a NaN log-likelihood and, with two components or more,
    # responsibilities below the floor.
    assert np.isnan(ll[5]) and (K == 1 or (R == 0.0).any())
    finite = np.isfinite(ll)
    np.testing.assert_allclose(R[:, finite].sum(axis=0), 1.0, rtol=1e-15)


@njit
def _largest_loops(logp, m, best):
    """Each row's largest log-density and its first component, one component at a time over
    the block: `if x > m`, so a NaN in the first component stays and later ones are passed
    over."""
    K, n = logp.shape
    for i in range(n):
        m[i] = logp[0, i]
        best[i] = 0
    for k in range(1, K):
        for i in range(n):
            if logp[k, i] > m[i]:
                m[i] = logp[k, i]
                best[i] = k


@pytest.mark.parametrize("K", [1, 2, 5, 8])
def test_column_maxima_are_the_loops_largest_and_first_of_ties(K):
    """The kernels' row maxima (``_logsumexp.column_maxima``, 8 rows in registers), with and
    without the components, against the loops: the same values to the bit, ties to the first
    component, a NaN in the first component kept and one in another passed over."""
    rng = np.random.default_rng(K)
    n_rows = 8 * 13
    logp = _log_densities(rng, K, n_rows)
    logp[[0, -1], 16:24] = logp[:, 16:24].max(axis=0) + 1.0  # the first and last tie, largest
    logp[0, 30] = np.nan  # kept
    logp[-1, 40] = np.nan  # passed over where K > 1
    m_ref, best_ref = np.empty(n_rows), np.empty(n_rows, dtype=np.int64)
    _largest_loops(logp, m_ref, best_ref)

    m, best = np.full(n_rows, -7.0), np.full(n_rows, -7, dtype=np.int64)
    _largest(logp, m, best)
    np.testing.assert_array_equal(m, m_ref)
    np.testing.assert_array_equal(best, best_ref)
    m_only = np.full(n_rows, -7.0)
    _largest(logp, m_only, np.empty(0, dtype=np.int64))
    np.testing.assert_array_equal(m_only, m_ref)
    # What the comparison covered: the NaN kept, and (K > 1) a passed-over NaN and ties
    assert np.isnan(m[30])
    if K > 1:
        assert (best_ref[16:24] == 0).all() and (best_ref > 0).any()
        assert not np.isnan(m[40])


def _clean_log_densities(rng, K, n_rows):
    """Log-densities of rows every component explains, some far from all but one."""
    logp = rng.normal(scale=30.0, size=(K, n_rows)) - 5.0
    logp[1:, ::7] -= 700.0  # below the floor of the first component
    return logp


@pytest.mark.parametrize("K", [1, 4, 16, 64])
@pytest.mark.parametrize("n_rows, n_valid", [(8, 8), (8, 3), (8 * 33, 256),
                                             (8 * (4 * GROUPS + 1), 8 * (4 * GROUPS + 1) - 5)])
def test_the_block_sum_is_the_sum_of_the_rows_log_likelihoods(K, n_rows, n_valid):
    """Without by_rows, ll[0] is the sum of the first n_valid rows' log-likelihoods to within
    rounding (one log a lane of a product of mantissas instead of one a row), the padding past
    them left out whatever it holds; ll is not otherwise written, and R is the same bits."""
    rng = np.random.default_rng(K * 1000 + n_rows + n_valid)
    logp = _clean_log_densities(rng, K, n_rows)
    logp[:, n_valid:] = np.nan  # padding: would make any sum that read it NaN
    largest = np.empty(n_rows)
    _largest(logp, largest, np.empty(0, dtype=np.int64))
    R_rows, ll_rows = np.empty((K, n_rows)), np.empty(n_rows)
    _fused(logp, R_rows, ll_rows, largest, K, np.empty(0), True, n_rows)
    expected = math.fsum(ll_rows[:n_valid])

    for inverses in (np.empty(0), np.empty(n_rows)):
        R, ll = np.full((K, n_rows), -7.0), np.full(n_rows, -7.0)
        assert _fused(logp, R, ll, largest, K, inverses, False, n_valid)
        np.testing.assert_allclose(ll[0], expected, rtol=1e-14,
                                   atol=1e-15 * np.abs(ll_rows[:n_valid]).sum())
        assert (ll[1:] == -7.0).all()
        R_by_rows = np.full((K, n_rows), -7.0)
        _fused(logp, R_by_rows, np.empty(n_rows), largest, K, inverses, True, n_rows)
        np.testing.assert_array_equal(R, R_by_rows)


@pytest.mark.parametrize("K", [1, 5])
@pytest.mark.parametrize("case", ["unexplained", "nan"])
def test_a_block_whose_sum_is_not_finite_is_done_again_by_rows(K, case):
    """A row no component explains (all -inf) or one holding NaN makes the block's sum not
    finite: the block is then done again by rows, and the result says so, with every row's
    log-likelihood and the responsibilities to the bit of a pass by rows."""
    rng = np.random.default_rng(K)
    n_rows = 8 * 5
    logp = _clean_log_densities(rng, K, n_rows)
    logp[:, 11] = -np.inf if case == "unexplained" else np.nan
    largest = np.empty(n_rows)
    _largest(logp, largest, np.empty(0, dtype=np.int64))
    R_rows, ll_rows = np.empty((K, n_rows)), np.empty(n_rows)
    assert not _fused(logp, R_rows, ll_rows, largest, K, np.empty(0), True, n_rows)

    R, ll = np.full((K, n_rows), -7.0), np.full(n_rows, -7.0)
    assert not _fused(logp, R, ll, largest, K, np.empty(0), False, n_rows)
    np.testing.assert_array_equal(ll, ll_rows)
    np.testing.assert_array_equal(R, R_rows)
    assert np.isnan(ll[11]) and np.isfinite(np.delete(ll, 11)).all()
