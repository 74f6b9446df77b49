"""The full-covariance E-step and statistics as two matrix products per block.

With y = x - c (c a common centre near the data), ``log w_k + log N(x | mu_k, Sigma_k)`` is
linear in the quadratic features of y:

    phi(y) = (1, y_1 .. y_d, y_a y_b for a <= b)            F = 1 + d + d (d + 1) / 2 entries
    log w_k + log N(x | mu_k, Sigma_k) = eta_k . phi(y)

where eta_k holds the component's natural parameters (built by
``fastem._params.GaussianParams.expanded_layout``). A block's log-densities are then one
product ``eta (K, F) @ Phi (F, nb)``, and its statistics one more, ``R (K, nb) @ Phi^T``:
the responsibility sums, the first moments and the upper triangle of the second moments, all
around c. Each costs 2 K F flops per row, half of the per-component form in ``gaussian.py``
((x - mu_k) P_k for every k, then a scatter per component), and nothing is swept once per
component.

The price is cancellation: the expanded quadratic form loses about eps * |mu_k - c|^2 (in the
metric of the component's precision) where the per-component form loses eps * |mu_k - c|.
``expanded_layout`` offers this form only where that error is negligible; elsewhere, and where
BLAS does better on the per-component form, ``gaussian.gaussian_pass`` runs. Blocks, their
fixed-order merge and the per-row outputs are as in ``gaussian.py``.
"""

import numpy as np
from numba import njit, prange

from ._config import JIT
from ._tiles import tile_products
from .gaussian import _load_columns, _merge, _normalize, _total_loglik, _write_rows

_jit = JIT


def n_features_expanded(d):
    """F, the number of quadratic features of d-dimensional rows."""
    return 1 + d + d * (d + 1) // 2


def padded(n):
    """n rounded up to a multiple of 4, the side of `_tiles.tile_products`' tiles."""
    return (n + 3) // 4 * 4


@njit(**_jit)
def _features(XT, centre, Phi):
    """Phi[:F] = phi(x - c) for the columns x of XT (d, nb); rows of Phi past F stay zero."""
    d, nb = XT.shape
    for i in range(nb):
        Phi[0, i] = 1.0
    for j in range(d):
        c = centre[j]
        for i in range(nb):
            Phi[1 + j, i] = XT[j, i] - c
    row = 1 + d
    for a in range(d):
        for b in range(a, d):
            for i in range(nb):
                Phi[row, i] = Phi[1 + a, i] * Phi[1 + b, i]
            row += 1


@njit(**_jit)
def _block(X, r0, r1, centre, eta, compute_stats, slot, row_loglik, resp_out, labels, scratch):
    """Process rows r0:r1 into `slot` (zeroed here) and the per-row outputs.

    `scratch` is the calling thread's (xt, phi, logp, r, best, ll, work) buffers, sized for
    a whole block and reused from block to block: at small d, allocating them per block took
    a fifth of the pass, and at d = 16 Phi alone is 300 KiB.

    Returns (sum of the rows' log-likelihoods, first non-finite row or -1).
    """
    xt, phi, logp_buf, r_buf, best_buf, ll_buf, work_buf = scratch
    nb = r1 - r0
    d = X.shape[1]
    K, Fp = eta.shape
    Kp = r_buf.shape[0] // best_buf.shape[0]
    F = 1 + d + d * (d + 1) // 2
    # Contiguous (rows, nb) views, so that the last, shorter block is laid out like the rest.
    XT = xt[: d * nb].reshape((d, nb))
    Phi = phi[: Fp * nb].reshape((Fp, nb))
    logp = logp_buf[: K * nb].reshape((K, nb))
    R = r_buf[: Kp * nb].reshape((Kp, nb))
    best = best_buf[:nb]
    ll = ll_buf[:nb]
    work = work_buf[: 2 * nb].reshape((2, nb))
    Phi[F:] = 0.0  # padding rows for the 4 x 4 tiles
    R[K:] = 0.0
    _load_columns(X, r0, r1, XT)
    _features(XT, centre, Phi)
    np.dot(eta, Phi, logp)
    _normalize(logp, R, best, ll, work)
    total, bad = _total_loglik(X, r0, r1, ll)
    if bad >= 0:
        return 0.0, bad
    _write_rows(r0, ll, R, best, row_loglik, resp_out, labels)
    if compute_stats:
        slot[:] = 0.0
        tile_products(R, Phi, nb, slot, False, True)
    return total, -1


@njit(parallel=True, **_jit)
def expanded_pass(X, centre, eta, compute_stats, block_rows, wave_blocks, n_tasks, loglik,
                  stats, row_loglik, resp_out, labels):
    """One pass over a chunk of rows, soft responsibilities.

    Parameters
    ----------
    X : (n, d) float32 or float64, C-contiguous
        In: the rows.
    centre : (d,) float64
        In: c, the point the features are taken around.
    eta : (K, padded(F)) float64
        In: natural parameters, one row per component in the order of :func:`_features`;
        columns past F zero.
    compute_stats : bool
        Whether to accumulate statistics.
    block_rows, wave_blocks : int
        As for ``gaussian.gaussian_pass``.
    n_tasks : int
        Parallel tasks per wave (the number of threads), each with its own scratch buffers;
        results do not depend on it.
    loglik : (1,) float64
        In/out: running sum of the rows' log-likelihoods, carried across chunks.
    stats : (padded(K), padded(F)) float64
        In/out: sum over rows of r_k phi(x - c); rows past K and columns past F stay zero.
    row_loglik, resp_out, labels
        Out: as for ``gaussian.gaussian_pass`` (empty when not wanted).

    Returns
    -------
    first_bad_row : int
        Index in X of the first row holding NaN or infinity, or -1.
    """
    n = X.shape[0]
    n_blocks = (n + block_rows - 1) // block_rows
    W = min(wave_blocks, n_blocks)
    if compute_stats:
        slots = np.empty((W, stats.shape[0], stats.shape[1]))
    else:
        slots = np.empty((W, 0, 0))
    part_ll = np.empty(W)
    part_bad = np.empty(W, dtype=np.int64)
    # The shared merge adds up to three statistics; this kernel has one, in the middle place.
    no_slots_1d, no_stats_1d = np.empty((W, 0)), np.empty(0)
    no_slots_3d, no_stats_3d = np.empty((W, 0, 0, 0)), np.empty((0, 0, 0))
    d = X.shape[1]
    K, Fp = eta.shape
    Kp = (K + 3) // 4 * 4
    T = max(1, min(n_tasks, W))
    for w0 in range(0, n_blocks, W):
        nw = min(W, n_blocks - w0)
        # T tasks, each taking every T-th block of the wave: scratch is made once per task, not
        # once per block. Blocks still own their slots, so T changes no bit.
        for t in prange(T):
            scratch = (np.empty(d * block_rows), np.empty(Fp * block_rows),
                       np.empty(K * block_rows), np.empty(Kp * block_rows),
                       np.empty(block_rows, dtype=np.int64), np.empty(block_rows),
                       np.empty(2 * block_rows))
            for w in range(t, nw, T):
                r0 = (w0 + w) * block_rows
                r1 = min(n, r0 + block_rows)
                part_ll[w], part_bad[w] = _block(
                    X, r0, r1, centre, eta, compute_stats, slots[w], row_loglik, resp_out,
                    labels, scratch,
                )
        bad = _merge(nw, part_ll, part_bad, no_slots_1d, slots, no_slots_3d, compute_stats,
                     loglik, no_stats_1d, stats, no_stats_3d)
        if bad >= 0:
            return bad
    return -1
