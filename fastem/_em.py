"""The EM driver: passes over a data source, and the iteration loop around them.

One pass over the data per iteration: the E-step under the current parameters and the
statistics for the next M-step come from the same read of each row, and the mean
log-likelihood it returns is the bound for the current parameters.
"""

from __future__ import annotations

import contextlib
import functools
import time
import warnings

import numba
import numpy as np
from threadpoolctl import ThreadpoolController

from ._kernels._config import BLOCK_ROWS
from ._kernels.gaussian import DIAG, GIVEN, HARD, SOFT, SPHERICAL, gaussian_pass
from ._kernels.gaussian_expanded import expanded_pass, n_features_expanded
from ._params import GaussianParams, upper_pairs
from ._stats import GaussianStats
from .data import count_rows, first_nonfinite_row

__all__ = ["threads", "accumulate", "predict_pass", "em_loop", "FitInterrupted", "SOFT", "HARD",
           "GIVEN"]

# Scratch memory for partial statistics in one wave of blocks (see the kernel): written by the
# blocks, then read back by the merge, so best kept in cache. Measured against 8 MiB, a pass
# took 5% less at d = 64, K = 16 'full' (16 blocks a wave instead of 30), 1.4% less at d = 16,
# K = 16 'full' and 2.7% at d = 64 'diag'; 1 MiB was slower at 'diag'.
_WAVE_BYTES = 2 * 2**20

# At most this much of given responsibilities at a time (GIVEN passes: 'random' initialization).
_GIVEN_BYTES = 8 * 2**20

_EMPTY_1D = np.empty(0)
_EMPTY_LABELS = np.empty(0, dtype=np.int64)


@functools.cache
def _blas_controller():
    """threadpoolctl's view of the BLAS libraries in this process, found once: looking them up
    took 0.7 ms, on every fit and every predict (numpy's and SciPy's BLAS are loaded by the
    time fastem is imported)."""
    return ThreadpoolController()


@contextlib.contextmanager
def threads(n_jobs, limit_blas=True):
    """Run kernels on ``n_jobs`` threads (None: all cores; -1 all; -2 all but one).

    With ``limit_blas`` BLAS is held to one thread meanwhile: the kernels never call it, and
    between passes the M-step's small products and factorizations gain nothing from threads
    whose idle spinning (OpenBLAS's threads spin for a while after each call) would take cores
    from the next pass. Predictions, one pass and no M-step, skip it: threadpoolctl's limit
    took 16 of the 25 µs this context costs.

    Parallel loops hand out their iterations one at a time (Numba's parallel chunk size 1)
    rather than in equal shares fixed up front: a thread that loses its core for a while (to
    the reader of the next chunk, or to another process) no longer holds every other thread
    at the end of the wave. Results do not depend on it: blocks own their slots.
    """
    n_max = numba.config.NUMBA_NUM_THREADS
    if n_jobs is None:
        n = n_max
    elif n_jobs < 0:
        n = max(1, n_max + 1 + n_jobs)
    else:
        n = min(n_jobs, n_max)
    previous = numba.get_num_threads()
    numba.set_num_threads(n)
    previous_chunk = numba.set_parallel_chunksize(1)
    try:
        with (_blas_controller().limit(limits=1, user_api="blas") if limit_blas
              else contextlib.nullcontext()):
            yield n
    finally:
        numba.set_parallel_chunksize(previous_chunk)
        numba.set_num_threads(previous)


def prediction_threads(n_jobs, n_rows):
    """The threads context of a prediction pass over ``n_rows`` rows (None: not known):
    :func:`threads` without the BLAS limit, or none for a pass of one block, which runs on the
    calling thread whatever the threads (``_waves.run_waves``); setting and restoring them
    took 8 of a one-row ``predict``'s 60 µs."""
    if n_rows is not None and n_rows <= BLOCK_ROWS:
        return contextlib.nullcontext()
    return threads(n_jobs, limit_blas=False)


def _wave_blocks(slot_size):
    """Blocks per wave for partial statistics of ``slot_size`` float64 per block."""
    per_block = 8 * slot_size
    return int(np.clip(_WAVE_BYTES // per_block, 16, 4096))


def nonfinite_error(row) -> ValueError:
    """The error for a row holding NaN or infinity, naming it (its index in the whole data)."""
    return ValueError(
        f"Input X contains NaN or infinity in row {row}. "
        "Remove or impute non-finite values."
    )


def raise_first_nonfinite(source, chunk_size=None):
    """Raise :func:`nonfinite_error` for the first bad row of ``source`` (known to have one)."""
    row = first_nonfinite_row(source, chunk_size)
    if row < 0:
        raise AssertionError("no row holds NaN or infinity")  # pragma: no cover
    raise nonfinite_error(row)


def _raise_bad_row(start, bad):
    raise nonfinite_error(start + bad)


def kernel_rows(block, n_features):
    """A chunk as the kernels take it: its width checked, and as a read-only view.

    The kernels trust shapes, so a chunk that does not fit the model is refused here. They never
    write to X; handing them every chunk read-only makes in-memory arrays and memory-mapped
    files the same Numba type, so one compiled kernel per dtype serves both (fewer compiles).
    """
    if block.ndim != 2 or block.shape[1] != n_features:
        raise ValueError(
            f"A chunk of shape {block.shape} does not match a model of {n_features} features."
        )
    view = block.view()
    view.flags.writeable = False
    return view


def whole_blocks(m):
    """Row ranges (a, b) of a chunk of m rows as ``gaussian_pass`` takes them: its whole blocks
    of BLOCK_ROWS, then the rest. Each range is one block or whole blocks; the blocks and their
    order are the chunk's own, so the results keep every bit."""
    cut = m - m % BLOCK_ROWS
    if 0 < cut < m:
        return ((0, cut), (cut, m))
    return ((0, m),)


def _check_loglik(loglik):
    if not np.isfinite(loglik):
        raise ValueError(
            "The log-likelihood of the data is not finite: some rows have zero density under "
            "every component. Scale the data, or increase reg_covar."
        )


def count_rows_if_needed(source, params: GaussianParams, chunk_size=None):
    """Count a stream's rows in a pass of their own where the kernel that takes them depends on
    their number (:meth:`GaussianParams.layout_depends_on_rows`): the same rows then get the
    same kernel, and the same bits, from a stream and from memory. Any other source knows
    its rows, and a stream its own after one pass."""
    if params.layout_depends_on_rows():
        count_rows(source, chunk_size)


def accumulate(source, params: GaussianParams, *, chunk_size=None, mode=SOFT,
               resp_for_chunk=None, rows_scatter=None) -> GaussianStats:
    """One pass over ``source``: the statistics for the M-step, and the log-likelihood sum.

    ``mode`` HARD assigns each row wholly to its nearest mean (``params`` must have unit
    precisions and equal weights, as for k-means' centres; the log-likelihood sum is then 0);
    GIVEN takes the responsibilities of rows start .. start + m from
    ``resp_for_chunk(start, m)``, asked for consecutive ranges in row order.

    ``rows_scatter``, for 'tied': statistics of an earlier pass over the same rows. The
    unweighted scatter sum_n (x_n - c)(x_n - c)^T depends on the rows alone, so it is moved to
    this pass's c from there (:meth:`GaussianStats.recentred`) instead of summed again as a
    (d, d) product per row. That pass must have been SOFT or HARD: the move takes
    sum_n (x_n - c) from its responsibility-weighted sums, as they add up to 1 in each row.
    """
    if mode == SOFT:
        count_rows_if_needed(source, params, chunk_size)
    elif mode == HARD:
        _check_nearest_mean_model(params)
    expanded = params.expanded_layout(source.n_samples) if mode == SOFT else None
    if expanded is not None:
        return _accumulate_expanded(source, params, *expanded, chunk_size=chunk_size,
                                    rows_scatter=rows_scatter)
    kind, shift, centre, prec, aux, const = params.kernel_layout(
        moments_about_centre=mode == SOFT)
    if mode == HARD:
        # Every component's constant is the same here: left in, it would swamp differences
        # in squared distance below eps times itself (~1e-16), and rows of clusters 1e-8
        # apart would all go to the first. Without it the nearest mean is exact.
        const = np.zeros_like(const)
    # 'diag' and 'spherical' give the kernel the rows less c: their statistics are about
    # shift + c (the means, or c itself), the others' about shift
    stats = GaussianStats.zeros(params.covariance_type,
                                shift + centre if kind in (DIAG, SPHERICAL) else shift)
    K, d = shift.shape
    if params.covariance_type == "tied" and rows_scatter is not None:
        stats.s2 = rows_scatter.recentred(shift).s2
        s2 = np.zeros((0, d, d))  # the kernel then skips it
    else:
        s2 = stats.s2.reshape(prec.shape[0], prec.shape[1], prec.shape[2])
    waves = _wave_blocks(K + K * d + s2.size)
    no_resp = np.empty((0, K))
    loglik = np.zeros(1)
    n = 0
    # GIVEN responsibilities are asked for a slice of whole blocks at a time, so that no
    # (rows, K) array outgrows _GIVEN_BYTES whatever the chunk (a chunk of a 2-feature file
    # holds millions of rows); the blocks, and so the bits, are the chunk's own.
    step = max(BLOCK_ROWS, _GIVEN_BYTES // (8 * K) // BLOCK_ROWS * BLOCK_ROWS)
    for start, chunk in source.chunks(chunk_size, prefetch=True):
        chunk = kernel_rows(chunk, params.means.shape[1])
        m = chunk.shape[0]
        rows = step if mode == GIVEN else max(m, 1)
        for s in range(0, m, rows):
            block = chunk[s : s + rows]
            resp = None
            if mode == GIVEN:
                resp = np.ascontiguousarray(resp_for_chunk(start + s, block.shape[0]),
                                            dtype=np.float64)
            for a, b in whole_blocks(block.shape[0]):
                bad = gaussian_pass(
                    kind, mode, block[a:b], shift, centre, prec, aux, const,
                    no_resp if resp is None else resp[a:b], True, BLOCK_ROWS, waves, _tasks(),
                    loglik, stats.s0, stats.s1, s2, _EMPTY_1D, no_resp, _EMPTY_LABELS,
                )
                if bad >= 0:
                    _raise_bad_row(start + s + a, bad)
        n += m
    stats.n_samples = n
    stats.loglik = float(loglik[0])
    if mode != GIVEN:
        _check_loglik(stats.loglik)
    return stats


def _check_nearest_mean_model(params: GaussianParams):
    """A HARD pass assigns each row to its nearest mean (``fastem._kernels.gaussian``), which
    is its most likely component only under unit precisions and equal weights."""
    pc, d = params.precisions_cholesky, params.means.shape[1]
    unit = np.eye(d) if params.covariance_type in ("full", "tied") else 1.0
    if not (np.all(pc == unit) and np.all(params.weights == params.weights[0])):
        raise ValueError("A HARD pass assigns each row to its nearest mean: its model must "
                         "have unit precisions and equal weights.")


def _tasks():
    """Parallel tasks per wave of either kernel: one per thread. Each makes its scratch once
    and takes the wave's blocks from a shared counter, so that no thread waits at a wave's end
    for more than one take of blocks (``fastem._kernels._atomic``)."""
    return numba.get_num_threads()


def _accumulate_expanded(source, params, kind, centre, eta, row_factor, *,
                         chunk_size=None, rows_scatter=None) -> GaussianStats:
    """:func:`accumulate` by the expanded kernel: statistics around the one centre c."""
    K, d = params.means.shape
    n_feat = n_features_expanded(kind, d)
    totals = np.zeros(eta.shape[::-1])  # phi(x - c) r_k summed over rows, a column per component
    tied = params.covariance_type == "tied"
    shift = np.repeat(centre[None], K, axis=0)
    # 'tied': sum of (x - c)(x - c)^T, summed by the kernel unless known from an earlier pass
    summed = tied and rows_scatter is None
    scatter = np.zeros((1, d, d) if summed else (0, 0, 0))
    waves = _wave_blocks(totals.size + scatter.size)
    loglik = np.zeros(1)
    no_resp = np.empty((0, K))
    n = 0
    for start, block in source.chunks(chunk_size, prefetch=True):
        block = kernel_rows(block, params.means.shape[1])
        bad = expanded_pass(kind, block, centre, eta, row_factor, K, True, BLOCK_ROWS, waves,
                            _tasks(), loglik, totals, scatter, _EMPTY_1D, no_resp,
                            _EMPTY_LABELS)
        if bad >= 0:
            _raise_bad_row(start, bad)
        n += block.shape[0]
    _check_loglik(loglik[0])
    second = totals[1 + d : n_feat, :K].T  # (K, features past the linear ones)
    if params.covariance_type == "full":
        s2 = np.empty((K, d, d))
        a, b = upper_pairs(d)
        s2[:, a, b] = second
        s2[:, b, a] = second
    elif summed:  # the kernel's whole product, symmetric to the bit
        s2 = scatter[0]
    elif tied:
        s2 = rows_scatter.recentred(shift).s2
    elif params.covariance_type == "diag":
        s2 = np.ascontiguousarray(second)
    else:
        s2 = second[:, 0].copy()
    return GaussianStats(params.covariance_type, shift, n, float(loglik[0]),
                         totals[0, :K].copy(), np.ascontiguousarray(totals[1 : 1 + d, :K].T), s2)


def predict_pass(source, params: GaussianParams, *, chunk_size=None, row_loglik=None,
                 resp=None, labels=None) -> tuple[float, int]:
    """One pass filling whichever per-row outputs are given; returns (loglik sum, n rows).

    Outputs are arrays of n_samples rows (float64 log-likelihoods and responsibilities, int64
    labels), possibly memory-mapped; each chunk's rows are written as soon as computed.
    """
    count_rows_if_needed(source, params, chunk_size)
    # (kind, centre, eta, row_factor), or None for the per-component kernel
    expanded = params.expanded_layout(source.n_samples)
    if expanded is None:
        kind, shift, centre, prec, aux, const = params.kernel_layout()
    K = params.n_components
    no_resp = np.empty((0, K))
    s2 = np.empty((0, 0, 0))
    loglik = np.zeros(1)
    n = 0
    for start, block in source.chunks(chunk_size, prefetch=True):
        block = kernel_rows(block, params.means.shape[1])
        m = block.shape[0]
        views = [
            _EMPTY_1D if row_loglik is None else row_loglik[start : start + m],
            no_resp if resp is None else resp[start : start + m],
            _EMPTY_LABELS if labels is None else labels[start : start + m],
        ]
        if expanded is not None:
            e_kind, e_centre, eta, row_factor = expanded
            bad = expanded_pass(e_kind, block, e_centre, eta, row_factor, K, False, BLOCK_ROWS,
                                1024, _tasks(), loglik, np.empty((0, 0)),
                                np.empty((0, 0, 0)), *views)
            if bad >= 0:
                _raise_bad_row(start, bad)
        else:
            for a, b in whole_blocks(m):
                bad = gaussian_pass(
                    kind, SOFT, block[a:b], shift, centre, prec, aux, const, no_resp, False,
                    BLOCK_ROWS, 1024, _tasks(), loglik, np.empty(0), np.empty((0, 0)), s2,
                    *(view[a:b] for view in views),
                )
                if bad >= 0:
                    _raise_bad_row(start + a, bad)
        n += m
    return float(loglik[0]), n


class _Progress:
    """scikit-learn's verbose messages for the EM iterations, and the stages of a progress bar
    (``fastem._progress.PassBar``, or None) when the model draws one: the messages are then
    written above it."""

    def __init__(self, verbose, verbose_interval, bar=None, n_init=1):
        self.verbose = verbose
        self.interval = verbose_interval
        self.bar = bar
        self.n_init = n_init
        self.init = 0

    def _say(self, line):
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line)

    def _stage(self, stage):
        if self.bar is not None:
            if self.n_init > 1:
                stage = f"init {self.init + 1}/{self.n_init}, {stage}"
            self.bar.set_stage(stage)

    def init_begin(self, init):
        """Initialization ``init`` (from 0) starts."""
        self.init = init
        self._stage("initialization")
        if self.bar is not None:
            self.bar.set_bound(None)
        if self.verbose >= 1:
            self._say(f"Initialization {init}")
        if self.verbose >= 2:
            self.t_init = self.t_iter = time.perf_counter()

    def pass_begins(self, n_iter):
        """The pass of EM iteration ``n_iter`` starts."""
        self._stage(f"EM iteration {n_iter}")

    def iteration(self, n_iter, change, lower_bound):
        if self.bar is not None:
            self.bar.set_bound(lower_bound)
        if n_iter % self.interval != 0:
            return
        if self.verbose == 1:
            self._say(f"  Iteration {n_iter}")
        elif self.verbose >= 2:  # scikit-learn's line, to the character
            now = time.perf_counter()
            self._say(f"  Iteration {n_iter}\t time lapse {now - self.t_iter:.5f}s\t "
                      f"ll change {change:.5f}")
            self.t_iter = now

    def init_end(self, lower_bound, converged):
        word = "converged" if converged else "did not converge"
        if self.verbose == 1:
            self._say(f"Initialization {word}.")
        elif self.verbose >= 2:
            elapsed = time.perf_counter() - self.t_init
            self._say(f"Initialization {word}. time lapse {elapsed:.5f}s\t "
                      f"lower bound {lower_bound:.5f}.")


class FitInterrupted(KeyboardInterrupt):
    """A KeyboardInterrupt during EM after at least one completed iteration, carrying them:
    ``params`` after the last completed M-step, its ``lower_bounds`` and ``n_iter``, so that
    the estimator keeps them rather than losing the work of a long fit."""

    def __init__(self, params, lower_bounds, n_iter):
        super().__init__()
        self.params, self.lower_bounds, self.n_iter = params, lower_bounds, n_iter


def em_loop(source, params: GaussianParams, *, tol, reg_covar, max_iter, chunk_size=None,
            lower_bound=-np.inf, progress=None):
    """Iterate EM from ``params`` until ``abs(change in bound) < tol`` or ``max_iter``.

    Returns
    -------
    params : GaussianParams
        After the last M-step.
    lower_bounds : list of float
        The bound (mean log-likelihood per row) of each iteration, under the parameters that
        iteration started from, as scikit-learn records it.
    converged : bool
    n_iter : int

    Raises
    ------
    FitInterrupted
        On a KeyboardInterrupt once an iteration has completed (before that, the
        KeyboardInterrupt itself).
    """
    lower_bounds = []
    converged = False
    rows_scatter = None  # 'tied': the first pass's statistics, for its unweighted scatter
    completed = None  # (params, lower_bounds) after the last whole iteration, set in one step
    try:
        for n_iter in range(1, max_iter + 1):
            previous = lower_bound
            if progress is not None:
                progress.pass_begins(n_iter)
            stats = accumulate(source, params, chunk_size=chunk_size,
                               rows_scatter=rows_scatter)
            if params.covariance_type == "tied" and rows_scatter is None:
                rows_scatter = stats
            params = GaussianParams.from_stats(stats, reg_covar)
            lower_bound = stats.loglik / stats.n_samples
            completed = (params, lower_bounds + [lower_bound])
            lower_bounds.append(lower_bound)
            change = lower_bound - previous
            if progress is not None:
                progress.iteration(n_iter, change, lower_bound)
            # EM never lowers the bound; more than rounding means a numerical problem or a bug.
            if change < -1e-9 * max(1.0, abs(lower_bound)):
                warnings.warn(
                    f"The EM bound decreased by {-change:.3g} at iteration {n_iter} (from "
                    f"{previous:.10g} to {lower_bound:.10g}). EM guarantees it never does, so "
                    "the covariances are close to singular: increase reg_covar or scale the "
                    "data.",
                    RuntimeWarning,
                    stacklevel=3,
                )
            if abs(change) < tol:
                converged = True
                break
    except KeyboardInterrupt as interrupt:
        if completed is None:
            raise
        raise FitInterrupted(completed[0], completed[1], len(completed[1])) from interrupt
    if progress is not None:
        progress.init_end(lower_bound, converged)
    return params, lower_bounds, converged, n_iter
