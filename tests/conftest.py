"""Shared fixtures for the GaussianMixture tests. No global seeding: every generator is local."""

import functools

import numpy as np
import pytest


@functools.lru_cache(maxsize=None)
def _blobs(n, n_components, n_features, spread, scale, seed):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=scale, size=(n_components, n_features))
    labels = rng.integers(n_components, size=n)
    X = centers[labels] + rng.normal(scale=spread, size=(n, n_features))
    return X, labels, centers


@pytest.fixture(scope="session")
def blobs():
    """Factory of Gaussian blobs: ``blobs(n, K, d, spread=1.0, scale=5.0, seed=0)``.

    Returns ``(X, labels, centers)``, float64; the same arguments give the same (cached)
    arrays, so many tests can ask for their data at no cost. Do not modify them in place
    (copy first). They are left writeable on purpose: a read-only array is another Numba
    type, and would compile the kernels once more.
    """

    def make(n=600, n_components=3, n_features=3, *, spread=1.0, scale=5.0, seed=0):
        return _blobs(n, n_components, n_features, spread, scale, seed)

    return make
