"""What the benchmarks compare, shared by the pytest-benchmark tests and ``report.py``.

A *peer* is one implementation of EM for Gaussian mixtures: ``fastem``, ``reference``
(:func:`fastem.reference.em`), ``sklearn`` (scikit-learn's ``_e_step``/``_m_step`` loop) and
``daal4py`` (oneDAL's ``em_gmm``). Each is prepared outside the timing (``prepare``) and then
runs ``n_iter`` EM iterations with no convergence test, so the time of the run divided by
``n_iter`` is the time of one EM iteration.

The peers themselves, the data generator and the common start live in :mod:`fastem._bench`
(so that ``fastem bench``, the benchmark suite and the CI gate run the very same code; fastem
cannot import this folder); this module re-exports them with the benchmarks' fixed settings
and caches, and adds what only the benchmarks need: ``check_sklearn_loop`` and the
fresh-process probes (peak memory; compile time comes from ``fastem._bench.first_fit``).
What each peer runs is described in :mod:`fastem._bench`.

Everything here is float64, from the same starting parameters (one fastem iteration from a
k-means++ initialization), on the same data (a mixture of overlapping full Gaussians, from the
generator of ``fastem demo`` with the means brought closer).
"""

from __future__ import annotations

import functools
import os
import warnings

import numpy as np
from sklearn.exceptions import ConvergenceWarning

import fastem
from fastem import _bench
from fastem._bench import (  # noqa: F401  (the peers: one implementation, in fastem)
    MEAN_SHRINK,
    SETTLE_SECONDS,
    Start,
    Unavailable,
    available_bytes,
    blas_info,
    import_daal4py,
    openblas_env,
    sklearn_at_start,
    time_peers,
)

PEERS = ("fastem", "reference", "sklearn", "daal4py")
COVARIANCE_TYPES = ("full", "diag")
THREADS = 2
N_ITER = 3
REG_COVAR = 1e-6

# (n_samples, n_features, n_components)
SMALL_SHAPES = ((20_000, 2, 8), (20_000, 16, 16), (20_000, 64, 16))
BIG_SHAPES = ((1_000_000, 2, 8), (1_000_000, 16, 16), (1_000_000, 64, 16))


def shape_label(shape) -> str:
    n, d, k = shape
    n_text = f"{n // 1_000_000}M" if n % 1_000_000 == 0 else (
        f"{n // 1000}k" if n % 1000 == 0 else str(n))
    return f"{n_text}x{d}x{k}"


# ---------------------------------------------------------------------- data and start
@functools.lru_cache(maxsize=2)
def make_data(n_samples, n_features, n_components, seed=0) -> np.ndarray:
    """Rows of a random mixture of ``n_components`` overlapping full Gaussians, float64."""
    return _bench.make_data(n_samples, n_features, n_components, seed=seed)


@functools.lru_cache(maxsize=4)
def make_start(shape, covariance_type, seed=0) -> Start:
    """One fastem EM iteration from a k-means++ initialization (outside any timing)."""
    return _bench.make_start(make_data(*shape, seed=seed), shape[2], covariance_type, seed=seed,
                             threads=THREADS)


def warm_up_fastem() -> None:
    """Compile (or load from the cache) fastem's float64 kernels on a tiny array."""
    _bench.warm_up_fastem(COVARIANCE_TYPES, (np.float64,), THREADS)


# ---------------------------------------------------------------------- peers
def reference_bytes(shape) -> int:
    """Rough peak memory of fastem.reference: (N, K, d) and (N, K) float64 temporaries, and X."""
    return _bench.peer_memory_bytes("reference", shape)


def check_available(peer, shape, covariance_type="full") -> None:
    """Raise Unavailable if ``peer`` cannot run at ``shape`` on this machine."""
    _bench.check_available(peer, shape, covariance_type)


def prepare_fit(peer, X, n_components, covariance_type, threads=THREADS):
    """A callable running a whole fit of ``peer`` ('fastem' or 'sklearn') with the estimators'
    defaults, initialization included (:func:`fastem._bench.prepare_fit`); it returns
    ``(lower_bound_, n_iter_, converged_)``. Building it is not timed."""
    return _bench.prepare_fit(peer, X, n_components, covariance_type, threads=threads)


def prepare(peer, X, start: Start, n_iter=N_ITER, threads=THREADS):
    """A zero-argument callable running ``n_iter`` EM iterations of ``peer`` from ``start``
    (:func:`fastem._bench.prepare`); it returns ``(weights, means)``. Building it is not timed.
    """
    return _bench.prepare(peer, X, start, n_iter=n_iter, threads=threads)


def _matmul_run(threads, n=2048):
    """A run callable: numpy's ``matmul`` of two (n, n) float64 matrices, BLAS on ``threads``
    threads (``fastem._bench.matmul_rate``'s product)."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n)), rng.standard_normal((n, n))
    out = np.empty((n, n))

    def run():
        with threadpool_limits(limits=threads, user_api="blas"):
            np.matmul(a, b, out=out)

    return run


def thread_scaling(X, start: Start, threads=THREADS, n_iter=N_ITER, repeats=5,
                   budget=float("inf"), log=None) -> dict:
    """fastem on 1 thread and on ``threads`` threads, and the machine's own matrix product
    on each, one run of each in turn, ``repeats`` rounds (:func:`fastem._bench.time_peers`:
    the same pause and warm-up before every run).

    The speed-up of a round is its 1-thread time over its ``threads``-thread time: the runs
    of a round are neighbours, so a burst of load on a shared machine hits them alike, and
    the median of the rounds' speed-ups is steadier than the ratio of two medians. The matrix
    product (2048 x 2048, numpy's BLAS) is the machine's own reference: what its cores give a
    code that is all multiply-adds and would scale perfectly on dedicated cores.

    Returns
    -------
    dict
        ``s_per_iter`` ({1: ..., threads: ...}), ``speedups`` (a round's each) and
        ``speedup`` (their median) for fastem; ``matmul_speedups`` and ``matmul_speedup``
        for the product; ``identical``: whether fastem gave the same bits on both.
    """
    if threads < 2:
        raise ValueError(f"threads must be at least 2 to compare with 1 thread, got {threads}")
    counts = (1, threads)
    labels = {t: f"{t} thread{'s' if t > 1 else ''}" for t in counts}
    factories = {labels[t]: (lambda t=t: prepare("fastem", X, start, n_iter=n_iter, threads=t))
                 for t in counts}
    for t in counts:
        run = _matmul_run(t)  # its operands made once, outside every timing
        factories[f"matmul {labels[t]}"] = lambda run=run: run
    timings = time_peers(factories, n_iter=n_iter, repeats=repeats, budget=budget, log=log)

    def speedups(prefix):
        one, many = (timings[prefix + labels[t]].times for t in counts)
        return [a / b for a, b in zip(one, many)]

    fastem_speedups, matmul_speedups = speedups(""), speedups("matmul ")
    one, many = (timings[labels[t]].result for t in counts)
    return {"s_per_iter": {t: timings[labels[t]].seconds_per_iter for t in counts},
            "speedups": fastem_speedups, "speedup": float(np.median(fastem_speedups)),
            "matmul_speedups": matmul_speedups,
            "matmul_speedup": float(np.median(matmul_speedups)),
            "identical": all(np.array_equal(a, b) for a, b in zip(one, many))}


def call_latency(method, n_rows, shape=SMALL_SHAPES[0], covariance_type="full", calls=1000,
                 repeats=5) -> dict:
    """Seconds per call of a fitted model's ``method`` ('predict', 'predict_proba' or
    'score_samples') on ``n_rows`` rows, in fastem and in scikit-learn holding the same
    parameters (the benchmarks' common start at ``shape``), ``calls`` calls a run, the two in
    turn for ``repeats`` rounds (:func:`fastem._bench.time_peers`).

    What a service scoring a few rows at a time pays: with so few rows the time is the
    checks of X, the parameters' layout and the call into the kernel, not the kernel's work.

    Returns
    -------
    dict
        ``seconds`` (peer -> median seconds per call), ``ratios`` (a round's scikit-learn time
        over fastem's), ``ratio`` (their median) and ``agree``: whether the two gave the
        same output (labels exactly, the rest to 1e-9 relative).
    """
    from sklearn.utils.validation import check_is_fitted

    X = make_data(*shape)
    start = make_start(shape, covariance_type)
    models = {"fastem": fastem.GaussianMixture(shape[2], covariance_type=covariance_type),
              "sklearn": sklearn_at_start(start)}
    fitted = models["fastem"]
    fitted.weights_, fitted.means_ = start.weights.copy(), start.means.copy()
    fitted.covariances_ = start.covariances.copy()
    fitted.precisions_cholesky_ = start.precisions_cholesky.copy()
    for model in models.values():
        model.n_features_in_ = shape[1]
        check_is_fitted(model)
    x = np.ascontiguousarray(X[:n_rows])

    def calls_of(method_of_model):
        def run():
            for _ in range(calls - 1):
                method_of_model(x)
            return method_of_model(x)
        return lambda: run

    # a run is `calls` calls, timed as the peers' EM runs are (a pause, a warm-up run)
    timings = time_peers({peer: calls_of(getattr(model, method))
                          for peer, model in models.items()}, n_iter=calls, repeats=repeats)
    out = {peer: timing.result for peer, timing in timings.items()}
    if method == "predict":
        agree = bool(np.array_equal(out["fastem"], out["sklearn"]))
    else:
        agree = bool(np.allclose(out["fastem"], out["sklearn"], rtol=1e-9, atol=1e-12))
    ratios = [s / f for f, s in zip(timings["fastem"].times, timings["sklearn"].times)]
    return {"seconds": {peer: timing.seconds_per_iter for peer, timing in timings.items()},
            "ratios": ratios, "ratio": float(np.median(ratios)), "agree": agree}


def check_sklearn_loop(X, start: Start, n_iter=2) -> None:
    """Assert that the timed loop of ``_e_step``/``_m_step`` equals a warm-started ``fit``."""
    weights, means = prepare("sklearn", X, start, n_iter=n_iter)()
    gm = sklearn_at_start(start)
    gm.set_params(warm_start=True, max_iter=n_iter)
    gm.converged_ = False
    gm.lower_bound_ = -np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        gm.fit(X)
    np.testing.assert_allclose(gm.means_, means, rtol=0, atol=1e-12 * np.abs(means).max())
    np.testing.assert_allclose(gm.weights_, weights, rtol=0, atol=1e-14)


def tolerance(peer) -> float:
    """Relative agreement of a peer's means with fastem's after N_ITER iterations."""
    return _bench.tolerance(peer, np.float64)


# ---------------------------------------------------------------------- fresh processes
FIRST_FIT_SCRIPT = _bench.FIRST_FIT_SCRIPT
_run_json = _bench.run_json


def first_fit(cache_dir, covariance_type="full", threads=THREADS) -> dict:
    """Run a small float64 fit in a fresh interpreter with its Numba cache in ``cache_dir``.

    An empty ``cache_dir`` measures the cold compile; the same directory a second time
    measures a warm cache. Returns ``{"import_s", "fit_s", "ready_s", "wall_s"}`` (ready:
    from the process's start to the fitted model; wall: the whole process, see
    ``fastem._bench.first_fit``).
    """
    return _bench.first_fit(cache_dir, covariance_type, threads)


def _current_peak_reset() -> bool:
    """Reset this process's RSS high-water mark (Linux); False where that is not possible."""
    return _bench.reset_peak_rss()


def _rss_now() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def _rss_peak() -> int:
    peak = _bench.status_bytes("VmHWM")
    if peak is not None:
        return peak
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def peak_rss(peer, shape, covariance_type, mode="iterations", threads=THREADS) -> dict:
    """Peak resident memory of ``peer`` on an in-memory X, measured in a fresh interpreter.

    ``mode`` 'fit' (fastem only): a whole default fit (k-means initialization, then N_ITER
    iterations); 'iterations': N_ITER EM iterations from the common start. Returns bytes:
    ``x_bytes``, ``rss_before`` (X and everything imported, just before), ``rss_peak``
    (high-water mark during the measured step; the whole process's if it cannot be reset)
    and ``overhead`` = peak - before.
    """
    n, d, k = shape
    return _run_json([os.path.abspath(__file__), "rss", peer, f"{n},{d},{k}", covariance_type,
                      mode, str(threads)])


def _rss_main(peer, shape_text, covariance_type, mode, threads) -> dict:
    shape = tuple(int(v) for v in shape_text.split(","))
    threads = int(threads)
    warm_up_fastem()
    X = make_data(*shape)
    if mode == "fit":
        if peer != "fastem":
            raise ValueError("mode 'fit' is for fastem only")
        gm = fastem.GaussianMixture(shape[2], covariance_type=covariance_type, max_iter=N_ITER,
                                    tol=0.0, random_state=0, n_jobs=threads)

        def run():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                gm.fit(X)
    else:
        check_available(peer, shape, covariance_type)
        run = prepare(peer, X, make_start(shape, covariance_type), threads=threads)
    before = _rss_now()
    reset = _current_peak_reset()
    run()
    peak = _rss_peak()
    return {"x_bytes": X.nbytes, "rss_before": before, "rss_peak": peak,
            "overhead": peak - before, "peak_reset": reset}


if __name__ == "__main__":
    import json
    import sys

    if len(sys.argv) == 7 and sys.argv[1] == "rss":
        print(json.dumps(_rss_main(*sys.argv[2:])))
    else:
        sys.exit("usage: python _peers.py rss PEER N,D,K COVARIANCE_TYPE fit|iterations THREADS")
