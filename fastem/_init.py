"""Initial parameters of a Gaussian mixture, with scikit-learn's four ``init_params`` methods.

Each method gives initial responsibilities, as in scikit-learn, and the parameters are their
M-step; but the responsibilities are never materialized for all rows: they feed the same
statistics pass as EM, chunk by chunk, or (for the methods that pick K rows) are used directly.
User-given ``weights_init``, ``means_init`` and ``precisions_init`` then replace what they name.
"""

from __future__ import annotations

import numpy as np

from ._em import GIVEN, HARD, accumulate
from ._kmeans import _kmeans_plusplus, kmeans_centers
from ._params import GaussianParams, precisions_cholesky_from_precisions
from ._stats import GaussianStats

__all__ = ["initial_params"]

_PICKED_SAMPLE = 10_000  # rows among which k-means++ picks its K rows


def _unit_precisions(covariance_type, K, d):
    if covariance_type == "full":
        return np.repeat(np.eye(d)[None], K, axis=0)
    if covariance_type == "tied":
        return np.eye(d)
    if covariance_type == "diag":
        return np.ones((K, d))
    return np.ones(K)


def _count_rows(source, chunk_size):
    if source.n_samples is None:
        for _ in source.chunks(chunk_size):
            pass
    return source.n_samples


def _picked_rows_stats(covariance_type, rows, n_samples):
    """Statistics of responsibilities that are one-hot on K given rows and zero elsewhere."""
    K = rows.shape[0]
    stats = GaussianStats.zeros(covariance_type, rows)
    stats.s0[:] = 1.0
    stats.n_samples = n_samples
    return stats


def _stats_from_method(method, source, K, covariance_type, random_state, chunk_size):
    d = source.n_features
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
    n = _count_rows(source, chunk_size)
    if method == "random_from_data":
        indices = random_state.choice(n, size=K, replace=False)
        order = np.argsort(indices)
        rows = np.empty((K, d))
        rows[order] = source.take(indices[order])
    else:  # 'k-means++' on a uniform sample of the rows
        if n <= _PICKED_SAMPLE:
            sample = source.take(np.arange(n))
        else:
            sample = source.take(np.sort(random_state.choice(n, _PICKED_SAMPLE, replace=False)))
        sample = np.asarray(sample, dtype=np.float64)
        bad = ~np.isfinite(sample).all(axis=1)
        if bad.any():
            raise ValueError("Input X contains NaN or infinity in its rows; remove or impute them.")
        rows = _kmeans_plusplus(sample, K, random_state)
    if not np.isfinite(rows).all():
        raise ValueError("Input X contains NaN or infinity in its rows; remove or impute them.")
    return _picked_rows_stats(covariance_type, rows, n)


def initial_params(source, *, n_components, covariance_type, init_params, random_state,
                   reg_covar, chunk_size=None, weights_init=None, means_init=None,
                   precisions_init=None) -> GaussianParams:
    """Initial parameters by ``init_params``, then overridden by whichever are given.

    The ``*_init`` arguments must already be validated (see ``fastem._validation``).
    """
    K = n_components
    if weights_init is None or means_init is None or precisions_init is None:
        stats = _stats_from_method(init_params, source, K, covariance_type, random_state, chunk_size)
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
