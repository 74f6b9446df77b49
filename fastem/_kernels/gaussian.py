"""The fused E-step of a Gaussian mixture: log-densities, responsibilities and sufficient
statistics from one read of each row.

One kernel, :func:`gaussian_pass`, serves every covariance type and every use:

* fitting (``compute_stats=True``): responsibility-weighted statistics around a shift,
  accumulated into the caller's float64 arrays;
* ``predict`` / ``predict_proba`` / ``score_samples``: per-row outputs, statistics off.

Rows are processed in fixed-size blocks of ``block_rows`` (``_config.BLOCK_ROWS``). Each block writes its partial
statistics to its own slot; slots are merged serially in block order. Which thread computed a
block therefore never changes a bit of the result. No array of shape (n_samples, n_components)
is allocated: responsibilities live in a (n_components, BLOCK_ROWS) scratch array per block.

Statistics are kept around a shift (the current means, or for 'tied' one common centre), which
keeps second moments accurate for data far from the origin.

Parameter layout (validated in Python before every call; the kernel trusts it):

=========  ==================  =======================  ================  ===================
kind       prec                aux                      s2                shift
=========  ==================  =======================  ================  ===================
FULL       (K, d, d) P_k^T     (K, d) (mu_k - c) @ P_k  (K, d, d)         (K, d) the means
TIED       (1, d, d) P^T       (K, d) (mu_k - c) @ P    (1, d, d)         (K, d) every row c
DIAG       (K, 1, d) p_k       unused                   (K, 1, d)         (K, d) the means
SPHERICAL  (K, 1, 1) p_k       unused                   (K, 1, 1)         (K, d) the means
=========  ==================  =======================  ================  ===================

``centre`` (d,) is c, the weighted mean of the means: Mahalanobis terms are computed around it.

``P`` is the Cholesky factor of the precision (scikit-learn's ``precisions_cholesky_``), and
``const[k] = log w_k + log det P_k - d/2 log(2 pi)``, so that
``log w_k + log N(x | mu_k, Sigma_k) = const[k] - |(x - mu_k) P_k|^2 / 2``.
"""

import numpy as np
from numba import njit, prange

from ._config import CACHE, FASTMATH
from ._math import exp_nonpositive

FULL, TIED, DIAG, SPHERICAL = 0, 1, 2, 3
SOFT, HARD, GIVEN = 0, 1, 2  # responsibilities: posterior, one-hot argmax, supplied by caller

# Below this many features a product with a (d, d) matrix is cheaper as plain loops than as a
# BLAS call; from it on, the per-block work of 'full' and 'tied' is shaped as matrix products.
SMALL_D = 8

_jit = dict(cache=CACHE, fastmath=FASTMATH, nogil=True)

# Inside a block the rows are held transposed, XT (d, nb), and `logp` and `R` are (K, nb), so
# that every loop over the rows of a block is innermost, contiguous and vectorizable, and the
# products with (d, d) matrices are single BLAS calls on (d, nb) operands.


@njit(**_jit)
def _load_columns(X, r0, r1, XT):
    """Copy rows r0:r1 of X into float64 XT (d, nb), transposed; first non-finite row or -1."""
    for i in range(r1 - r0):
        for j in range(X.shape[1]):
            v = X[r0 + i, j]
            if not np.isfinite(v):
                return r0 + i
            XT[j, i] = v
    return -1


@njit(**_jit)
def _centre(XT, mu, DT):
    """DT = XT - mu[:, None]."""
    d, nb = XT.shape
    for j in range(d):
        m = mu[j]
        for i in range(nb):
            DT[j, i] = XT[j, i] - m


@njit(**_jit)
def _logp(kind, XT, shift, centre, prec, aux, const, logp):
    """logp[k, i] = log w_k + log N(x_i | mu_k, Sigma_k) for the rows of one block."""
    d, nb = XT.shape
    K = shift.shape[0]
    acc = np.empty(nb)
    if kind == FULL or kind == TIED:
        # (x - mu_k) P_k = (x - c) P_k - (mu_k - c) P_k: one product for every component, and
        # an error of only eps * |mu_k - c| / sigma since c is near the data.
        DT = np.empty((d, nb))
        _centre(XT, centre, DT)
        n_mats = prec.shape[0]
        YT = np.empty((n_mats * d, nb))
        if d >= SMALL_D:
            np.dot(prec.reshape((n_mats * d, d)), DT, YT)
        else:
            for q in range(n_mats):
                for j in range(d):
                    row = q * d + j
                    YT[row, :] = 0.0
                    for m in range(j + 1):  # P^T is lower triangular
                        p = prec[q, j, m]
                        for i in range(nb):
                            YT[row, i] += p * DT[m, i]
    for k in range(K):
        acc[:] = 0.0
        if kind == DIAG or kind == SPHERICAL:
            for j in range(d):
                mu = shift[k, j]
                p = prec[k, 0, j] if kind == DIAG else prec[k, 0, 0]
                for i in range(nb):
                    y = (XT[j, i] - mu) * p
                    acc[i] += y * y
        else:
            q = k if kind == FULL else 0
            for j in range(d):
                a = aux[k, j]
                row = q * d + j
                for i in range(nb):
                    y = YT[row, i] - a
                    acc[i] += y * y
        c = const[k]
        for i in range(nb):
            logp[k, i] = c - 0.5 * acc[i]


@njit(**_jit)
def _normalize(logp, R, best):
    """Responsibilities R (K, nb) from logp by a stable log-sum-exp; returns the rows'
    log-likelihoods, and the most likely component of each row in `best`."""
    K, nb = logp.shape
    m = logp[0].copy()
    best[:] = 0
    for k in range(1, K):
        for i in range(nb):
            if logp[k, i] > m[i]:
                m[i] = logp[k, i]
                best[i] = k
    s = np.zeros(nb)
    for k in range(K):
        for i in range(nb):
            e = exp_nonpositive(logp[k, i] - m[i])
            R[k, i] = e
            s[i] += e
    inv = 1.0 / s
    for k in range(K):
        for i in range(nb):
            R[k, i] *= inv[i]
    ll = np.empty(nb)
    for i in range(nb):
        ll[i] = m[i] + np.log(s[i])
    return ll


@njit(**_jit)
def _stats(kind, XT, R, shift, p0, p1, p2):
    """One block's statistics into its own slot (p0, p1, p2); full/tied: upper triangle."""
    d, nb = XT.shape
    K = shift.shape[0]
    DT = np.empty((d, nb))
    WT = np.empty((d, nb))
    for k in range(K):
        acc = 0.0
        for i in range(nb):
            acc += R[k, i]
        p0[k] = acc
        if kind != TIED or k == 0:  # for 'tied' the centred rows are shared
            _centre(XT, shift[k], DT)
        for j in range(d):
            acc = 0.0
            for i in range(nb):
                acc += R[k, i] * DT[j, i]
            p1[k, j] = acc
        if kind == FULL:
            for a in range(d):
                for i in range(nb):
                    WT[a, i] = R[k, i] * DT[a, i]
            if d >= SMALL_D:
                np.dot(WT, DT.T, p2[k])
            else:
                for a in range(d):
                    for b in range(a, d):
                        acc = 0.0
                        for i in range(nb):
                            acc += WT[a, i] * DT[b, i]
                        p2[k, a, b] = acc
        elif kind == DIAG:
            for j in range(d):
                acc = 0.0
                for i in range(nb):
                    acc += R[k, i] * DT[j, i] * DT[j, i]
                p2[k, 0, j] = acc
        elif kind == SPHERICAL:
            acc = 0.0
            for j in range(d):
                for i in range(nb):
                    acc += R[k, i] * DT[j, i] * DT[j, i]
            p2[k, 0, 0] = acc
    if kind == TIED:
        if d >= SMALL_D:
            np.dot(DT, DT.T, p2[0])
        else:
            for a in range(d):
                for b in range(a, d):
                    acc = 0.0
                    for i in range(nb):
                        acc += DT[a, i] * DT[b, i]
                    p2[0, a, b] = acc
    if kind == FULL or kind == TIED:  # exactly symmetric, whatever the product's rounding
        for k in range(p2.shape[0]):
            for a in range(d):
                for b in range(a):
                    p2[k, a, b] = p2[k, b, a]


@njit(**_jit)
def _block(kind, mode, X, r0, r1, shift, centre, prec, aux, const, resp_in, compute_stats,
           p0, p1, p2, row_loglik, resp_out, labels):
    """Process rows r0:r1 into slot (p0, p1, p2) and the per-row outputs.

    Returns (sum of the rows' log-likelihoods, first non-finite row or -1).
    """
    nb = r1 - r0
    d = X.shape[1]
    K = shift.shape[0]
    XT = np.empty((d, nb))
    bad = _load_columns(X, r0, r1, XT)
    if bad >= 0:
        return 0.0, bad
    R = np.empty((K, nb))
    total = 0.0
    if mode == GIVEN:
        for i in range(nb):
            for k in range(K):
                R[k, i] = resp_in[r0 + i, k]
    else:
        logp = np.empty((K, nb))
        _logp(kind, XT, shift, centre, prec, aux, const, logp)
        best = np.empty(nb, dtype=np.int64)
        ll = _normalize(logp, R, best)
        for i in range(nb):
            total += ll[i]
        if row_loglik.shape[0] > 0:
            row_loglik[r0:r1] = ll
        if labels.shape[0] > 0:
            labels[r0:r1] = best
        if mode == HARD:
            R[:] = 0.0
            for i in range(nb):
                R[best[i], i] = 1.0
        if resp_out.shape[0] > 0:
            for i in range(nb):
                for k in range(K):
                    resp_out[r0 + i, k] = R[k, i]
    if compute_stats:
        _stats(kind, XT, R, shift, p0, p1, p2)
    return total, -1


@njit(cache=CACHE, nogil=True)  # no fast-math: the additions happen exactly in this order
def _merge(nw, part_ll, part_bad, p0, p1, p2, compute_stats, loglik, s0, s1, s2):
    """Add the slots of one wave into the running totals, in block order."""
    for w in range(nw):
        if part_bad[w] >= 0:
            return part_bad[w]
        loglik[0] += part_ll[w]
        if compute_stats:
            s0 += p0[w]
            s1 += p1[w]
            s2 += p2[w]
    return -1


@njit(parallel=True, **_jit)
def gaussian_pass(kind, mode, X, shift, centre, prec, aux, const, resp_in, compute_stats,
                  block_rows, wave_blocks, loglik, s0, s1, s2, row_loglik, resp_out, labels):
    """One pass over a chunk of rows.

    Parameters
    ----------
    kind : int
        FULL, TIED, DIAG or SPHERICAL.
    mode : int
        SOFT (posterior responsibilities), HARD (one-hot on the most likely component) or
        GIVEN (responsibilities read from `resp_in`).
    X : (n, d) float32 or float64, C-contiguous
        In: the rows.
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
    loglik : (1,) float64
        In/out: running sum of the rows' log-likelihoods (unchanged in GIVEN mode). Carried
        across chunks, so that the sum follows block order whatever the chunking.
    s0 (K,), s1 (K, d), s2 (see module docstring) : float64
        In/out: statistics, added to in block order.
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
    n = X.shape[0]
    K = shift.shape[0]
    d = X.shape[1]
    n_blocks = (n + block_rows - 1) // block_rows
    W = min(wave_blocks, n_blocks)
    p0 = np.empty((W, K))
    p1 = np.empty((W, K, d))
    p2 = np.empty((W, s2.shape[0], s2.shape[1], s2.shape[2]))
    part_ll = np.empty(W)
    part_bad = np.empty(W, dtype=np.int64)
    for w0 in range(0, n_blocks, W):
        nw = min(W, n_blocks - w0)
        for w in prange(nw):
            r0 = (w0 + w) * block_rows
            r1 = min(n, r0 + block_rows)
            part_ll[w], part_bad[w] = _block(
                kind, mode, X, r0, r1, shift, centre, prec, aux, const, resp_in, compute_stats,
                p0[w], p1[w], p2[w], row_loglik, resp_out, labels,
            )
        bad = _merge(nw, part_ll, part_bad, p0, p1, p2, compute_stats, loglik, s0, s1, s2)
        if bad >= 0:
            return bad
    return -1
