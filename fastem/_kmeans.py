"""fastem's own k-means, used to initialize Gaussian mixtures (``init_params='kmeans'``).

Initialization must never be the slow part of a fit, so this is not a full-data k-means run
to convergence:

1. draw a uniform random sample of rows (:func:`fastem.data.sample_rows`: random indices
   when the number of rows is known, otherwise reservoir sampling in one pass);
2. greedy k-means++ seeding on the sample;
3. Lloyd iterations on the sample until the centers stop moving;
4. a few (``n_full_passes``) chunked Lloyd passes over the full data, with the fused
   :func:`fastem._kernels.kmeans.lloyd_chunk` kernel, stopping early once the centers stop
   moving.

All randomness comes from the given ``RandomState``, and the chunked passes are bit-identical
for any number of threads and any chunk size that is a multiple of ``BLOCK_ROWS``.
"""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.utils import check_random_state

from ._kernels._config import BLOCK_ROWS
from ._kernels._launch import one_at_a_time
from ._kernels.kmeans import kpp_min_distances, lloyd_chunk
from ._em import kernel_rows, nonfinite_error, raise_first_nonfinite
from .data import as_source, check_chunk_size, sample_rows

__all__ = ["kmeans_centers", "nearest_centers"]

# Scratch memory for one wave of block partials (the (W, K, d) float64 sums dominate). The
# wave size changes the memory, never the results.
_WAVE_BYTES = 16 * 2**20
_MIN_WAVE_BLOCKS = 4
_MAX_WAVE_BLOCKS = 128


class _Lloyd:
    """Validated calls of the fused Lloyd kernel for ``K`` centers in ``d`` dimensions.

    Owns the wave scratch buffers so that every chunk and pass of one fit reuses them.
    """

    def __init__(self, n_clusters: int, n_features: int):
        if n_clusters < 1 or n_features < 1:
            raise ValueError("k-means needs at least one cluster and one feature.")
        self.n_clusters = n_clusters
        self.n_features = n_features
        per_block = 8 * n_clusters * (n_features + 1)
        wave = min(_MAX_WAVE_BLOCKS, max(_MIN_WAVE_BLOCKS, _WAVE_BYTES // per_block))
        self.buf_counts = np.zeros((wave, n_clusters), dtype=np.int64)
        self.buf_sums = np.zeros((wave, n_clusters, n_features), dtype=np.float64)
        self.buf_inertia = np.zeros(wave, dtype=np.float64)
        self.buf_bad = np.zeros(wave, dtype=np.int64)
        self._no_labels = np.empty(0, dtype=np.int64)
        self._no_dist = np.empty(0, dtype=np.float64)

    def new_accumulators(self):
        """Zeroed ``counts (K,) int64, sums (K, d) float64, inertia (1,) float64``."""
        return (
            np.zeros(self.n_clusters, dtype=np.int64),
            np.zeros((self.n_clusters, self.n_features), dtype=np.float64),
            np.zeros(1, dtype=np.float64),
        )

    def chunk(self, block, centers, acc, labels=None, min_dist=None) -> int:
        """Run the kernel on one chunk; return the chunk-local first non-finite row or -1."""
        K, d = self.n_clusters, self.n_features
        if not isinstance(block, np.ndarray) or block.ndim != 2 or block.shape[1] != d:
            shape = getattr(block, "shape", None)
            raise ValueError(f"Expected a chunk of shape (m, {d}), got {shape}.")
        if block.dtype not in (np.float32, np.float64) or not block.flags.c_contiguous:
            raise ValueError("Chunks must be C-contiguous native float32 or float64 arrays.")
        if (centers.shape != (K, d) or centers.dtype != np.float64
                or not centers.flags.c_contiguous):
            raise ValueError(f"centers must be a C-contiguous float64 array of shape ({K}, {d}).")
        counts, sums, inertia = acc
        if counts.shape != (K,) or sums.shape != (K, d) or inertia.shape != (1,):
            raise ValueError("Accumulators do not match the number of clusters and features.")
        m = block.shape[0]
        if labels is None:
            labels, min_dist = self._no_labels, self._no_dist
        elif labels.shape != (m,) or min_dist.shape != (m,):
            raise ValueError(f"labels and min_dist must have shape ({m},).")
        block = kernel_rows(block, centers.shape[1])
        with one_at_a_time():
            return int(lloyd_chunk(block, centers, BLOCK_ROWS, counts, sums, inertia, labels,
                                   min_dist, self.buf_counts, self.buf_sums, self.buf_inertia,
                                   self.buf_bad))


def nearest_centers(X, centers, *, start: int = 0):
    """Nearest center of each row of an in-memory array.

    Parameters
    ----------
    X : ndarray of shape (n, d)
        float32 or float64 (anything else is converted to float64).
    centers : array-like of shape (K, d)
    start : int, default=0
        Global index of the first row of ``X``, used in error messages.

    Returns
    -------
    labels : ndarray of shape (n,), int64
    sq_dist : ndarray of shape (n,), float64
        Squared Euclidean distance of each row to its nearest center.
    inertia : float
        ``sq_dist.sum()``, accumulated in the kernel's fixed block order.

    Raises
    ------
    ValueError
        If a row of ``X`` is not finite.
    """
    X = np.asarray(X)
    X = np.ascontiguousarray(X, dtype=np.float32 if X.dtype == np.float32 else np.float64)
    centers = np.ascontiguousarray(centers, dtype=np.float64)
    if X.ndim != 2 or centers.ndim != 2 or X.shape[1] != centers.shape[1]:
        raise ValueError(f"X {X.shape} and centers {centers.shape} do not match.")
    lloyd = _Lloyd(centers.shape[0], centers.shape[1])
    acc = lloyd.new_accumulators()
    labels = np.empty(X.shape[0], dtype=np.int64)
    sq_dist = np.empty(X.shape[0], dtype=np.float64)
    bad = lloyd.chunk(X, centers, acc, labels, sq_dist)
    if bad >= 0:
        raise nonfinite_error(start + bad)
    return labels, sq_dist, float(acc[2][0])


# --------------------------------------------------------------------------- k-means

def _kmeans_plusplus(X, n_clusters: int, rs, n_local_trials: int | None = None):
    """Greedy k-means++ seeding on an in-memory, finite float64 sample.

    As scikit-learn's ``kmeans_plusplus``: the first center is a uniformly random row; each
    next one is the best (lowest potential) of ``2 + int(log(K))`` rows drawn with probability
    proportional to their squared distance to the nearest chosen center.
    """
    X = np.ascontiguousarray(X, dtype=np.float64)
    n = X.shape[0]
    if X.ndim != 2 or not 1 <= n_clusters <= n:
        raise ValueError(f"k-means++ needs a 2-D sample of at least n_clusters={n_clusters} "
                         f"rows, got shape {X.shape}.")
    if n_local_trials is None:
        n_local_trials = 2 + int(np.log(n_clusters))
    centers = np.empty((n_clusters, X.shape[1]), dtype=np.float64)
    first = rs.randint(n)
    centers[0] = X[first]
    X = kernel_rows(X, X.shape[1])
    closest = np.empty((1, n), dtype=np.float64)
    with one_at_a_time():
        kpp_min_distances(X, np.array([first], dtype=np.int64), np.full(n, np.inf), closest)
    closest = closest[0]
    potential = closest.sum()
    trial_dist = np.empty((n_local_trials, n), dtype=np.float64)
    for c in range(1, n_clusters):
        rand_vals = rs.uniform(size=n_local_trials) * potential
        candidates = np.searchsorted(np.cumsum(closest), rand_vals)
        np.clip(candidates, None, n - 1, out=candidates)
        candidates = candidates.astype(np.int64, copy=False)
        with one_at_a_time():
            kpp_min_distances(X, candidates, closest, trial_dist)
        potentials = trial_dist.sum(axis=1)
        best = int(np.argmin(potentials))
        potential = potentials[best]
        closest = trial_dist[best].copy()
        centers[c] = X[candidates[best]]
    return centers


def _new_centers(centers, acc):
    """Centers moved to the mean of their rows; returns (new centers, empty cluster indices)."""
    counts, sums, _ = acc
    new = centers.copy()
    full = counts > 0
    new[full] += sums[full] / counts[full, None]
    return new, np.flatnonzero(~full)


def _relocate(new_centers, empty, sample, sq_dist):
    """Move empty clusters onto the sample rows farthest from their nearest center."""
    farthest = np.argsort(-sq_dist, kind="stable")[: empty.shape[0]]
    new_centers[empty] = sample[farthest]


def _check_int(name, value, low):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r}.")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}.")
    return int(value)


def kmeans_centers(source, n_clusters, *, random_state, chunk_size=None, sample_size=None,
                   max_iter=100, tol=1e-4, n_full_passes=2) -> np.ndarray:
    """k-means centers for initializing a mixture: sampled k-means++ and Lloyd, then full passes.

    Parameters
    ----------
    source : DataSource or ndarray of shape (n_samples, n_features)
        The data, read through :func:`fastem.data.as_source`.
    n_clusters : int
        Number of centers ``K``, at most the number of rows.
    random_state : numpy.random.RandomState
        Source of all randomness (an int or None is passed through
        ``sklearn.utils.check_random_state``).
    chunk_size : int or None, default=None
        Rows per chunk in the full passes. ``None`` uses the source's default, rounded down
        to a multiple of ``BLOCK_ROWS``. Results are bit-identical for any chunk size that is
        a multiple of ``BLOCK_ROWS``.
    sample_size : int or None, default=None
        Rows in the random sample used for seeding and the first Lloyd iterations. Default
        ``max(10_000, 50 * K)``; capped at the number of rows, and at least ``K``.
    max_iter : int, default=100
        Maximum number of Lloyd iterations on the sample.
    tol : float, default=1e-4
        Convergence: the iterations stop when the sum of squared center shifts is at most
        ``tol`` times the mean per-feature variance of the sample (scikit-learn's criterion).
        The sample iterations also stop when the labels no longer change.
    n_full_passes : int, default=2
        Maximum number of Lloyd passes over the full data after the sample has converged.
        They are skipped when the sample already holds every row.

    Returns
    -------
    centers : ndarray of shape (K, n_features), float64

    Raises
    ------
    ValueError
        If a row contains NaN or infinity (the message names the row), or if there are fewer
        rows than clusters.
    """
    source = as_source(source)
    rs = check_random_state(random_state)
    n_clusters = _check_int("n_clusters", n_clusters, 1)
    max_iter = _check_int("max_iter", max_iter, 1)
    n_full_passes = _check_int("n_full_passes", n_full_passes, 0)
    tol = float(tol)
    if not tol >= 0.0:
        raise ValueError(f"tol must be >= 0, got {tol}.")
    chunk_size = check_chunk_size(chunk_size)
    if chunk_size is None:
        chunk_size = max(BLOCK_ROWS, source.default_chunk_size() // BLOCK_ROWS * BLOCK_ROWS)
    if sample_size is None:
        sample_size = max(10_000, 50 * n_clusters)
    sample_size = max(_check_int("sample_size", sample_size, 1), n_clusters)
    n = source.n_samples
    if n is not None and n < n_clusters:
        raise ValueError(f"n_samples={n} should be >= n_clusters={n_clusters}.")

    # 1. The sample, checked for non-finite rows before anything is computed from it.
    sample = np.ascontiguousarray(sample_rows(source, sample_size, rs, chunk_size),
                                  dtype=np.float64)
    n = source.n_samples  # known now, even for a stream
    if n < n_clusters:
        raise ValueError(f"n_samples={n} should be >= n_clusters={n_clusters}.")
    if not np.isfinite(sample).all():
        raise_first_nonfinite(source, chunk_size)
    s = sample.shape[0]
    tol_abs = tol * float(np.mean(np.var(sample, axis=0)))

    # 2. Seeding and 3. Lloyd on the sample.
    centers = _kmeans_plusplus(sample, n_clusters, rs)
    lloyd = _Lloyd(n_clusters, source.n_features)
    labels, prev_labels = np.empty(s, dtype=np.int64), np.empty(s, dtype=np.int64)
    sq_dist = np.empty(s, dtype=np.float64)
    for it in range(max_iter):
        acc = lloyd.new_accumulators()
        lloyd.chunk(sample, centers, acc, labels, sq_dist)  # the sample is finite
        new, empty = _new_centers(centers, acc)
        if empty.size:
            _relocate(new, empty, sample, sq_dist)
        shift = float(((new - centers) ** 2).sum())
        centers = new
        if (it > 0 and np.array_equal(labels, prev_labels)) or shift <= tol_abs:
            break
        labels, prev_labels = prev_labels, labels

    # 4. Chunked passes over the full data.
    if s == n:
        return centers
    for _ in range(n_full_passes):
        acc = lloyd.new_accumulators()
        for start, block in source.chunks(chunk_size):
            bad = lloyd.chunk(block, centers, acc)
            if bad >= 0:
                raise nonfinite_error(start + bad)
        new, empty = _new_centers(centers, acc)
        if empty.size:
            lloyd.chunk(sample, centers, lloyd.new_accumulators(), labels, sq_dist)
            _relocate(new, empty, sample, sq_dist)
        shift = float(((new - centers) ** 2).sum())
        centers = new
        if shift <= tol_abs:
            break
    return centers
