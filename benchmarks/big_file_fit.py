"""Fit EM iterations on a memory-mapped ``.npy`` file, next to a plain read of the same file.

Run in a fresh process, after ``make_big_file.py``::

    python benchmarks/make_big_file.py /data/big.npy --n-samples 500_000_000   # 32 GB
    python benchmarks/big_file_fit.py /data/big.npy --delete

In one process it

1. reads the whole file once sequentially with ``readinto`` into one reused 64 MiB buffer
   (the floor for any pass over the data: the time the disk, or the page cache, needs);
2. fits ``GaussianMixture(n_components, init_params='random_from_data', tol=0,
   max_iter=3, verbose=2)`` on the path (memory-mapped, read chunk by chunk); the
   initialization reads only K rows, so the fit is the 3 EM passes;
3. prints the time of each EM iteration (from ``verbose=2``), its ratio to the sequential
   read, and the memory: the peak resident set (``VmHWM``, and ``ru_maxrss``; both count the
   file's pages while they are mapped; ``ru_maxrss`` also inherits the peak of the process
   that started this one, so the target is checked on ``VmHWM``) and the peak anonymous memory
   (``RssAnon``, sampled every 50 ms: the process's own allocations, which a zero-copy read
   must not grow).

The last line printed is a JSON summary. The issue's target, for a file bigger than the memory
(32 GB float32, N=500M, d=16, K=8, on 24 GiB): peak RSS under 1 GiB and every iteration
within 1.3x of the sequential read. For a file that fits in memory, whichever pass comes first
pays for the disk: ``--warm`` reads the file once, untimed, before the timed read, so that
both are page-cached; ``--cold`` instead evicts the file from the page cache before the read
and before every pass of the fit, and reads it as fastem reads a file over half the RAM
(``readinto``, not a map), to measure at a small size what a file bigger than the RAM costs.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import resource
import sys
import threading
import time
import warnings

import numpy as np

MIB = 2**20
GIB = 2**30
READ_BUFFER = 64 * MIB


# A copy of fastem._bench.status_bytes: importing anything from fastem loads the package and
# Numba, and this script measures the plain read before fastem is imported.
def status_bytes(field: str) -> int | None:
    """A memory field of /proc/self/status (e.g. 'RssAnon', 'VmHWM') in bytes; None if absent."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def max_rss_bytes() -> int:
    """``ru_maxrss`` in bytes. On Linux it is carried over ``fork`` and ``exec``: started from
    a big process (a test session), this one reports at least that process's RSS."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def peak_rss_bytes() -> int:
    """This process's own peak RSS: VmHWM (Linux, reset by ``exec``), else ``ru_maxrss``."""
    return status_bytes("VmHWM") or max_rss_bytes()


class AnonPeak:
    """The peak of RssAnon, sampled every ``interval`` seconds in a thread while active."""

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.peak = status_bytes("RssAnon") or 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, status_bytes("RssAnon") or 0)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, status_bytes("RssAnon") or 0)


def sequential_read(path) -> tuple[float, int, float]:
    """Read the file once with ``readinto`` into a reused buffer: (seconds, bytes, checksum).

    The checksum (the sum of the buffer's first bytes per read) makes sure nothing is skipped.
    """
    buf = bytearray(READ_BUFFER)
    view = memoryview(buf)
    total = 0
    check = 0.0
    t0 = time.perf_counter()
    with open(path, "rb", buffering=0) as f:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
        while True:
            got = f.readinto(view)
            if not got:
                break
            total += got
            check += buf[0]
    return time.perf_counter() - t0, total, check


def evict(path) -> None:
    """Drop the file's pages from the page cache (those no process has mapped), so that the
    next read of it comes from the disk, as for a file bigger than the RAM."""
    with open(path, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def cold_source(path):
    """The .npy file read as fastem reads one bigger than half the RAM (``readinto`` on the
    prefetch thread, not a memory map), evicted from the page cache before every pass."""
    from fastem.data import RawFileSource, _read_npy_header

    shape, fortran_order, dtype, header = _read_npy_header(path)
    if fortran_order or len(shape) != 2:
        raise SystemExit(f"{path}: --cold needs a C-ordered 2-d .npy file")

    class ColdRawFileSource(RawFileSource):
        def _begin_pass(self):
            super()._begin_pass()
            evict(self.path)

    return ColdRawFileSource(path, dtype, shape, offset=len(header))


class _Tee(io.TextIOBase):
    """Writes to the real stdout and keeps a copy (for the verbose iteration times)."""

    def __init__(self, stream):
        self.stream = stream
        self.lines = []

    def write(self, text):
        self.stream.write(text)
        self.stream.flush()
        self.lines.append(text)
        return len(text)


_ITERATION = re.compile(r"Iteration (\d+)\s+time lapse ([0-9.]+)s")


def fit_file(path, n_components: int, max_iter: int, n_jobs, chunk_size, covariance_type,
             seed: int, cold: bool = False):
    """Fit on the path with verbose=2; returns (estimator, per-iteration seconds, wall s)."""
    import fastem
    from sklearn.exceptions import ConvergenceWarning

    gm = fastem.GaussianMixture(
        n_components, covariance_type=covariance_type, init_params="random_from_data",
        tol=0.0, max_iter=max_iter, random_state=seed, verbose=2, verbose_interval=1,
        n_jobs=n_jobs, chunk_size=chunk_size,
    )
    tee = _Tee(sys.stdout)
    t0 = time.perf_counter()
    with warnings.catch_warnings(), contextlib.redirect_stdout(tee):
        warnings.simplefilter("ignore", ConvergenceWarning)  # tol=0 never converges
        gm.fit(cold_source(path) if cold else path)
    wall = time.perf_counter() - t0
    times = [float(m.group(2)) for m in _ITERATION.finditer("".join(tee.lines))]
    return gm, times, wall


def warm_up(n_features, dtype, n_components, covariance_type) -> None:
    """Compile (or load from the cache) the kernels on a tiny memory-mapped-like array."""
    import tempfile

    import fastem
    from sklearn.exceptions import ConvergenceWarning

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "warm.npy")
        np.save(path, rng.normal(size=(4096, n_features)).astype(dtype))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            fastem.GaussianMixture(n_components, covariance_type=covariance_type,
                                   init_params="random_from_data", max_iter=2,
                                   random_state=0).fit(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="a .npy file (see make_big_file.py)")
    parser.add_argument("--n-components", type=int, default=8)
    parser.add_argument("--covariance-type", default="full")
    parser.add_argument("--max-iter", type=int, default=3)
    parser.add_argument("--n-jobs", type=int, default=None)
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--warm", action="store_true",
                        help="read the file once, untimed, before the timed read")
    parser.add_argument("--cold", action="store_true",
                        help="evict the file from the page cache before the timed read and "
                             "before every pass of the fit (posix_fadvise), as if it were "
                             "bigger than the RAM; needs a file over 256 MiB")
    parser.add_argument("--delete", action="store_true", help="remove the file afterwards")
    args = parser.parse_args(argv)

    header = np.load(args.path, mmap_mode="r")
    n, d = header.shape
    dtype = header.dtype
    del header
    size = os.path.getsize(args.path)
    total_ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    print(f"file {args.path}: {n:,} x {d} {dtype}, {size / 1e9:.2f} GB "
          f"({size / total_ram:.2f}x the {total_ram / GIB:.1f} GiB of RAM)")

    try:
        warm_up(d, dtype, args.n_components, args.covariance_type)
        if args.cold:
            evict(args.path)
        elif args.warm:
            sequential_read(args.path)
        read_s, read_bytes, _ = sequential_read(args.path)
        print(f"sequential read: {read_s:.2f} s ({read_bytes / 1e6 / read_s:.0f} MB/s)")
        anon_before = status_bytes("RssAnon")

        with AnonPeak() as anon:
            gm, times, wall = fit_file(args.path, args.n_components, args.max_iter, args.n_jobs,
                                       args.chunk_size, args.covariance_type, args.seed,
                                       args.cold)
        maxrss = max_rss_bytes()
        peak_rss = peak_rss_bytes()
        result = {
            "n_samples": n, "n_features": d, "dtype": str(dtype), "file_bytes": size,
            "ram_bytes": total_ram, "n_components": args.n_components,
            "read_s": read_s, "cold": args.cold, "iteration_s": times, "fit_wall_s": wall,
            "ratios": [t / read_s for t in times],
            "max_ratio": max(times) / read_s if times else None,
            "peak_rss_bytes": peak_rss, "ru_maxrss_bytes": maxrss, "rss_anon_before": anon_before,
            "rss_anon_peak": anon.peak,
            "rss_anon_growth": None if anon_before is None else anon.peak - anon_before,
            "lower_bounds": gm.lower_bounds_,
        }
        for i, t in enumerate(times, 1):
            print(f"iteration {i}: {t:.2f} s = {t / read_s:.2f} x the sequential read")
        print(f"peak RSS: {peak_rss / MIB:.0f} MiB (VmHWM; ru_maxrss {maxrss / MIB:.0f} MiB); "
              f"peak RssAnon: {anon.peak / MIB:.0f} MiB "
              f"(+{(result['rss_anon_growth'] or 0) / MIB:.0f} MiB during the fit)")
        target_rss = peak_rss < GIB
        target_time = bool(times) and max(times) <= 1.3 * read_s
        print(f"targets: peak RSS < 1 GiB {'met' if target_rss else 'MISSED'}; every iteration "
              f"<= 1.3x the read {'met' if target_time else 'MISSED'}")
    finally:
        if args.delete:
            for p in (args.path, args.path + ".truth.npz"):
                with contextlib.suppress(FileNotFoundError):
                    os.remove(p)
            print(f"deleted {args.path}")
    print(json.dumps(result))  # the last line
    return 0


if __name__ == "__main__":
    sys.exit(main())
