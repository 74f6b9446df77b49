"""``fastem bench``: fastem against its peers on the user's own shape and machine, and the
measuring code that the benchmark suite (``benchmarks/``) and the CI gate (``ci/``) share.

Everything here is plain Python around public APIs; nothing is compiled. Heavy or optional
imports (scikit-learn's estimator, daal4py, matplotlib) happen inside the functions that need
them, so that :mod:`fastem.cli` can import this module at no cost.

Peers
-----
A *peer* is one implementation of EM for Gaussian mixtures. Each is prepared outside the
timing (:func:`prepare`: build the estimator from the starting parameters) and then runs
``n_iter`` EM iterations with no convergence test, so the time of the run divided by
``n_iter`` is the time of one EM iteration: an E-step (log-densities, responsibilities,
log-likelihood) and an M-step (weights, means, covariances, precision factors).

* ``fastem``: ``fastem.GaussianMixture(tol=0, max_iter=n_iter)`` from ``weights_init``,
  ``means_init`` and ``precisions_init`` (which skips the initialization), ``n_jobs=threads``.
* ``reference``: :func:`fastem.reference.em`, the plain-NumPy textbook EM, BLAS on ``threads``.
* ``sklearn``: scikit-learn's own loop body, ``_e_step`` then ``_m_step``, on an estimator whose
  parameters are set to the start. Its public ``fit`` cannot be timed per iteration: it runs a
  k-means initialization even when all three ``*_init`` are given, and one extra E-step at the
  end (``benchmarks/_peers.py`` checks that this loop gives what a warm-started ``fit`` gives).
* ``daal4py``: Intel oneDAL's ``em_gmm`` (``daal4py``, shipped by scikit-learn-intelex) with
  ``accuracyThreshold=0`` and ``maxIterations=n_iter``, ``daalinit(threads)``, in the data's
  precision (``fptype``). It stops early when the log-likelihood does not increase (a negative
  threshold is refused): the run checks ``nIterations`` and fails if it did. oneDAL has no
  'tied' or 'spherical' covariances, and does not add ``reg_covar`` (it regularizes only
  ill-conditioned covariances), so its iterates differ from the others by about ``reg_covar``.
  It runs in a worker process of its own (``fastem._peer_process``): in fastem's process it
  shares the TBB runtime with fastem's kernels, and slowed them by up to 10%.

Every peer starts from the same parameters (one fastem iteration from a k-means++
initialization, :func:`make_start`) on the same rows (:func:`make_data`: a mixture of
overlapping full Gaussians from the generator of ``fastem demo``, its means brought closer).

Roofline
--------
:func:`pass_flops` and :func:`pass_bytes` count the work of one fused pass (one EM
iteration: the M-step from the statistics is negligible); :func:`roofline_floor` turns them
into the least time the machine could take, ``max(bytes / read bandwidth, flops / matmul
rate)``, with the ceilings measured in the same run (:func:`measure_ceilings`). The flop counts
are written out in ``benchmarks/README.md`` ("The roofline") and in :func:`flops_per_row`.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from importlib import metadata

import numpy as np

from ._kernels.gaussian import DIAG, FULL, SPHERICAL, TIED
from ._kernels.gaussian_expanded import n_features_expanded, scatter_rows
from ._params import (EXPANDED_FEATURES, MOMENTS_ABOUT_CENTRE_MIN_COMPONENTS,
                      expanded_min_components)

__all__ = [
    "PEERS", "WHOLE_FIT_PEERS", "COVARIANCE_TYPES", "Unavailable", "EarlyStop", "Start",
    "Ceilings", "PeerTiming", "make_data", "make_start", "warm_up_fastem", "prepare",
    "prepare_fit", "sklearn_at_start", "check_available", "peer_memory_bytes", "tolerance",
    "agree", "time_peers", "pilot_seconds", "pilot_fit_seconds", "flops_per_row",
    "pass_flops", "pass_bytes", "roofline_floor", "compute_dtype", "achieved",
    "matmul_rate", "measure_ceilings", "first_fit", "machine_lines", "blas_info",
    "openblas_env", "run_bench", "add_bench_parser",
]

PEERS = ("fastem", "reference", "sklearn", "daal4py")
# The peers with a whole fit of their own, initialization included (:func:`prepare_fit`).
WHOLE_FIT_PEERS = ("fastem", "sklearn")
COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
REG_COVAR = 1e-6
GIB = 2**30

# The generator of ``fastem demo`` keeps the means far apart (EM converges in two iterations);
# brought this much closer, the components overlap and EM is still moving after the timed
# iterations. oneDAL stops as soon as the log-likelihood does not increase, so a nearly
# converged start would let it skip iterations.
MEAN_SHRINK = 0.3

# Below this many features fastem's 'full'/'tied' kernel multiplies by the triangular factor
# with plain loops, from it on with a dense BLAS product (``_kernels.gaussian.SMALL_D``; copied
# here so that importing this module compiles nothing).
_KERNEL_SMALL_D = 8


class Unavailable(Exception):
    """A peer that cannot run here (not installed, or would not fit in memory or time)."""


class EarlyStop(RuntimeError):
    """oneDAL stopped before the requested iterations (its log-likelihood did not increase)."""


# ---------------------------------------------------------------------------- data and start
def make_data(n_samples, n_features, n_components, *, seed=0, dtype=np.float64) -> np.ndarray:
    """Rows of a random mixture of ``n_components`` overlapping full Gaussians.

    Parameters
    ----------
    n_samples, n_features, n_components : int
    seed : int
    dtype : float32 or float64
        The same seed gives the same rows in either dtype (float32: rounded).

    Returns
    -------
    X : ndarray of shape (n_samples, n_features), C-contiguous, read-only
    """
    from ._demo import Truth, make_truth, sample_truth

    rng = np.random.default_rng(seed)
    truth = make_truth(n_features, n_components, "full", rng)
    truth = Truth("full", truth.weights, MEAN_SHRINK * truth.means, truth.covariances)
    X, _ = sample_truth(truth, n_samples, rng, dtype=np.dtype(dtype))
    X.setflags(write=False)
    return X


@dataclass(frozen=True)
class Start:
    """Starting parameters, shaped as scikit-learn's attributes (float64)."""

    covariance_type: str
    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    precisions: np.ndarray
    precisions_cholesky: np.ndarray


def make_start(X, n_components, covariance_type, *, seed=0, threads=2) -> Start:
    """One fastem EM iteration on ``X`` from a k-means++ initialization (outside any timing)."""
    from sklearn.exceptions import ConvergenceWarning

    from .gaussian_mixture import GaussianMixture

    gm = GaussianMixture(
        n_components, covariance_type=covariance_type, init_params="k-means++", max_iter=1,
        tol=0.0, reg_covar=REG_COVAR, random_state=seed, n_jobs=threads,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm.fit(X)
    arrays = [gm.weights_, gm.means_, gm.covariances_, gm.precisions_, gm.precisions_cholesky_]
    for a in arrays:
        a.setflags(write=False)
    return Start(covariance_type, *arrays)


def warm_up_fastem(covariance_types=("full", "diag"), dtypes=(np.float64,), threads=2) -> None:
    """Compile (or load from the cache) fastem's kernels for these dtypes on a small array,
    writeable and read-only (another Numba type; :func:`make_data` returns read-only rows),
    with few components and with enough for the expanded kernel.

    More rows than k-means' sample (10,000): its Lloyd passes over all the rows, which read
    the data's own dtype, then compile too. With 512 rows a float32 whole fit's first run
    compiled them, a second of a 0.007 s fit."""
    from sklearn.exceptions import ConvergenceWarning

    from .gaussian_mixture import GaussianMixture

    X = np.random.default_rng(0).normal(size=(10_240, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for dtype in dtypes:
            for writeable in (True, False):
                Xd = X.astype(dtype)
                Xd.setflags(write=writeable)
                for cov in covariance_types:
                    # both kernels: the per-component one (which every fit's start runs),
                    # and with enough components the expanded one
                    for k in (2, expanded_min_components(cov, X.shape[1], X.shape[0])):
                        GaussianMixture(k, covariance_type=cov, max_iter=2,
                                        n_jobs=threads).fit(Xd)


# ---------------------------------------------------------------------------- peers
def peer_memory_bytes(peer, shape, covariance_type="full") -> int:
    """Rough peak memory a peer needs beyond X, in bytes (temporaries are float64).

    fastem: a few MiB of per-block scratch, whatever N. reference: three (N, K, d) and four
    (N, K) arrays. scikit-learn: about six (N, K) arrays and two (N, d). oneDAL: about four
    (N, K) arrays and a copy of X.
    """
    n, d, k = shape
    if peer == "reference":
        return 3 * n * k * d * 8 + 4 * n * k * 8 + n * d * 8
    if peer == "sklearn":
        return 6 * n * k * 8 + 2 * n * d * 8
    if peer == "daal4py":
        return 4 * n * k * 8 + n * d * 8
    return 64 * 2**20


def status_bytes(field: str) -> int | None:
    """A memory field of /proc/self/status in bytes (Linux: 'VmRSS' now, 'VmHWM' the peak,
    'RssAnon' the anonymous part); None where there is no such file or field."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark, VmHWM (Linux); False where that is not
    possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def available_bytes() -> int | None:
    """Memory available now (psutil), or None when psutil is missing."""
    try:
        import psutil
    except ImportError:
        return None
    return psutil.virtual_memory().available


def import_daal4py():
    """daal4py, or Unavailable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import daal4py
    except ImportError as error:
        raise Unavailable(f"daal4py is not installed ({error}); pip install scikit-learn-intelex")
    return daal4py


def _shape_text(shape) -> str:
    n, d, k = shape
    return f"{n:,}x{d}x{k}"


def check_available(peer, shape, covariance_type="full", *, memory_fraction=0.5) -> None:
    """Raise Unavailable if ``peer`` cannot run at ``shape`` here (not installed, no such
    covariance type, or its temporaries would take more than ``memory_fraction`` of the memory
    available now)."""
    if peer not in PEERS:
        raise ValueError(f"unknown peer {peer!r}; expected one of {PEERS}")
    if peer == "daal4py":
        if covariance_type not in ("full", "diag"):
            raise Unavailable(f"oneDAL's em_gmm has no {covariance_type!r} covariances")
        # Imported only where oneDAL runs, in a process of its own (see prepare).
        if importlib.util.find_spec("daal4py") is None:
            raise Unavailable("daal4py is not installed; pip install scikit-learn-intelex")
        from ._peer_process import peer_process

        peer_process().request("import", "daal4py")
    if peer != "fastem":
        need, have = peer_memory_bytes(peer, shape, covariance_type), available_bytes()
        if have is not None and need > memory_fraction * have:
            what = "(N, K, d) temporaries" if peer == "reference" else "(N, K) temporaries"
            raise Unavailable(
                f"{peer} at {_shape_text(shape)} needs about {need / GIB:.1f} GiB ({what}); "
                f"{have / GIB:.1f} GiB available"
            )


def prepare(peer, X, start: Start, n_iter=3, threads=2):
    """A zero-argument callable running ``n_iter`` EM iterations of ``peer`` from ``start``.

    ``X`` is an array (in memory or an ``np.memmap``); for fastem it may also be anything
    ``fastem.GaussianMixture.fit`` reads (a path to a ``.npy`` file). The callable returns
    ``(weights, means)`` after the last iteration. Building it is not timed; a run changes the
    state it was built with, so build one per run.

    oneDAL (``daal4py``) runs in a worker process of its own (``fastem._peer_process``): in
    this one it shares the TBB runtime with fastem's kernels and slowed them.
    """
    from ._peer_process import ISOLATED_PEERS, prepare_isolated

    if peer in ISOLATED_PEERS:
        return prepare_isolated(peer, X, start, n_iter=n_iter, threads=threads)
    return prepare_here(peer, X, start, n_iter=n_iter, threads=threads)


def prepare_here(peer, X, start: Start, n_iter=3, threads=2):
    """:func:`prepare`, in this process whatever the peer."""
    from threadpoolctl import threadpool_limits

    cov = start.covariance_type
    K = start.means.shape[0]
    if peer == "fastem":
        from sklearn.exceptions import ConvergenceWarning

        from .gaussian_mixture import GaussianMixture

        gm = GaussianMixture(
            K, covariance_type=cov, tol=0.0, max_iter=n_iter, reg_covar=REG_COVAR,
            weights_init=start.weights, means_init=start.means,
            precisions_init=start.precisions, n_jobs=threads,
        )

        def run():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                gm.fit(X)
            return gm.weights_, gm.means_

        return run

    if peer == "reference":
        from . import reference

        def run():
            with threadpool_limits(limits=threads, user_api="blas"):
                last = reference.em(X, start.weights, start.means, start.precisions_cholesky,
                                    cov, REG_COVAR, n_iter)[-1]
            return last["weights"], last["means"]

        return run

    if peer == "sklearn":
        gm = sklearn_at_start(start)

        def run():
            with threadpool_limits(limits=threads, user_api="blas"):
                for _ in range(n_iter):
                    _, log_resp = gm._e_step(X)
                    gm._m_step(X, log_resp)
            return gm.weights_, gm.means_

        return run

    if peer == "daal4py":
        d4p = import_daal4py()
        d4p.daalinit(threads)
        single = np.asarray(X).dtype == np.float32
        ftype = np.float32 if single else np.float64
        algorithm = d4p.em_gmm(
            nComponents=K, maxIterations=n_iter, accuracyThreshold=0.0,
            covarianceStorage="full" if cov == "full" else "diagonal",
            fptype="float" if single else "double",
        )
        weights = np.ascontiguousarray(start.weights[np.newaxis, :], dtype=ftype)
        means = np.ascontiguousarray(start.means, dtype=ftype)
        if cov == "full":
            covariances = [np.ascontiguousarray(c, dtype=ftype) for c in start.covariances]
        else:
            covariances = [np.ascontiguousarray(c[np.newaxis, :], dtype=ftype)
                           for c in start.covariances]

        def run():
            result = algorithm.compute(X, weights, means, covariances)
            done = int(np.asarray(result.nIterations).ravel()[0])
            if done != n_iter:  # it stops when the log-likelihood stops increasing
                raise EarlyStop(
                    f"oneDAL ran {done} EM iterations instead of {n_iter}: the start is too "
                    "close to convergence for a timing"
                )
            return (np.asarray(result.weights, dtype=np.float64).ravel(),
                    np.asarray(result.means, dtype=np.float64))

        return run

    raise ValueError(f"unknown peer {peer!r}; expected one of {PEERS}")


def prepare_fit(peer, X, n_components, covariance_type, *, threads=2, seed=0):
    """A zero-argument callable running a whole ``fit`` of ``peer``'s GaussianMixture (fastem's
    or scikit-learn's) with the estimators' defaults: k-means initialization, ``tol=1e-3``, at
    most 100 iterations, one initialization, ``random_state=seed``; ``reg_covar`` REG_COVAR.

    What a user who swaps one estimator for the other waits for, initialization included,
    which the EM-iteration timings (:func:`prepare`) leave out. The two start from their own
    k-means, so they need not take the same iterations. The callable returns
    ``(lower_bound_, n_iter_, converged_)``; building it is not timed.
    """
    from threadpoolctl import threadpool_limits

    if peer == "fastem":
        from .gaussian_mixture import GaussianMixture

        def run():
            gm = GaussianMixture(n_components, covariance_type=covariance_type,
                                 reg_covar=REG_COVAR, random_state=seed, n_jobs=threads).fit(X)
            return gm.lower_bound_, gm.n_iter_, gm.converged_

        return run

    if peer == "sklearn":
        from sklearn.mixture import GaussianMixture

        def run():  # its k-means runs OpenMP threads, its EM steps BLAS ones: both limited
            with threadpool_limits(limits=threads):
                gm = GaussianMixture(n_components, covariance_type=covariance_type,
                                     reg_covar=REG_COVAR, random_state=seed).fit(X)
            return gm.lower_bound_, gm.n_iter_, gm.converged_

        return run

    raise ValueError(f"whole fits compare fastem and sklearn, not {peer!r}")


def sklearn_at_start(start: Start):
    """A scikit-learn GaussianMixture whose parameters are ``start``, ready for EM steps."""
    from sklearn.mixture import GaussianMixture

    gm = GaussianMixture(start.means.shape[0], covariance_type=start.covariance_type, tol=0.0,
                         reg_covar=REG_COVAR)
    gm.weights_ = start.weights.copy()
    gm.means_ = start.means.copy()
    gm.covariances_ = start.covariances.copy()
    gm.precisions_cholesky_ = start.precisions_cholesky.copy()
    return gm


def tolerance(peer, dtype=np.float64) -> float:
    """Agreement of a peer's iterates with fastem's, relative to the largest mean.

    fastem and the reference compute in float64 from either dtype of X; scikit-learn computes
    some products in the data's precision (its 'tied' second moment ``X.T @ X``); oneDAL
    computes in the data's precision and does not add ``reg_covar``.
    """
    single = np.dtype(dtype) == np.float32
    if peer == "daal4py":
        return 1e-4 if single else 1e-5
    if peer == "sklearn" and single:
        return 1e-6
    return 1e-8


def agree(peer, result, expected, dtype=np.float64) -> bool:
    """Whether a peer's ``(weights, means)`` match fastem's within :func:`tolerance`."""
    weights, means = result
    tol = tolerance(peer, dtype)
    scale = max(1.0, float(np.abs(expected[1]).max()))
    return bool(np.abs(means - expected[1]).max() <= tol * scale
                and np.abs(weights - expected[0]).max() <= tol)


# ---------------------------------------------------------------------------- timing
@dataclass
class PeerTiming:
    """Wall times of the runs of one peer, each of ``n_iter`` EM iterations."""

    peer: str
    n_iter: int
    times: list = field(default_factory=list)
    result: tuple | None = None
    error: str | None = None  # why the peer stopped being run (EarlyStop), if it did

    @property
    def seconds_per_iter(self) -> float:
        """Median run time divided by ``n_iter``."""
        return statistics.median(self.times) / self.n_iter


# Pause before every timed run (untimed): OpenBLAS's and TBB's worker threads keep spinning
# for a while after a call, and on 2 cores a spinning scikit-learn or oneDAL pool took a core
# from the next peer (measured: fastem at (1M, 2, 8) full 0.035 s/iter right after
# scikit-learn, 0.019 after a 0.3 s pause or alone).
SETTLE_SECONDS = 0.3
# ... but the idle pause slows the run after it: the cores take a few milliseconds to come back
# to speed. Measured, 3 iterations at 1M rows, s/iter back to back / after the pause / after
# the pause and one untimed run: fastem (2, 8) 'full' 0.0108 / 0.0116 / 0.0109, 'diag'
# (16, 16) 0.0407 / 0.0422 / 0.0414; oneDAL 0.0148 / 0.0151 / 0.0149 and 0.0873 / 0.0876 /
# 0.0879. So a run shorter than this is timed only after an untimed one of the same peer;
# for longer runs the pause's cost is below 0.5%.
WARM_UP_BELOW_SECONDS = 1.0


def _timed_run(make_run):
    """(seconds, result) of one fresh run; EarlyStop propagates."""
    run = make_run()
    t0 = time.perf_counter()
    result = run()
    return time.perf_counter() - t0, result


def time_peers(factories, *, n_iter, repeats, budget=float("inf"), log=None, unit="s/iter"):
    """Time several peers, one run of each in turn, ``repeats`` rounds.

    Alternating the peers within each round exposes them to the same load on a shared
    machine, so their ratios are steadier than their absolute times. Each run follows a pause
    of SETTLE_SECONDS (other peers' threads go idle) and, for peers whose runs are shorter
    than WARM_UP_BELOW_SECONDS, an untimed run (the cores come back to speed): every peer is
    timed as in the middle of a long fit.

    Parameters
    ----------
    factories : dict of str to callable
        ``peer -> make_run``; ``make_run()`` (untimed) returns a fresh run callable (see
        :func:`prepare`).
    n_iter : int
        EM iterations per run (for the per-iteration time).
    repeats : int
        Rounds at most.
    budget : float
        A peer that has spent this many seconds starts no new run (at least one run each).
    log : callable, optional
        Called with a progress line after each run.
    unit : str
        Of the run time divided by ``n_iter`` in those lines ('s/fit' for whole fits).

    Returns
    -------
    dict of str to PeerTiming
        A peer whose run raised :class:`EarlyStop` is run no more; its ``error`` says why.
    """
    timings = {peer: PeerTiming(peer, n_iter) for peer in factories}
    for _ in range(repeats):
        for peer, make_run in factories.items():
            timing = timings[peer]
            if timing.error is not None or (timing.times and sum(timing.times) >= budget):
                continue
            time.sleep(SETTLE_SECONDS)
            try:
                if timing.times and timing.times[-1] < WARM_UP_BELOW_SECONDS:
                    make_run()()
                seconds, result = _timed_run(make_run)
                if not timing.times and seconds < WARM_UP_BELOW_SECONDS:
                    # The peer's first run came right after the pause: it was the warm-up.
                    seconds, result = _timed_run(make_run)
            except EarlyStop as error:
                timing.error = str(error)
                if log is not None:
                    log(f"  {peer:9s} stopped: {error}")
                continue
            timing.times.append(seconds)
            timing.result = result
            if log is not None:
                log(f"  {peer:9s} run {len(timing.times)}: "
                    f"{timing.times[-1] / n_iter:.4f} {unit}")
    return timings


# ---------------------------------------------------------------------------- roofline model
# Per row and component: log w_k + log N = const_k - acc / 2 (2), the log-sum-exp (max,
# subtract, exp, sum, scale: 5, an exp counted as ONE flop) and the responsibility sum s0 (1).
NORMALIZE_FLOPS = 8
# Per row: 1/s, log s, m + log s, and the log-likelihood sum.
ROW_FLOPS = 4


def flops_per_row(n_features, n_components, covariance_type, count="dense") -> float:
    """Floating-point operations per row of one fused pass (E-step and statistics).

    A multiply-add counts two; an exp or a log counts one (fastem's vectorized exp is really
    a range reduction, a polynomial and a scaling, 14 operations with AVX-512 and 17 without,
    so at few features, where the exps dominate, both the achieved GF/s and the floor
    understate the arithmetic done). Per row and component (d features):

    ============  ==============================================  ===========================
    covariance    ``count='dense'`` (used for the floor)          ``count='kernel'``
    ============  ==============================================  ===========================
    full          4d^2 + 6d + 8: (x - mu_k) P_k as a dense (d x d)  Mahalanobis 2d^2 (d >= 8,
                  product 2d^2, subtract, square and add 3d;      one BLAS product) or d(d+1)
                  r (x - mu_k) and its sum 3d; scatter            (triangle, d < 8), 4d, 3d,
                  r (x - mu_k)(x - mu_k)^T as a dense product     scatter upper triangle in
                  2d^2; 8 for the normalization                   4x4 tiles dp(dp + 4),
                                                                  dp = 4 ceil(d / 4); 8
    tied          5d + 8 per component, plus per row 4d^2 + d     6d + 8 per component; per
                  (one product with the shared factor and one     row 2d + Mahalanobis
                  unweighted scatter of x - c: responsibilities   (K < 5 or d > 256); the
                  sum to one)                                     scatter: see below
    diag          9d + 8: (x - mu) p, square, add 4d; x - mu,     the same; with K >= 3, 8d +
                  r t, sum, r t^2 and sum 5d                      8: moments about c, r x and
                                                                  r x^2 summed 4d (and per row
                                                                  d, the squares)
    spherical     8d + 9: x - mu, square, add 3d, one scale; 5d   9d + 8 (scales per feature);
                                                                  with K >= 3, 8d + 8 as diag
    ============  ==============================================  ===========================

    Plus ``ROW_FLOPS`` (4) per row, and for 'full' d per row to centre x on c. Where the
    expanded kernel runs (``fastem._params.EXPANDED_FEATURES`` for the covariance type, at
    least ``expanded_min_components`` components; the benchmark's well-separated data always
    passes its accuracy test), the kernel count is the expanded form's instead: 2 F' for the
    log-densities eta Phi and 2 F' for the statistics Phi R^T per component, F' = 8 ceil(F / 8)
    with F = 1 + d + d(d+1)/2 ('full'), 1 + 2d ('diag'), 2 + d ('spherical') or
    1 + 4 ceil(d / 4) ('tied', its padded layout); per row the features, d + d(d+1)/2, 2d, 2d
    or, for 'tied', d, and its product U^T y (2 d d8, d8 = 8 ceil(d / 8)) and the squares of
    that (2d).

    The kernel count is that of an EM iteration after the first. 'tied''s unweighted scatter
    depends on the rows alone: a fit sums it on its first pass only (dp(dp + 4) per row, the
    expanded kernel 2 dp^2, dp = 4 ceil(d / 4)) and moves it to each later pass's centre.

    Parameters
    ----------
    n_features, n_components : int
    covariance_type : {'full', 'tied', 'diag', 'spherical'}
    count : {'dense', 'kernel'}
        'dense': the textbook count, every (d x d) product dense; 'kernel': what fastem's
        kernel executes.

    Returns
    -------
    float
    """
    d, K = n_features, n_components
    if count not in ("dense", "kernel"):
        raise ValueError(f"count must be 'dense' or 'kernel', got {count!r}")
    dense = count == "dense"
    dp = 4 * math.ceil(d / 4)
    maha = 2 * d * d if dense or d >= _KERNEL_SMALL_D else d * (d + 1)
    scatter = 2 * d * d if dense else dp * (dp + 4)
    expanded = (not dense and K >= expanded_min_components(covariance_type, d)
                and d in EXPANDED_FEATURES.get(covariance_type, ()))
    if expanded:
        kind = {"full": FULL, "tied": TIED, "diag": DIAG, "spherical": SPHERICAL}[covariance_type]
        if kind == TIED:
            n_feat = 8 * math.ceil((1 + scatter_rows(d)) / 8)
            per_row = d + 2 * d * 8 * math.ceil(d / 8) + 2 * d
        else:
            n_feat = 8 * math.ceil(n_features_expanded(kind, d) / 8)
            per_row = d + d * (d + 1) // 2 if covariance_type == "full" else 2 * d
        per_component = 4 * n_feat + NORMALIZE_FLOPS
        per_row += ROW_FLOPS
    elif covariance_type == "full":
        sumsq = 3 * d if dense else 4 * d
        per_component = maha + sumsq + 3 * d + scatter + NORMALIZE_FLOPS
        per_row = d + ROW_FLOPS
    elif covariance_type == "tied":  # the kernel: no scatter after a fit's first pass
        per_component = (5 * d if dense else 6 * d) + NORMALIZE_FLOPS
        per_row = (d if dense else 2 * d) + maha + (scatter if dense else 0) + ROW_FLOPS
    elif covariance_type in ("diag", "spherical"):
        # the kernel's moments about c (K >= MOMENTS_ABOUT_CENTRE_MIN_COMPONENTS): r x and
        # r x^2, 4d, and the squares once a row, against x - mu, r t, r t^2 and sums, 5d
        about_centre = not dense and K >= MOMENTS_ABOUT_CENTRE_MIN_COMPONENTS
        if dense and covariance_type == "spherical":
            per_component = 8 * d + 1 + NORMALIZE_FLOPS
        else:
            per_component = (8 * d if about_centre else 9 * d) + NORMALIZE_FLOPS
        per_row = (d if about_centre else 0) + ROW_FLOPS
    else:
        raise ValueError(f"covariance_type must be one of {COVARIANCE_TYPES}, "
                         f"got {covariance_type!r}")
    return float(K * per_component + per_row)


def pass_flops(n_samples, n_features, n_components, covariance_type, count="dense") -> float:
    """Flops of one pass over ``n_samples`` rows (see :func:`flops_per_row`)."""
    return n_samples * flops_per_row(n_features, n_components, covariance_type, count)


def pass_bytes(n_samples, n_features, itemsize) -> float:
    """Bytes one pass moves from memory: X read once, ``N * d * itemsize``."""
    return float(n_samples) * n_features * itemsize


@dataclass
class Ceilings:
    """The machine's ceilings, measured in the run that uses them.

    Attributes
    ----------
    read_gbs : float
        Memory read bandwidth, GB/s (1e9 bytes): the best of the methods in ``read_methods``.
    read_methods : dict of str to float
        GB/s of each method tried (e.g. a parallel Numba sum, numpy's sum).
    read_bytes : int
        Size of the array read (larger than the caches).
    gemm_gflops : dict of str to float
        Matrix-multiply rate, GFLOP/s, per dtype name (numpy matmul, ``gemm_n`` square).
    gemm_n : int
    threads : int
    blas : str
        The BLAS that ran the products (threadpoolctl's internal_api, version, architecture).
    """

    read_gbs: float
    read_methods: dict
    read_bytes: int
    gemm_gflops: dict
    gemm_n: int
    threads: int
    blas: str = ""

    def gemm(self, dtype="float64") -> float:
        return self.gemm_gflops[np.dtype(dtype).name]

    def to_dict(self) -> dict:
        return asdict(self)


def roofline_floor(n_samples, n_features, n_components, covariance_type, itemsize,
                   ceilings: Ceilings, compute_dtype="float64") -> tuple[float, str]:
    """The least time one pass could take here, and what bounds it ('memory' or 'compute').

    ``max(bytes / read bandwidth, dense flops / matmul rate)``. fastem computes in float64
    whatever the dtype of X, so its floor uses the DGEMM rate (``compute_dtype``).
    """
    memory = pass_bytes(n_samples, n_features, itemsize) / (ceilings.read_gbs * 1e9)
    compute = (pass_flops(n_samples, n_features, n_components, covariance_type)
               / (ceilings.gemm(compute_dtype) * 1e9))
    return (memory, "memory") if memory >= compute else (compute, "compute")


def compute_dtype(peer, dtype) -> str:
    """The precision a peer's arithmetic runs in on data of ``dtype``: float64 for all but
    oneDAL on float32 data (fastem, the reference and scikit-learn accumulate in float64)."""
    return "float32" if peer == "daal4py" and np.dtype(dtype) == np.float32 else "float64"


def achieved(seconds_per_pass, n_samples, n_features, n_components, covariance_type, itemsize,
             ceilings: Ceilings | None = None, compute_dtype="float64") -> dict:
    """Rates of one pass that took ``seconds_per_pass``.

    The floor's compute term uses the matmul rate of ``compute_dtype`` (see
    :func:`compute_dtype`: float32 only for oneDAL on float32 data).

    Returns
    -------
    dict
        ``rows_per_s``; ``gflops`` (dense count) and ``gflops_kernel`` (fastem's count);
        ``gbs`` (X read once); and with ``ceilings``: ``floor_s``, ``bound`` and
        ``roofline_fraction`` = floor / time (1 would be the machine's limit).
    """
    t = seconds_per_pass
    out = {
        "rows_per_s": n_samples / t,
        "gflops": pass_flops(n_samples, n_features, n_components, covariance_type) / t / 1e9,
        "gflops_kernel": pass_flops(n_samples, n_features, n_components, covariance_type,
                                    "kernel") / t / 1e9,
        "gbs": pass_bytes(n_samples, n_features, itemsize) / t / 1e9,
    }
    if ceilings is not None:
        floor, bound = roofline_floor(n_samples, n_features, n_components, covariance_type,
                                      itemsize, ceilings, compute_dtype)
        out.update(floor_s=floor, bound=bound, roofline_fraction=floor / t)
    return out


def _best_seconds(fn, repeats) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def matmul_rate(dtype="float64", n=2048, repeats=5, threads=2) -> float:
    """GFLOP/s of numpy's ``matmul`` of two (n, n) matrices of ``dtype``, BLAS on ``threads``
    threads: ``2 n^3`` flops over the best of ``repeats`` products (after one untimed)."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(dtype)
    b = rng.standard_normal((n, n)).astype(dtype)
    out = np.empty((n, n), dtype=dtype)
    with threadpool_limits(limits=threads, user_api="blas"):
        np.matmul(a, b, out=out)
        seconds = _best_seconds(lambda: np.matmul(a, b, out=out), repeats)
    return 2.0 * n**3 / seconds / 1e9


def numpy_sum_bandwidth(a, repeats=5, threads=1) -> float:
    """GB/s of ``numpy.sum`` over ``a`` (1-D float64), split over ``threads`` Python threads
    (numpy releases the GIL in the reduction); best of ``repeats``."""
    if threads <= 1:
        return a.nbytes / _best_seconds(a.sum, repeats) / 1e9
    from concurrent.futures import ThreadPoolExecutor

    parts = np.array_split(a, threads)
    with ThreadPoolExecutor(threads) as pool:
        seconds = _best_seconds(lambda: list(pool.map(np.sum, parts)), repeats)
    return a.nbytes / seconds / 1e9


def bandwidth_array(nbytes=GIB) -> np.ndarray:
    """A 1-D float64 array of about ``nbytes`` (at most an eighth of the available memory),
    its pages touched."""
    have = available_bytes()
    if have is not None:
        nbytes = min(nbytes, have // 8)
    return np.ones(max(1, int(nbytes) // 8))


def measure_ceilings(threads=2, *, read_bytes=GIB, gemm_n=2048, repeats=5, read_methods=None,
                     array=None) -> Ceilings:
    """Measure the read bandwidth and the matmul rates of this machine now.

    Parameters
    ----------
    threads : int
    read_bytes : int
        Size of the array summed (default 1 GiB, capped at an eighth of the available
        memory); it must exceed the last-level cache.
    gemm_n : int
    repeats : int
        Best of this many, for every measurement.
    read_methods : dict of str to callable, optional
        Extra bandwidth measurements, ``name -> f(array, threads, repeats) -> GB/s`` (the
        benchmarks add a parallel Numba sum). numpy's sum, on one thread and split over
        ``threads``, is always measured. The best of all is the read bandwidth.
    array : ndarray, optional
        The 1-D float64 array to read (default: :func:`bandwidth_array`).

    Returns
    -------
    Ceilings
    """
    a = bandwidth_array(read_bytes) if array is None else array
    methods = {}
    for name, fn in (read_methods or {}).items():
        methods[name] = fn(a, threads, repeats)
    methods["numpy sum, 1 thread"] = numpy_sum_bandwidth(a, repeats, 1)
    if threads > 1:
        methods[f"numpy sum, {threads} Python threads"] = numpy_sum_bandwidth(a, repeats, threads)
    gemm = {name: matmul_rate(name, gemm_n, repeats, threads) for name in ("float64", "float32")}
    blas = "; ".join(
        f"{b.get('internal_api')} {b.get('version')} {b.get('architecture', '?')}"
        for b in blas_info()
    )
    return Ceilings(read_gbs=max(methods.values()), read_methods=methods, read_bytes=a.nbytes,
                    gemm_gflops=gemm, gemm_n=gemm_n, threads=threads, blas=blas)


# ---------------------------------------------------------------------------- machine
def blas_info() -> list[dict]:
    """threadpoolctl's description of the BLAS libraries loaded in this process."""
    from threadpoolctl import threadpool_info

    return [info for info in threadpool_info() if info.get("user_api") == "blas"]


def openblas_env() -> str:
    """OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE as set in the environment (never changed here)."""
    parts = [f"{name}={os.environ[name]}" for name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
             if name in os.environ]
    return ", ".join(parts) if parts else "OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset"


def _version(dist) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# The vector instructions fastem's kernels compile for (``fastem._kernels._llvm``): its speed
# against the peers differs most between these, so the CI benchmark gate may keep thresholds
# for each (``ci/bench_thresholds.json``).
CPU_CLASSES = ("avx512", "avx2", "other")


def cpu_class() -> str:
    """'avx512' where the kernels compile for AVX-512 (32 vector registers of 512 bits),
    'avx2' for AVX2 without it (16 of 256 bits), else 'other' (see CPU_CLASSES)."""
    from ._kernels._llvm import target_has

    if target_has("avx512f"):
        return "avx512"
    return "avx2" if target_has("avx2") else "other"


def machine_lines(threads) -> list[str]:
    """Markdown bullet lines: CPU, versions, OpenBLAS environment and kernel."""
    lines = [
        f"- CPU: {cpu_model()} ({cpu_class()}), {os.cpu_count()} logical cores; {threads} "
        f"threads per peer; load average {_load_average()}",
        f"- Python {platform.python_version()}, numpy {_version('numpy')}, "
        f"numba {_version('numba')}, scikit-learn {_version('scikit-learn')}, "
        f"scikit-learn-intelex (daal4py) {_version('scikit-learn-intelex')}, "
        f"fastem {_version('fastem')}",
        f"- {openblas_env()} (read, never changed)",
    ]
    for info in blas_info():
        lines.append(
            f"- BLAS: {info.get('internal_api')} {info.get('version')}, "
            f"architecture {info.get('architecture', '?')}, "
            f"threading {info.get('threading_layer', '?')}, "
            f"{info.get('num_threads')} threads by default "
            f"({os.path.basename(info.get('filepath', '?'))})"
        )
    return lines


def _load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "unknown"


# ---------------------------------------------------------------------------- fresh processes
# Time to a first fit in a fresh interpreter: the import, then a small fit whose time is
# almost all compilation when the cache is cold (and loading the cache when it is warm).
FIRST_FIT_SCRIPT = """
import json, time, warnings
t0 = time.perf_counter()
import numpy as np
import fastem
t1 = time.perf_counter()
X = np.random.default_rng(0).normal(size=(2000, 4)).astype({dtype!r})
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    fastem.GaussianMixture(3, covariance_type={cov!r}, max_iter=5, n_jobs={threads}).fit(X)
t2 = time.perf_counter()
print(json.dumps({{"import_s": t1 - t0, "fit_s": t2 - t1, "done_at": time.time()}}))
"""


def run_json(args, env=None, timeout=1800) -> dict:
    """Run ``python ARGS`` and parse the JSON on the last line of its output."""
    import subprocess

    done = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                          timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{args[0]} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def first_fit(cache_dir, covariance_type="full", threads=2, dtype="float64") -> dict:
    """Run a small fit in a fresh interpreter with its Numba cache in ``cache_dir``.

    An empty ``cache_dir`` measures the cold compile; the same directory a second time
    measures a warm cache; None keeps the environment's cache (NUMBA_CACHE_DIR if set, else
    next to fastem's sources): warm once this process has compiled fastem. Returns
    ``{"import_s", "fit_s", "ready_s", "wall_s"}``: ready, from the process's start to the
    fitted model (what a user waits for); wall, the whole process, which also spends
    0.2-0.3 s on the interpreter's own tear-down (garbage collections over the objects of
    scipy, scikit-learn and Numba) after that.
    """
    env = dict(os.environ, FASTEM_NUMBA_CACHE="1")
    if cache_dir is not None:
        env["NUMBA_CACHE_DIR"] = str(cache_dir)
    env.pop("NUMBA_DISABLE_JIT", None)
    script = FIRST_FIT_SCRIPT.format(cov=covariance_type, threads=threads,
                                     dtype=np.dtype(dtype).name)
    started_at, t0 = time.time(), time.perf_counter()
    result = run_json(["-c", script], env=env)
    result["wall_s"] = time.perf_counter() - t0
    result["ready_s"] = result.pop("done_at") - started_at  # both clocks this machine's
    return result


# ---------------------------------------------------------------------------- fastem bench
PILOT_ROWS = 20_000


def _scaled_pilot(X, prepare_part) -> float:
    """Estimated seconds of a run on all of X, from the run ``prepare_part(rows)`` builds
    (untimed) on its first PILOT_ROWS rows, scaled by the rows; 0 where X has at most twice
    as many rows, or where the run stops early (oneDAL on the pilot rows: no estimate)."""
    n = X.shape[0]
    if n <= 2 * PILOT_ROWS:
        return 0.0
    run = prepare_part(np.ascontiguousarray(X[:PILOT_ROWS]))
    t0 = time.perf_counter()
    try:
        run()
    except RuntimeError:
        return 0.0
    return (time.perf_counter() - t0) * n / PILOT_ROWS


def pilot_seconds(peer, X, start, n_iter, threads) -> float:
    """Estimated seconds of one run of ``n_iter`` iterations on all of X, from one iteration
    on its first PILOT_ROWS rows (time is linear in N for every peer)."""
    return n_iter * _scaled_pilot(
        X, lambda part: prepare(peer, part, start, n_iter=1, threads=threads))


def pilot_fit_seconds(peer, X, n_components, covariance_type, threads, seed=0) -> float:
    """Estimated seconds of a whole fit of ``peer`` (:func:`prepare_fit`) on all of X, from one
    on its first PILOT_ROWS rows: rough, since the iterations a fit takes depend on its
    rows."""
    return _scaled_pilot(X, lambda part: prepare_fit(peer, part, n_components, covariance_type,
                                                     threads=threads, seed=seed))


def _whole_fits(X, n_components, covariance_type, peers, *, threads, repeats, budget,
                max_run_seconds, seed, notes, say):
    """Time whole fits of fastem and scikit-learn (if among `peers`) at one covariance type,
    in turn: ``peer -> row`` (None: skipped), and the reasons for skips in `notes`."""
    cov = covariance_type
    factories = {}
    fit_peers = [p for p in WHOLE_FIT_PEERS if p in peers]
    for peer in fit_peers:
        try:
            check_available(peer, X.shape + (n_components,), cov)
            if peer != "fastem":
                estimate = pilot_fit_seconds(peer, X, n_components, cov, threads, seed)
                if estimate > max_run_seconds:
                    raise Unavailable(
                        f"its fit would take about {estimate:,.0f} s (more than "
                        f"{max_run_seconds:g} s; from a fit on {PILOT_ROWS:,} rows)")
        except Unavailable as why:
            notes.append(f"{cov} whole fit, {peer}: skipped: {why}")
            say(f"  {peer:9s} whole fit skipped: {why}")
            continue
        factories[peer] = (lambda p=peer: prepare_fit(p, X, n_components, cov,
                                                      threads=threads, seed=seed))
    timings = time_peers(factories, n_iter=1, repeats=repeats, budget=budget, unit="s/fit",
                         log=lambda line: say(f"  {cov:9s} fit " + line.lstrip()))
    base = timings.get("fastem")
    rows = {}
    for peer in fit_peers:
        timing = timings.get(peer)
        if timing is None or not timing.times or base is None or not base.times:
            rows[peer] = None
            continue
        lower_bound, n_iter, converged = timing.result
        seconds = timing.seconds_per_iter
        rows[peer] = {"s_per_fit": seconds, "runs": len(timing.times), "times": timing.times,
                      "speedup": seconds / base.seconds_per_iter,
                      "lower_bound": float(lower_bound), "n_iter": int(n_iter),
                      "converged": bool(converged)}
        if not converged:
            notes.append(f"{cov} whole fit, {peer}: did not converge in its 100 iterations")
        if len(timing.times) < repeats:
            notes.append(f"{cov} whole fit, {peer}: median of {len(timing.times)} run(s) "
                         f"(budget {budget:g} s)")
    return rows


def _fmt_seconds(seconds) -> str:
    if seconds is None:
        return "—"
    if seconds >= 10:
        return f"{seconds:.1f}"
    if seconds >= 0.1:
        return f"{seconds:.3f}"
    return f"{seconds:.4f}"


def _fmt_rate(value, digits=2) -> str:
    if value is None:
        return "—"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def _fmt_rows(rows_per_s) -> str:
    return f"{rows_per_s / 1e6:,.2f} M"


def _check_plotting() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ImportError(
            'fastem bench needs matplotlib to draw its plot: pip install "fastem[plot]" '
            "(or give no plot path: --no-plot)"
        ) from None


def run_bench(n_samples=1_000_000, n_features=16, n_components=16,
              covariance_types=("full", "diag"), dtype="float64", n_iter=3, n_jobs=None,
              peers=PEERS, plot_path="fastem-bench.png", json_path=None, *, repeats=5,
              budget=60.0, max_run_seconds=300.0, seed=0, whole_fit=False,
              file=None) -> dict:
    """Time fastem and its peers at one shape on this machine; print a table, plot, save JSON.

    Every peer runs ``n_iter`` EM iterations (``tol=0``) from the same start, in turn, up to
    ``repeats`` rounds; the time per iteration is the median run divided by ``n_iter``. The
    machine's read bandwidth and matmul rates are measured first, for the roofline columns.
    With ``whole_fit``, fastem's and scikit-learn's whole fits with their defaults are timed
    too, initialization included (:func:`prepare_fit`): what a user waits for.

    Parameters
    ----------
    n_samples, n_features, n_components : int
    covariance_types : str or sequence of str
        Among 'full', 'tied', 'diag', 'spherical'.
    dtype : {'float64', 'float32'}
        Of the generated rows.
    n_iter : int
        EM iterations per run.
    n_jobs : int or None
        Threads for every peer (fastem's convention: None or -1 all cores, -2 all but one).
    peers : sequence of str
        Among ``PEERS``; fastem is always run (the others are compared with it). A peer that
        is not installed, lacks the covariance type, would need more than half the available
        memory, or would take more than ``max_run_seconds`` per run (estimated from a pilot
        run on 20k rows) is skipped with a note.
    plot_path : str or path or None
        Where to write a PNG of the speed-ups and roofline fractions (needs matplotlib:
        ``pip install "fastem[plot]"``); None: no plot.
    json_path : str or path or None
        Where to write every number as JSON.
    repeats : int
        Rounds at most.
    budget : float
        Seconds after which a peer starts no new run (at least one run each).
    max_run_seconds : float
        Peers estimated to need longer per run are skipped.
    seed : int
        Of the data, the start, and the whole fits' ``random_state``.
    whole_fit : bool
        Also time whole fits of fastem and scikit-learn (if among `peers`), in turn, up to
        ``repeats`` rounds each (scikit-learn skipped when a fit on 20k rows, scaled to all
        rows, says it would take longer than ``max_run_seconds``).
    file : text stream, default sys.stdout

    Returns
    -------
    dict
        ``shape``, ``dtype``, ``threads``, ``n_iter``, ``ceilings``, ``results``
        (``covariance_type -> peer -> numbers``), ``whole_fits`` (the same, for the whole
        fits; empty without ``whole_fit``) and ``notes``.
    """
    from ._em import threads as fastem_threads

    out = sys.stdout if file is None else file

    def say(*args):
        print(*args, file=out, flush=True)

    if isinstance(covariance_types, str):
        covariance_types = (covariance_types,)
    covariance_types = tuple(covariance_types)
    for cov in covariance_types:
        if cov not in COVARIANCE_TYPES:
            raise ValueError(f"covariance type must be among {COVARIANCE_TYPES}, got {cov!r}")
    peers = ["fastem"] + [p for p in dict.fromkeys(peers) if p != "fastem"]
    for peer in peers:
        if peer not in PEERS:
            raise ValueError(f"peer must be among {PEERS}, got {peer!r}")
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    N, d, K = int(n_samples), int(n_features), int(n_components)
    if min(N, d, K, n_iter, repeats) < 1 or N < max(2, K):
        raise ValueError("need n_features, n_components, n_iter, repeats >= 1 and "
                         "n_samples >= max(2, n_components)")
    if plot_path is not None:
        _check_plotting()
    x_bytes = N * d * dtype.itemsize
    have = available_bytes()
    if have is not None and x_bytes > 0.5 * have:
        raise ValueError(f"the data would take {x_bytes / GIB:.1f} GiB, more than half of the "
                         f"{have / GIB:.1f} GiB available: lower n_samples or n_features")
    with fastem_threads(n_jobs) as threads:
        pass

    shape = (N, d, K)
    say(f"## fastem bench: {N:,} x {d} features, {K} components, {dtype.name}, "
        f"{threads} thread{'s' if threads != 1 else ''}, {n_iter} iterations per run")
    say("")
    for line in machine_lines(threads):
        say(line)
    say("measuring the machine's ceilings (read bandwidth, matmul rates)...")
    ceilings = measure_ceilings(threads)
    say(f"- read bandwidth {ceilings.read_gbs:.1f} GB/s (best of: "
        + ", ".join(f"{k} {v:.1f}" for k, v in ceilings.read_methods.items())
        + f"); matmul {ceilings.gemm_gflops['float64']:.1f} GF/s float64, "
        f"{ceilings.gemm_gflops['float32']:.1f} GF/s float32 ({ceilings.gemm_n}^2, "
        f"{threads} threads)")

    say("compiling fastem (or loading its cache)...")
    warm_up_fastem(covariance_types, (dtype,), threads)
    say(f"generating {x_bytes / 2**20:,.0f} MiB of data...")
    X = make_data(N, d, K, seed=seed, dtype=dtype)

    notes, results = [], {}
    for cov in covariance_types:
        say(f"{cov}: starting parameters (k-means++ and one EM iteration, untimed)...")
        start = make_start(X, K, cov, seed=seed, threads=threads)
        factories = {}
        for peer in peers:
            try:
                check_available(peer, shape, cov)
                if peer != "fastem":
                    estimate = pilot_seconds(peer, X, start, n_iter, threads)
                    if estimate > max_run_seconds:
                        raise Unavailable(
                            f"{peer} would take about {estimate:,.0f} s per run of {n_iter} "
                            f"iterations (more than {max_run_seconds:g} s; from a pilot on "
                            f"{PILOT_ROWS:,} rows)")
            except Unavailable as why:
                notes.append(f"{cov}, {peer}: skipped: {why}")
                say(f"  {peer:9s} skipped: {why}")
                continue
            factories[peer] = (lambda p=peer: prepare(p, X, start, n_iter=n_iter,
                                                        threads=threads))
        timings = time_peers(factories, n_iter=n_iter, repeats=repeats, budget=budget,
                             log=lambda line: say(f"  {cov:9s} " + line.lstrip()))
        base = timings["fastem"]
        rows = {}
        for peer in peers:
            timing = timings.get(peer)
            if timing is not None and not timing.times:  # EarlyStop on its first run
                notes.append(f"{cov}, {peer}: skipped: {timing.error}")
                timing = None
            if timing is None:
                rows[peer] = None
                continue
            seconds = timing.seconds_per_iter
            row = {"s_per_iter": seconds, "runs": len(timing.times), "times": timing.times,
                   "speedup": seconds / base.seconds_per_iter}
            row.update(achieved(seconds, N, d, K, cov, dtype.itemsize, ceilings,
                                compute_dtype(peer, dtype)))
            if peer != "fastem":
                row["agrees"] = agree(peer, timing.result, base.result, dtype)
                if not row["agrees"]:
                    notes.append(f"{cov}, {peer}: its iterates differ from fastem's beyond "
                                 f"{tolerance(peer, dtype):g} (relative)")
            if timing.error is not None:
                notes.append(f"{cov}, {peer}: median of {len(timing.times)} run(s), then: "
                             f"{timing.error}")
            elif len(timing.times) < repeats:
                notes.append(f"{cov}, {peer}: median of {len(timing.times)} run(s) "
                             f"(budget {budget:g} s)")
            rows[peer] = row
        results[cov] = rows

    fits = {}
    if whole_fit:
        for cov in covariance_types:
            say(f"{cov}: whole fits with the estimators' defaults...")
            fits[cov] = _whole_fits(X, K, cov, peers, threads=threads, repeats=repeats,
                                    budget=budget, max_run_seconds=max_run_seconds, seed=seed,
                                    notes=notes, say=say)

    _print_table(say, shape, dtype, threads, n_iter, repeats, peers, results, ceilings, fits,
                 seed, notes)
    report = {
        "shape": list(shape), "dtype": dtype.name, "threads": threads, "n_iter": n_iter,
        "peers": peers,
        "repeats": repeats, "machine": machine_lines(threads), "ceilings": ceilings.to_dict(),
        "results": results, "whole_fits": fits, "notes": notes,
    }
    if plot_path is not None:
        plot_bench(report, plot_path)
        say(f"plot: {plot_path}")
    if json_path is not None:
        _write_json(report, json_path)
        say(f"json: {json_path}")
    return report


def _write_json(report, path) -> None:
    folder = os.path.dirname(os.fspath(path))
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=2, default=str)
        f.write("\n")


def _print_table(say, shape, dtype, threads, n_iter, repeats, peers, results, ceilings, fits,
                 seed, notes):
    N, d, K = shape
    say("")
    say(f"### {N:,} x {d} x {K}, {dtype.name}, {threads} threads: seconds per EM iteration "
        f"(median of up to {repeats} runs of {n_iter})")
    say("")
    say("| cov | peer | s/iter | fastem speed-up | rows/s | GF/s | GB/s | floor s | "
        "of roofline |")
    say("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    _say_rows(say, results, peers, "s_per_iter", 5, lambda row: [
        _fmt_rows(row["rows_per_s"]), _fmt_rate(row["gflops"]), _fmt_rate(row["gbs"]),
        f"{_fmt_seconds(row['floor_s'])} ({row['bound']})", f"{row['roofline_fraction']:.1%}"])
    say("")
    say(f"fastem speed-up: the peer's time / fastem's (above 1: fastem is faster). GF/s: "
        f"dense flop count (benchmarks/README.md, 'The roofline'); GB/s: X read once per "
        f"iteration. Floor: max(bytes / {ceilings.read_gbs:.1f} GB/s, flops / "
        f"{ceilings.gemm('float64'):.1f} GF/s float64 matmul); of roofline = floor / time.")
    if fits:
        say("")
        say(f"### whole fits, {N:,} x {d} x {K}, {dtype.name}, {threads} threads: seconds per "
            f"fit (median of up to {repeats} runs)")
        say("")
        say("| cov | peer | s/fit | fastem speed-up | iterations | converged | lower bound |")
        say("|---|---|---:|---:|---:|---|---:|")
        _say_rows(say, fits, WHOLE_FIT_PEERS, "s_per_fit", 3, lambda row: [
            str(row["n_iter"]), "yes" if row["converged"] else "no",
            f"{row['lower_bound']:.6f}"])
        say("")
        say(f"Each estimator's own fit with its defaults (k-means initialization, tol=1e-3, at "
            f"most 100 iterations, random_state={seed}, reg_covar={REG_COVAR:g}), "
            "initialization included. Each starts from its own k-means, so the iterations "
            "and lower bounds may differ.")
    for note in notes:
        say(f"- {note}")


def _say_rows(say, table, peers, seconds, n_cells, cells):
    """One markdown row per covariance type of `table` (``cov -> peer -> row``) and each of
    `peers` it has: the row's `seconds` entry, fastem's speed-up, then the `n_cells` of
    `cells(row)`; a row None (skipped) says so, its cells empty."""
    for cov, rows in table.items():
        for peer in peers:
            if peer not in rows:
                continue
            row = rows[peer]
            if row is None:
                say(f"| {cov} | {peer} | skipped |" + " |" * (1 + n_cells))
                continue
            speedup = "1" if peer == "fastem" else f"{row['speedup']:.1f}×"
            say(f"| {cov} | {peer} | {_fmt_seconds(row[seconds])} | {speedup} | "
                + " | ".join(cells(row)) + " |")


def plot_bench(report, path) -> None:
    """A PNG: fastem's speed-up over each peer, every peer's fraction of the roofline, and
    (if the report has them) fastem's speed-up over scikit-learn's whole fit."""
    _check_plotting()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    results = report["results"]
    covs = list(results)
    peers = []
    for rows in results.values():
        for peer, row in rows.items():
            if row is not None and peer not in peers:
                peers.append(peer)
    others = [p for p in peers if p != "fastem"]
    colors = {"fastem": "#1b9e77", "reference": "#7570b3", "sklearn": "#d95f02",
              "daal4py": "#e7298a"}

    fits = report.get("whole_fits") or {}
    fit_others = [p for p in WHOLE_FIT_PEERS if p != "fastem"
                  and any((fits.get(c) or {}).get(p) is not None for c in covs)]
    if not fit_others:
        fits = {}
    fig = Figure(figsize=(16 if fits else 11, 4.6), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3 if fits else 2)
    ax1, ax2 = axes[:2]
    x = np.arange(len(covs))

    def bars(ax, names, value, fmt, table=results):
        width = 0.8 / max(1, len(names))
        for i, peer in enumerate(names):
            values = [value(table[c].get(peer)) for c in covs]
            pos = x - 0.4 + width * (i + 0.5)
            shown = [(xi, v) for xi, v in zip(pos, values) if v is not None]
            if shown:
                ax.bar([p for p, _ in shown], [v for _, v in shown], width, label=peer,
                       color=colors.get(peer))
            for xi, v in zip(pos, values):
                if v is None:  # skipped: say so at the foot of the axis
                    ax.text(xi, 0.02, "n/a", transform=ax.get_xaxis_transform(),
                            ha="center", va="bottom", fontsize=7, rotation=90)
                else:
                    ax.annotate(fmt(v), (xi, v), ha="center", va="bottom", fontsize=7,
                                xytext=(0, 2), textcoords="offset points")
        ax.set_xticks(x, covs)
        ax.set_yscale("log")
        ax.margins(y=0.15)
        ax.legend(fontsize=8)

    def times(v):
        return f"{v:.2g}×" if v < 10 else f"{v:.0f}×"

    def percent(v):
        return f"{v:.2g}" if v >= 1 else f"{100 * v:.2g}%"

    bars(ax1, others, lambda row: None if row is None else row["speedup"], times)
    ax1.axhline(1.0, color="black", lw=0.8)
    ax1.set_ylabel("peer's time / fastem's (log)")
    ax1.set_title("fastem speed-up over each peer", fontsize=10)
    bars(ax2, peers, lambda row: None if row is None else row["roofline_fraction"], percent)
    ax2.axhline(1.0, color="black", lw=0.8, ls="--")
    ax2.set_ylabel("roofline floor / time (log; 1 = machine limit)")
    ax2.set_title("fraction of the roofline floor", fontsize=10)
    if fits:
        ax3 = axes[2]
        bars(ax3, fit_others, lambda row: None if row is None else row["speedup"], times,
             table=fits)
        ax3.axhline(1.0, color="black", lw=0.8)
        ax3.set_ylabel("peer's time / fastem's (log)")
        ax3.set_title("whole fit with the defaults, initialization included", fontsize=10)
    missing = [p for p in report.get("peers", peers) if p not in peers]
    if missing:
        fig.supxlabel(f"not shown: {', '.join(missing)} (skipped at every covariance type: "
                      "see the notes of the table)", fontsize=8)
    N, d, K = report["shape"]
    c = report["ceilings"]
    fig.suptitle(
        f"fastem bench: {N:,} x {d} x {K}, {report['dtype']}, {report['threads']} threads; "
        f"read {c['read_gbs']:.1f} GB/s, DGEMM {c['gemm_gflops']['float64']:.0f} GF/s",
        fontsize=11)
    folder = os.path.dirname(os.fspath(path))
    if folder:
        os.makedirs(folder, exist_ok=True)
    fig.savefig(path)


# ---------------------------------------------------------------------------- command line
def add_bench_parser(subparsers) -> None:
    """Add the ``bench`` subcommand to the ``fastem`` command line (``fastem.cli``)."""
    from .cli import COVARIANCE_TYPES as cli_covariance_types
    from .cli import _at_least, _n_jobs, add_shape_arguments

    parser = subparsers.add_parser(
        "bench",
        help="time fastem against its peers at your shape on this machine",
        description=(
            "Generate rows of a Gaussian mixture of the given shape; run fastem, the plain-NumPy "
            "reference EM, scikit-learn and oneDAL's daal4py (where installed) for a fixed "
            "number of EM iterations (tol=0) from the same starting parameters, several times "
            "in turn; print the seconds per iteration, fastem's speed-up over each peer, the "
            "GFLOP/s and GB/s achieved and the fraction of the roofline floor (the least time "
            "this machine's measured read bandwidth and matmul rate allow); draw them in a "
            "PNG. Peers that would need too much memory or time are skipped, with a note."
        ),
    )
    add_shape_arguments(parser, 1_000_000, 16, 16)
    parser.add_argument("--covariance-type", nargs="+", choices=cli_covariance_types,
                        default=["full", "diag"], metavar="TYPE",
                        help="one or more of " + ", ".join(cli_covariance_types)
                        + " (default: full diag)")
    parser.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                        help="of the rows (default: %(default)s)")
    parser.add_argument("--n-iter", type=_at_least(1), default=3, metavar="N",
                        help="EM iterations per timed run (default: %(default)s)")
    parser.add_argument("--repeats", type=_at_least(1), default=5, metavar="R",
                        help="timed runs per peer at most; the median is shown "
                        "(default: %(default)s)")
    parser.add_argument("--budget", type=float, default=60.0, metavar="S",
                        help="seconds after which a peer starts no new run (default: "
                        "%(default)s)")
    parser.add_argument("--max-run-seconds", type=float, default=300.0, metavar="S",
                        help="skip a peer whose run would take longer, estimated from a pilot "
                        "on 20k rows (default: %(default)s)")
    parser.add_argument("--n-jobs", type=_n_jobs, default=None, metavar="N",
                        help="threads of every peer; -1: all cores, -2: all but one "
                        "(default: all cores)")
    parser.add_argument("--peers", nargs="+", choices=PEERS, default=list(PEERS),
                        metavar="PEER", help="peers to compare (fastem always runs; default: "
                        + " ".join(PEERS) + ")")
    parser.add_argument("--plot", default="fastem-bench.png", metavar="PATH",
                        help="PNG of the speed-ups and roofline fractions (default: "
                        "%(default)s; needs matplotlib: pip install \"fastem[plot]\")")
    parser.add_argument("--no-plot", action="store_true", help="draw no plot")
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="also write every number to this JSON file")
    parser.add_argument("--seed", type=_at_least(0, 2**32 - 1), default=0,
                        help="seed of the data, the start and the whole fits (default: "
                        "%(default)s)")
    parser.add_argument("--whole-fit", action="store_true",
                        help="also time whole fits of fastem and scikit-learn with their "
                        "defaults (k-means initialization, tol=1e-3), initialization included")
    parser.set_defaults(func=_run_bench_command, parser=parser)


def _unwritable(path) -> str | None:
    """Why a file could not be written at `path` (its missing folders made first, as the
    writers do), or None: checked before a run of minutes, not after it."""
    path = os.path.abspath(os.fspath(path))
    if os.path.isdir(path):
        return f"{path} is a folder"
    folder = os.path.dirname(path)
    while not os.path.exists(folder):  # the writers make the missing folders
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        return f"{folder} is not a folder"
    try:  # a trial file: permissions alone say nothing for root, or for /proc
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        return f"cannot write in {folder} ({error.strerror})"
    return None


def _run_bench_command(args) -> int:
    if args.n_samples < args.n_components:
        args.parser.error(f"--n-samples ({args.n_samples}) must be at least --n-components "
                          f"({args.n_components})")
    plot = None if args.no_plot else args.plot
    if plot is not None:
        try:
            _check_plotting()
        except ImportError as error:
            args.parser.error(str(error))
    for option, path in (("--json", args.json), ("--plot", plot)):
        why = None if path is None else _unwritable(path)
        if why is not None:
            args.parser.error(f"argument {option}: {why}")
    itemsize = np.dtype(args.dtype).itemsize
    have = available_bytes()
    need = args.n_samples * args.n_features * itemsize
    if have is not None and need > 0.5 * have:
        args.parser.error(f"the data would take {need / GIB:.1f} GiB, more than half of the "
                          f"{have / GIB:.1f} GiB available: lower --n-samples or --n-features")
    run_bench(
        n_samples=args.n_samples, n_features=args.n_features, n_components=args.n_components,
        covariance_types=args.covariance_type, dtype=args.dtype, n_iter=args.n_iter,
        n_jobs=args.n_jobs, peers=args.peers, plot_path=plot, json_path=args.json,
        repeats=args.repeats, budget=args.budget, max_run_seconds=args.max_run_seconds,
        seed=args.seed, whole_fit=args.whole_fit,
    )
    return 0
