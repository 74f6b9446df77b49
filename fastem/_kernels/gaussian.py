"""The fused E-step of a Gaussian mixture: log-densities, responsibilities and sufficient
statistics from one read of each row.

One pass, :func:`gaussian_pass`, serves every covariance type and every use:

* fitting (``compute_stats=True``): responsibility-weighted statistics around a shift,
  accumulated into the caller's float64 arrays;
* ``predict`` / ``predict_proba`` / ``score_samples``: per-row outputs, statistics off.

Its parallel tasks are compiled as two functions from one body, one for 'full' and 'tied', one
for 'diag' and 'spherical', so that a model compiles only the code of its own covariance
type's family; they are called by address (``_waves``), so that their code is compiled once
rather than again in each of a parallel loop's wrappers.

For mixtures of the sizes listed in ``fastem._params.EXPANDED_FEATURES``,
``gaussian_expanded.expanded_pass`` is faster and is used instead wherever its accuracy allows;
this kernel is then the fallback, and serves the initialization's hard and given
responsibilities.

Rows are processed in fixed-size blocks of ``block_rows`` (``_config.BLOCK_ROWS``). Each block
writes its partial statistics to its own slot; slots are merged serially in block order.
Which thread computed a block therefore never changes a bit of the result. No array of shape
(n_samples, n_components) is allocated: responsibilities live in a (n_components, BLOCK_ROWS)
scratch array. Each parallel task makes its scratch once and takes the blocks of a wave from a
shared counter, four at a time in large waves (``_atomic``); a chunk reaches the kernel as
whole blocks, its last, shorter block in a call of its own (``fastem._em.whole_blocks``), so
that one set of scratch serves every block of a call.

Statistics are kept around a shift (the current means, or for 'tied' one common centre), which
keeps second moments accurate for data far from the origin.

Parameter layout (validated in Python before every call; the kernel trusts it):

=========  ==================  =======================  ================  ===================
kind       prec                aux                      s2                shift
=========  ==================  =======================  ================  ===================
FULL       (K, d, d) P_k^T     (K, d) (mu_k - c) @ P_k  (K, d, d)         (K, d) the means
TIED       (1, d, d) P^T       (K, d) (mu_k - c) @ P    (1, d, d)         (K, d) every row c
DIAG       (K, 1, d) p_k       (K, d) (mu_k - c) p_k    (K, 1, d)         (K, d) mu_k - c
SPHERICAL  (K, 1, 1) p_k       (K, d) (mu_k - c) p_k    (K, 1, 1)         (K, d) mu_k - c
=========  ==================  =======================  ================  ===================

``centre`` (d,) is c, the weighted mean of the means: Mahalanobis terms are computed around it.
'diag' and 'spherical' load the rows less c, so that their statistics are about the means
(less c) and each term (x - mu_k) p_k is one multiply-add, (x - c) p_k - (mu_k - c) p_k; with
a shift of zeros their statistics are about c itself, in fewer operations
(:func:`_stats_diagonal`).

``P`` is the Cholesky factor of the precision (scikit-learn's ``precisions_cholesky_``), and
``const[k] = log w_k + log det P_k - d/2 log(2 pi)``, so that
``log w_k + log N(x | mu_k, Sigma_k) = const[k] - |(x - mu_k) P_k|^2 / 2``.
"""

import numpy as np
from numba import njit

from ._aligned import (aligned_empty, aligned_int64_empty, aligned_int64_zeros,
                       aligned_matrix, aligned_zeros, row_length)
from ._atomic import blocks_per_take, following_block, take_next
from ._config import JIT, njit_internal, prefer_wide_vectors
from ._launch import one_at_a_time
from ._llvm import LANES
from ._logsumexp import column_maxima, normalize_columns
from ._math import fused_multiply_add
from ._panels import PANEL_ROWS, log_density_product, panel_calls
from ._prefetch import END, NEXT, PER_CALL, STATE_SIZE, UNLIMITED, aim, prefetch_lines
from ._tiles import (centred_moments, lane_sum, moments_about_zero, row_dot, row_sums,
                     tile_products)
from ._transpose import load_columns
from ._views import borrowed, keep_alive
from ._waves import TASK_FAILED, launcher_address, run_waves, task_address

FULL, TIED, DIAG, SPHERICAL = 0, 1, 2, 3
SOFT, HARD, GIVEN = 0, 1, 2  # responsibilities: posterior, one-hot nearest mean, given

# Below this many features a product with a (d, d) matrix is cheaper as plain loops than as a
# matrix product; from it on, the per-block work of 'full' and 'tied' is shaped as matrix
# products.
SMALL_D = 8

# From this many features, the rows of a block's scratch matrices are an odd number of cache
# lines long (``_aligned.row_length``: 264 float64 for 256 rows), so that walking down a
# column of the transposed rows spreads over the L1 cache's sets: passes with 4 components
# took 0.88 of the time at d = 64 ('diag', 'spherical'; 'tied' 0.96, 'full' 0.98), 0.93-0.96
# at d = 32 and 0.95-0.99 at d = 16, 0.98-0.99 at d = 8 and 12. Below it the rows are just
# whole vectors: a few transposed rows do not crowd the sets, and the padding's columns, which
# the log-sum-exp sweeps too, cost 2-3% at d = 2 ('diag', 'spherical').
SPREAD_ROWS_MIN_FEATURES = 8

_jit = JIT

# Inside a block the rows are held transposed, XT (d, nb), and `logp` and `R` are (K, nb), so
# that every loop over the rows of a block is innermost, contiguous and vectorizable, and the
# products with (d, d) matrices are single products on (d, nb) operands (``_panels.py``).


@njit_internal(**_jit)
def _first_nonfinite(X, r0, r1, ll):
    """First row of r0:r1 holding NaN or infinity, or -1.

    A non-finite value always makes its row's log-likelihood non-finite, so when `ll` (the
    rows' log-likelihoods) is given only those rows are looked at: the check costs nothing on
    clean data. An empty `ll` means: look at every row.
    """
    for i in range(r1 - r0):
        if ll.shape[0] > 0 and np.isfinite(ll[i]):
            continue
        for j in range(X.shape[1]):
            if not np.isfinite(X[r0 + i, j]):
                return r0 + i
    return -1


@njit_internal(**_jit)
def _centre(XT, mu, DT):
    """DT = XT - mu[:, None]."""
    prefer_wide_vectors()
    d, nb = XT.shape
    for j in range(d):
        m = mu[j]
        for i in range(nb):
            DT[j, i] = XT[j, i] - m


# Inlined into the task, which then calls the compiled log-densities itself: a function of its
# own between them would optimize their code once more.
@njit(inline="always", **_jit)
def _logp_dense(kind, XT, centre, prec_rows, aux, const, logp, acc, DT, YT, pf):
    """logp[k, i] = log w_k + log N(x_i | mu_k, Sigma_k) for the rows of one block, 'full' or
    'tied'; `prec_rows` is prec's (d, d) matrices stacked (:func:`_precision_rows`).

    The rest is the task's scratch: `acc` (nb,), `DT` (d, nb) and `YT` (prec_rows.shape[0],
    nb). For 'tied', DT holds the rows less c already (loaded so, by the task), and XT
    is empty. `pf`: the task's prefetch state, aimed at the next block's rows (``_prefetch``).
    """
    prefer_wide_vectors()
    d, nb = DT.shape
    K = aux.shape[0]
    # (x - mu_k) P_k = (x - c) P_k - (mu_k - c) P_k: one product for every component, and an
    # error of only eps * |mu_k - c| / sigma since c is near the data.
    if kind == FULL:
        _centre(XT, centre, DT)
    n_mats = K if kind == FULL else 1
    if d >= SMALL_D:  # nb, the scratch's row length, is whole vectors
        # In register panels, the terms in the order of the loops below (the zeros above the
        # diagonal add exactly nothing), each with one rounding; the loops' may round twice
        # where LLVM does not fuse them, a last-bit difference. Every block of a model with
        # SMALL_D features or more takes the panels, whatever its rows. Against a BLAS call
        # (np.dot, whose code took 1 s of the kernel's cold compile) the product alone took
        # 0.71-0.91 of the time from d = 32 on, 1.0-1.05 at d = 16 and 1.35 at d = 12, K = 1
        # (a quarter of the panels' rows zero), and passes with K = 4 0.88-0.90 at d = 64 and
        # 128, 1.0 at d = 16, 'tied' at d = 12, K = 2 1.04. Each panel then stopped at its
        # diagonal (`triangles`): passes with K = 4 took 0.93-0.97 of the time at d = 16,
        # 0.83-0.85 at 64, 0.77-0.79 at 128. The maxima of YT's first row go to `acc`, unused.
        log_density_product(prec_rows, DT, YT, d, acc, 1, d, pf)
    else:
        for q in range(n_mats):
            for j in range(d):
                row = q * d + j
                for i in range(nb):  # not YT[row, :]: slices cost compile time
                    YT[row, i] = 0.0
                for m in range(j + 1):  # P^T is lower triangular
                    p = prec_rows[row, m]
                    for i in range(nb):
                        YT[row, i] += p * DT[m, i]
    # 'full': component k's rows of YT are its own, from k d; 'tied''s are every component's
    _unit_log_densities(kind, YT, d if kind == FULL else 0, aux, aux[:, :0], const, logp, pf)


@njit(inline="always", **_jit)
def _logp_diagonal(kind, XT, aux, prec, const, logp, pf):
    """logp as :func:`_logp_dense` does, for 'diag' or 'spherical', from XT, the rows less c
    (:func:`_log_densities`), prefetching as it does."""
    _scaled_log_densities(kind, XT, 0, aux, prec, const, logp, pf)


def _compiled_log_densities(name, scaled):
    """:func:`_log_densities` compiled for one value of `scaled`, a constant of the compiled
    function (its closure's variable): without a scale, each factor is the constant 1, and
    LLVM makes each multiply-add the subtraction it is exactly. Compiled apart rather than
    inlined into its callers, whose cold compile spent 0.4-0.6 s in Numba's inliner copying
    this body (81 blocks, each copy with all of its 730 variables)."""

    def log_densities(kind, Z, stride, off, prec, const, logp, pf):
        prefer_wide_vectors()
        d, nb = off.shape[1], Z.shape[1]
        K = off.shape[0]
        p, end, per_call = pf[NEXT], pf[END], pf[PER_CALL]
        if d == 2 or d == 3:
            for k in range(K):
                c0 = c1 = 1.0
                c2 = 1.0 if d == 3 else 0.0
                if scaled:
                    c0 = prec[k, 0, 0]
                    c1 = prec[k, 0, 1] if kind == DIAG else c0
                    if d == 3:
                        c2 = prec[k, 0, 2] if kind == DIAG else c0
                _small_squares(Z, k * stride, d, off[k], c0, c1, c2, const[k], logp, k)
                p = prefetch_lines(p, end, per_call)
            pf[NEXT] = p
            return
        for k in range(K):
            row = logp[k]
            for i in range(nb):
                row[i] = 0.0
        j = 0
        while j + 4 <= d:
            for k in range(K):
                row, r = logp[k], k * stride + j
                o0, o1, o2, o3 = off[k, j], off[k, j + 1], off[k, j + 2], off[k, j + 3]
                c0 = c1 = c2 = c3 = 1.0
                if scaled:
                    c0 = prec[k, 0, j] if kind == DIAG else prec[k, 0, 0]
                    c1 = prec[k, 0, j + 1] if kind == DIAG else c0
                    c2 = prec[k, 0, j + 2] if kind == DIAG else c0
                    c3 = prec[k, 0, j + 3] if kind == DIAG else c0
                for i in range(nb):
                    y0 = fused_multiply_add(Z[r, i], c0, -o0)
                    y1 = fused_multiply_add(Z[r + 1, i], c1, -o1)
                    y2 = fused_multiply_add(Z[r + 2, i], c2, -o2)
                    y3 = fused_multiply_add(Z[r + 3, i], c3, -o3)
                    row[i] = fused_multiply_add(y3, y3, fused_multiply_add(
                        y2, y2, fused_multiply_add(y1, y1, fused_multiply_add(y0, y0, row[i]))))
                p = prefetch_lines(p, end, per_call)
            j += 4
        while j < d:
            for k in range(K):
                row, r, o, c = logp[k], k * stride + j, off[k, j], 1.0
                if scaled:
                    c = prec[k, 0, j] if kind == DIAG else prec[k, 0, 0]
                for i in range(nb):
                    y = fused_multiply_add(Z[r, i], c, -o)
                    row[i] = fused_multiply_add(y, y, row[i])
                p = prefetch_lines(p, end, per_call)
            j += 1
        pf[NEXT] = p
        for k in range(K):
            row, ck = logp[k], const[k]
            for i in range(nb):
                row[i] = ck - 0.5 * row[i]

    log_densities.__name__ = log_densities.__qualname__ = name  # Numba's cache files, profiles
    log_densities.__doc__ = _log_densities.py_func.__doc__
    return njit_internal(**_jit)(log_densities)


@njit(inline="always", **_jit)
def _log_densities(scaled, kind, Z, stride, off, prec, const, logp, pf):
    """logp[k, i] = const[k] - 1/2 sum_j (Z[k stride + j, i] c_kj - off[k, j])^2 for every
    component k, over the d = off.shape[1] rows of Z from k stride (0: rows every component
    shares), with c_kj = prec[k, 0, j] ('diag'), prec[k, 0, 0] ('spherical') if `scaled`,
    else 1. Each term is one multiply-add (a subtraction where c is the constant 1): against
    (Z - mu_k) c_kj, 'diag' and 'spherical' passes with 3 or 4 components took 0.95-0.98 of
    the time at d = 2, 5, 16 and 64 ('spherical' at d = 2: 1.01).

    The sums run in logp's own rows, four features per sweep (each row loaded and stored once
    per four), then one per sweep, with every component's sweep over those rows before the
    next four: where the rows are shared they are read from L1 once per component, and each
    sum keeps the order of a component alone. Against one component's whole sum at a time
    (in a scratch row), 'diag' and 'spherical' passes took 0.95-0.97 of the time at d = 1 to
    7 with 2 to 4 components, 0.97-0.985 at d = 16 and the same at d = 64; 'tied' (the rows
    of U^T (x - c), shared) 0.96 at d = 2 and 5, 0.98-0.99 at d = 16 and 64, K = 4; 'full'
    (each component's own rows) the same. With 2 or 3 features one sweep per component makes
    logp (:func:`_small_squares`); at d = 1 (a third of that sweep's work) the sweeps of one
    feature are faster. Each square is added by a multiply-add, in feature order, rather than
    as (y0^2 + y1^2) + (y2^2 + y3^2): two operations a feature instead of two and a half, and
    passes took 0.977-0.991 of the time at d = 5 to 64 with 3 or 4 components ('full' 0.98-1.0).

    After each component's sweep, a few lines of the next block's rows, as `pf` says
    (``_prefetch.prefetch_lines``).
    """
    if scaled:
        _scaled_log_densities(kind, Z, stride, off, prec, const, logp, pf)
    else:
        _unit_log_densities(kind, Z, stride, off, prec, const, logp, pf)


_scaled_log_densities = _compiled_log_densities("_scaled_log_densities", True)
_unit_log_densities = _compiled_log_densities("_unit_log_densities", False)


@njit(inline="always", **_jit)
def _small_squares(Z, row0, d, off, c0, c1, c2, c, logp, k):
    """logp[k, i] = c - 1/2 sum_j (Z[row0 + j, i] c_j - off[j])^2 for d = 2 or 3 in one
    sweep: at d = 2 a third feature is the first again, times c2 = 0, adding an exact 0, and
    the multiply-adds are explicit so that the bits are those of the sums four features per
    sweep, whose first square, added to 0, is y0^2 rounded. Passes took 0.98 of the time of
    those sweeps at d = 2, K = 4, 0.94 at d = 3."""
    nb = Z.shape[1]
    r2 = row0 + 2 if d == 3 else row0
    o0, o1 = off[0], off[1]
    o2 = off[2] if d == 3 else 0.0
    for i in range(nb):
        y0 = fused_multiply_add(Z[row0, i], c0, -o0)
        y1 = fused_multiply_add(Z[row0 + 1, i], c1, -o1)
        y2 = fused_multiply_add(Z[r2, i], c2, -o2)
        sq = fused_multiply_add(y2, y2, fused_multiply_add(y1, y1, y0 * y0))
        logp[k, i] = c - 0.5 * sq


@njit(**_jit)
def _largest(logp, m, best):
    """m[i] = the largest log-density of row i (column i of logp), as `if x > m: m = x` over
    the components in order from the first, and, unless `best` is empty (a fit wants no
    labels), best[i] = that component, the first of any ties. A NaN in the first component
    stays; one elsewhere is passed over, as in the log-sum-exp. In registers, 8 rows at a
    time (``_logsumexp.column_maxima``): logp's rows are whole vectors."""
    column_maxima(logp, m, best)


@njit_internal(**_jit)
def _total_loglik(X, r0, r1, ll):
    """(sum of the rows' log-likelihoods `ll`, first row of X[r0:r1] holding NaN or infinity
    or -1): the rows are looked at only when the sum is not finite.

    A finite row can still have a non-finite log-likelihood: so far from every component
    (|x| ~ 1e155) that its squared distances overflow, the log-sum-exp meets -inf - (-inf).
    Its density is 0 to double precision: its `ll` becomes -inf, as scikit-learn's."""
    total = lane_sum(ll, ll.shape[0])
    if np.isfinite(total):
        return total, -1
    bad = _first_nonfinite(X, r0, r1, ll)
    if bad >= 0:
        return total, bad
    for i in range(ll.shape[0]):
        if not np.isfinite(ll[i]):
            ll[i] = -np.inf
    return -np.inf, -1


@njit_internal(**_jit)
def _write_rows(r0, ll, R, best, row_loglik, resp_out, labels):
    """The per-row outputs that were asked for (non-empty), for the rows from r0 on."""
    nb = ll.shape[0]
    # Plain loops: Numba's slice assignment took 2 s of the kernels' cold compile.
    if row_loglik.shape[0] > 0:
        for i in range(nb):
            row_loglik[r0 + i] = ll[i]
    if labels.shape[0] > 0:
        for i in range(nb):
            labels[r0 + i] = best[i]
    if resp_out.shape[0] > 0:
        for i in range(nb):
            for k in range(resp_out.shape[1]):
                resp_out[r0 + i, k] = R[k, i]


# Inlined into the task, whose kind is a constant for 'full' and 'tied': Numba then compiles
# only that kind's branch and products.
@njit(inline="always", **_jit)
def _stats_dense(kind, XT, R, shift, nb, p1, p2, DT, WT):
    """One block's first and second moments over its `nb` rows into its slot (p1, p2), 'full'
    or 'tied' (whose DT holds the rows less c, as they were loaded; its XT is empty).

    Every sum over the rows is a :func:`row_dot` or a tile of :func:`tile_products`, in vector
    lanes: as scalar running sums they took one 4-cycle add per row. 'tied''s first moments
    are 4 x 4 tiles of R (its rows padded to a multiple of 4 with zeros, :func:`_task_scratch`)
    and DT: against K d dot products, each loading both operands, passes took 0.94-0.95 of the
    time at K = 4, d = 16 and 64 (0.98-1.01 with 2 or 3 components, whose padding it
    multiplies). `DT` and `WT` (dp, nb), dp = 4 ceil(d / 4), whose rows past d are zero, are
    the task's scratch (WT 'full''s only).
    """
    prefer_wide_vectors()
    d = shift.shape[1]
    K = shift.shape[0]
    if kind == TIED:  # one centre: the first moments are one product, R's rows by DT's
        tile_products(R, DT, nb, p1, False, False)
        if p2.shape[0] > 0:  # its one scatter, unweighted, unless not wanted
            tile_products(DT, DT, nb, p2[0], True, False)
    else:
        for k in range(K):
            _centre(XT, shift[k], DT)
            for j in range(d):
                p1[k, j] = row_dot(R, k, DT, j, nb)
            for j in range(d):  # each component's weighted scatter
                for i in range(nb):
                    WT[j, i] = R[k, i] * DT[j, i]
            tile_products(WT, DT, nb, p2[k], True, False)
    _mirror_upper(p2)


@njit(inline="always", **_jit)
def _mirror_upper(p2):
    """Each of p2's (d, d) matrices made exactly symmetric from its upper triangle, which
    the products of the second moments compute alone."""
    d = p2.shape[2]
    for k in range(p2.shape[0]):
        for a in range(d):
            for b in range(a):
                p2[k, a, b] = p2[k, b, a]


# From this many features, or components, a HARD pass of 'full' sums each component's moments
# over its own rows (:func:`_stats_full_hard`) rather than over every row with the others'
# weights zero (:func:`_stats_dense`). HARD passes, 1M rows, the two in turn: d = 16, K = 16
# 0.52-0.55 of the time, d = 64, K = 16 0.60-0.62, d = 8 and 12, K = 8 0.63-0.87, d = 3,
# K = 16 0.87, d = 4 to 6, K = 4 to 8 0.82-1.06; d = 2, K = 8 1.12-1.23. Once HARD passes
# skipped the exps, at d = 2: K = 64 0.61-0.68, K = 32 0.70-0.83, K = 16 0.81-1.07 (0.9
# typical), K = 8 1.0-1.02, K = 4 1.0-1.4.
HARD_GATHER_MIN_FEATURES = 3
HARD_GATHER_MIN_COMPONENTS = 16


@njit_internal(**_jit)
def _stats_full_hard(XT, best, shift, nb, p1, p2, DT, index):
    """:func:`_stats_dense` for 'full' where each row is wholly its component `best[i]`'s
    (HARD: the pass that turns k-means' centres into a mixture): each component's moments
    over its own rows only, gathered into DT's first columns, where the products over all
    rows weight the others by zero (HARD_GATHER_MIN_FEATURES has the passes' times).
    `DT` (dp, nb), dp = 4 ceil(d / 4), whose rows past d are zero, and `index` (K + 1 + nb,)
    int64 are the task's scratch."""
    prefer_wide_vectors()
    d = shift.shape[1]
    K = shift.shape[0]
    # The rows of each component in turn, in row order (a counting sort: a test of every
    # row for every component mispredicted its branch a quarter of the time with 4)
    end, order = index[: K + 1], index[K + 1 :]
    for k in range(K + 1):  # end[k + 1]: where component k's rows end
        end[k] = 0
    for i in range(nb):
        end[best[i] + 1] += 1
    for k in range(K):
        end[k + 1] += end[k]
    for i in range(nb):  # end[k] moves from where k's rows start to where they end
        order[end[best[i]]] = i
        end[best[i]] += 1
    for k in range(K):
        start = 0 if k == 0 else end[k - 1]
        n_k = end[k] - start
        for u in range(n_k):
            i = order[start + u]
            for j in range(d):
                DT[j, u] = XT[j, i] - shift[k, j]
        row_sums(DT, n_k, p1[k])
        tile_products(DT, DT, n_k, p2[k], True, False)
    _mirror_upper(p2)


@njit_internal(**_jit)
def _stats_diagonal(kind, XT, R, shift, nb, p1, p2, second, DS, pf):
    """One block's first and second moments over its `nb` rows into its slot (p1, p2), 'diag'
    or 'spherical'; `second` (K, d) and `DS` (dp, L), whose first d rows are XT, are the
    task's scratch; `pf`: the task's prefetch state (``_prefetch``).

    Where every shift is 0 (the moments are about c, whose rows XT holds: ``kernel_layout``
    asks for that where the M-step loses nothing to it) they are the sums of r x and r x^2,
    :func:`moments_about_zero`: two multiply-adds per row, component and feature instead of
    the four of :func:`centred_moments` (``fastem._params.MOMENTS_ABOUT_CENTRE_MIN_COMPONENTS``
    has the passes' times).
    """
    d = XT.shape[0]
    K = shift.shape[0]
    about_centre = True
    for k in range(K):
        for j in range(d):
            if shift[k, j] != 0.0:
                about_centre = False
    if about_centre:
        moments_about_zero(R, DS, nb, p1, second, pf)
    else:
        centred_moments(XT, R, shift, nb, p1, second)
    for k in range(K):
        if kind == DIAG:
            for j in range(d):
                p2[k, 0, j] = second[k, j]
        else:
            sq = 0.0
            for j in range(d):
                sq += second[k, j]
            p2[k, 0, 0] = sq


@njit(inline="always", **_jit)
def _scratch_row_length(d, rows):
    """L, the row length of a task's scratch matrices for blocks of `rows` rows of d features
    (see SPREAD_ROWS_MIN_FEATURES)."""
    if d >= SPREAD_ROWS_MIN_FEATURES:
        return row_length(rows)
    return (rows + LANES - 1) // LANES * LANES


@njit(**_jit)
def _task_scratch(kind, d, K, n_y, rows):
    """One task's buffers for blocks of `rows` rows, made once per task rather than once per
    block (a dozen allocations per block took 7-20% of a pass at d = 2 with 2-4 components,
    5-14% for 'full' and 'tied' at d = 16, K = 4).

    Every buffer that holds the block along its rows has L = :func:`_scratch_row_length`
    columns: whole vectors of rows, and from SPREAD_ROWS_MIN_FEATURES features on rows an odd
    number of cache lines apart (264 columns for blocks of 256 rows). The columns past `rows`
    are padding: zero in XT, DT and DS, which are never loaded there, and swept along with the
    rest by the log-densities and the log-sum-exp; the statistics stop at the block's rows.

    XT (d, L; 'tied' none), R and logp (K, L) ('tied''s R with 4 ceil(K / 4) rows, zero past
    K), best and ll (L,), work (2, L), acc (L,), DT (d, L; for 'tied' DS's first rows), YT
    (n_y, L) ('full' and 'tied': the rows of :func:`_precision_rows`, else none), DS and WT
    (dp, L) (dp = 4 ceil(d / 4); WT for 'full' only) whose rows past d stay zero, second
    (K, d), index (K + 1 + L,) int64 ('full' only: :func:`_stats_full_hard`).

    'diag' and 'spherical' read neither acc nor DT; their XT is DS's first rows (rows past d
    zero, for :func:`_stats_diagonal`), and R has 4 ceil(K / 4) rows, zero past K."""
    dense = kind == FULL or kind == TIED
    dp = (d + 3) // 4 * 4
    L = _scratch_row_length(d, rows)
    DS = aligned_zeros(dp, L)
    # 'tied''s statistics are about c too (shift[k] = c): its rows are loaded less c into DS,
    # which the log-densities and the statistics then read as they are; its XT stays empty.
    DT = DS[:d] if kind == TIED else aligned_matrix(d if dense else 0, L)
    XT = aligned_zeros(d if kind == FULL else 0, L) if dense else DS[:d]
    # R in whole tiles of 4 components for the products of the statistics (_stats_dense's for
    # 'tied', _stats_diagonal's), its rows past K zero
    K_R = K if kind == FULL else (K + 3) // 4 * 4
    return (XT, aligned_zeros(K_R, L), aligned_zeros(K, L), aligned_int64_empty(L),
            aligned_empty(L), aligned_matrix(2, L), aligned_empty(L if dense else 0), DT,
            aligned_matrix(n_y, L), DS, aligned_zeros(dp if kind == FULL else 0, L),
            aligned_matrix(K, d), aligned_int64_empty(K + 1 + L if kind == FULL else 0))


def gaussian_pass(kind, mode, X, shift, centre, prec, aux, const, resp_in, compute_stats,
                  block_rows, wave_blocks, n_tasks, loglik, s0, s1, s2, row_loglik, resp_out,
                  labels):
    """One pass over a chunk of rows.

    The blocks run in waves (``_waves.run_waves``), each wave's parallel tasks one of three
    compiled functions: :func:`_full_task` and :func:`_tied_task`, whose log-densities go
    through (d, d) products, and :func:`_diagonal_task` for 'diag' and 'spherical'. A model
    needs only one of them. Each, with the parallel loop and every helper, in a fresh process
    with an empty cache, took 8.1-8.4 s ('full' and 'tied' were then one task) and 6.8-7.1 s
    ('diag'/'spherical'), against 12.3-13.0 and 10.1-10.3 s when the tasks were the parallel
    loop's own body (alternating runs, on a machine that compiles slowly).

    Parameters
    ----------
    kind : int
        FULL, TIED, DIAG or SPHERICAL.
    mode : int
        SOFT (posterior responsibilities), HARD (one-hot on the nearest mean: the model's
        precisions must be unit and its weights equal, and the pass adds nothing to `loglik`
        nor writes per-row outputs) or GIVEN (responsibilities read from `resp_in`).
    X : (n, d) float32 or float64, C-contiguous
        In: the rows: whole blocks of `block_rows` (n a multiple of it), or one block of n
        <= block_rows rows (``fastem._em.whole_blocks`` cuts a chunk so).
    shift, centre, prec, aux, const : float64
        In: the parameters, laid out as in the module docstring.
    resp_in : (n, K) float64 if mode == GIVEN, else (0, K)
        In: responsibilities to accumulate.
    compute_stats : bool
        Whether to accumulate statistics.
    block_rows : int
        Rows per block (``BLOCK_ROWS``; an argument so that cached kernels never hold a stale
        value).
    wave_blocks : int
        Blocks computed in parallel between two merges; bounds the scratch memory. Any value
        gives the same bits, since merging always follows block order.
    n_tasks : int
        Parallel tasks per wave, each with its own scratch buffers; results do not depend on
        it.
    loglik : (1,) float64
        In/out: running sum of the rows' log-likelihoods (unchanged in GIVEN mode). Carried
        across chunks, so that the sum follows block order whatever the chunking.
    s0 (K,), s1 (K, d), s2 (see module docstring) : float64
        In/out: statistics, added to in block order. 'tied' may pass s2 of shape (0, d, d):
        its scatter is then not summed (the caller has it: ``fastem._em.accumulate``).
    row_loglik : (n,) float64 or (0,)
        Out: each row's log-likelihood, if not empty.
    resp_out : (n, K) float64 or (0, K)
        Out: responsibilities, if not empty.
    labels : (n,) int64 or (0,)
        Out: most likely component, if not empty.

    Returns
    -------
    first_bad_row : int
        Index in X of the first row holding NaN or infinity, or -1. When it is not -1 the
        outputs are incomplete and must be discarded.
    """
    dense = kind == FULL or kind == TIED
    n, d = X.shape
    K = shift.shape[0]
    if n > block_rows and n % block_rows:
        raise ValueError("gaussian_pass: a chunk must hold whole blocks, or be one block")
    n_blocks = (n + block_rows - 1) // block_rows
    if n_blocks == 0:
        return -1
    W = min(wave_blocks, n_blocks)
    p0, p1 = np.empty((W, K)), np.empty((W, K, d))
    p2 = np.empty((W, *s2.shape))
    part_ll, part_bad = np.empty(W), np.empty(W, dtype=np.int64)
    # Every block has the same rows, so that each task's scratch fits all of its blocks: a
    # second, smaller set for a chunk's last block cost 0.45 s of cold compile.
    rows = min(block_rows, n)
    # 'full' and 'tied': the rows of _logp_dense's product, and of its YT
    prec_rows = _precision_rows(prec) if dense else _NO_PRECISION_ROWS
    next_block = np.zeros(1, dtype=np.int64)
    args = (kind, mode, X, shift, centre, np.zeros(d), prec, prec_rows, aux, const, resp_in,
            compute_stats, block_rows, rows, blocks_per_take(W), p0, p1, p2, part_ll, part_bad,
            row_loglik, resp_out, labels, next_block)
    task = task_address(_full_task if kind == FULL else _tied_task if kind == TIED
                        else _diagonal_task, args)
    with one_at_a_time():
        bad = _waves(launcher_address(), task, n_blocks, W, max(1, min(n_tasks, W)),
                     np.zeros(1, dtype=np.int64), *args, loglik, s0, s1, s2)
    if bad == TASK_FAILED:
        raise MemoryError("gaussian_pass: a kernel task could not allocate its scratch buffers")
    return bad


_NO_PRECISION_ROWS = np.empty((0, 0))


@njit(**_jit)
def _waves(launcher, task, n_blocks, wave_blocks, n_tasks, failed, kind, mode, X, shift, centre,
           origin, prec, prec_rows, aux, const, resp_in, compute_stats, block_rows, rows, take,
           p0, p1, p2, part_ll, part_bad, row_loglik, resp_out, labels, next_block, loglik, s0,
           s1, s2):
    """``_waves.run_waves`` over the task at address `task` (:func:`_full_task`,
    :func:`_tied_task` or :func:`_diagonal_task`), its arguments passed one by one (see
    there), launched by ``_waves.launch`` at address `launcher`."""
    return run_waves(launcher, task, n_blocks, wave_blocks, n_tasks, next_block, failed,
                     (kind, mode, X, shift, centre, origin, prec, prec_rows, aux, const,
                      resp_in, compute_stats, block_rows, rows, take, p0, p1, p2, part_ll,
                      part_bad, row_loglik, resp_out, labels, next_block),
                     part_ll, part_bad, p0, p1, p2, compute_stats, loglik, s0, s1, s2)


def _precision_rows(prec):
    """prec's (d, d) matrices stacked, (n_mats d, d), and zero rows to whole panels of
    PANEL_ROWS: the left operand of :func:`_logp_dense`'s product."""
    n_mats, d = prec.shape[0], prec.shape[1]
    rows = np.zeros(((n_mats * d + PANEL_ROWS - 1) // PANEL_ROWS * PANEL_ROWS, d))
    rows[: n_mats * d] = prec.reshape(n_mats * d, d)
    return rows


@njit(inline="always", **_jit)
def _prefetch_calls(dense, K, d, n_prec_rows, rows):
    """How often a block of `rows` rows calls ``_prefetch.prefetch_lines``: after each
    component's sweep of :func:`_log_densities` (one sweep a component below 4 features);
    for 'full' and 'tied' from SMALL_D features, after each panel of the product with their
    `n_prec_rows` precision rows; for 'diag' and 'spherical' after each tile of
    ``_tiles.moments_about_zero``."""
    if dense:
        products = panel_calls(n_prec_rows, rows) if d >= SMALL_D else 0
    else:
        products = ((K + 3) // 4) * ((d + 1) // 2)
    sweeps = K if d < 4 else K * (d // 4 + d % 4)
    return sweeps + products


def _compiled_task(name, only):
    """A task of :func:`gaussian_pass`, compiled for covariance `only`, FULL or TIED, or for
    'diag' and 'spherical' (DIAG).

    `only` is a constant of the compiled function (its closure's variable), by which Numba
    prunes the other covariances' functions before compiling: the 'full' and 'tied' tasks each
    compile only their own kind's code (the default fit's kernel, 'full' at d = 2, K = 3, took
    8.1-8.6 s of cold compile against 8.7-9.8 s when the two were one task; 'tied' the same).
    The body is written once here rather than inlined into a small function per task: Numba's
    inliner copies an inlined body block by block, each block's copy with all of the body's
    variables, and copying this one took 0.45 s of each task's cold compile.
    """
    dense = only != DIAG

    def task(w0, nw, kind, mode, X, shift, centre, origin, prec, prec_rows, aux, const, resp_in,
             compute_stats, block_rows, rows, take, p0, p1, p2, part_ll, part_bad, row_loglik,
             resp_out, labels, next_block):
        """Blocks w0 + w of a wave (w < nw), taken `take` at a time from `next_block` until
        none is left, each into its slot w of (p0, p1, p2, part_ll, part_bad): the sum of its
        rows' log-likelihoods, and its first row holding NaN or infinity or -1. Makes its
        scratch once, for blocks of `rows` rows; `origin` is d zeros. Returns 0."""
        prefer_wide_vectors()
        own_kind = kind == only if dense else kind == DIAG or kind == SPHERICAL
        if not own_kind:
            raise ValueError("gaussian_pass: this kernel does not run this covariance type")
        kind = only if dense else kind  # a constant, but for 'diag' and 'spherical'
        K = shift.shape[0]
        d = X.shape[1]
        owned = _task_scratch(kind, d, K, prec_rows.shape[0], rows)
        # The blocks see the arrays through borrowed views (``_views``): the caller holds the
        # arrays for the whole call, and this task its scratch and prefetch state. Every block
        # unpacks them and makes views of them, and their reference counts took 7% of a pass
        # at d = 16, K = 4 'diag' (the prefetch state's, 10% at d = 2, K = 4).
        X_, shift_, centre_ = borrowed(X), borrowed(shift), borrowed(centre)
        prec_, origin_, prec_rows_ = borrowed(prec), borrowed(origin), borrowed(prec_rows)
        aux_, const_, resp_in_ = borrowed(aux), borrowed(const), borrowed(resp_in)
        p0_, p1_, p2_ = borrowed(p0), borrowed(p1), borrowed(p2)
        row_loglik_, resp_out_ = borrowed(row_loglik), borrowed(resp_out)
        labels_ = borrowed(labels)
        XT, R, logp, best_buf, ll, work, acc, DT, YT, DS, WT, second, index = borrowed(owned)
        nbp = logp.shape[1]  # the scratch's row length: rows padded (_scratch_row_length)
        pf_owned = aligned_int64_zeros(STATE_SIZE)
        pf = borrowed(pf_owned)
        calls = _prefetch_calls(dense, K, d, prec_rows.shape[0], nbp)
        # The next take is claimed before this one runs (``_atomic.following_block``).
        first = take_next(next_block) * take
        while first < nw:
            then = take_next(next_block) * take
            last = min(first + take, nw)
            for w in range(first, last):
                r0 = (w0 + w) * block_rows
                r1 = r0 + rows
                following = following_block(w, last, then, nw)
                r_next = (w0 + following) * block_rows if following >= 0 else -1
                # pf: aimed at the next block's rows (``_prefetch``)
                aim(pf, X_, r_next, rows, calls, UNLIMITED)
                # The block r0:r1, with the scratch made for its size. Its code is written
                # here, in the task, rather than in a function inlined into it: Numba's
                # inliner copied that function block by block, each copy with all of its
                # variables, in 0.9 s of the 'full' kernel's cold compile (and a compiled
                # function of its own, called, would be optimized again inside the task).
                if dense:
                    # 'tied''s rows are wanted only less c, for the log-densities and the
                    # statistics alike: loaded so, they skip a pass over the block. 'full'
                    # loads them less `origin` (zeros), the same compiled copy; one of its own
                    # cost this kernel 0.7-1.4 s of cold compile.
                    load_columns(X_, r0, r1, DT if kind == TIED else XT,
                                 centre_ if kind == TIED else origin_)
                else:
                    load_columns(X_, r0, r1, XT, centre_)
                total, bad = 0.0, -1
                if mode == GIVEN:
                    bad = _first_nonfinite(X_, r0, r1, ll[:0])
                    if bad < 0:
                        for i in range(rows):
                            for k in range(K):
                                R[k, i] = resp_in_[r0 + i, k]
                else:
                    if dense and mode == HARD:
                        # Unit precisions and equal weights (``fastem._em.accumulate`` checks
                        # them): the most likely component is the nearest mean, and (x - c)
                        # P_k is x - c itself, so 'full' and 'tied' skip the product with P_k,
                        # for the same bits (a product with the identity is exact on finite
                        # rows). Every component reads the same rows, DT (stride 0), typed as
                        # _logp_dense's stride for each kind ('full' an int64, 'tied' the
                        # literal 0) so that each reuses the log-densities compiled for it:
                        # another type compiles them again (1.2 s).
                        if kind == FULL:
                            _centre(XT, centre_, DT)
                            _unit_log_densities(kind, DT, np.int64(0), aux_, aux_[:, :0],
                                                const_, logp, pf)
                        else:
                            _unit_log_densities(kind, DT, 0, aux_, aux_[:, :0], const_, logp,
                                                pf)
                    elif dense:
                        _logp_dense(kind, XT, centre_, prec_rows_, aux_, const_, logp, acc, DT,
                                    YT, pf)
                    else:
                        _logp_diagonal(kind, XT, aux_, prec_, const_, logp, pf)
                    # Over the scratch's whole rows: the padding past the block's rows, zeros,
                    # gets finite log-densities and responsibilities, which no statistic reads.
                    best = best_buf[: nbp if mode == HARD or labels_.shape[0] > 0 else 0]
                    _largest(logp, work[0], best)
                    if mode == HARD:
                        # No exps: the pass wants each row's nearest mean, not its
                        # log-likelihood. HARD passes over 1M rows took 0.38 of the time at
                        # d = 64, K = 16 'full', 0.5-0.6 at (16, 16) and (3, 16) 'full',
                        # 0.65-0.8 at d = 2, K = 8 and 0.8-0.9 at (16, 16) 'diag' and 'tied'. A
                        # row holding NaN or infinity has no finite log-density, so its largest
                        # is not finite either: only those rows are looked at.
                        bad = _first_nonfinite(X_, r0, r1, work[0][:rows])
                        if bad < 0:
                            for k in range(K):
                                for i in range(rows):
                                    R[k, i] = 0.0
                            for i in range(rows):
                                R[best[i], i] = 1.0
                    else:
                        # R scaled: read per component. Each row's log-likelihood only
                        # if it is wanted, else their sum in ll[0] (when it is finite).
                        if normalize_columns(logp, R, ll, work[0], K, ll[:0],
                                             row_loglik_.shape[0] > 0, rows):
                            total, bad = ll[0], -1
                        else:
                            total, bad = _total_loglik(X_, r0, r1, ll[:rows])
                        if bad < 0:
                            _write_rows(r0, ll[:rows], R, best, row_loglik_, resp_out_,
                                        labels_)
                if compute_stats and bad < 0:
                    row_sums(R, rows, p0_[w])
                    if dense:  # a constant: the 'diag' and 'spherical' task compiles neither
                        if kind == FULL and mode == HARD and (
                                d >= HARD_GATHER_MIN_FEATURES
                                or K >= HARD_GATHER_MIN_COMPONENTS):
                            _stats_full_hard(XT, best, shift_, rows, p1_[w], p2_[w], DS, index)
                        else:
                            _stats_dense(kind, XT, R, shift_, rows, p1_[w], p2_[w], DS, WT)
                    else:
                        _stats_diagonal(kind, XT, R, shift_, rows, p1_[w], p2_[w], second, DS,
                                        pf)
                part_ll[w], part_bad[w] = (0.0 if bad >= 0 else total), bad
            first = then
        keep_alive((owned, pf_owned))
        return 0

    task.__name__ = task.__qualname__ = name  # for Numba's cache files, and profiles
    return njit_internal(**_jit)(task)


_full_task = _compiled_task("_full_task", FULL)
_tied_task = _compiled_task("_tied_task", TIED)
_diagonal_task = _compiled_task("_diagonal_task", DIAG)  # 'diag' and 'spherical'
