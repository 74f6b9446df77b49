"""The E-step and statistics as two matrix products per block (every covariance type).

With y = x - c (c a common centre near the data), ``log w_k + log N(x | mu_k, Sigma_k)`` is
linear in features of y:

    'full'       phi(y) = (1, y_1 .. y_d, y_a y_b for a <= b)      F = 1 + d + d (d + 1) / 2
    'diag'       phi(y) = (1, y_1 .. y_d, y_1^2 .. y_d^2)           F = 1 + 2 d
    'spherical'  phi(y) = (1, y_1 .. y_d, |y|^2)                    F = 2 + d
    'tied'       phi(y) = (1, y_1 .. y_d)                           F = 1 + d
    log w_k + log N(x | mu_k, Sigma_k) = eta_k . phi(y)   (+ q(y) for 'tied')

where eta_k holds the component's natural parameters (built by
``fastem._params.GaussianParams.expanded_layout``). A block's log-densities are then one
product ``eta (K, F) @ Phi (F, nb)``, and its statistics one more, ``Phi (F, nb) @ R^T``:
the responsibility sums, the first moments and the second moments the covariance type needs
(the upper triangle, the diagonal or the trace), all around c. For 'full' each costs 2 K F
flops per row, half of the per-component form in ``gaussian.py`` ((x - mu_k) P_k for every
k, then a scatter per component), and nothing is swept once per component. From 64 padded
features on (d >= 10 for 'full'), or 32 with more than 8 components, both products run in
the register panels of ``_panels.py``, on sub-blocks of :func:`sub_rows` rows so that Phi
stays in the core's cache; below, where the exp and log of the log-sum-exp dominate, on
whole blocks: the log-densities in panels (3.5% faster than a BLAS call at 'diag' d = 16,
K = 16), the statistics in the row-wise sums of ``_tiles.py``. 'full' from d = 48 with at
most 16 components, and at d = 64 with at most 32, never stores Phi's quadratic rows at all
(:data:`UNSTORED_MIN_FEATURES`).

'tied''s quadratic term q(y) = -|U^T y|^2 / 2 (U U^T the shared precision) is the same for
every component: it leaves the responsibilities alone, so it stays out of eta and is taken
off each row's log-likelihood after the log-sum-exp, from one more (d, d) product per block.
Its one covariance needs the unweighted scatter of y, in ``_tiles``. Both are d^2
multiply-adds per row whatever K, besides the 2 K (d + 1) of the two products, where the
per-component form sweeps every component's rows; at d = 16 and 64, K = 16, a pass took 25-30%
less. 'tied' always runs whole blocks: its Phi is small.

The price is cancellation: the expanded quadratic form loses about eps * |mu_k - c|^2 (in the
metric of the component's precision) where the per-component form loses eps * |mu_k - c|.
``expanded_layout`` offers this form only where that error is negligible; elsewhere
``gaussian.gaussian_pass`` runs. Blocks, their fixed-order merge and the per-row outputs are as
in ``gaussian.py``; within a block, sub-blocks are added in order. As there, the tasks' one
body is compiled as several functions, here four: for layouts whose blocks run whole, for
'tied''s (whole blocks with its own terms), for sub-blocks that store their features, and for
'full''s sub-blocks that do not.
"""

import numpy as np
from numba import njit

from ._aligned import (aligned_array, aligned_empty, aligned_int64_empty,
                       aligned_int64_zeros, aligned_zeros)
from ._atomic import blocks_per_take, following_block, take_next
from ._config import JIT, njit_internal, prefer_wide_vectors
from ._launch import one_at_a_time
from ._logsumexp import normalize_columns
from ._math import fused_multiply_add
from ._panels import (
    FEW_ROWS,
    PANEL_ROWS,
    few_log_density_product,
    log_density_product,
    panel_calls,
    panel_product,
    quadratic_log_density_product,
    scale_rows,
)
from ._prefetch import STATE_SIZE, aim
from ._tiles import TILE, short_tile_products
from ._transpose import diag_features_tile, load_columns, transpose_tile
from ._views import borrowed, flat, keep_alive, matrix
from ._waves import TASK_FAILED, launcher_address, run_waves, task_address
from .gaussian import (
    DIAG,
    FULL,
    SPHERICAL,
    TIED,
    _largest,
    _total_loglik,
    _write_rows,
)

_jit = JIT

# The products ask for the next (sub-)block's rows (``_prefetch``) at most this many lines a
# call; the rest is left to the read. At 'diag' d = 64, K = 16 (sub-blocks of 128 rows, 33
# calls, 31 lines each) passes took 1.03-1.04 of the time without the prefetching, 0.98 with
# this limit. The per-component kernel's calls, 22 lines each at K = 4, keep their lines:
# with the limit its passes there took 1.03-1.07 of the time they take without it.
MOST_LINES_A_CALL = 16


@njit(**_jit)
def n_features_expanded(kind, d):
    """F, the number of features of d-dimensional rows for covariance `kind`: the quadratic
    ones of 'full', (1, y, y_j^2) for 'diag' and (1, y, |y|^2) for 'spherical', whose
    log-densities have no cross terms, and (1, y) for 'tied', whose quadratic term is the
    same for every component."""
    if kind == FULL:
        return 1 + d + d * (d + 1) // 2
    if kind == DIAG:
        return 1 + 2 * d
    if kind == TIED:
        return 1 + d
    return 2 + d


@njit(**_jit)
def scatter_rows(d):
    """Rows of y that 'tied''s scatter reads from Phi (d rounded up to the 4 x 4 tiles of
    ``_tiles``): its padded layout holds at least 1 + scatter_rows(d) features, zero past
    F."""
    return (d + 3) // 4 * 4


@njit(**_jit)
def padded(n):
    """n rounded up to a multiple of 8: the panels' rows (PANEL_ROWS) and vector lanes
    (LANES)."""
    return (n + PANEL_ROWS - 1) // PANEL_ROWS * PANEL_ROWS


# Fewer padded features than this (d < 10), and a block runs whole (:func:`_small_block`), its
# statistics in `_tiles`' sums along the rows, which read R as it is: panels would need R
# transposed, Kv entries gathered per row. With 8 components at d = 2 the panels' statistics
# took 4.0 ns a row against 2.3; with 16 to 64 components at 8 to 24 padded features a pass
# in tiles took 5-20% less ('diag' d = 8, K = 16, 32, 64: -7%, -13%, -20%; 'full' d = 5,
# K = 16, 64: -6%, -20%; 'tied' d = 16: -5%).
PANEL_MIN_FEATURES = 64
# ... but with this many padded components, sub-blocks in panels from
# PANEL_MIN_FEATURES_MANY_COMPONENTS padded features on: at 'diag' d = 16, K = 16 (40
# features) a pass took 7.1% less than in whole blocks with the statistics in panels, at d = 12
# (32) 5.7% less, at 'full' d = 8, K = 16 (48) 1.1% less; whole blocks with the statistics in
# tiles were slower still (4-18% at 'diag' d = 12 and 16, K = 16 and 64). With K = 8 whole
# blocks stayed faster ('full' d = 8: 2.3%, 'diag' d = 16: 1.2%).
PANEL_STATS_MIN_COMPONENTS = 16
PANEL_MIN_FEATURES_MANY_COMPONENTS = 32


@njit(**_jit)
def uses_sub_blocks(kind, Fp, Kv):
    """Whether blocks run in sub-blocks (:func:`_block`) rather than whole
    (:func:`_small_block`), for Fp padded features and Kv padded components of covariance
    `kind`; 'tied' (d + 1 features) always runs whole blocks, where its own terms are."""
    if kind == TIED:
        return False
    return Fp >= PANEL_MIN_FEATURES or (Fp >= PANEL_MIN_FEATURES_MANY_COMPONENTS
                                        and Kv >= PANEL_STATS_MIN_COMPONENTS)


@njit(**_jit)
def sub_rows(kind, Fp, Kv, block_rows):
    """Rows per sub-block: the whole block unless :func:`uses_sub_blocks`; else 128, or 64
    once Phi (Fp, 128) would outgrow 512 KiB, a quarter of a core's L2 (d > 30). At d = 16,
    K = 16 a pass took 0.126 s with 256 rows, 0.113 with 128 and 0.119 with 64."""
    if not uses_sub_blocks(kind, Fp, Kv):
        return block_rows
    rows = 128
    while rows > 64 and Fp * rows * 8 > 2**19:
        rows //= 2
    return min(rows, block_rows)


@njit(**_jit)
def _diag_features_from_rows(X, r0, r1, centre, Phi):
    """Phi[:F, :nb] = the 'diag' features of rows r0:r1 of X, in 8 x 8 tiles straight from
    the rows (``diag_features_tile``), without the transposed copy that :func:`_features`
    reads: a pass took 9.4% less at d = 64, K = 16, 2.3% at d = 16. Only for whole tiles
    (:func:`_diag_tiles_fit`): element-by-element tails here cost 1.6 s of cold compile."""
    prefer_wide_vectors()
    for i in range(r1 - r0):
        Phi[0, i] = 1.0
    for i0 in range(0, r1 - r0, 8):
        for j0 in range(0, X.shape[1], 8):
            diag_features_tile(X, r0 + i0, j0, centre, Phi, i0)


@njit(inline="always", **_jit)
def _diag_tiles_fit(kind, d, nb):
    """Whether :func:`_diag_features_from_rows` serves these rows: 'diag', whole tiles."""
    return kind == DIAG and d % 8 == 0 and nb % 8 == 0


@njit(**_jit)
def _features(kind, Phi, d, nb):
    """Phi[:F, :nb] = phi(y), given the rows y = x - c in Phi[1:1 + d, :nb], where they were
    loaded (``_transpose.load_columns`` less c). Against a transposed copy of the rows and a
    sweep subtracting c from it into Phi, passes took 0.92-0.97 of the time at d = 12 to 64,
    K = 16, 'tied' and 'spherical', 0.97-0.99 'full' (d = 12, 16)."""
    prefer_wide_vectors()
    for i in range(nb):
        Phi[0, i] = 1.0
    row = 1 + d
    if kind == DIAG:
        for j in range(d):
            for i in range(nb):
                Phi[row + j, i] = Phi[1 + j, i] * Phi[1 + j, i]
        return
    if kind == TIED:
        return
    if kind == SPHERICAL:
        for i in range(nb):
            Phi[row, i] = 0.0
        for j in range(d):
            for i in range(nb):
                Phi[row, i] += Phi[1 + j, i] * Phi[1 + j, i]
        return
    for a in range(d):
        for b in range(a, d):
            for i in range(nb):
                Phi[row, i] = Phi[1 + a, i] * Phi[1 + b, i]
            row += 1


@njit_internal(**_jit)
def _zero_padding(Phi, F, nb, zeroed):
    """Zero Phi's padding: the row columns past nb of every feature, and the feature rows past
    F. Those rows are never written, so they are zeroed only when the layout (Phi's row
    length, `zeroed[0]`) changes: every block of 256 rows but a chunk's last has the same one.
    As a slice assignment on every block they took 2.5% of a pass at d = 2, K = 8."""
    Fp, nbp = Phi.shape
    for f in range(F):
        for i in range(nb, nbp):
            Phi[f, i] = 0.0
    if zeroed[0] != nbp:
        for f in range(F, Fp):
            for i in range(nbp):
                Phi[f, i] = 0.0
        zeroed[0] = nbp


@njit(inline="always", **_jit)
def _scales_features(F, K):
    """Whether the statistics scale F features by each row's 1 / s rather than the K
    responsibilities (:func:`_scale_features`)."""
    return 2 * F <= K


@njit_internal(**_jit)
def _scale_features(Phi, F, inverses):
    """Phi[f, i] *= inverses[i] for f < F and every column i: each row's features over its sum
    of exps (``normalize_columns``' `inverses`), so that Phi's products with the exps are the
    statistics of the responsibilities, F multiplies a row instead of K. Where F <= K / 2
    (:func:`_scales_features`), against scaling R: passes took 0.82-0.87 of the time at d = 2,
    K = 64, 0.88-0.92 at d = 8, K = 64, 0.89-0.95 at d = 4, K = 32, 0.97-1.01 at d = 2, K = 16;
    with every F below K, 1.03-1.12 at d = 16, K = 16 (F = 17 to 153)."""
    prefer_wide_vectors()
    for f in range(F):
        for i in range(Phi.shape[1]):
            Phi[f, i] *= inverses[i]


# Up to this many features, 'tied''s U^T y is d (d + 1) / 2 sweeps along the rows
# (:func:`_tied_terms`) rather than the panel product, which multiplies 8 padded rows of U^T.
# 'tied' passes took 0.86-0.89 of the time at d = 2 with 8 components, 0.91-0.95 with 16 and
# 0.97 with 64; with 16, 0.91-0.94 at d = 3, 0.96 at 4 and 0.97 at 5, but 1.009 at d = 7 and
# 1.011 at 8.
TIED_SWEEP_MAX_FEATURES = 5


@njit_internal(**_jit)
def _tied_terms(Phi, phi, d, nb, row_factor, Z, acc, ll, compute_stats, scatter, pf):
    """What 'tied' adds to a whole block whose y fill Phi's rows 1..d (``phi`` its buffer):
    the term no component changes, ll[i] -= |U^T y_i|^2 / 2, left out of the log-sum-exp;
    with `compute_stats`, the one unweighted scatter sum_i y_i y_i^T written into `scatter`
    (d, d). `row_factor` is U^T (padded(d), padded(d)), zero past d; Z (padded(d), Phi's row
    length) and acc (as long) are scratch; `pf` is the block's prefetch state.

    Both products are called with arguments of the types of the block's own calls, so that
    one compiled copy of each serves both: Numba compiles a function again for every
    constant passed (a literal k = 1, or tile_products' flags for the upper triangle alone),
    which cost 1 s more of cold compile. So the scatter is the whole product, d^2
    multiply-adds a row where its upper triangle needs half; with runtime flags instead of
    constants the block's own statistics ran 28% slower at d = 2 and 16. The whole product
    is symmetric to the bit (the same products summed in the same order)."""
    prefer_wide_vectors()
    nbp = Z.shape[1]
    if d <= TIED_SWEEP_MAX_FEATURES:
        # Z = U^T Y, row by row of the lower triangle U^T, its multiply-adds in the panel's
        # order: the same bits.
        for a in range(d):
            for i in range(nbp):
                Z[a, i] = row_factor[a, 0] * Phi[1, i]
            for b in range(1, a + 1):
                for i in range(nbp):
                    Z[a, i] = fused_multiply_add(row_factor[a, b], Phi[1 + b, i], Z[a, i])
    else:
        # Z = U^T Y by the log-densities' own product, whose maxima go unused (k from a
        # shape); U^T is one lower triangle, whose panels stop at their diagonal.
        log_density_product(row_factor, Phi[1:], Z, d, acc, row_factor.shape[0],
                            row_factor.shape[0], pf)
    for i in range(nbp):
        acc[i] = 0.0
    for j in range(d):
        for i in range(nbp):
            acc[i] += Z[j, i] * Z[j, i]
    for i in range(nb):
        ll[i] -= 0.5 * acc[i]
    if compute_stats:  # with the block's own flags (see above): the whole product, written
        Y = matrix(phi[nbp:], scatter_rows(d), nbp)
        short_tile_products(Y, Y, nb, scatter, pf)


# With this many features or more and at most this many padded components, 'full' sub-blocks
# never store their quadratic features: the log-densities form each y_a y_b in registers
# (:func:`quadratic_log_density_product`, the same bits) and the statistics weight R by y_a
# instead (:func:`_full_stats`). Writing Phi's d (d + 1) / 2 rows through the core's second
# cache took 20% of a pass at d = 64, K = 16. The products then multiply a little more (the
# y_a y_b for every 8 components, R y_a for every a, and panels that end on padding), which
# outweighs it as K grows or d shrinks. Passes against storing them (2 threads, paired):
# d = 64: K = 8 0.83-0.985, K = 16 0.875-0.90, K = 32 0.915, K = 64 0.98; d = 56, K = 24
# 1.003; d = 48: K = 16 0.95-0.965, K = 32 1.018, K = 64 1.06; d = 40, K = 32 1.06;
# d = 32: K = 8 1.02, K = 16 0.98-1.02, K = 64 1.10-1.24. Hence up to 16 padded components
# from UNSTORED_MIN_FEATURES on, and up to 32 at the expanded kernel's largest d, 64.
UNSTORED_MIN_FEATURES = 48
UNSTORED_MAX_COMPONENTS = 16
UNSTORED_MAX_COMPONENTS_AT_64 = 32


@njit(inline="always", **_jit)
def _stores_features(kind, d, Kv):
    """Whether a sub-block of covariance `kind` with Kv padded components writes all its
    features to Phi."""
    if kind != FULL:
        return True
    if Kv <= UNSTORED_MAX_COMPONENTS:
        return d < UNSTORED_MIN_FEATURES
    return Kv > UNSTORED_MAX_COMPONENTS_AT_64 or d < 64


@njit_internal(**_jit)
def _full_stats(Phi, RT, W, slot, d, nb, pf):
    """slot += Phi' RT for the 'full' features Phi' of the rows y in Phi's rows 1..d (row 0
    ones, rows past d zero), without Phi': its rows 0..d directly, then for each a the rows
    (a, b >= a) as sum_i y_b (y_a r): one panel product of y's rows a..d-1 with W = RT scaled
    by y_a row by row. Each segment's last panel may run over zero rows of Phi, adding zeros
    to the next segment's rows of slot. W has RT's shape; `pf` the prefetch state."""
    Fp = slot.shape[0]
    r0 = 0
    for a in range(-1, d):  # a = -1: the constant row and y, weighted by R itself
        if a >= 0:
            scale_rows(RT, Phi[1 + a], W, nb)
        n_rows = d - a
        rows = min(Fp - r0, (n_rows + PANEL_ROWS - 1) // PANEL_ROWS * PANEL_ROWS)
        # One call for all: each call site of the product costs compile time of its own.
        panel_product(Phi[1 + a:], RT if a < 0 else W, slot[r0:r0 + rows], n_rows, nb, pf)
        r0 += n_rows


# Inlined into :func:`_block`, and so into the sub-block tasks, with `stored` a constant, by
# which Numba prunes the other path: each sub-block task compiles one of them. Called as a
# function of its own, its code was optimized again inside each task (0.4 s of cold compile).
@njit(inline="always", **_jit)
def _sub_block(stored, kind, X, s0, s1, centre, eta, K, F, compute_stats, slot, row_loglik,
               resp_out, labels, scratch, pf):
    """Rows s0:s1 of a block, both products in panels: their statistics added into `slot`,
    their per-row outputs written; `stored`: whether the layout writes all its features to
    Phi (:func:`_stores_features`); the products prefetch as `pf` says. Returns (sum of the
    rows' log-likelihoods, first non-finite row or -1)."""
    prefer_wide_vectors()
    phi, logp_buf, r_buf, rt_buf, best_buf, ll_buf, work_buf, zeroed, _ = scratch
    d = X.shape[1]
    Kv, Fp = eta.shape
    nb = s1 - s0
    nbp = padded(nb)  # whole panels of rows
    # Contiguous views, so that the last, shorter sub-block is laid out like the rest.
    Phi = matrix(phi, Fp, nbp)
    logp = matrix(logp_buf, Kv, nbp)
    # The log-sum-exp runs over all nbp columns (those past nb are zero rows of data):
    # C-contiguous operands keep its loops vectorized.
    logp_K = matrix(logp_buf, K, nbp)
    R = matrix(r_buf, K, nbp)
    RT = matrix(rt_buf, nb, Kv)
    best = best_buf[: nbp if labels.shape[0] > 0 else 0]  # the labels only if wanted
    ll = ll_buf[:nbp]
    work = matrix(work_buf, 3, nbp)
    # The statistics from R's exps and the features scaled by 1 / s (:func:`_scale_features`)
    # unless the responsibilities themselves are wanted; the unstored features' are products.
    scaled = compute_stats and stored and _scales_features(F, K) and resp_out.shape[0] == 0
    inverses = work[2][: nbp if scaled else 0]
    if zeroed[0] != nbp:  # R's rows past K, never written, zero for its transposed tiles
        R_all = matrix(r_buf, Kv, nbp)
        for k in range(K, Kv):
            for i in range(nbp):
                R_all[k, i] = 0.0
    if stored and _diag_tiles_fit(kind, d, nb):
        _diag_features_from_rows(X, s0, s1, centre, Phi)
    else:
        load_columns(X, s0, s1, matrix(phi[nbp:], d, nbp), centre)
        if stored:
            _features(kind, Phi, d, nb)
        else:  # 'full', whose products form its quadratic features: 1 and y only
            for i in range(nb):
                Phi[0, i] = 1.0
    # Rows past those written stay zero, as the panels need.
    _zero_padding(Phi, F if stored else 1 + d, nb, zeroed)
    # F, not Fp: padding would add only zeros. The rows' largest log-densities go to work[0].
    # eta is no stack of triangles; np.intp(0), not a literal 0, which Numba would compile
    # the product again for ('tied''s own call passes a variable).
    if stored:
        log_density_product(eta, Phi, logp, F, work[0], K, np.intp(0), pf)
    else:
        quadratic_log_density_product(eta, Phi, logp, d, work[0], K, pf)
    # Each row's log-likelihood if it is wanted, else their sum in ll[0] (when it is finite)
    summed = normalize_columns(logp_K, R, ll, work[0], K, inverses, row_loglik.shape[0] > 0,
                               nb)
    if best.shape[0] > 0:  # the labels are wanted
        _largest(logp_K, work[1], best)
    total, bad = (ll[0], -1) if summed else _total_loglik(X, s0, s1, ll_buf[:nb])
    if bad >= 0:
        return 0.0, bad
    _write_rows(s0, ll_buf[:nb], R, best, row_loglik, resp_out, labels)
    if compute_stats:
        # RT = R's first nb columns transposed, in 8 x 8 tiles of the padded layout (the
        # rows of RT past nb are never read): element by element it took 2% of a pass at
        # d = 64, K = 16.
        R_all, RT_all = matrix(r_buf, Kv, nbp), matrix(rt_buf, nbp, Kv)
        for i0 in range(0, nb, 8):
            for k0 in range(0, Kv, 8):
                transpose_tile(R_all, k0, i0, RT_all, k0, None)
        if stored:
            if scaled:
                _scale_features(Phi, F, inverses)
            panel_product(Phi, RT, slot, F, nb, pf)
        else:
            _full_stats(Phi, RT, matrix(logp_buf, nb, Kv), slot, d, nb, pf)  # logp is spent
    return total, -1


# Both block functions are inlined (at Numba's level) into the task, their one caller:
# Numba optimizes a called function's code again inside every function above it, and this
# level cost 1.3 s of the cold compile.
@njit(inline="always", **_jit)
def _block(kind, X, r0, r1, centre, eta, K, stored, compute_stats, slot, row_loglik, resp_out,
           labels, scratch, pf, r_next, calls):
    """Process rows r0:r1 into `slot` (zeroed here) and the per-row outputs, one sub-block
    at a time (`stored` as for :func:`_sub_block`).

    `scratch` is the calling thread's (phi, logp, r, rt, best, ll, work, zeroed, z)
    buffers, sized for a sub-block and reused: allocating them per block took a fifth of the
    pass at small d. `rt`'s columns past K are zero and are never written; `zeroed` holds the
    row length of the layout whose padding is zero (:func:`_zero_padding`), -1 at first; `z`
    is 'tied''s, which runs whole blocks only (:func:`_small_block`).

    Each sub-block prefetches the next one's rows, in this block or from `r_next`, the next
    block's first (-1: none), over `calls` calls (:func:`_prefetch_calls`) with the task's
    prefetch state `pf`.

    Returns (sum of the rows' log-likelihoods, first non-finite row or -1).
    """
    prefer_wide_vectors()
    d = X.shape[1]
    F = n_features_expanded(kind, d)
    if compute_stats:  # in loops: inside a parallel kernel a slice assignment was a parfor
        for f in range(slot.shape[0]):
            for k in range(slot.shape[1]):
                slot[f, k] = 0.0
    total = 0.0
    S = scratch[5].shape[0]  # the sub-block's rows, as the caller sized the scratch
    for s0 in range(r0, r1, S):
        s1 = min(r1, s0 + S)
        aim(pf, X, s1 if s1 < r1 else r_next, S, calls, MOST_LINES_A_CALL)
        part, bad = _sub_block(stored, kind, X, s0, s1, centre, eta, K, F, compute_stats, slot,
                               row_loglik, resp_out, labels, scratch, pf)
        if bad >= 0:
            return 0.0, bad
        total += part
    return total, -1


@njit(inline="always", **_jit)
def _small_block(tied, kind, X, r0, r1, centre, eta, row_factor, K, compute_stats, slot,
                 scatter, row_loglik, resp_out, labels, scratch, pf):
    """:func:`_block` where sub-blocks do not pay (:func:`uses_sub_blocks`): the whole block
    at once, log-densities in panels, statistics in `_tiles`, and, if `tied` (a constant,
    true when `kind` is 'tied'), 'tied''s own terms (:func:`_tied_terms`) into `scatter`;
    both products prefetch as `pf`, aimed at the next block, says. Kept apart from the
    sub-block path: sharing its function cost this one 4-5% at d = 2 and at 'diag' d = 16,
    K = 16 on 2 threads."""
    prefer_wide_vectors()
    phi, logp_buf, r_buf, _, best_buf, ll_buf, work_buf, zeroed, z_buf = scratch
    nb = r1 - r0
    nbp = padded(nb)  # whole panels of rows, as in _sub_block
    d = X.shape[1]
    Kv, Fp = eta.shape
    F = n_features_expanded(kind, d)
    Phi = matrix(phi, Fp, nbp)
    logp = matrix(logp_buf, Kv, nbp)
    logp_K = matrix(logp_buf, K, nbp)
    R_K = matrix(r_buf, K, nbp)
    best = best_buf[: nbp if labels.shape[0] > 0 else 0]  # the labels only if wanted
    ll = ll_buf[:nbp]
    work = matrix(work_buf, 3, nbp)
    scaled = compute_stats and _scales_features(F, K) and resp_out.shape[0] == 0  # as there
    inverses = work[2][: nbp if scaled else 0]
    # R's rows past K are never written: zeroed once per layout, like Phi's padding (whose
    # _zero_padding below then records this layout in `zeroed`). In loops: inside a parallel
    # kernel a slice assignment was a parallel loop of Numba's, which it dropped as dead when R
    # itself was not read again (the statistics read these rows through a view of their own).
    if zeroed[0] != nbp:
        for i in range(K * nbp, Kv * nbp):
            r_buf[i] = 0.0
    if _diag_tiles_fit(kind, d, nb):
        _diag_features_from_rows(X, r0, r1, centre, Phi)
    else:
        load_columns(X, r0, r1, matrix(phi[nbp:], d, nbp), centre)
        _features(kind, Phi, d, nb)
    _zero_padding(Phi, F, nb, zeroed)
    # F, not Fp: padding would add only zeros. The rows' largest log-densities go to work[0].
    # 'tied' (a constant: Numba compiles one branch) runs with EXPANDED_MIN_COMPONENTS or more;
    # 'full' with 2 to 4 components (EXPANDED_SMALL_FULL) in a short panel
    if tied:
        log_density_product(eta, Phi, logp, F, work[0], K, np.intp(0), pf)
    elif K <= FEW_ROWS:
        few_log_density_product(eta, Phi, logp, F, work[0], K, pf)
    else:
        log_density_product(eta, Phi, logp, F, work[0], K, np.intp(0), pf)
    # Each row's log-likelihood if it is wanted (and for 'tied', which adds a term of its own
    # to each), else their sum in ll[0] (when it is finite)
    summed = normalize_columns(logp_K, R_K, ll, work[0], K, inverses,
                               tied or row_loglik.shape[0] > 0, nb)
    if best.shape[0] > 0:  # the labels are wanted
        _largest(logp_K, work[1], best)
    if tied:
        _tied_terms(Phi, phi, d, nb, row_factor, matrix(z_buf, row_factor.shape[0], nbp),
                    work[1], ll, compute_stats and scatter.shape[0] > 0, scatter, pf)
    total, bad = (ll[0], -1) if summed else _total_loglik(X, r0, r1, ll_buf[:nb])
    if bad >= 0:
        return 0.0, bad
    _write_rows(r0, ll_buf[:nb], R_K, best, row_loglik, resp_out, labels)
    if compute_stats:
        # Written whole (no zeroing first), but only to the last tile holding a feature and
        # a component: the slot's entries past those stay as the pass made them, zero,
        # rather than computed from padding. Passes took 0.83-0.96 of the time where F or K is
        # not a multiple of 4 ('spherical' and 'tied' at d = 2, 'full' at d = 2 to 4 with 2 or
        # 3 components, K = 9).
        F4 = (F + TILE - 1) // TILE * TILE
        K4 = (K + TILE - 1) // TILE * TILE
        if scaled:  # after 'tied''s terms, which read the features as they are
            _scale_features(Phi, F, inverses)
        # into slot's first F rows, so that the last tiles stop at F
        short_tile_products(matrix(phi, F4, nbp), matrix(r_buf, K4, nbp), nb,
                            matrix(flat(slot), F, slot.shape[1]), pf)
    return total, -1


@njit(**_jit)
def _task_buffers(Fp, Kv, z_rows, S):
    """One task's scratch for sub-blocks of S rows (see :func:`_block`), made once per task."""
    return (aligned_empty(Fp * S), aligned_empty(Kv * S), aligned_empty(Kv * S),
            aligned_zeros(1, S * Kv)[0], aligned_int64_empty(S), aligned_empty(S),
            aligned_empty(3 * S), np.full(1, -1, dtype=np.int64), aligned_empty(z_rows * S))


def expanded_pass(kind, X, centre, eta, row_factor, K, compute_stats, block_rows, wave_blocks,
                  n_tasks, loglik, stats, scatter, row_loglik, resp_out, labels):
    """One pass over a chunk of rows, soft responsibilities.

    Runs its waves of blocks (``_waves.run_waves``) with one of four compiled tasks:
    :func:`_whole_block_task` where blocks run whole (:func:`_tied_block_task` for 'tied'),
    else :func:`_sub_block_task`, or :func:`_unstored_sub_block_task` for 'full''s sub-blocks
    that never store their quadratic features (:func:`uses_sub_blocks`,
    :func:`_stores_features`). A fit needs only one of them. Each, with the parallel loop and
    every helper, in a fresh process with an empty cache, took 7.0-7.1 s (whole blocks),
    8.0-8.3 s (sub-blocks) and 8.3-8.4 s ('full''s unstored sub-blocks), against 11.4-11.5,
    11.6-11.9 and 11.7-11.8 s when the tasks were the parallel loop's own body (alternating
    runs, on a machine that compiles slowly). One kernel holding every path had taken
    11.3-11.6 s on a faster one. Since then, with the tasks compiled from one body each
    (:func:`_compiled_task`) and 'tied''s whole blocks a task of their own: 7.1-7.3 s (whole
    blocks), 7.7-7.8 s ('tied'), 7.3-7.5 s (sub-blocks) and 6.9-7.3 s (unstored), against
    9.0-9.3, 8.7-9.2, 9.3-9.7 and 9.2-9.6 s before, alternating runs on one machine.

    Parameters
    ----------
    kind : int
        FULL, TIED, DIAG or SPHERICAL: which features (:func:`n_features_expanded`).
    X : (n, d) float32 or float64, C-contiguous
        In: the rows.
    centre : (d,) float64
        In: c, the point the features are taken around.
    eta : (padded(K), padded(F)) float64
        In: natural parameters, one row per component in the order of :func:`_features`;
        zero past K and past F. 'tied' has at least 1 + scatter_rows(d) padded features.
    row_factor : (padded(d), padded(d)) float64 for 'tied', else (0, 0)
        In: U^T, the transposed Cholesky factor of the shared precision (U U^T), zero past
        d: each row's log-likelihood takes |U^T y|^2 / 2 off its log-sum-exp.
    K : int
        The number of components.
    compute_stats : bool
        Whether to accumulate statistics.
    block_rows, wave_blocks : int
        As for ``gaussian.gaussian_pass``.
    n_tasks : int
        Parallel tasks per wave, each with its own scratch buffers; results do not depend on
        it.
    loglik : (1,) float64
        In/out: running sum of the rows' log-likelihoods, carried across chunks.
    stats : (padded(F), padded(K)) float64
        In/out: sum over rows of phi(x - c) r_k, one column per component; entries past F
        and past K stay zero.
    scatter : (1, d, d) float64 for 'tied' with statistics, else (0, 0, 0)
        In/out: sum over rows of (x - c)(x - c)^T. (0, 0, 0) for 'tied' too where the caller
        has it already (it depends on the rows alone: ``fastem._em.accumulate``).
    row_loglik, resp_out, labels
        Out: as for ``gaussian.gaussian_pass`` (empty when not wanted).

    Returns
    -------
    first_bad_row : int
        Index in X of the first row holding NaN or infinity, or -1.
    """
    Kv, Fp = eta.shape
    n, d = X.shape
    whole_blocks = not uses_sub_blocks(kind, Fp, Kv)
    if whole_blocks:
        task = _tied_block_task if kind == TIED else _whole_block_task
    elif _stores_features(kind, d, Kv):
        task = _sub_block_task
    else:
        task = _unstored_sub_block_task
    # The panels read without bounds checks: the layout is built in Python, checked again here.
    if (Kv % PANEL_ROWS or Fp % PANEL_ROWS or Fp < n_features_expanded(kind, d) or K > Kv
            or (compute_stats and (stats.shape[0] != Fp or stats.shape[1] != Kv))):
        raise ValueError("expanded_pass: eta or stats do not have the padded layout")
    tied_stats = kind == TIED and compute_stats and scatter.shape[0] > 0
    if kind == TIED and (row_factor.shape[0] != padded(d) or row_factor.shape[1] != padded(d)
                         or Fp < 1 + scatter_rows(d)
                         or (tied_stats and scatter.shape != (1, d, d))):
        raise ValueError("expanded_pass: row_factor, eta or scatter do not have the padded "
                         "layout of 'tied'")
    n_blocks = (n + block_rows - 1) // block_rows
    if n_blocks == 0:
        return -1
    W = min(wave_blocks, n_blocks)
    # Every slot aligned; whole blocks leave the entries past their last tiles as they are,
    # sub-blocks zero theirs.
    slots = (aligned_array((W, Fp, Kv), zeroed=whole_blocks) if compute_stats
             else np.empty((W, 0, 0)))
    scatter_slots = np.empty((W, 1, d, d) if tied_stats else (W, 1, 0, 0))
    part_ll, part_bad = np.empty(W), np.empty(W, dtype=np.int64)
    next_block = np.zeros(1, dtype=np.int64)
    args = (kind, X, centre, eta, row_factor, K, compute_stats, block_rows,
            sub_rows(kind, Fp, Kv, block_rows), blocks_per_take(W), slots, scatter_slots,
            part_ll, part_bad, row_loglik, resp_out, labels, next_block)
    address = task_address(task, args)
    with one_at_a_time():
        bad = _waves(launcher_address(), address, n_blocks, W, max(1, min(n_tasks, W)),
                     np.zeros(1, dtype=np.int64), *args, np.empty((W, 0)), np.empty(0), loglik,
                     stats, scatter)
    if bad == TASK_FAILED:
        raise MemoryError("expanded_pass: a kernel task could not allocate its scratch buffers")
    return bad


@njit(**_jit)
def _waves(launcher, task, n_blocks, wave_blocks, n_tasks, failed, kind, X, centre, eta,
           row_factor, K, compute_stats, block_rows, S, take, slots, scatter_slots, part_ll,
           part_bad, row_loglik, resp_out, labels, next_block, no_slots, no_stats, loglik, stats,
           scatter):
    """``_waves.run_waves`` over the task at address `task` (one of the four below), its
    arguments passed one by one (see there). The shared merge adds up to three statistics:
    this kernel's in the middle place (`no_slots` and `no_stats` empty in the first), and
    'tied''s scatter in the last."""
    return run_waves(launcher, task, n_blocks, wave_blocks, n_tasks, next_block, failed,
                     (kind, X, centre, eta, row_factor, K, compute_stats, block_rows, S, take,
                      slots, scatter_slots, part_ll, part_bad, row_loglik, resp_out, labels,
                      next_block),
                     part_ll, part_bad, no_slots, slots, scatter_slots, compute_stats, loglik,
                     no_stats, stats, scatter)


@njit(inline="always", **_jit)
def _prefetch_calls(whole_blocks, stored, F, Kv, K, d, rows):
    """How often the products of a block (`whole_blocks`) or sub-block of `rows` rows call
    ``_prefetch.prefetch_lines``: the log-densities' panels, then the statistics' tiles (whole
    blocks) or panels (sub-blocks; for 'full''s unstored features, those of its first segment,
    the constant row and y). 'tied''s own product and scatter call it too, uncounted: they
    only fetch the lines sooner."""
    calls = panel_calls(Kv, padded(rows))
    if whole_blocks:
        return calls + (F + TILE - 1) // TILE * ((K + TILE - 1) // TILE)
    n_rows = F if stored else 1 + d
    return calls + panel_calls(n_rows, Kv)


def _compiled_task(name, whole_blocks, stored, tied):
    """A task of :func:`expanded_pass`, compiled for one kind of block: blocks that run whole
    (`whole_blocks`), with 'tied''s own terms if `tied`, or sub-blocks that store their
    features (`stored`) or not.

    The flags are constants of the compiled function (its closure's variables), by which Numba
    prunes the other paths before compiling: each task holds one block function. The body is
    written once here rather than inlined into a small function per task: Numba's inliner
    copies an inlined body block by block, each block's copy with all of the body's
    variables, and copying this one (144 blocks, 1,700 variables) took 1.2-1.35 s of each
    task's cold compile.
    """

    def task(w0, nw, kind, X, centre, eta, row_factor, K, compute_stats, block_rows, S, take,
             slots, scatter_slots, part_ll, part_bad, row_loglik, resp_out, labels, next_block):
        """Blocks w0 + w of a wave (w < nw), taken `take` at a time from `next_block` until
        none is left, each into its slot w of (slots, scatter_slots, part_ll, part_bad), in
        sub-blocks of S rows. Makes its scratch once. Returns 0."""
        n = X.shape[0]
        d = X.shape[1]
        Kv, Fp = eta.shape
        if (whole_blocks == uses_sub_blocks(kind, Fp, Kv) or tied != (kind == TIED)
                or (not whole_blocks and stored != _stores_features(kind, d, Kv))):
            raise ValueError("expanded_pass: this kernel does not run this layout's blocks")
        owned = _task_buffers(Fp, Kv, row_factor.shape[0], S)
        # The blocks see the arrays only through borrowed views (``_views``): the caller holds
        # the arrays for the whole call, and this task its scratch.
        X_, centre_, eta_ = borrowed(X), borrowed(centre), borrowed(eta)
        slots_, scatter_slots_ = borrowed(slots), borrowed(scatter_slots)
        row_factor_, row_loglik_ = borrowed(row_factor), borrowed(row_loglik)
        resp_out_, labels_ = borrowed(resp_out), borrowed(labels)
        scratch = borrowed(owned)
        pf_owned = aligned_int64_zeros(STATE_SIZE)
        pf = borrowed(pf_owned)
        F = n_features_expanded(kind, d)
        calls = _prefetch_calls(whole_blocks, stored, F, Kv, K, d, min(S, block_rows))
        # The next take is claimed before this one runs (``_atomic.following_block``).
        first = take_next(next_block) * take
        while first < nw:
            then = take_next(next_block) * take
            last = min(first + take, nw)
            for w in range(first, last):
                r0 = (w0 + w) * block_rows
                r1 = min(n, r0 + block_rows)
                following = following_block(w, last, then, nw)
                r_next = (w0 + following) * block_rows if following >= 0 else -1
                if whole_blocks:
                    aim(pf, X, r_next, block_rows, calls, MOST_LINES_A_CALL)
                    part_ll[w], part_bad[w] = _small_block(
                        tied, kind, X_, r0, r1, centre_, eta_, row_factor_, K, compute_stats,
                        slots_[w], scatter_slots_[w, 0], row_loglik_, resp_out_, labels_,
                        scratch, pf,
                    )
                else:
                    part_ll[w], part_bad[w] = _block(
                        kind, X_, r0, r1, centre_, eta_, K, stored, compute_stats, slots_[w],
                        row_loglik_, resp_out_, labels_, scratch, pf, r_next, calls,
                    )
            first = then
        keep_alive((owned, pf_owned))
        return 0

    task.__name__ = task.__qualname__ = name  # for Numba's cache files, and profiles
    return njit_internal(**_jit)(task)


# The tasks; a model needs only one of them.
_whole_block_task = _compiled_task("_whole_block_task", True, True, False)  # but 'tied''s
_tied_block_task = _compiled_task("_tied_block_task", True, True, True)
_sub_block_task = _compiled_task("_sub_block_task", False, True, False)
# 'full''s sub-blocks that never store their quadratic features (:func:`_stores_features`)
_unstored_sub_block_task = _compiled_task("_unstored_sub_block_task", False, False, False)
