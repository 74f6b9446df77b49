"""``fastem demo``: fit a mixture with a known truth and show how well it is recovered.

Everything here is plain Python around the public estimator; :mod:`fastem.cli` parses the
command line and calls :func:`run_demo`.
"""

from __future__ import annotations

import copy
import os
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning

from ._em import threads
from .gaussian_mixture import GaussianMixture

__all__ = ["Truth", "make_truth", "sample_truth", "match_components", "run_demo", "check_memory"]

# Eigenvalues (variances) of the true covariances are drawn in this range, and the means are
# at least MIN_SEPARATION apart: about 6.5 standard deviations of the widest direction, so
# that the components barely overlap and the fit can be compared with the truth.
VARIANCE_RANGE = (0.3, 1.5)
MIN_SEPARATION = 8.0

# Rows generated at a time: the only temporaries are a few arrays of this many rows.
_SAMPLE_CHUNK = 1 << 16


@dataclass
class Truth:
    """Parameters of a Gaussian mixture, shaped as scikit-learn's attributes.

    Attributes
    ----------
    covariance_type : {'full', 'tied', 'diag', 'spherical'}
    weights : ndarray of shape (K,)
    means : ndarray of shape (K, d)
    covariances : ndarray
        (K, d, d) 'full', (d, d) 'tied', (K, d) 'diag', (K,) 'spherical'.
    """

    covariance_type: str
    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray

    @property
    def precisions(self) -> np.ndarray:
        """Inverses of the covariances, shaped as ``covariances`` (``precisions_init``)."""
        if self.covariance_type in ("full", "tied"):
            return np.linalg.inv(self.covariances)
        return 1.0 / self.covariances

    def component_cholesky(self, k) -> np.ndarray:
        """Lower Cholesky factor ``L`` of component k's covariance (``cov = L @ L.T``), (d, d)."""
        d = self.means.shape[1]
        if self.covariance_type == "full":
            return np.linalg.cholesky(self.covariances[k])
        if self.covariance_type == "tied":
            return np.linalg.cholesky(self.covariances)
        if self.covariance_type == "diag":
            return np.diag(np.sqrt(self.covariances[k]))
        return np.sqrt(self.covariances[k]) * np.eye(d)


def _random_covariance(d, rng) -> np.ndarray:
    """A random (d, d) covariance: random rotation, eigenvalues in VARIANCE_RANGE."""
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    q = q * np.sign(np.diag(r))  # a uniformly random rotation
    eigenvalues = rng.uniform(*VARIANCE_RANGE, size=d)
    cov = (q * eigenvalues) @ q.T
    return (cov + cov.T) / 2


def _separated_means(K, d, rng) -> np.ndarray:
    """K random points in d dimensions, pairwise at least MIN_SEPARATION apart."""
    scale = MIN_SEPARATION * max(1.0, K ** (1.0 / d))
    means = np.empty((K, d))
    k = failures = 0
    while k < K:
        candidate = rng.normal(scale=scale, size=d)
        if k == 0 or np.linalg.norm(means[:k] - candidate, axis=1).min() >= MIN_SEPARATION:
            means[k] = candidate
            k += 1
        else:
            failures += 1
            if failures % 100 == 0:
                scale *= 1.25  # crowded: spread the means further apart
    return means


def make_truth(n_features, n_components, covariance_type="full", random_state=None) -> Truth:
    """A random, well-separated Gaussian mixture.

    Parameters
    ----------
    n_features : int
    n_components : int
    covariance_type : {'full', 'tied', 'diag', 'spherical'}, default='full'
    random_state : int, numpy.random.Generator or None

    Returns
    -------
    Truth
        Weights between 0.5/K and 1.5/K (a Dirichlet draw mixed with uniform weights), means
        at least ``MIN_SEPARATION`` apart, variances in ``VARIANCE_RANGE``.
    """
    rng = np.random.default_rng(random_state)
    K, d = n_components, n_features
    weights = 0.5 / K + 0.5 * rng.dirichlet(np.full(K, 5.0))
    weights /= weights.sum()
    means = _separated_means(K, d, rng)
    if covariance_type == "full":
        covariances = np.stack([_random_covariance(d, rng) for _ in range(K)])
    elif covariance_type == "tied":
        covariances = _random_covariance(d, rng)
    elif covariance_type == "diag":
        covariances = rng.uniform(*VARIANCE_RANGE, size=(K, d))
    elif covariance_type == "spherical":
        covariances = rng.uniform(*VARIANCE_RANGE, size=K)
    else:
        raise ValueError(
            "covariance_type must be 'full', 'tied', 'diag' or 'spherical', "
            f"got {covariance_type!r}."
        )
    return Truth(covariance_type, weights, means, covariances)


def sample_truth(truth: Truth, n_samples, random_state=None, dtype=np.float64):
    """Draw rows from ``truth`` one chunk at a time into a single preallocated array.

    Parameters
    ----------
    truth : Truth
    n_samples : int
    random_state : int, numpy.random.Generator or None
    dtype : float32 or float64, default=float64

    Returns
    -------
    X : ndarray of shape (n_samples, n_features), C-contiguous
    labels : ndarray of shape (n_samples,), int8 or int32
        The component each row was drawn from.
    """
    rng = np.random.default_rng(random_state)
    K, d = truth.means.shape
    factors = [truth.component_cholesky(k) for k in range(K)]
    X = np.empty((n_samples, d), dtype=dtype)
    labels = np.empty(n_samples, dtype=np.int8 if K <= 127 else np.int32)
    for start in range(0, n_samples, _SAMPLE_CHUNK):
        stop = min(start + _SAMPLE_CHUNK, n_samples)
        chunk_labels = rng.choice(K, size=stop - start, p=truth.weights)
        z = rng.standard_normal((stop - start, d))
        out = X[start:stop]
        for k in range(K):
            rows = chunk_labels == k
            out[rows] = truth.means[k] + z[rows] @ factors[k].T
        labels[start:stop] = chunk_labels
    return X, labels


def match_components(true_means, fitted_means) -> np.ndarray:
    """The permutation of fitted components closest to the true ones (Hungarian algorithm).

    Parameters
    ----------
    true_means : ndarray of shape (K, d)
    fitted_means : ndarray of shape (K, d)

    Returns
    -------
    order : ndarray of shape (K,), int
        ``fitted_means[order[k]]`` is matched with ``true_means[k]``; the matching minimizes
        the sum of squared distances between matched means.
    """
    from scipy.optimize import linear_sum_assignment  # scipy comes with scikit-learn

    cost = ((true_means[:, None, :] - fitted_means[None, :, :]) ** 2).sum(axis=2)
    rows, cols = linear_sum_assignment(cost)
    order = np.empty(len(rows), dtype=np.intp)
    order[rows] = cols
    return order


def _fmt_vector(v, limit=4) -> str:
    shown = " ".join(f"{x:8.3f}" for x in v[:limit])
    return shown + (" ..." if len(v) > limit else "")


def _mib(n_bytes) -> str:
    return f"{n_bytes / 2**20:,.1f} MiB"


def _mean_loglik_under(truth: Truth, X, n_jobs) -> float:
    """Mean log-likelihood of X under the true parameters (the bound of a zeroth iteration)."""
    probe = GaussianMixture(
        truth.means.shape[0], covariance_type=truth.covariance_type, max_iter=1, tol=0.0,
        weights_init=truth.weights, means_init=truth.means, precisions_init=truth.precisions,
        n_jobs=n_jobs,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe.fit(X)
    return probe.lower_bounds_[0]


def _time_per_iteration(gm, X, repeats=3) -> float:
    """Median wall time of one EM iteration, continuing a copy of the fitted model."""
    probe = copy.deepcopy(gm).set_params(warm_start=True, max_iter=1, tol=0.0, verbose=0)
    times = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for _ in range(repeats):
            t0 = time.perf_counter()
            probe.fit(X)
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def run_demo(*, n_samples=2_000_000, n_features=8, n_components=5, covariance_type="full",
             n_jobs=None, seed=0, max_iter=100, file=None) -> dict:
    """Generate a mixture with a known truth, fit it with fastem, and print the recovery.

    Parameters
    ----------
    n_samples, n_features, n_components : int
    covariance_type : {'full', 'tied', 'diag', 'spherical'}
    n_jobs : int or None
        Threads (None: all cores).
    seed : int
        Seed of the truth, of the sample and of the fit's initialization.
    max_iter : int
    file : text stream, default=sys.stdout

    Returns
    -------
    summary : dict
        ``fit_seconds``, ``seconds_per_iteration``, ``n_iter``, ``converged``,
        ``max_abs_mean_error``, ``loglik_truth``, ``loglik_fit``.
    """
    out = sys.stdout if file is None else file

    def say(*args):
        print(*args, file=out, flush=True)

    K, d = n_components, n_features
    with threads(n_jobs) as n_threads:
        pass
    say(f"fastem demo: {n_samples:,} samples x {d} features, {K} {covariance_type!r} components, "
        f"seed {seed}, {n_threads} thread{'s' if n_threads != 1 else ''}")

    rng = np.random.default_rng(seed)
    truth = make_truth(d, K, covariance_type, rng)
    t0 = time.perf_counter()
    X, _ = sample_truth(truth, n_samples, rng)
    say(f"data: {_mib(X.nbytes)} float64, generated in {time.perf_counter() - t0:.2f} s")

    # Compile (or load from the on-disk cache) before timing, on a tiny sample of the data.
    t0 = time.perf_counter()
    tiny = X[: max(256, 4 * K)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        GaussianMixture(K, covariance_type=covariance_type, max_iter=2, n_jobs=n_jobs,
                        random_state=seed).fit(tiny)
    say(f"kernels compiled or loaded from cache in {time.perf_counter() - t0:.2f} s")

    say("fitting (verbose=2: bound and time of every iteration):")
    gm = GaussianMixture(K, covariance_type=covariance_type, max_iter=max_iter, n_jobs=n_jobs,
                         random_state=seed, verbose=2, verbose_interval=1)
    t0 = time.perf_counter()
    gm.fit(X)
    fit_seconds = time.perf_counter() - t0
    per_iteration = _time_per_iteration(gm, X)

    status = "converged" if gm.converged_ else "did not converge"
    say("")
    say(f"fit time:       {fit_seconds:.3f} s for {gm.n_iter_} iterations ({status}), "
        f"k-means initialization included")
    say(f"time/iteration: {per_iteration:.4f} s (median of 3 extra iterations; "
        f"{n_samples / per_iteration / 1e6:,.1f} M rows/s)")

    order = match_components(truth.means, gm.means_)
    fitted_weights = gm.weights_[order]
    fitted_means = gm.means_[order]
    errors = np.abs(fitted_means - truth.means).max(axis=1)
    limit = 4
    shown = f"first {limit} of {d}" if d > limit else f"{d}"
    say("")
    say(f"components matched up to permutation (Hungarian algorithm on the means; "
        f"coordinates: {shown}):")
    say(f"{'true':>4} {'fit':>4} {'weight true':>12} {'weight fit':>11} "
        f"{'max|mean err|':>14}   mean")
    for k in range(K):
        say(f"{k:4d} {order[k]:4d} {truth.weights[k]:12.4f} {fitted_weights[k]:11.4f} "
            f"{errors[k]:14.2e}   true {_fmt_vector(truth.means[k], limit)}")
        say(f"{'':>52}fit  {_fmt_vector(fitted_means[k], limit)}")

    loglik_truth = _mean_loglik_under(truth, X, n_jobs)
    loglik_fit = gm.score(X)
    max_error = float(errors.max())
    say("")
    say(f"max abs error of the means:   {max_error:.3e}")
    say(f"max abs error of the weights: {np.abs(fitted_weights - truth.weights).max():.3e}")
    say(f"mean log-likelihood per row:  truth {loglik_truth:.6f}, fit {loglik_fit:.6f} "
        f"(fit - truth = {loglik_fit - loglik_truth:+.2e}; the maximum-likelihood fit should be "
        "at or slightly above the truth)")
    return {
        "fit_seconds": fit_seconds,
        "seconds_per_iteration": per_iteration,
        "n_iter": gm.n_iter_,
        "converged": bool(gm.converged_),
        "max_abs_mean_error": max_error,
        "loglik_truth": float(loglik_truth),
        "loglik_fit": float(loglik_fit),
    }


def check_memory(n_samples, n_features) -> None:
    """Raise ValueError if the demo's data would not fit comfortably in physical memory."""
    need = n_samples * n_features * 8
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not a POSIX system: do not guess
        return
    if need > 0.6 * total:
        raise ValueError(
            f"the demo data would take {_mib(need)} (n_samples x n_features float64), more than "
            f"60% of this machine's {_mib(total)} of memory: lower --n-samples or --n-features."
        )
