"""Write a big ``.npy`` file of rows drawn from a known Gaussian mixture, in flat memory.

The file is created with ``numpy.lib.format.open_memmap`` and filled one chunk of rows at a
time; each written range is flushed and dropped from this process's mapping, so memory stays at
a few chunks whatever the file size. The mixture (``fastem._demo.make_truth``: well-separated
means, full covariances) is saved next to the file as ``PATH.truth.npz``. Rows are a fixed
function of ``--seed`` and the row index (one random stream per block of ``ROWS_PER_SEED``
rows), whatever ``--chunk-rows``.

Usage::

    python benchmarks/make_big_file.py /data/big.npy --n-samples 500_000_000 \
        --n-features 16 --n-components 8                  # 32 GB float32
    python benchmarks/make_big_file.py /tmp/small.npy --n-samples 2_000_000

It prints the size and the time taken, and refuses to overwrite a file unless ``--force``.
"""

from __future__ import annotations

import argparse
import mmap
import os
import sys
import time

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from threadpoolctl import threadpool_limits

from fastem._demo import Truth, make_truth

# Rows drawn from one random stream: the file does not depend on the chunk size.
ROWS_PER_SEED = 1 << 16


def truth_path(path) -> str:
    return os.fspath(path) + ".truth.npz"


def _fill_block(block: np.ndarray, first_row: int, truth: Truth, factors, seed: int) -> None:
    """Rows ``first_row : first_row + len(block)`` of the file (at most ``ROWS_PER_SEED``)."""
    K, d = truth.means.shape
    m = block.shape[0]
    rng = np.random.default_rng([seed, first_row // ROWS_PER_SEED])
    labels = rng.choice(K, size=m, p=truth.weights)
    z = rng.standard_normal((m, d), dtype=block.dtype)
    # Rows of each component transformed together (z is i.i.d., so which rows of z serve
    # which component does not matter), then put back in the order of the labels.
    counts = np.bincount(labels, minlength=K)
    y = np.empty_like(z)
    o = 0
    for k in range(K):
        c = counts[k]
        np.matmul(z[o : o + c], factors[k].T, out=y[o : o + c])
        y[o : o + c] += truth.means[k].astype(block.dtype)
        o += c
    block[np.argsort(labels, kind="stable")] = y


def _fill(out: np.ndarray, first_row: int, truth: Truth, factors, seed: int, pool) -> None:
    """Rows ``first_row : first_row + len(out)`` of the file, drawn into ``out`` by ``pool``."""
    jobs = [pool.submit(_fill_block, out[lo : lo + ROWS_PER_SEED], first_row + lo, truth,
                        factors, seed) for lo in range(0, out.shape[0], ROWS_PER_SEED)]
    for job in jobs:
        job.result()


def make_big_file(path, n_samples: int, n_features: int = 16, n_components: int = 8, *,
                  dtype="float32", seed: int = 0, chunk_rows: int = 1 << 20,
                  threads: int | None = None, verbose: bool = False) -> Truth:
    """Write ``n_samples`` rows of a random ``n_components`` mixture to the ``.npy`` ``path``.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.npy`` file to create (overwritten if it exists).
    n_samples, n_features, n_components : int
    dtype : {'float32', 'float64'}, default='float32'
    seed : int, default=0
        Seed of the mixture and of the rows.
    chunk_rows : int, default=2**20
        Rows generated and written at a time (a multiple of ``ROWS_PER_SEED``); memory is a
        few times ``chunk_rows * n_features`` values.
    threads : int or None, default=None
        Threads drawing rows (None: one per core). The rows do not depend on it.
    verbose : bool, default=False
        Print progress to stderr.

    Returns
    -------
    Truth
        The mixture the rows were drawn from (also saved as ``PATH.truth.npz``).
    """
    if chunk_rows % ROWS_PER_SEED:
        raise ValueError(f"chunk_rows must be a multiple of {ROWS_PER_SEED}, got {chunk_rows}.")
    truth = make_truth(n_features, n_components, "full", random_state=seed)
    # One BLAS thread per worker: (m, d) @ (d, d) products are too small to share.
    blas = threadpool_limits(1, user_api="blas")
    factors = [truth.component_cholesky(k).astype(dtype) for k in range(n_components)]
    np.savez(truth_path(path), weights=truth.weights, means=truth.means,
             covariances=truth.covariances)
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(n_samples, n_features))
    # numpy's generators and (single-threaded) BLAS release the GIL: blocks drawn in threads.
    pool = ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1)
    try:
        raw = getattr(mm, "_mmap", None)
        base = np.frombuffer(raw, dtype=np.uint8, count=1).ctypes.data if raw is not None else 0
        done_bytes = 0
        t0 = time.perf_counter()
        for start in range(0, n_samples, chunk_rows):
            chunk = mm[start : start + chunk_rows]
            _fill(chunk, start, truth, factors, seed, pool)
            if raw is not None and hasattr(raw, "madvise"):
                # Written back and unmapped: the process's memory stays flat (the data stays in
                # the page cache or on disk).
                end = chunk.ctypes.data + chunk.nbytes - base
                end -= end % mmap.PAGESIZE
                if end > done_bytes:
                    raw.flush(done_bytes, end - done_bytes)
                    raw.madvise(mmap.MADV_DONTNEED, done_bytes, end - done_bytes)
                    done_bytes = end
            if verbose and (start // chunk_rows) % 64 == 63:
                rate = (start + chunk.shape[0]) / (time.perf_counter() - t0)
                print(f"  {start + chunk.shape[0]:,} rows, {rate / 1e6:.1f} M rows/s",
                      file=sys.stderr, flush=True)
        mm.flush()
    finally:
        pool.shutdown()
        blas.restore_original_limits()
        del mm
    return truth


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="the .npy file to write")
    parser.add_argument("--n-samples", type=lambda s: int(s.replace("_", "")),
                        default=500_000_000)
    parser.add_argument("--n-features", type=int, default=16)
    parser.add_argument("--n-components", type=int, default=8)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chunk-rows", type=int, default=1 << 20)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--force", action="store_true", help="overwrite an existing file")
    args = parser.parse_args(argv)
    if os.path.exists(args.path) and not args.force:
        parser.error(f"{args.path} exists; give --force to overwrite it")
    size = args.n_samples * args.n_features * np.dtype(args.dtype).itemsize
    fs = os.statvfs(os.path.dirname(os.path.abspath(args.path)))
    free = fs.f_bavail * fs.f_frsize
    if size > free:
        parser.error(f"{size / 1e9:.1f} GB needed, {free / 1e9:.1f} GB free")
    t0 = time.perf_counter()
    make_big_file(args.path, args.n_samples, args.n_features, args.n_components,
                  dtype=args.dtype, seed=args.seed, chunk_rows=args.chunk_rows,
                  threads=args.threads, verbose=True)
    elapsed = time.perf_counter() - t0
    size = os.path.getsize(args.path)
    print(f"wrote {args.path}: {args.n_samples:,} x {args.n_features} {args.dtype}, "
          f"{size / 1e9:.2f} GB ({size / 2**30:.2f} GiB) in {elapsed:.1f} s "
          f"({size / 1e6 / elapsed:.0f} MB/s); truth in {truth_path(args.path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
