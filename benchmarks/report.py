"""Time one EM iteration of fastem and its peers, and print a markdown table.

Run from the repository root (no pytest needed)::

    python benchmarks/report.py            # the 1M-row shapes: several minutes
    python benchmarks/report.py --quick    # 20k rows, 3 repeats: well under a minute
    python benchmarks/report.py --shapes 1000000x16x16 --covs full --peers fastem,sklearn
    python benchmarks/report.py --scaling  # fastem on 1 thread against --threads (2)

Tables go to stdout; progress goes to stderr. Each s/iter is the median over ``--repeats``
runs (fewer for a peer whose runs exceed ``--budget`` seconds in all) of ``--n-iter``
iterations, divided by ``--n-iter``; starting parameters, estimator
construction and fastem's compilation are outside the timing. The peers run in turn, as in
``fastem bench`` and the CI gate (:func:`fastem._bench.time_peers`: a pause before each run,
and an untimed run before a short one). What each peer runs is described
in ``_peers.py``. OPENBLAS_CORETYPE is read, never changed: set or unset it on the command
line (``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/report.py``) and
check the BLAS kernel it then uses in the header this prints.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import _peers  # noqa: E402
from _peers import shape_label  # noqa: E402

from fastem._bench import _fmt_seconds, machine_lines  # noqa: E402

MIB = 2**20


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def _parse_shape(text):
    try:
        n, d, k = (int(float(v)) for v in text.lower().replace("×", "x").split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NxDxK such as 1000000x16x16, got {text!r}")
    if min(n, d, k) < 1 or n < max(2, k):
        raise argparse.ArgumentTypeError(f"bad shape {text!r}: need N >= max(2, K), D, K >= 1")
    return n, d, k


def _parse_list(allowed):
    def parse(text):
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(allowed)}; got {text!r}")
        return items
    return parse


def _agree(peer, result, expected):
    weights, means = result
    tol = _peers.tolerance(peer)
    scale = max(1.0, float(np.abs(expected[1]).max()))
    return (np.abs(means - expected[1]).max() <= tol * scale
            and np.abs(weights - expected[0]).max() <= tol)


def run_report(args):
    peers = args.peers
    if "fastem" not in peers:
        peers = ["fastem", *peers]
    log("compiling fastem (or loading its cache)...")
    _peers.warm_up_fastem()
    rows, notes, records = [], [], []
    for shape in args.shapes:
        log(f"data {shape_label(shape)}...")
        X = _peers.make_data(*shape)
        for cov in args.covs:
            start = _peers.make_start(shape, cov)
            times = {}
            factories = {}
            for peer in peers:
                try:
                    _peers.check_available(peer, shape, cov)
                except _peers.Unavailable as why:
                    times[peer] = None
                    notes.append(f"{peer} at {shape_label(shape)} {cov}: skipped, {why}")
                    log(f"  {cov:5s} {peer:9s} skipped: {why}")
                    continue
                factories[peer] = (lambda peer=peer: _peers.prepare(
                    peer, X, start, n_iter=args.n_iter, threads=args.threads))
            # The peers in turn, each run after a pause (and, if short, an untimed run).
            timings = _peers.time_peers(factories, n_iter=args.n_iter, repeats=args.repeats,
                                        budget=args.budget)
            expected = timings["fastem"].result
            for peer, timing in timings.items():
                if timing.error is not None:
                    times[peer] = None
                    notes.append(f"{peer} at {shape_label(shape)} {cov}: {timing.error}")
                    continue
                runs = len(timing.times)
                times[peer] = timing.seconds_per_iter
                if runs < args.repeats:
                    notes.append(f"{peer} at {shape_label(shape)} {cov}: median of {runs} "
                                 f"run{'s' if runs > 1 else ''} (--budget {args.budget:g} s)")
                if peer != "fastem" and not _agree(peer, timing.result, expected):
                    notes.append(f"{peer} at {shape_label(shape)} {cov}: its iterates differ "
                                 "from fastem's beyond tolerance (see _peers.tolerance)")
                log(f"  {cov:5s} {peer:9s} {times[peer]:.4f} s/iter ({runs} runs)")
            rss = None
            if not args.no_rss:
                log(f"  {cov:5s} fastem peak RSS (fresh process)...")
                try:
                    rss = _peers.peak_rss("fastem", shape, cov, mode="fit", threads=args.threads)
                except Exception as error:  # a failed probe should not lose the timings
                    notes.append(f"peak RSS at {shape_label(shape)} {cov} failed: {error}")
            rows.append((shape, cov, times, rss))
            records.append({"shape": shape, "covariance_type": cov, "s_per_iter": times,
                            "rss": rss, "x_bytes": X.nbytes})
    compile_times = None
    if not args.no_compile:
        log("cold compile and warm first fit (fresh processes)...")
        with tempfile.TemporaryDirectory(prefix="fastem-numba-") as cache:
            cold = _peers.first_fit(cache, threads=args.threads)
            warm = [_peers.first_fit(cache, threads=args.threads) for _ in range(3)]
        compile_times = {"cold": cold, "warm": min(warm, key=lambda r: r["wall_s"])}
    return peers, rows, notes, records, compile_times


def run_scaling(args):
    """fastem on 1 thread against ``--threads`` threads at every shape and covariance type."""
    log("compiling fastem (or loading its cache)...")
    _peers.warm_up_fastem()
    records = []
    for shape in args.shapes:
        log(f"data {shape_label(shape)}...")
        X = _peers.make_data(*shape)
        for cov in args.covs:
            log(f"  {cov}")
            result = _peers.thread_scaling(X, _peers.make_start(shape, cov),
                                           threads=args.threads, n_iter=args.n_iter,
                                           repeats=args.repeats, budget=args.budget, log=log)
            records.append({"shape": shape, "covariance_type": cov, **result})
    return records


def print_scaling(args, records):
    print(f"### fastem on 1 thread against {args.threads} (up to {args.repeats} rounds of "
          f"{args.n_iter} iterations)")
    print()
    for line in machine_lines(args.threads):
        print(line)
    print()
    print(f"| N×d×K | cov | 1 thread s/iter | {args.threads} threads s/iter | fastem speed-up "
          "| rounds' range | matmul speed-up | rounds' range | same bits |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for r in records:
        n, d, k = r["shape"]
        times = r["s_per_iter"]
        print(f"| {n:,}×{d}×{k} | {r['covariance_type']} | {_fmt_seconds(times[1])} | "
              f"{_fmt_seconds(times[args.threads])} | {r['speedup']:.2f} | "
              f"{min(r['speedups']):.2f}-{max(r['speedups']):.2f} | "
              f"{r['matmul_speedup']:.2f} | "
              f"{min(r['matmul_speedups']):.2f}-{max(r['matmul_speedups']):.2f} | "
              f"{'yes' if r['identical'] else 'NO'} |")
    print()
    print("Speed-up: the median over the rounds of a round's 1-thread time over its "
          f"{args.threads}-thread time. Each round runs fastem on 1 thread, then on "
          f"{args.threads}, then numpy's 2048×2048 matmul on each (the machine's own "
          "reference), each run after the same pause and warm-up: the runs of a round are "
          "neighbours, which a burst of load on a shared machine hits alike.")


def print_tables(args, peers, rows, notes, compile_times):
    others = [p for p in peers if p != "fastem"]
    print(f"### EM iteration, float64, {args.threads} threads "
          f"(median of up to {args.repeats} runs of {args.n_iter} iterations)")
    print()
    for line in machine_lines(args.threads):
        print(line)
    print()
    head = ["N×d×K", "cov"] + [f"{p} s/iter" for p in peers]
    head += [f"vs {p}" for p in others]
    if not args.no_rss:
        head += ["X", "fastem peak RSS (fit)"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join(["---"] * 2 + ["---:"] * (len(head) - 2)) + "|")
    for shape, cov, times, rss in rows:
        n, d, k = shape
        cells = [f"{n:,}×{d}×{k}", cov] + [_fmt_seconds(times.get(p)) for p in peers]
        base = times.get("fastem")
        for p in others:
            t = times.get(p)
            cells.append("—" if t is None or not base else f"{t / base:.1f}×")
        if not args.no_rss:
            x_mib = n * d * 8 / MIB
            cells.append(f"{x_mib:,.0f} MiB" if x_mib >= 10 else f"{x_mib:.1f} MiB")
            if rss is None:
                cells.append("—")
            else:
                cells.append(f"{rss['rss_peak'] / MIB:,.0f} MiB "
                             f"(+{rss['overhead'] / MIB:,.0f} MiB)")
        print("| " + " | ".join(cells) + " |")
    print()
    footer = "vs P: P's time per iteration / fastem's (above 1: fastem is faster)."
    if not args.no_rss:
        footer += (" Peak RSS: high-water mark of a fresh process during a whole fastem fit "
                   f"(k-means init and {args.n_iter} iterations); in brackets, above the RSS "
                   "just before the fit (X, the interpreter, the libraries).")
    print(footer)
    if compile_times:
        cold, warm = compile_times["cold"], compile_times["warm"]
        print()
        print("| fastem first fit in a fresh process | import | first small fit | "
              "start to fitted model | whole process |")
        print("|---|---:|---:|---:|---:|")
        for label, run in (("cold (empty NUMBA_CACHE_DIR: compiles)", cold),
                           ("warm (cache filled; best of 3)", warm)):
            print(f"| {label} | {run['import_s']:.2f} s | {run['fit_s']:.2f} s | "
                  f"{run['ready_s']:.2f} s | {run['wall_s']:.2f} s |")
    if notes:
        print()
        for note in notes:
            print(f"- {note}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="the 20k-row shapes and 3 repeats (unless given)")
    parser.add_argument("--shapes", type=lambda t: [_parse_shape(s) for s in t.split(",")],
                        help="comma-separated NxDxK (default: "
                        + ",".join(f"{n}x{d}x{k}" for n, d, k in _peers.BIG_SHAPES) + ")")
    parser.add_argument("--covs", type=_parse_list(("full", "tied", "diag", "spherical")),
                        default=list(_peers.COVARIANCE_TYPES), help="default: full,diag")
    parser.add_argument("--peers", type=_parse_list(_peers.PEERS), default=list(_peers.PEERS),
                        help="default: " + ",".join(_peers.PEERS))
    parser.add_argument("--repeats", type=int, default=None, help="default: 5 (3 with --quick)")
    parser.add_argument("--budget", type=float, default=60.0,
                        help="seconds after which no new run of a peer starts (default: 60)")
    parser.add_argument("--n-iter", type=int, default=_peers.N_ITER)
    parser.add_argument("--threads", type=int, default=_peers.THREADS)
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-memory probes")
    parser.add_argument("--no-compile", action="store_true",
                        help="skip the cold-compile and warm-start probes")
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    parser.add_argument("--scaling", action="store_true",
                        help="instead of the peers: fastem on 1 thread against --threads")
    args = parser.parse_args(argv)
    if args.shapes is None:
        args.shapes = list(_peers.SMALL_SHAPES if args.quick else _peers.BIG_SHAPES)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 5
    if args.repeats < 1 or args.n_iter < 1 or args.threads < 1:
        parser.error("--repeats, --n-iter and --threads must be at least 1")
    if args.scaling:
        if args.threads < 2:
            parser.error("--scaling compares 1 thread with --threads: give at least 2")
        records = run_scaling(args)
        print_scaling(args, records)
        if args.json:
            args.json.write_text(json.dumps({
                "args": {k: (str(v) if isinstance(v, Path) else v)
                         for k, v in vars(args).items()},
                "machine": machine_lines(args.threads), "scaling": records}, indent=2))
        return 0
    peers, rows, notes, records, compile_times = run_report(args)
    print_tables(args, peers, rows, notes, compile_times)
    if args.json:
        args.json.write_text(json.dumps({
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "machine": machine_lines(args.threads),
            "results": records, "compile": compile_times, "notes": notes,
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
