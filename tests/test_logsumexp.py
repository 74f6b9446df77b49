"""The kernels' fused log-sum-exp against the plain whole-block loops it replaced, written
with the scalar exp and log: the same bits, including below the responsibility floor, at -inf
and NaN."""

import numpy as np
import pytest
from numba import njit

from fastem._kernels._config import FASTMATH
from fastem._kernels._logsumexp import GROUPS, LOG_RESPONSIBILITY_FLOOR, normalize_columns
from fastem._kernels._math import exp_nonpositive, log_at_least_one
from fastem._kernels.gaussian import _largest


@njit
def _fused(logp, R, ll, mx, K, inverses):
    normalize_columns(logp, R, ll, mx, K, inverses)


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
