"""The machine's ceilings, measured in the same run as the benchmarks, and the roofline floor of
one fastem pass.

Ceilings (:func:`measure`)
--------------------------
* **Memory read bandwidth**: a parallel Numba ``prange`` sum over a 1 GiB float64 array (fixed
  blocks of 1 MiB, each summed by one thread, vectorized with re-association allowed), best of
  several runs; numpy's ``sum`` on one thread and split over the threads are measured too, for
  comparison. The read bandwidth used is the best of the three. The array must exceed the
  last-level cache (cloud VMs may report a large shared L3: 1 GiB is above every one seen).
* **Matrix-multiply rate**: numpy ``matmul`` of two 2048 x 2048 matrices, float64 (DGEMM) and
  float32 (SGEMM), BLAS on the benchmark's threads, best of several; ``2 n^3`` flops each.
  threadpoolctl's ``architecture`` says which OpenBLAS kernel ran (``Ceilings.blas``).

The roofline floor of one pass
------------------------------
``floor = max(bytes / read bandwidth, flops / DGEMM rate)``: the least time any code could
take on this machine to read X once and do the arithmetic of an EM iteration at the speed of a
dense matrix product. fastem computes in float64 whatever the dtype of X, so the DGEMM rate
bounds its arithmetic; the SGEMM rate is reported alongside. ``roofline fraction = floor /
measured time`` (1: at the machine's limit). X smaller than the caches can beat the memory term
(it is then not read from memory), so at small N a fraction can be optimistic.

Bytes moved per pass: ``N * d * itemsize`` (X read once; parameters and statistics are tiny).

Flops per row and per component (d features; a multiply-add counts 2; an exp or a log counts
ONE flop), :func:`fastem._bench.flops_per_row`, ``count='dense'`` for the floor:

==========  ==============================================================  =================
covariance  dense count (used for GF/s and the floor)                       fastem's kernel
==========  ==============================================================  =================
full        ``4d^2 + 6d + 8``: the Mahalanobis product (x - c) P_k counted  Mahalanobis 2d^2
            as a dense (d x d) product, 2d^2; subtract, square and sum 3d;  (d >= 8, BLAS) or
            r (x - mu_k) and its sum 3d; the weighted scatter               d(d+1) (d < 8,
            r (x - mu_k)(x - mu_k)^T as a dense product, 2d^2; 8 for the    triangle); scatter
            log-density constant, the log-sum-exp (max, subtract, exp,      upper triangle in
            sum, scale) and the responsibility sum. Per row: + d + 4        4x4 tiles:
                                                                            dp(dp+4),
                                                                            dp = 4 ceil(d/4)
tied        ``5d + 8``; per row ``4d^2 + d + 4`` (one product with the      per row Mahalanobis
            shared factor and one unweighted scatter, since the             + dp(dp+4) + 2d + 4;
            responsibilities of a row sum to one)                           6d + 8
diag        ``9d + 8``: (x - mu) p, square, sum 4d; x - mu, r t, its sum,   the same
            r t^2 and its sum 5d. Per row + 4
spherical   ``8d + 9``: x - mu, square, sum 3d, one scale; 5d as diag       9d + 8
==========  ==============================================================  =================

An exp counted as one flop understates fastem's vectorized exp (a range reduction and a
polynomial, 14 operations with AVX-512 and 17 without): at small d, where the K exps per row
dominate, both the GF/s and the floor are optimistic. For d = 16, K = 16, full: 1,128 flops
per row-component, 18,068 per row.

This module is imported by ``test_suite.py`` and can be run on its own::

    python benchmarks/roofline.py            # print the ceilings and a few floors
    python benchmarks/roofline.py --grid     # and fastem's pass over its floor, d x K x cov

``--grid`` times one fastem pass (the E-step and the statistics, from the benchmarks' common
start) at N rows (``--rows``, default 1M) for d in {2, 16, 64}, K in {4, 16, 64} and the four
covariance types, and prints it over the floor: where fastem stands against the machine at
every shape of the suite's grid. It goes over the whole grid ``--rounds`` times (default 3),
each round a median of ``--repeats`` passes at every shape, over the floor from the ceilings
measured just before that round; a shape's figures are the medians of its rounds, printed
with their range. Shared machines have slow spells (a process can run at half speed for
seconds at a time, often just after an idle spell): one timing per shape, taken once, put one
shape at 6.7 times its floor where twenty later runs gave 3.5-4.6. Rounds spread each shape's
timings over the whole run, and each is set against ceilings measured in its own minutes.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import numba
import numpy as np
from numba import njit, prange

from fastem._bench import (  # noqa: F401  (re-exported: the one implementation of the model)
    Ceilings,
    achieved,
    flops_per_row,
    measure_ceilings,
    pass_bytes,
    pass_flops,
    roofline_floor,
)

__all__ = ["measure", "measure_again", "numba_sum_bandwidth", "Ceilings", "achieved",
           "flops_per_row", "pass_bytes", "pass_flops", "roofline_floor"]

GIB = 2**30
SUM_BLOCK = 1 << 17  # float64 values per block of the parallel sum (1 MiB)

# The only compiled function outside fastem/_kernels: it measures the machine, not fastem.
# Fast-math re-association lets LLVM vectorize the sum; nothing here needs inf or NaN.
_SUM_FASTMATH = {"reassoc", "nsz", "arcp", "contract"}


@njit(parallel=True, fastmath=_SUM_FASTMATH, cache=False)
def _parallel_sum(a, block):  # pragma: no cover  (compiled)
    """Sum of the 1-D float64 array ``a``: blocks of ``block`` values, one thread each."""
    n = a.shape[0]
    n_blocks = (n + block - 1) // block
    parts = np.zeros(n_blocks)
    for b in prange(n_blocks):
        lo = b * block
        hi = min(n, lo + block)
        s = 0.0
        for i in range(lo, hi):
            s += a[i]
        parts[b] = s
    return parts.sum()


def numba_sum_bandwidth(a, threads=2, repeats=5) -> float:
    """GB/s of the parallel Numba sum over ``a`` on ``threads`` threads; best of ``repeats``
    (after one untimed run, which also compiles)."""
    import time

    previous = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    try:
        _parallel_sum(a, SUM_BLOCK)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            _parallel_sum(a, SUM_BLOCK)
            best = min(best, time.perf_counter() - t0)
    finally:
        numba.set_num_threads(previous)
    return a.nbytes / best / 1e9


@functools.lru_cache(maxsize=4)
def measure(threads=2, read_bytes=GIB, gemm_n=2048, repeats=5) -> Ceilings:
    """The machine's ceilings now (cached for the process): read bandwidth (best of the
    parallel Numba sum and numpy's sums) and DGEMM/SGEMM rates."""
    return measure_again(threads, read_bytes, gemm_n, repeats)


def measure_again(threads=2, read_bytes=GIB, gemm_n=2048, repeats=5) -> Ceilings:
    """:func:`measure`, not cached: the ceilings at this moment."""
    return measure_ceilings(
        threads, read_bytes=read_bytes, gemm_n=gemm_n, repeats=repeats,
        read_methods={f"numba prange sum, {threads} threads": numba_sum_bandwidth},
    )


def describe(ceilings: Ceilings) -> list[str]:
    """Lines describing the ceilings (for reports)."""
    methods = ", ".join(f"{k}: {v:.1f}" for k, v in ceilings.read_methods.items())
    return [
        f"read bandwidth {ceilings.read_gbs:.1f} GB/s over {ceilings.read_bytes / GIB:.2f} GiB "
        f"(best of {methods})",
        f"matmul {ceilings.gemm_n}^2 on {ceilings.threads} threads: "
        f"DGEMM {ceilings.gemm_gflops['float64']:.1f} GF/s, "
        f"SGEMM {ceilings.gemm_gflops['float32']:.1f} GF/s ({ceilings.blas})",
    ]


def prepare_pass(X, n_components, covariance_type, threads=2):
    """A function that runs one fastem pass (E-step and statistics) over X from the
    benchmarks' common start and returns its seconds. One untimed pass runs here (it compiles
    or loads the kernel): the timed passes are those of an EM iteration after the first, so
    'tied' takes its unweighted scatter from the untimed pass (``fastem._em.accumulate``'s
    ``rows_scatter``), as a fit does."""
    import time

    from fastem._bench import make_start
    from fastem._em import accumulate, threads as fastem_threads
    from fastem._params import GaussianParams
    from fastem.data import ArraySource

    start = make_start(X, n_components, covariance_type, threads=threads)
    params = GaussianParams(covariance_type, start.weights, start.means,
                            start.precisions_cholesky, start.covariances)
    source = ArraySource(X)
    with fastem_threads(threads):
        first = accumulate(source, params)
    rows_scatter = first if covariance_type == "tied" else None

    def timed_pass() -> float:
        with fastem_threads(threads):
            t0 = time.perf_counter()
            accumulate(source, params, rows_scatter=rows_scatter)
            return time.perf_counter() - t0

    return timed_pass


def grid(ceilings: Ceilings, n_samples=1_000_000, threads=2, repeats=5, rounds=3,
         features=(2, 16, 64), components=(4, 16, 64),
         covariance_types=("full", "tied", "diag", "spherical"), say=None):
    """Print fastem's pass time over its roofline floor for every shape of the grid.

    Every shape is prepared first (its rows, its start and one untimed pass), then the grid is
    timed `rounds` times over, each time the median of `repeats` passes a shape, against the
    floor from the ceilings measured just before that round (`ceilings` for the first). A
    shape's figures are the medians of its rounds' time and time over floor, with their range.
    `say` (default: print to stderr) reports the progress of the rounds.
    """
    import time

    from fastem._bench import make_data

    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    cases = []  # (d, K, covariance type, timed pass)
    for d in features:
        for k in components:
            X = make_data(n_samples, d, k)
            for cov in covariance_types:
                cases.append((d, k, cov, prepare_pass(X, k, cov, threads)))
    times, ratios = [[] for _ in cases], [[] for _ in cases]
    for r in range(rounds):
        t0 = time.perf_counter()
        if r:
            ceilings = measure_again(threads, ceilings.read_bytes, ceilings.gemm_n, repeats)
        print(f"round {r + 1}: read {ceilings.read_gbs:.1f} GB/s, "
              f"DGEMM {ceilings.gemm_gflops['float64']:.1f} GF/s")
        for (d, k, cov, timed_pass), case_times, case_ratios in zip(cases, times, ratios):
            seconds = float(np.median([timed_pass() for _ in range(repeats)]))
            case_times.append(seconds)
            case_ratios.append(seconds / roofline_floor(n_samples, d, k, cov, 8, ceilings)[0])
        say(f"round {r + 1} of {rounds}: {time.perf_counter() - t0:.0f} s")
    print()
    print("| N x d x K | cov | fastem s/pass | rounds' range | bound | time / floor | "
          "rounds' range |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for (d, k, cov, _), case_times, case_ratios in zip(cases, times, ratios):
        bound = roofline_floor(n_samples, d, k, cov, 8, ceilings)[1]
        print(f"| {n_samples:,} x {d} x {k} | {cov} | {np.median(case_times):.4f} | "
              f"{min(case_times):.4f}-{max(case_times):.4f} | {bound} | "
              f"{np.median(case_ratios):.2f}x | {min(case_ratios):.2f}-{max(case_ratios):.2f}x |",
              flush=True)


def main(argv=None) -> int:
    import argparse

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    parser = argparse.ArgumentParser(description="Measure this machine's ceilings and print "
                                     "the roofline floor of one fastem pass at a few shapes.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--grid", action="store_true",
                        help="also time fastem's pass over its floor at every shape of the "
                             "grid d in {2, 16, 64}, K in {4, 16, 64}, four covariance types")
    parser.add_argument("--rows", type=float, default=1e6, help="N for --grid")
    parser.add_argument("--rounds", type=int, default=3,
                        help="times --grid goes over every shape (the median is printed)")
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.repeats < 1:
        parser.error("--rounds and --repeats must be at least 1")
    c = measure(args.threads, repeats=args.repeats)
    for line in describe(c):
        print(line)
    print()
    print("| N x d x K | cov | dense flops/row | kernel flops/row | floor (float64 X) | bound |")
    print("|---|---|---:|---:|---:|---:|")
    for n, d, k in ((1_000_000, 2, 4), (1_000_000, 16, 16), (1_000_000, 64, 64)):
        for cov in ("full", "tied", "diag", "spherical"):
            floor, bound = roofline_floor(n, d, k, cov, 8, c)
            print(f"| {n:,} x {d} x {k} | {cov} | {flops_per_row(d, k, cov):,.0f} | "
                  f"{flops_per_row(d, k, cov, 'kernel'):,.0f} | {floor * 1e3:.2f} ms | {bound} |")
    if args.grid:
        print()
        grid(c, n_samples=int(args.rows), threads=args.threads, repeats=args.repeats,
             rounds=args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
