"""The benchmark suite: fastem against the reference, scikit-learn and oneDAL over a grid of
shapes, every covariance type, float32 and float64, in memory and memory-mapped; the machine's
ceilings and each run's fraction of the roofline floor; time to a first fit in a fresh process.

By default (``--benchmark-disable`` in pyproject.toml) it is a smoke run, about a minute and a
half: the 100k-row shapes (d, K) = (2, 4) and (16, 16), each case run once for one iteration
(checking that every peer computes fastem's iterates), the ceilings, and a cold and a warm
first fit of float32 data. Everything else is marked ``big``. Measure with::

    python -m pytest benchmarks/test_suite.py --benchmark-enable -p no:cacheprovider
    python -m pytest benchmarks/test_suite.py --benchmark-enable -p no:cacheprovider \\
        --run-big -k "1Mx16x16 and full" --benchmark-json=bench-results/suite.json

The whole grid (``--run-big`` alone) is 1,700 cases and takes many hours; select with ``-k``.
Peers that would not fit in half the available memory, or would take more than
``--max-run-seconds`` per run (estimated from a pilot on 20k rows), are skipped with the reason.
What is measured, and the roofline's flop counts: benchmarks/README.md.
"""

from __future__ import annotations

import functools
import itertools
import statistics
import time
from dataclasses import dataclass

import numpy as np
import pytest

import _peers
import roofline
from fastem import _bench

THREADS = _peers.THREADS
N_ITER = _peers.N_ITER
MIB = 2**20

GRID_N = (100_000, 1_000_000, 10_000_000)
GRID_DK = tuple(itertools.product((2, 16, 64), (4, 16, 64)))  # (n_features, n_components)
COVARIANCE_TYPES = _bench.COVARIANCE_TYPES
DTYPES = ("float64", "float32")
STORAGES = ("memory", "memmap")
PEERS = _bench.PEERS

# The default (smoke) run: these shapes; everything else is marked big.
SMOKE_N = 100_000
SMOKE_DK = ((2, 4), (16, 16))

# Every peer starts from one fastem iteration from k-means++ on the first START_ROWS rows
# (the same for every N: the generator draws rows in order), so a start costs little even
# for 10M rows, and is the same for float32, float64, memory and memmap.
START_ROWS = 100_000


@dataclass(frozen=True)
class Case:
    n: int
    d: int
    k: int
    cov: str
    dtype: str
    storage: str
    peer: str

    @property
    def shape(self):
        return (self.n, self.d, self.k)

    @property
    def data_key(self):
        return (self.n, self.d, self.k, self.dtype)

    @property
    def id(self):
        return (f"{_peers.shape_label(self.shape)}-{self.cov}-{self.dtype}-{self.storage}-"
                f"{self.peer}")


def _cases():
    # Ordered so that the cases sharing data run together (one dataset in memory at a time).
    for n, (d, k), dtype, storage, cov, peer in itertools.product(
            GRID_N, GRID_DK, DTYPES, STORAGES, COVARIANCE_TYPES, PEERS):
        case = Case(n, d, k, cov, dtype, storage, peer)
        big = not (n == SMOKE_N and (d, k) in SMOKE_DK)
        yield pytest.param(case, id=case.id, marks=(pytest.mark.big,) if big else ())


# ---------------------------------------------------------------------- data, start, files
@functools.lru_cache(maxsize=1)
def _data(n, d, k, dtype) -> np.ndarray:
    return _bench.make_data(n, d, k, dtype=dtype)


@functools.lru_cache(maxsize=None)
def _start(d, k, cov) -> _bench.Start:
    X = _bench.make_data(START_ROWS, d, k)
    return _bench.make_start(X, k, cov, threads=THREADS)


class _Files:
    """The .npy file of one dataset at a time, written with ``open_memmap`` in a tmp dir."""

    def __init__(self, folder):
        self.folder = folder
        self.key = None
        self.path = None

    def get(self, key, X):
        if key != self.key:
            if self.path is not None:
                self.path.unlink(missing_ok=True)
            n, d, k, dtype = key
            self.path = self.folder / f"x-{n}x{d}x{k}-{dtype}.npy"
            mm = np.lib.format.open_memmap(self.path, mode="w+", dtype=dtype, shape=X.shape)
            step = max(1, (64 * MIB) // X[0].nbytes)
            for i in range(0, X.shape[0], step):
                mm[i : i + step] = X[i : i + step]
            mm.flush()
            del mm
            self.key = key
        return self.path


@pytest.fixture(scope="module")
def npy_files(tmp_path_factory):
    files = _Files(tmp_path_factory.mktemp("suite-npy"))
    yield files
    if files.path is not None:
        files.path.unlink(missing_ok=True)


# ---------------------------------------------------------------------- fixtures
def _disabled(config) -> bool:
    return bool(config.getoption("benchmark_disable")) and not config.getoption("benchmark_enable")


@pytest.fixture(scope="session")
def ceilings(request):
    """The machine's ceilings, measured once per session (best of 3 in the smoke run, 7)."""
    return roofline.measure(THREADS, repeats=3 if _disabled(request.config) else 7)


@pytest.fixture(scope="session")
def suite_compiled():
    """fastem's kernels for both dtypes and every covariance type, before any timing."""
    _bench.warm_up_fastem(COVARIANCE_TYPES, (np.float64, np.float32), THREADS)


# fastem's seconds per iteration and its (weights, means) per case (without the peer), so
# that the peers' tests that follow report their ratio and are checked against its iterates.
_fastem_seconds: dict = {}
_fastem_results: dict = {}


def _key(case, n_iter):
    return (case.n, case.d, case.k, case.cov, case.dtype, n_iter)


def _fastem_result(case, n_iter):
    key = _key(case, n_iter)
    if key not in _fastem_results:  # the fastem case was deselected: compute it untimed
        run = _bench.prepare("fastem", _data(*case.data_key), _start(case.d, case.k, case.cov),
                             n_iter=n_iter, threads=THREADS)
        _fastem_results[key] = run()
    return _fastem_results[key]


def _skip_unavailable(case):
    try:
        _bench.check_available(case.peer, case.shape, case.cov)
    except _bench.Unavailable as why:
        pytest.skip(str(why))
    have = _bench.available_bytes()
    x_bytes = case.n * case.d * np.dtype(case.dtype).itemsize
    if have is not None and x_bytes > 0.4 * have:
        pytest.skip(f"X takes {x_bytes / 2**30:.1f} GiB, more than 40% of the "
                    f"{have / 2**30:.1f} GiB available")


@functools.lru_cache(maxsize=None)
def _pilot_seconds(case_without_storage, n_iter):
    case = case_without_storage
    return _bench.pilot_seconds(case.peer, _data(*case.data_key),
                                _start(case.d, case.k, case.cov), n_iter, THREADS)


def _skip_slow(case, n_iter, max_run_seconds):
    """Skip a peer estimated to take more than ``max_run_seconds`` per run (big shapes only)."""
    if case.n < 1_000_000:
        return
    probe = Case(case.n, case.d, case.k, case.cov, case.dtype, "memory", case.peer)
    estimate = _pilot_seconds(probe, n_iter)
    if estimate > max_run_seconds:
        pytest.skip(f"{case.peer} would take about {estimate:,.0f} s per run of {n_iter} "
                    f"iteration(s), more than --max-run-seconds {max_run_seconds:g} (from a "
                    f"pilot on {_bench.PILOT_ROWS:,} rows)")


# ---------------------------------------------------------------------- the grid
def _big_selected(config) -> bool:
    """Whether big benchmarks run (conftest.py skips them otherwise)."""
    return bool(config.getoption("--run-big") or "big" in (config.getoption("-m") or ""))


def pytest_generate_tests(metafunc):
    """The grid of test_em: only the smoke cases unless big ones run, so that a default run
    does not list 1,600 skipped cases (``test_em_big_grid`` stands for them)."""
    if metafunc.function.__name__ == "test_em":
        cases = list(_cases())
        if not _big_selected(metafunc.config):
            cases = [c for c in cases if not c.marks]
        metafunc.parametrize("case", cases)


@pytest.mark.big
def test_em_big_grid():
    """Stands for the big cases of test_em in a default run (skipped there by conftest.py);
    with --run-big or -m big the cases themselves are collected."""


def test_em(benchmark, request, suite_compiled, ceilings, em_rounds, npy_files, case):
    """``n_iter`` EM iterations of one peer (2 threads, tol=0) from the common start.

    Smoke run: one iteration, once. ``extra_info``: seconds per iteration (median), rows/s,
    GF/s (dense and kernel counts), GB/s, the roofline floor and the fraction of it reached,
    fastem's speed-up over this peer, and the peak RSS of the last round above the RSS before
    it (in-process: a lower bound when earlier tests left freed memory to reuse).
    """
    disabled = benchmark.disabled
    n_iter = 1 if disabled else N_ITER
    rounds = 1 if disabled else em_rounds
    max_run_seconds = request.config.getoption("--max-run-seconds")
    _skip_unavailable(case)
    _skip_slow(case, n_iter, max_run_seconds)

    X = _data(*case.data_key)
    start = _start(case.d, case.k, case.cov)
    if case.storage == "memmap":
        path = npy_files.get(case.data_key, X)
        # fastem reads the path (memory-mapped chunk by chunk: its out-of-core route); the
        # others get the read-only np.memmap of the same file, which they use as an array.
        source = str(path) if case.peer == "fastem" else np.load(path, mmap_mode="r")
    else:
        source = X

    benchmark.group = (f"EM x{n_iter} {_peers.shape_label(case.shape)} {case.cov} "
                       f"{case.dtype} {case.storage}")
    times = []
    rss = {}

    def setup():  # untimed: a fresh run from the start, and the RSS high-water mark reset
        run = _bench.prepare(case.peer, source, start, n_iter=n_iter, threads=THREADS)
        rss["before"] = _peers._rss_now()
        rss["reset"] = _peers._current_peak_reset()
        rss["run"] = run
        return (run,), {}

    def timed(run):
        t0 = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - t0)
        return out

    try:
        weights, means = benchmark.pedantic(timed, setup=setup, rounds=rounds, iterations=1,
                                            warmup_rounds=0)
    except _bench.EarlyStop as why:  # oneDAL: the log-likelihood stopped increasing
        pytest.skip(str(why))
    peak = _peers._rss_peak()
    if getattr(rss["run"], "peak_rss", None) is not None:  # run in a process of its own
        peak, rss["before"] = rss["run"].peak_rss, rss["run"].rss_before

    seconds = statistics.median(times) / n_iter
    itemsize = np.dtype(case.dtype).itemsize
    info = dict(peer=case.peer, n_samples=case.n, n_features=case.d, n_components=case.k,
                covariance_type=case.cov, dtype=case.dtype, storage=case.storage,
                n_iter=n_iter, rounds=len(times), threads=THREADS, x_bytes=X.nbytes,
                s_per_iter_median=seconds,
                rss_peak_mib=peak / MIB, rss_overhead_mib=(peak - rss["before"]) / MIB,
                rss_peak_reset=rss["reset"], openblas=_bench.openblas_env(),
                blas=ceilings.blas, read_gbs=ceilings.read_gbs,
                dgemm_gflops=ceilings.gemm_gflops["float64"],
                sgemm_gflops=ceilings.gemm_gflops["float32"])
    info.update(_bench.achieved(seconds, case.n, case.d, case.k, case.cov, itemsize, ceilings,
                                compute_dtype=_bench.compute_dtype(case.peer, case.dtype)))
    key = _key(case, n_iter)
    if case.peer == "fastem":
        _fastem_seconds[key, case.storage] = seconds
    if (key, case.storage) in _fastem_seconds:  # this peer's time / fastem's, same storage
        info["fastem_speedup"] = seconds / _fastem_seconds[key, case.storage]
    benchmark.extra_info.update(info)

    # Every peer must compute the same iterates, or the comparison means nothing.
    if case.peer == "fastem" and case.storage == "memory":
        _fastem_results.setdefault(key, (weights, means))
    expected_weights, expected_means = _fastem_result(case, n_iter)
    if case.peer == "fastem":  # deterministic, and chunked memmap reads change no bit
        np.testing.assert_array_equal(means, expected_means)
        np.testing.assert_array_equal(weights, expected_weights)
    else:
        tol = _bench.tolerance(case.peer, case.dtype)
        scale = max(1.0, float(np.abs(expected_means).max()))
        np.testing.assert_allclose(means, expected_means, rtol=0, atol=tol * scale)
        np.testing.assert_allclose(weights, expected_weights, rtol=0, atol=tol)
    assert info["roofline_fraction"] > 0


def test_machine_ceilings(benchmark, ceilings):
    """The ceilings the roofline columns use (measured once per session): ``extra_info``."""
    result = benchmark.pedantic(lambda: ceilings, rounds=1, iterations=1)
    benchmark.extra_info.update(result.to_dict())
    benchmark.extra_info["openblas"] = _bench.openblas_env()
    assert result.read_gbs > 0 and min(result.gemm_gflops.values()) > 0


# ---------------------------------------------------------------------- time to a first fit
_cold_cache_dirs: dict = {}  # dtype -> the cache dir test_first_fit_cold filled


@pytest.mark.big  # a cold compile takes 20-30 s; test_em_iteration.py's smoke run has one
@pytest.mark.parametrize("dtype", DTYPES)
def test_first_fit_cold(benchmark, tmp_path_factory, dtype):
    """A fresh interpreter with an empty NUMBA_CACHE_DIR fits 2000x4 rows of ``dtype``: the
    fit is almost all compilation. ``extra_info``: import_s, fit_s, ready_s, wall_s."""
    def setup():
        path = tmp_path_factory.mktemp(f"numba-cold-{dtype}")
        _cold_cache_dirs[dtype] = path
        return (path,), {"threads": THREADS, "dtype": dtype}

    result = benchmark.pedantic(_bench.first_fit, setup=setup, rounds=1, iterations=1)
    benchmark.extra_info.update(result, dtype=dtype, cache="empty")
    assert result["fit_s"] > 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_first_fit_warm(benchmark, suite_compiled, dtype):
    """The same with a filled cache: what every new process pays. The cache test_first_fit_cold
    filled if it ran, else the one this session filled (``suite_compiled``)."""
    cache = _cold_cache_dirs.get(dtype)
    result = benchmark.pedantic(_bench.first_fit, args=(cache,),
                                kwargs={"threads": THREADS, "dtype": dtype}, rounds=3,
                                iterations=1)
    benchmark.extra_info.update(result, dtype=dtype,
                                cache="test_first_fit_cold's" if cache else "this session's")
    assert result["fit_s"] > 0
