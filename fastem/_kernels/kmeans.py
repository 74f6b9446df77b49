"""k-means kernels: a fused Lloyd pass over one chunk, and k-means++ seeding distances.

Callers (``fastem/_kmeans.py``) validate every shape before calling: these kernels do not
check bounds.

The Lloyd pass is laid out as the Gaussian kernels are: waves of blocks (:func:`_lloyd_waves`)
whose tasks (:func:`_lloyd_task`), compiled apart and called by their address through the one
parallel loop of every kernel (``_waves.launch``), take the blocks from a shared counter; the
k-means++ seeding's distances (:func:`kpp_min_distances`) run the same way.

Determinism. :func:`lloyd_chunk` gives each block of ``block_rows`` consecutive rows its own
slot in the wave buffers; a block's partial statistics depend only on its rows and the
centers, and the blocks are merged serially, in block order, into accumulators that persist
across chunks. Results are therefore bit-identical for any number of threads, for any wave
size, and for any chunking whose chunks (except the last) hold a multiple of ``block_rows``.
The merge is a separate function compiled without fast-math, so the order of its additions is
exactly the order written.
"""

import numba
import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import cgutils, types
from numba.extending import intrinsic

from ._aligned import (aligned_empty, aligned_int64_empty, aligned_matrix,
                       aligned_zeros)
from ._atomic import take_next
from ._config import CACHE, FASTMATH, njit_internal
from ._llvm import (ACCUMULATORS, F64, LANES, VEC, array_bytes, load_vector, splat,
                    vector_fma)
from ._transpose import load_columns
from ._waves import TASK_FAILED, launcher_address, run_wave, task_address

# numba accepts a bool, dict or set for ``fastmath``, not the frozenset of _config.
_FASTMATH = set(FASTMATH)

# Centers per sweep of :func:`_squared_distances`: 8 where AVX-512's registers hold their
# running sums, 4 with AVX2's (``_llvm.ACCUMULATORS``).
CENTER_GROUP = min(8, ACCUMULATORS)


@intrinsic
def _squared_distances(typingctx, XT, C, k0, D, n):
    """D[g, i] = sum_j (XT[j, i] - C[k0 + g, j])^2 for g < CENTER_GROUP and every i below n
    rounded up to a multiple of LANES: each 8 rows' sums for the group's centers held in
    registers through the features, in feature order, one fused multiply-add a term.

    Written as a Numba loop per center, the sums ran along a block's row of running sums in
    memory, loaded and stored again for every center and feature (3-3.6 cycles per 8 rows on
    an AVX-512 Xeon); here each step loads 8 rows of one feature once for the group. The
    terms and their order are those of that loop, so the sums are the same bits. On an AVX2
    EPYC (Zen), 1 thread, a Lloyd pass that stores labels took 0.79-0.84 of the time at
    (1M, 16, 16), 0.77-0.85 at (500k, 64, 16), 0.81-0.92 at (1M, 16, 4) and 0.92-0.98 at
    (1M, 2, 8); default fits (k-means initialization) on 2 threads took 0.90-0.95 at
    (100k, 16, 16) 'full', (1M, 16, 16) and (1M, 64, 16) 'diag'. The task's cold compile
    took no measurably longer (2.34-2.52 s against 2.29-2.40).

    A center past C's last is center k0 again (as in ``_tiles._row_sums``), its distances
    never nearer than center k0's (:func:`_nearest_of_group`). XT (d, >= n rounded up), C
    (K, d) with k0 < K and D (CENTER_GROUP, >= n rounded up) are C-contiguous float64; nothing
    else is checked."""
    matrix = types.Array(types.float64, 2, "C")
    if not (XT == matrix and C == matrix and D == matrix):
        return None
    sig = types.void(XT, C, types.intp, D, types.intp)

    def codegen(context, builder, signature, args):
        xt_base, xt_stride = array_bytes(context, builder, signature.args[0], args[0])
        c_base, c_stride = array_bytes(context, builder, signature.args[1], args[1])
        d_base, d_stride = array_bytes(context, builder, signature.args[3], args[3])
        k0, n = args[2], args[4]
        intp = n.type
        n_features = cgutils.unpack_tuple(builder, context.make_array(signature.args[0])(
            context, builder, args[0]).shape, 2)[0]
        fma = vector_fma(builder)
        zero = ir.Constant(VEC, [0.0] * LANES)
        acc = [cgutils.alloca_once_value(builder, zero) for _ in range(CENTER_GROUP)]
        n_centers = cgutils.unpack_tuple(builder, context.make_array(signature.args[1])(
            context, builder, args[1]).shape, 2)[0]
        c_rows = []
        for g in range(CENTER_GROUP):
            k = builder.add(k0, ir.Constant(intp, g))
            c_rows.append(builder.mul(
                builder.select(builder.icmp_signed("<", k, n_centers), k, k0), c_stride))
        n_steps = builder.udiv(builder.add(n, ir.Constant(intp, LANES - 1)),
                               ir.Constant(intp, LANES))
        with cgutils.for_range(builder, n_steps) as step:
            col = builder.mul(step.index, ir.Constant(intp, 8 * LANES))  # bytes
            for slot in acc:
                builder.store(zero, slot)
            with cgutils.for_range(builder, n_features) as feature:
                j = feature.index
                x = load_vector(builder, xt_base, builder.add(builder.mul(j, xt_stride), col))
                j_bytes = builder.mul(j, ir.Constant(intp, 8))
                for g, slot in enumerate(acc):
                    c_ptr = builder.gep(c_base, [builder.add(c_rows[g], j_bytes)])
                    c = builder.load(builder.bitcast(c_ptr, F64.as_pointer()), align=8)
                    t = builder.fsub(x, splat(builder, c))
                    builder.store(builder.call(fma, [t, t, builder.load(slot)]), slot)
            for g, slot in enumerate(acc):
                offset = builder.add(builder.mul(ir.Constant(intp, g), d_stride), col)
                ptr = builder.bitcast(builder.gep(d_base, [offset]), VEC.as_pointer())
                builder.store(builder.load(slot), ptr, align=8)
        return context.get_dummy_value()

    return sig, codegen


# fastmath=False explicitly: Numba otherwise inherits the calling kernel's fast-math flags, and
# the additions must happen exactly in block order.
@njit_internal(nogil=True, cache=CACHE, fastmath=False, no_cfunc_wrapper=True)
def merge_blocks(n_blocks, buf_counts, buf_sums, buf_inertia, buf_bad, counts, sums, inertia):
    """Add the first ``n_blocks`` block partials, in block order, into the accumulators.

    Parameters
    ----------
    n_blocks : int
        Number of filled slots in the buffers.
    buf_counts : ndarray of shape (n_slots, K), int64
        Input: rows assigned to each center, per block.
    buf_sums : ndarray of shape (n_slots, K, d), float64
        Input: sum of ``x - centers[k]`` over the rows assigned to ``k``, per block.
    buf_inertia : ndarray of shape (n_slots,), float64
        Input: sum of squared distances to the nearest center, per block.
    buf_bad : ndarray of shape (n_slots,), int64
        Input: first non-finite row of each block (chunk-local index), or -1.
    counts : ndarray of shape (K,), int64
        Input/output accumulator.
    sums : ndarray of shape (K, d), float64
        Input/output accumulator.
    inertia : ndarray of shape (1,), float64
        Input/output accumulator.

    Returns
    -------
    first_bad : int
        Chunk-local index of the first non-finite row among these blocks, or -1.
    """
    n_clusters, n_features = sums.shape
    first_bad = -1
    for b in range(n_blocks):
        if first_bad < 0 and buf_bad[b] >= 0:
            first_bad = buf_bad[b]
        inertia[0] += buf_inertia[b]
        for k in range(n_clusters):
            c = buf_counts[b, k]
            if c > 0:
                counts[k] += c
                for j in range(n_features):
                    sums[k, j] += buf_sums[b, k, j]
    return first_bad


def lloyd_chunk(X, centers, block_rows, counts, sums, inertia, labels, min_dist,
                buf_counts, buf_sums, buf_inertia, buf_bad):
    """One fused Lloyd pass over a chunk: assign, accumulate, check finiteness.

    Each row goes to its nearest center (squared Euclidean distance, computed from
    differences in float64; ties go to the lowest center index). Rows that are not all finite
    are skipped and reported.

    The blocks run in waves: in each, one parallel task per thread (at most one per block)
    takes blocks from a shared counter (:func:`_lloyd_task`, called by its address as the
    Gaussian kernels' tasks are: ``_waves``), then :func:`merge_blocks` adds them in block
    order.

    Parameters
    ----------
    X : ndarray of shape (m, d), float32 or float64, C-contiguous
        Input: the chunk.
    centers : ndarray of shape (K, d), float64, K >= 1
        Input: the current centers.
    block_rows : int
        Input: rows per block (``BLOCK_ROWS``).
    counts : ndarray of shape (K,), int64
        Input/output: rows assigned to each center, accumulated.
    sums : ndarray of shape (K, d), float64
        Input/output: sum of ``x - centers[k]`` over the rows assigned to ``k``, accumulated.
        Summing offsets from the center instead of raw rows keeps precision on data far from
        the origin; the new center is ``centers[k] + sums[k] / counts[k]``.
    inertia : ndarray of shape (1,), float64
        Input/output: sum of squared distances to the nearest center, accumulated.
    labels : ndarray of shape (m,) or (0,), int64
        Output: nearest center of each row (-1 for a non-finite row). Length 0 means "do not
        store labels or distances".
    min_dist : ndarray of shape (m,) or (0,), float64
        Output: squared distance of each row to its nearest center (NaN for a non-finite
        row). Same length as ``labels``.
    buf_counts, buf_sums, buf_inertia, buf_bad : ndarrays of shapes (W, K), (W, K, d), (W,), (W,)
        Scratch: the block partials of one wave of ``W`` blocks. ``W`` bounds the memory and
        does not change the results.

    Returns
    -------
    first_bad : int
        Chunk-local index of the first non-finite row, or -1. When a non-finite row is found
        the pass stops at the end of its wave and the accumulators hold partial statistics.

    Raises
    ------
    MemoryError
        If a task could not allocate its block's scratch.
    """
    m = X.shape[0]
    wave = buf_counts.shape[0]
    n_blocks = (m + block_rows - 1) // block_rows
    if n_blocks == 0:
        return -1
    next_block = np.zeros(1, dtype=np.int64)
    args = (X, centers, block_rows, labels, min_dist, buf_counts, buf_sums, buf_inertia,
            buf_bad, next_block)
    n_tasks = max(1, min(numba.get_num_threads(), wave, n_blocks))
    bad = _lloyd_waves(launcher_address(), task_address(_lloyd_task, args), n_blocks, n_tasks,
                       np.zeros(1, dtype=np.int64), *args, counts, sums, inertia)
    if bad == TASK_FAILED:
        raise MemoryError("lloyd_chunk: a kernel task could not allocate its scratch buffers")
    return bad


# The loop and its task are compiled apart, the task called through its address (``_waves``):
# with the block's code in the prange body, Numba compiled it into each of the loop's four
# libraries, and the kernel's cold compile took 4.3 s against 2.1 s for the scalar loop it
# replaced.
@njit(nogil=True, cache=CACHE, fastmath=_FASTMATH, no_cfunc_wrapper=True)
def _lloyd_waves(launcher, task, n_blocks, n_tasks, failed, X, centers, block_rows, labels,
                 min_dist, buf_counts, buf_sums, buf_inertia, buf_bad, next_block, counts, sums,
                 inertia):
    """The waves of :func:`lloyd_chunk`: `n_tasks` calls of the task at address `task` on each
    wave's blocks (on this thread if one, else launched by ``_waves.launch`` at address
    `launcher`), then the merge. Returns the first bad row, -1, or TASK_FAILED."""
    args = (X, centers, block_rows, labels, min_dist, buf_counts, buf_sums, buf_inertia,
            buf_bad, next_block)
    wave = buf_counts.shape[0]
    for wave_start in range(0, n_blocks, wave):
        n_wave = min(wave, n_blocks - wave_start)
        if not run_wave(launcher, task, wave_start, n_wave, n_tasks, next_block, failed, args):
            return TASK_FAILED
        first_bad = merge_blocks(n_wave, buf_counts, buf_sums, buf_inertia, buf_bad,
                                 counts, sums, inertia)
        if first_bad >= 0:
            return first_bad
    return -1


@njit(inline="always", nogil=True, cache=CACHE, fastmath=_FASTMATH)
def _nearest_of_group(dist, k0, best, best_dist, nb):
    """For each row i < nb, the nearest of its best_dist[i] (center best[i]) and the group's
    CENTER_GROUP distances dist[:, i] (centers k0 + g), taken in order, a tie kept by the
    earlier center. In the last group, the distances past the last center are center k0's
    again (:func:`_squared_distances`), never nearer than center k0 itself: the result is the
    group's real centers'.

    Row by row, the group's centers held in registers and each row's nearest stored once:
    updated center by center along the rows, the test of each row selected which rows to
    store, and LLVM made masked stores of them (vmaskmovpd, a dozen micro-ops each on AMD's
    Zen). The comparisons are the same, in the same order, so the same bits. k-means
    initializations (seeding, sample iterations, full passes; AMD EPYC, 2 threads) took
    0.5-0.6 of the time at (1M, 2, 64), 0.6-0.8 at (1M, 2, 8), 0.8-0.9 at (1M, 16, 16) and
    0.92-0.97 at (1M, 64, 16)."""
    for i in range(nb):
        nearest, where = best_dist[i], best[i]
        for g in range(CENTER_GROUP):  # a constant: unrolled, and the rows vectorized
            if dist[g, i] < nearest:
                nearest, where = dist[g, i], k0 + g
        best_dist[i], best[i] = nearest, where


@njit_internal(nogil=True, cache=CACHE, fastmath=_FASTMATH, no_cfunc_wrapper=True)
def _lloyd_task(wave_start, n_wave, X, centers, block_rows, labels, min_dist, buf_counts,
                buf_sums, buf_inertia, buf_bad, next_block):
    """Blocks wave_start + b of a wave (b < n_wave), taken one at a time from `next_block`,
    each into its slot b of the buffers. Makes its scratch once. Returns 0.

    A block's rows are first laid out as columns (XT, float64), so that the distances run
    along the rows in vectors: against the row-by-row loop this replaced, Lloyd passes took
    0.40 of the time at (1M, 2, 8), 0.45 at (1M, 16, 16) and 0.24 at (1M, 64, 16), with the
    same bits (each row's distance still sums its features in order, and its statistics
    follow the rows' order). The distances then come CENTER_GROUP centers at a time from
    :func:`_squared_distances`, and each center's, in order, updates the rows' nearest."""
    m, n_features = X.shape
    n_clusters = centers.shape[0]
    store = labels.shape[0] > 0
    width = -(-block_rows // LANES) * LANES  # whole vectors for _squared_distances
    XT = aligned_zeros(n_features, width)
    finite = np.empty(block_rows, dtype=np.bool_)
    best = aligned_int64_empty(block_rows)
    best_dist = aligned_empty(block_rows)
    dist = aligned_matrix(CENTER_GROUP, width)
    # The rows less zeros, which leaves each one's bits: the Gaussian kernels' call of
    # load_columns takes a centre, and one compiled copy then serves both (its own took
    # 0.6-0.7 s of a default fit's cold compile).
    origin = aligned_zeros(1, n_features)[0]
    b = take_next(next_block)
    while b < n_wave:
        r0 = (wave_start + b) * block_rows
        r1 = min(r0 + block_rows, m)
        nb = r1 - r0
        for k in range(n_clusters):
            buf_counts[b, k] = 0
            for j in range(n_features):
                buf_sums[b, k, j] = 0.0
        load_columns(X, r0, r1, XT, origin)
        for i in range(nb):
            finite[i] = True
            best[i] = 0
            best_dist[i] = np.inf
        for j in range(n_features):
            for i in range(nb):
                finite[i] &= np.isfinite(XT[j, i])
        for k0 in range(0, n_clusters, CENTER_GROUP):
            _squared_distances(XT, centers, k0, dist, nb)
            _nearest_of_group(dist, k0, best, best_dist, nb)
        block_inertia = 0.0
        block_bad = -1
        for i in range(nb):
            if not finite[i]:
                if block_bad < 0:
                    block_bad = r0 + i
                if store:
                    labels[r0 + i] = -1
                    min_dist[r0 + i] = np.nan
                continue
            k = best[i]
            block_inertia += best_dist[i]
            buf_counts[b, k] += 1
            for j in range(n_features):
                buf_sums[b, k, j] += np.float64(X[r0 + i, j]) - centers[k, j]
            if store:
                labels[r0 + i] = k
                min_dist[r0 + i] = best_dist[i]
        buf_inertia[b] = block_inertia
        buf_bad[b] = block_bad
        b = take_next(next_block)
    return 0


# Rows per block of :func:`kpp_min_distances`, the unit its tasks take from their counter: with
# one row at a time (then a parallel loop's iterations, handed out one by one), seeding 10k rows
# took 1.3-1.6 ms a candidate set on 1 or 2 threads against 0.1 ms for the same loop without
# threads, most of a 10k-row fit's time.
KPP_BLOCK_ROWS = 1024


def kpp_min_distances(X, candidates, closest, out):
    """k-means++ seeding step: squared distance to the nearest center if a candidate is added.

    The rows run in blocks of KPP_BLOCK_ROWS, taken from a shared counter by one task per
    thread (:func:`_kpp_task`, launched as the Lloyd pass's are); each distance is the same
    whichever task computes it.

    Parameters
    ----------
    X : ndarray of shape (n, d), float64, C-contiguous
        Input: the (in-memory, finite) sample.
    candidates : ndarray of shape (T,), int64, values in ``[0, n)``
        Input: rows of ``X`` tried as the next center.
    closest : ndarray of shape (n,), float64
        Input: squared distance of each row to its nearest chosen center (``inf`` before the
        first center).
    out : ndarray of shape (T, n), float64
        Output: ``out[t, i] = min(closest[i], ||X[i] - X[candidates[t]]||^2)``. The row of the
        chosen candidate becomes the next ``closest``.
    """
    n_blocks = (X.shape[0] + KPP_BLOCK_ROWS - 1) // KPP_BLOCK_ROWS
    if n_blocks == 0:
        return
    args = (X, candidates, closest, out, np.zeros(1, dtype=np.int64))
    n_tasks = max(1, min(numba.get_num_threads(), n_blocks))
    if _kpp_wave(launcher_address(), task_address(_kpp_task, args), n_blocks, n_tasks,
                 np.zeros(1, dtype=np.int64), *args) == TASK_FAILED:
        raise MemoryError("kpp_min_distances: a kernel task failed")


@njit(nogil=True, cache=CACHE, fastmath=_FASTMATH, no_cfunc_wrapper=True)
def _kpp_wave(launcher, task, n_blocks, n_tasks, failed, X, candidates, closest, out,
              next_block):
    """One wave of every block: `n_tasks` calls of the task at address `task` (on this thread
    if one, else launched by ``_waves.launch`` at address `launcher`). Returns 0 or
    TASK_FAILED."""
    args = (X, candidates, closest, out, next_block)
    if not run_wave(launcher, task, 0, n_blocks, n_tasks, next_block, failed, args):
        return TASK_FAILED
    return 0


@njit_internal(nogil=True, cache=CACHE, fastmath=_FASTMATH, no_cfunc_wrapper=True)
def _kpp_task(first_block, n_blocks, X, candidates, closest, out, next_block):
    """Blocks first_block + b of :func:`kpp_min_distances` (b < n_blocks), taken one at a
    time from `next_block`. Returns 0."""
    n, n_features = X.shape
    n_candidates = candidates.shape[0]
    b = take_next(next_block)
    while b < n_blocks:
        start = (first_block + b) * KPP_BLOCK_ROWS
        for i in range(start, min(n, start + KPP_BLOCK_ROWS)):
            for t in range(n_candidates):
                c = candidates[t]
                dist = 0.0
                for j in range(n_features):
                    u = X[i, j] - X[c, j]
                    dist += u * u
                out[t, i] = min(dist, closest[i])
        b = take_next(next_block)
    return 0
