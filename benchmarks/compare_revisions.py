"""Time fastem at a git revision against the working tree, in one process, passes interleaved.

Run from the repository root::

    python benchmarks/compare_revisions.py HEAD~1
    python benchmarks/compare_revisions.py main --shapes 1000000x16x16 --covs diag --rounds 31
    python benchmarks/compare_revisions.py a7c852e --fits     # whole fits on the benchmark data
    python benchmarks/compare_revisions.py HEAD --dtype float32 --shapes 1000000x64x4

The revision's ``fastem`` package is extracted (``git archive``) into a temporary folder under
another name and imported next to the working tree's, so both run in the same process, on the
same data, with the same threads. Their passes (or, with ``--fits``, 3-iteration fits from the
benchmarks' common start) alternate, in an order that flips every round, and the table gives
each side's minimum and the median of the per-round ratios new / old.

Why: on a shared machine, the same pass timed in two processes a minute apart differed by up
to 7%, more than most changes to the kernels are worth. Paired rounds in one process resolved
1-2% and repeated within about 2%. Both sides compile their kernels first (outside the timing;
the revision's into its own temporary cache).
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OLD_NAME = "fastem_at_revision"


def _parse_shape(text):
    n, d, k = (int(float(v)) for v in text.lower().split("x"))
    return n, d, k


def import_revision(revision: str, folder: Path):
    """The ``fastem`` package of ``revision``, imported as OLD_NAME from ``folder``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", revision, "fastem"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    (folder / "fastem").rename(folder / OLD_NAME)
    sys.path.insert(0, str(folder))
    return importlib.import_module(OLD_NAME)


def pass_runner(pkg, X, covariance_type, K, seed=0):
    """One E-step and statistics pass of ``pkg`` over X from fixed parameters."""
    rng = np.random.default_rng(seed)
    d = X.shape[1]
    means = X[rng.choice(X.shape[0], K, replace=False)]
    precisions = pkg._init._unit_precisions(covariance_type, K, d) * 0.5
    params = pkg._params.GaussianParams(covariance_type, np.full(K, 1 / K), means, precisions)
    source = pkg.data.ArraySource(X)
    return lambda: pkg._em.accumulate(source, params)


def fit_runner(pkg, X, start, threads, n_iter=3):
    """A fit of ``n_iter`` EM iterations of ``pkg`` from the benchmarks' common start."""
    def run():
        gm = pkg.GaussianMixture(
            start.means.shape[0], covariance_type=start.covariance_type, tol=0.0,
            max_iter=n_iter, reg_covar=1e-6, weights_init=start.weights,
            means_init=start.means, precisions_init=start.precisions, n_jobs=threads)
        gm.fit(X)
    return run


def paired(runs, rounds, per_call):
    """(old seconds, new seconds) per round, the two alternating in flipping order."""
    for run in runs.values():  # compile or load, outside the timing
        run()
        run()
    times = {name: [] for name in runs}
    for r in range(rounds):
        for name in (("old", "new") if r % 2 else ("new", "old")):
            t0 = time.perf_counter()
            runs[name]()
            times[name].append((time.perf_counter() - t0) / per_call)
    return np.array(times["old"]), np.array(times["new"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("revision", help="git revision to compare the working tree with")
    parser.add_argument("--shapes", default="1000000x2x8,1000000x16x16",
                        help="comma-separated NxDxK (default: %(default)s)")
    parser.add_argument("--covs", default="full,diag", help="default: %(default)s")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--dtype", default="float64", choices=("float64", "float32"),
                        help="of the rows (default: %(default)s)")
    parser.add_argument("--fits", action="store_true",
                        help="time 3-iteration fits on the benchmarks' mixture and start "
                             "instead of passes on normal data")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")

    import fastem as new
    from fastem import _bench
    from fastem._em import threads as fastem_threads

    with tempfile.TemporaryDirectory(prefix="fastem-revision-") as folder:
        old = import_revision(args.revision, Path(folder))
        print(f"old: {args.revision} ({old.__file__}); new: working tree ({new.__file__}); "
              f"{args.threads} threads, {args.rounds} rounds, "
              f"{'fits' if args.fits else 'passes'}, {args.dtype} rows", flush=True)
        print("\n| N×d×K | cov | old min s | new min s | new / old (median of rounds) |")
        print("|---|---|---:|---:|---:|")
        for shape in (_parse_shape(s) for s in args.shapes.split(",")):
            N, d, K = shape
            for cov in args.covs.split(","):
                if args.fits:
                    X = _bench.make_data(N, d, K).astype(args.dtype)
                    start = _bench.make_start(X, K, cov, threads=args.threads)
                    runs = {"old": fit_runner(old, X, start, args.threads),
                            "new": fit_runner(new, X, start, args.threads)}
                    t_old, t_new = paired(runs, args.rounds, per_call=3)
                else:
                    X = np.random.default_rng(0).normal(size=(N, d)).astype(args.dtype)
                    runs = {"old": pass_runner(old, X, cov, K),
                            "new": pass_runner(new, X, cov, K)}
                    with fastem_threads(args.threads):
                        t_old, t_new = paired(runs, args.rounds, per_call=1)
                print(f"| {N:,}×{d}×{K} | {cov} | {t_old.min():.4g} | {t_new.min():.4g} | "
                      f"{np.median(t_new / t_old):.3f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
