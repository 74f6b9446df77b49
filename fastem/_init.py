"""Initial parameters of a Gaussian mixture, with scikit-learn's four ``init_params`` methods.

Each method gives initial responsibilities, as in scikit-learn, and the parameters are their
M-step; but the responsibilities are never materialized for all rows: they feed the same
statistics pass as EM, chunk by chunk, or (for the methods that pick K rows) are used directly.
User-given ``weights_init``, ``means_init`` and ``precisions_init`` then replace what they name.
"""

from __future__ import annotations

import numpy as np
from sklearn.utils.random import sample_without_replacement

from ._em import GIVEN, HARD, accumulate, nonfinite_error, raise_first_nonfinite
from ._kmeans import _kmeans_plusplus, kmeans_centers
from ._params import GaussianParams, precisions_cholesky_from_precisions
from ._stats import GaussianStats
from ._validation import check_n_samples
from .data import count_rows, sample_rows

__all__ = ["initial_params"]

_PICKED_SAMPLE = 10_000  # rows among which k-means++ picks its K rows
_CHOICE_ROWS = 2**24  # up to here 'random_from_data' draws exactly as scikit-learn does


def _unit_precisions(covariance_type, K, d):
    if covariance_type == "full":
        return np.repeat(np.eye(d)[None], K, axis=0)
    if covariance_type == "tied":
        return np.eye(d)
    if covariance_type == "diag":
        return np.ones((K, d))
    return np.ones(K)


def _picked_rows_stats(covariance_type, rows, n_samples, source, chunk_size):
    """Statistics of responsibilities that are one-hot on K given rows and zero elsewhere.

    For 'full', 'diag' and 'spherical' each component's scatter about its own row is zero. The
    'tied' second moment is, as scikit-learn computes it, ``X^T X`` summed over *every* row
    whatever the responsibilities (they are assumed to sum to 1 on each row), so it needs a
    pass over the data; it is taken around the origin, as scikit-learn does, so that the
    initial tied covariance is scikit-learn's.
    """
    K, d = rows.shape
    if not np.isfinite(rows).all():
        raise_first_nonfinite(source, chunk_size)
    if covariance_type != "tied":
        stats = GaussianStats.zeros(covariance_type, rows)
    else:
        stats = GaussianStats.zeros(covariance_type, np.zeros((K, d)))
        stats.s1[:] = rows
        for start, block in source.chunks(chunk_size):
            block = np.asarray(block, dtype=np.float64)
            finite = np.isfinite(block).all(axis=1)
            if not finite.all():
                raise nonfinite_error(start + int(np.argmin(finite)))
            stats.s2 += block.T @ block
    stats.s0[:] = 1.0
    stats.n_samples = n_samples
    return stats


def _stats_from_method(method, source, K, covariance_type, random_state, chunk_size):
    d = source.n_features
    n = None
    if method != "random":  # which draws as it reads, and needs no count
        # A stream's rows are counted first (and checked: known only now), so that k-means
        # samples its rows by index, as for any other source, rather than by a reservoir
        # pass: the same data gives the same model whatever holds it.
        n = count_rows(source, chunk_size)
        check_n_samples(n, K)
    if method == "kmeans":
        centers = kmeans_centers(source, K, random_state=random_state, chunk_size=chunk_size)
        # Hard assignment to the nearest center: unit precisions and equal weights.
        nearest = GaussianParams(covariance_type, np.full(K, 1.0 / K), centers,
                                 _unit_precisions(covariance_type, K, d))
        return accumulate(source, nearest, chunk_size=chunk_size, mode=HARD)
    if method == "random":
        # The same uniform draws, in the same order, as scikit-learn's (n_samples, K) array.
        def resp_for_chunk(start, m):
            r = random_state.uniform(size=(m, K))
            return r / r.sum(axis=1, keepdims=True)

        first = np.asarray(next(iter(source.chunks(chunk_size)))[1][0], dtype=np.float64)
        around = GaussianParams(covariance_type, np.full(K, 1.0 / K), np.repeat(first[None], K, 0),
                                _unit_precisions(covariance_type, K, d))
        return accumulate(source, around, chunk_size=chunk_size, mode=GIVEN,
                          resp_for_chunk=resp_for_chunk)
    if method == "random_from_data":
        if n <= _CHOICE_ROWS:  # scikit-learn's draw, so that both pick the same rows
            indices = random_state.choice(n, size=K, replace=False)
        else:  # RandomState.choice permutes all n rows: O(n) memory
            indices = sample_without_replacement(n, K, random_state=random_state)
        order = np.argsort(indices)
        rows = np.empty((K, d))
        rows[order] = source.take(indices[order])
    else:  # 'k-means++' on a uniform sample of the rows
        sample = np.asarray(sample_rows(source, _PICKED_SAMPLE, random_state, chunk_size),
                            dtype=np.float64)
        if not np.isfinite(sample).all():
            raise_first_nonfinite(source, chunk_size)
        rows = _kmeans_plusplus(sample, K, random_state)
    return _picked_rows_stats(covariance_type, rows, n, source, chunk_size)


def initial_params(source, *, n_components, covariance_type, init_params, random_state,
                   reg_covar, chunk_size=None, weights_init=None, means_init=None,
                   precisions_init=None) -> GaussianParams:
    """Initial parameters by ``init_params``, then overridden by whichever are given.

    The ``*_init`` arguments must already be validated (see ``fastem._validation``).
    """
    K = n_components
    if weights_init is None or means_init is None or precisions_init is None:
        stats = _stats_from_method(init_params, source, K, covariance_type, random_state,
                                   chunk_size)
        params = GaussianParams.from_stats(stats, reg_covar, normalize="n_samples")
    else:
        params = None
    weights = params.weights if weights_init is None else weights_init
    means = params.means if means_init is None else means_init
    if precisions_init is None:
        precisions_cholesky, covariances = params.precisions_cholesky, params.covariances
    else:
        precisions_cholesky = precisions_cholesky_from_precisions(precisions_init, covariance_type)
        covariances = None
    return GaussianParams(covariance_type, np.array(weights, dtype=np.float64),
                          np.array(means, dtype=np.float64), precisions_cholesky, covariances)
