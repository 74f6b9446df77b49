"""The fused E-step of a Gaussian mixture: log-densities, responsibilities and sufficient
statistics from one read of each row.

One kernel, :func:`gaussian_pass`, serves every covariance type and every use:

* fitting (``compute_stats=True``): responsibility-weighted statistics around a shift,
  accumulated into the caller's float64 arrays;
* ``predict`` / ``predict_proba`` / ``score_samples``: per-row outputs, statistics off.

Rows are processed in fixed-size blocks of ``BLOCK_ROWS``. Each block writes its partial
statistics to its own slot; slots are merged serially in block order. Which thread computed a
block therefore never changes a bit of the result. No array of shape (n_samples, n_components)
is allocated: responsibilities live in a (BLOCK_ROWS, n_components) scratch array per block.

Statistics are kept around a shift (the current means, or for 'tied' one common centre), which
keeps second moments accurate for data far from the origin.

Parameter layout (validated in Python before every call; the kernel trusts it):

=========  ==================  ====================  ================  ===================
kind       prec                aux                   s2                shift
=========  ==================  ====================  ================  ===================
FULL       (K, d, d) P_k       unused                (K, d, d)         (K, d) the means
TIED       (1, d, d) P         (K, d) (mu_k - c) @ P  (1, d, d)         (K, d) every row c
DIAG       (K, 1, d) p_k       unused                (K, 1, d)         (K, d) the means
SPHERICAL  (K, 1, 1) p_k       unused                (K, 1, 1)         (K, d) the means
=========  ==================  ====================  ================  ===================

``P`` is the Cholesky factor of the precision (scikit-learn's ``precisions_cholesky_``), and
``const[k] = log w_k + log det P_k - d/2 log(2 pi)``, so that
``log w_k + log N(x | mu_k, Sigma_k) = const[k] - |(x - mu_k) P_k|^2 / 2``.
"""

import numpy as np
from numba import njit, prange

from ._config import BLOCK_ROWS, CACHE, FASTMATH

FULL, TIED, DIAG, SPHERICAL = 0, 1, 2, 3
SOFT, HARD, GIVEN = 0, 1, 2  # responsibilities: posterior, one-hot argmax, supplied by caller

# Below this many features a product with a (d, d) matrix is cheaper as plain loops than as a
# BLAS call; above it, the per-block work is shaped as matrix products.
SMALL_D = 8

_jit = dict(cache=CACHE, fastmath=FASTMATH, nogil=True)


@njit(**_jit)
def _load_block(X, r0, r1, Xd):
    """Copy rows r0:r1 of X into float64 scratch; return the first non-finite row or -1."""
    d = X.shape[1]
    for i in range(r1 - r0):
        for j in range(d):
            v = X[r0 + i, j]
            if not np.isfinite(v):
                return r0 + i
            Xd[i, j] = v
    return -1


@njit(**_jit)
def _log_prob_block(kind, Xd, shift, prec, aux, const, logp):
    """logp[i, k] = log w_k + log N(x_i | mu_k, Sigma_k) for the rows of one block."""
    nb, d = Xd.shape
    K = shift.shape[0]
    if kind == FULL and d >= SMALL_D:
        for k in range(K):
            Y = np.dot(Xd - shift[k], prec[k])
            for i in range(nb):
                acc = 0.0
                for j in range(d):
                    acc += Y[i, j] * Y[i, j]
                logp[i, k] = const[k] - 0.5 * acc
    elif kind == TIED and d >= SMALL_D:
        Y = np.dot(Xd - shift[0], prec[0])
        for i in range(nb):
            for k in range(K):
                acc = 0.0
                for j in range(d):
                    t = Y[i, j] - aux[k, j]
                    acc += t * t
                logp[i, k] = const[k] - 0.5 * acc
    else:
        diff = np.empty(d)
        for i in range(nb):
            for k in range(K):
                for j in range(d):
                    diff[j] = Xd[i, j] - shift[k, j]
                acc = 0.0
                if kind == FULL or kind == TIED:
                    P = prec[0] if kind == TIED else prec[k]
                    for j in range(d):
                        t = 0.0
                        for m in range(j + 1):  # P is upper triangular
                            t += diff[m] * P[m, j]
                        if kind == TIED:
                            t -= aux[k, j]
                        acc += t * t
                elif kind == DIAG:
                    for j in range(d):
                        t = diff[j] * prec[k, 0, j]
                        acc += t * t
                else:
                    p = prec[k, 0, 0]
                    for j in range(d):
                        t = diff[j] * p
                        acc += t * t
                logp[i, k] = const[k] - 0.5 * acc


@njit(**_jit)
def _responsibilities(logp, R):
    """Normalize each row of logp into R with a stable log-sum-exp; return its log-likelihoods."""
    nb, K = logp.shape
    ll = np.empty(nb)
    for i in range(nb):
        m = logp[i, 0]
        for k in range(1, K):
            if logp[i, k] > m:
                m = logp[i, k]
        s = 0.0
        for k in range(K):
            e = np.exp(logp[i, k] - m)
            R[i, k] = e
            s += e
        inv = 1.0 / s
        for k in range(K):
            R[i, k] *= inv
        ll[i] = m + np.log(s)
    return ll


@njit(**_jit)
def _stats_block(kind, Xd, R, shift, p0, p1, p2):
    """Add the block's responsibility-weighted statistics around `shift` into its own slot."""
    nb, d = Xd.shape
    K = shift.shape[0]
    for k in range(K):
        acc = 0.0
        for i in range(nb):
            acc += R[i, k]
        p0[k] += acc
    if kind == TIED:
        D = Xd - shift[0]
        p1 += np.dot(R.T, D) if d >= SMALL_D else _small_rt_d(R, D)
        if d >= SMALL_D:
            p2[0] += np.dot(D.T, D)
        else:
            for i in range(nb):
                for a in range(d):
                    for b in range(d):
                        p2[0, a, b] += D[i, a] * D[i, b]
        return
    if kind == FULL and d >= SMALL_D:
        for k in range(K):
            D = Xd - shift[k]
            Dw = D * R[:, k : k + 1]
            for i in range(nb):
                for j in range(d):
                    p1[k, j] += Dw[i, j]
            p2[k] += np.dot(Dw.T, D)
        return
    diff = np.empty(d)
    for i in range(nb):
        for k in range(K):
            r = R[i, k]
            for j in range(d):
                diff[j] = Xd[i, j] - shift[k, j]
                p1[k, j] += r * diff[j]
            if kind == FULL:
                for a in range(d):
                    ra = r * diff[a]
                    for b in range(d):
                        p2[k, a, b] += ra * diff[b]
            elif kind == DIAG:
                for j in range(d):
                    p2[k, 0, j] += r * diff[j] * diff[j]
            else:
                acc = 0.0
                for j in range(d):
                    acc += diff[j] * diff[j]
                p2[k, 0, 0] += r * acc


@njit(**_jit)
def _small_rt_d(R, D):
    """R.T @ D with plain loops, for few features."""
    K = R.shape[1]
    nb, d = D.shape
    out = np.zeros((K, d))
    for i in range(nb):
        for k in range(K):
            r = R[i, k]
            for j in range(d):
                out[k, j] += r * D[i, j]
    return out


@njit(**_jit)
def _block(kind, mode, X, r0, r1, shift, prec, aux, const, resp_in, compute_stats,
           p0, p1, p2, row_loglik, resp_out, labels):
    """Process rows r0:r1: returns (sum of row log-likelihoods, first non-finite row or -1)."""
    nb = r1 - r0
    d = X.shape[1]
    K = shift.shape[0]
    p0[:] = 0.0
    p1[:] = 0.0
    p2[:] = 0.0
    Xd = np.empty((nb, d))
    bad = _load_block(X, r0, r1, Xd)
    if bad >= 0:
        return 0.0, bad
    R = np.empty((nb, K))
    total = 0.0
    if mode == GIVEN:
        for i in range(nb):
            for k in range(K):
                R[i, k] = resp_in[r0 + i, k]
    else:
        logp = np.empty((nb, K))
        _log_prob_block(kind, Xd, shift, prec, aux, const, logp)
        ll = _responsibilities(logp, R)
        for i in range(nb):
            total += ll[i]
        if row_loglik.shape[0] > 0:
            row_loglik[r0:r1] = ll
        if labels.shape[0] > 0 or mode == HARD:
            for i in range(nb):
                best = 0
                for k in range(1, K):
                    if logp[i, k] > logp[i, best]:
                        best = k
                if labels.shape[0] > 0:
                    labels[r0 + i] = best
                if mode == HARD:
                    R[i, :] = 0.0
                    R[i, best] = 1.0
        if resp_out.shape[0] > 0:
            resp_out[r0:r1] = R
    if compute_stats:
        _stats_block(kind, Xd, R, shift, p0, p1, p2)
    return total, -1


@njit(parallel=True, **_jit)
def gaussian_pass(kind, mode, X, shift, prec, aux, const, resp_in, compute_stats, wave_blocks,
                  s0, s1, s2, row_loglik, resp_out, labels):
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
    shift, prec, aux, const : float64
        In: the parameters, laid out as in the module docstring.
    resp_in : (n, K) float64 if mode == GIVEN, else (0, K)
        In: responsibilities to accumulate.
    compute_stats : bool
        Whether to accumulate statistics.
    wave_blocks : int
        Blocks computed in parallel between two merges; bounds the scratch memory. Any value
        gives the same bits, since merging always follows block order.
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
    loglik_sum : float
        Sum of the rows' log-likelihoods (0 in GIVEN mode).
    first_bad_row : int
        Index in X of the first row holding NaN or infinity, or -1. When it is not -1 the
        outputs are incomplete and must be discarded.
    """
    n = X.shape[0]
    K = shift.shape[0]
    d = X.shape[1]
    n_blocks = (n + BLOCK_ROWS - 1) // BLOCK_ROWS
    W = min(wave_blocks, n_blocks)
    p0 = np.empty((W, K))
    p1 = np.empty((W, K, d))
    p2 = np.empty((W, s2.shape[0], s2.shape[1], s2.shape[2]))
    part_ll = np.empty(W)
    part_bad = np.empty(W, dtype=np.int64)
    total = 0.0
    first_bad = -1
    for w0 in range(0, n_blocks, W):
        nw = min(W, n_blocks - w0)
        for w in prange(nw):
            r0 = (w0 + w) * BLOCK_ROWS
            r1 = min(n, r0 + BLOCK_ROWS)
            part_ll[w], part_bad[w] = _block(
                kind, mode, X, r0, r1, shift, prec, aux, const, resp_in, compute_stats,
                p0[w], p1[w], p2[w], row_loglik, resp_out, labels,
            )
        for w in range(nw):
            if part_bad[w] >= 0:
                return total, part_bad[w]
            total += part_ll[w]
            if compute_stats:
                s0 += p0[w]
                s1 += p1[w]
                s2 += p2[w]
    return total, first_bad
