"""Benchmarks of out-of-core fitting: a memory-mapped file against the same data in memory, and
the memory a fit of a big file takes.

By default (``--benchmark-disable`` in pyproject.toml) each runs once at a small size, as a smoke
test that also checks that the memory-mapped fit gives the in-memory model bit for bit. Measure
with::

    python -m pytest benchmarks/test_out_of_core.py --benchmark-enable -p no:cacheprovider
    python -m pytest benchmarks/test_out_of_core.py --benchmark-enable -p no:cacheprovider -m big

* ``test_memmap_iteration``: per-iteration time of a fit on a page-cached ``.npy`` path
  (memory-mapped, read chunk by chunk) and on the same rows loaded in memory, alternated in the
  same run from the same start (``weights_init``, ``means_init``, ``precisions_init``,
  ``tol=0``, ``max_iter=N_ITER``): the medians and their ratio (target: at most 1.15) are in
  ``extra_info`` and printed. Small: 200k x 16, K=8, float32; big: 20M x 16 (1.3 GB).
* ``test_big_file_memory``: ``big_file_fit.py`` in a fresh process on a file written by
  ``make_big_file.py``: the fit's growth of anonymous memory (RssAnon) stays under 60 MiB for a
  200 MB file, 200 MiB for a 2 GB one (big), and the peak RSS (``VmHWM``, which also counts
  the file's mapped pages; ``ru_maxrss`` would include this test session's own) under 1 GiB.
  These are asserted: memory, unlike time, is not noisy. The per-iteration time over a plain
  sequential read of the file is reported, not asserted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning

import fastem
from make_big_file import make_big_file, truth_path

HERE = os.path.dirname(os.path.abspath(__file__))
MIB = 2**20
GIB = 2**30
N_ITER = 3
THREADS = 2
TARGET_RATIO = 1.15

# (n_samples, n_features, n_components), float32
SMALL = (200_000, 16, 8)
BIG = (20_000_000, 16, 8)


def _label(shape):
    n, d, k = shape
    n_text = f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k"
    return f"{n_text}x{d}x{k}"


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    """``shape -> path`` of float32 .npy files of a known mixture, written on first use."""
    folder = tmp_path_factory.mktemp("ooc-bench")
    made = {}

    def get(shape):
        if shape not in made:
            n, d, k = shape
            path = str(folder / f"x-{_label(shape)}.npy")
            make_big_file(path, n, d, k, dtype="float32", seed=0)
            made[shape] = path
        return made[shape]

    return get


def _start(path, covariance_type):
    """The mixture the file was drawn from, means moved by 0.5: a start EM still moves from."""
    truth = np.load(truth_path(path))
    covariances = truth["covariances"]
    if covariance_type == "diag":
        precisions = 1.0 / np.diagonal(covariances, axis1=1, axis2=2)
    else:
        precisions = np.linalg.inv(covariances)
    return dict(weights_init=truth["weights"], means_init=truth["means"] + 0.5,
                precisions_init=precisions)


def _fit(X, covariance_type, start):
    gm = fastem.GaussianMixture(
        len(start["weights_init"]), covariance_type=covariance_type, tol=0.0, max_iter=N_ITER,
        n_jobs=THREADS, **start,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # tol=0: never converges
        gm.fit(X)
    return gm


def _report(capsys, text):
    """Print to the terminal, past pytest's capture."""
    with capsys.disabled():
        print(text)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
@pytest.mark.parametrize("shape", [
    pytest.param(SMALL, id=_label(SMALL)),
    pytest.param(BIG, id=_label(BIG), marks=pytest.mark.big),
])
def test_memmap_iteration(benchmark, benchmark_enabled, em_rounds, data_files, capsys, shape,
                          covariance_type):
    """N_ITER EM iterations on a page-cached memory-mapped .npy, alternated with the same
    iterations on the same rows in memory; the benchmark's own timing is the memmap's."""
    path = data_files(shape)
    X = np.load(path)  # in memory
    start = _start(path, covariance_type)
    n, d, k = shape
    benchmark.group = f"out-of-core x{N_ITER} {_label(shape)} {covariance_type} float32"
    benchmark.extra_info.update(n_samples=n, n_features=d, n_components=k, dtype="float32",
                                covariance_type=covariance_type, n_iter=N_ITER,
                                threads=THREADS, file_bytes=os.path.getsize(path))
    # Untimed: kernels compiled or loaded, the file's pages in the page cache.
    in_memory = _fit(X, covariance_type, start)
    mapped = _fit(path, covariance_type, start)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_", "lower_bounds_"):
        assert np.array_equal(getattr(mapped, name), getattr(in_memory, name)), name

    times = {"memory": [], "memmap": []}

    def timed(kind):
        t0 = time.perf_counter()
        _fit(X if kind == "memory" else path, covariance_type, start)
        times[kind].append((time.perf_counter() - t0) / N_ITER)

    def setup():  # untimed by pytest-benchmark: the in-memory run of the round
        timed("memory")

    benchmark.pedantic(timed, args=("memmap",), setup=setup, rounds=em_rounds, iterations=1,
                       warmup_rounds=0)
    memory, memmap = np.median(times["memory"]), np.median(times["memmap"])
    ratio = memmap / memory
    benchmark.extra_info.update(s_per_iter_memory_median=memory,
                                s_per_iter_memmap_median=memmap, ratio=ratio,
                                target_ratio=TARGET_RATIO, rounds=len(times["memmap"]))
    if benchmark_enabled:
        verdict = "within" if ratio <= TARGET_RATIO else "ABOVE"
        _report(capsys, f"\n  {_label(shape)} {covariance_type}: memmap {memmap:.4f} s/iter, "
                         f"in memory {memory:.4f} s/iter, ratio {ratio:.3f} ({verdict} the "
                         f"{TARGET_RATIO} target; medians of {len(times['memmap'])} rounds)")


# (n_samples, anonymous growth limit): 200 MB and 2 GB of float32 rows of 16 features
MEMORY_CASES = [
    pytest.param(3_125_000, 60 * MIB, id="200MB"),
    pytest.param(31_250_000, 200 * MIB, id="2GB", marks=pytest.mark.big),
]


@pytest.mark.parametrize("n_samples, anon_limit", MEMORY_CASES)
def test_big_file_memory(benchmark, capsys, tmp_path, n_samples, anon_limit):
    """make_big_file.py, then big_file_fit.py (a sequential read and 3 EM iterations, K=8 full,
    on the memory-mapped file) in a fresh process; asserts the memory, reports the times."""
    if not sys.platform.startswith("linux"):
        pytest.skip("RssAnon is Linux's")
    path = str(tmp_path / "big.npy")
    make_big_file(path, n_samples, 16, 8, dtype="float32", seed=0)

    def run():
        done = subprocess.run(
            [sys.executable, os.path.join(HERE, "big_file_fit.py"), path, "--delete"],
            capture_output=True, text=True, timeout=1800,
        )
        assert done.returncode == 0, done.stderr[-4000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    result = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    assert not os.path.exists(path)  # --delete
    assert len(result["iteration_s"]) == N_ITER
    growth = result["rss_anon_growth"]
    summary = (f"{result['file_bytes'] / 1e9:.2f} GB file: RssAnon +{growth / MIB:.1f} MiB, "
               f"peak RSS {result['peak_rss_bytes'] / MIB:.0f} MiB, read "
               f"{result['read_s']:.2f} s, iterations "
               f"{', '.join(f'{t:.2f}' for t in result['iteration_s'])} s "
               f"(max {result['max_ratio']:.2f}x the read)")
    _report(capsys, "\n  " + summary)
    assert growth < anon_limit, summary
    assert result["peak_rss_bytes"] < GIB, summary
