"""Parameters of a Gaussian mixture: the M-step from statistics, and the kernels' layout.

Conventions are scikit-learn's, so fitted attributes can be compared and exchanged with
``sklearn.mixture.GaussianMixture``: covariances of shape (K, d, d) 'full', (d, d) 'tied',
(K, d) 'diag', (K,) 'spherical'; ``precisions_cholesky`` is the upper-triangular U with
precision = U U^T (for 'diag' and 'spherical', 1 / sqrt(covariance)).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
from scipy.linalg import lapack

from ._kernels.gaussian import DIAG, FULL, SPHERICAL, TIED
from ._kernels.gaussian_expanded import n_features_expanded, padded, scatter_rows
from ._stats import GaussianStats

__all__ = ["GaussianParams", "COVARIANCE_TYPES"]

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
_KIND = {"full": FULL, "tied": TIED, "diag": DIAG, "spherical": SPHERICAL}

# Mixtures with this many features (per covariance type) and components run the expanded
# kernel (gaussian_expanded.py). Per pass, 1M rows, 2 threads, against the per-component
# kernel:
# - 'full', K = 16: 0.117 vs 0.234 s at d = 16, 0.37 vs 0.65 at d = 32, 1.27 vs 2.21 at
#   d = 64; at d = 96 (300k rows) 1.47 vs 1.55, too close to call, as Phi no longer fits a
#   core's L2;
# - 'diag': 0.0092 vs 0.0106 s at d = 1, K = 8; 0.0204 vs 0.0255 at d = 8, K = 8; 0.046 vs
#   0.071 at d = 16, K = 16; 0.157 vs 0.348 at d = 64, K = 16. 'spherical': 0.0121 vs 0.0171
#   at d = 4, K = 8; 0.039 vs 0.070 at d = 16, K = 16; 0.119 vs 0.339 at d = 64, K = 16;
# - 'tied' (in one process, passes alternating): 0.0076 vs 0.0099 s at d = 2, K = 8; 0.0406
#   vs 0.0567 at d = 16, K = 16; 0.0995 vs 0.158 at d = 16, K = 64; 0.235 vs 0.286 at
#   d = 64, K = 16; 0.328 vs 0.571 at d = 64, K = 64; at d = 1 they tie (1.03 and 1.05 times
#   at K = 5 and 64). Beyond d = 64 the two tie on a fit's first pass (0.96-1.06 times at
#   d = 128 to 256, K = 8 to 32, 50k-200k rows), but later passes, which no longer sum the
#   unweighted scatter (``fastem._em.accumulate``), take 0.74-0.82 of the time: so up to
#   d = 256, as far as measured;
# - with K <= 4 the panels' and tiles' 8 columns are half empty, and the per-component kernel
#   is as fast or faster (in one process, passes alternating, 1M rows: 'diag' 1.19 times at
#   d = 2, K = 2, 1.24-1.27 at K = 4 and d = 8 to 64; 'full' 1.08 at d = 12 and 16, 1.13 at
#   d = 64, K = 4; 'spherical' and 'tied' within 6% but for 'tied' d = 2, K = 2, 1.21) except
#   for 'full' up to EXPANDED_SMALL_FULL features, whose (d, d) per-component work costs more
#   than the padding: 0.88 at d = 2, K = 2, 0.73 at K = 3, 0.63-0.79 at d = 2 to 4, K = 4,
#   0.91 at d = 8, K = 4. That is per row: below EXPANDED_SMALL_FULL_ROWS rows (a pass of a
#   millisecond or two) it would not repay loading the expanded kernel, which a fit's start
#   does not need (about 0.1 s from Numba's cache, 8-10 s to compile).
# - where the expanded kernel pads a few components to 8 (or 16) and the per-component one
#   is cheap, more components stay with the per-component kernel: from each number of
#   features in EXPANDED_MIN_COMPONENTS_FROM, the expanded kernel runs only from that many
#   components. Per-component passes against expanded ones (1M rows, one process,
#   alternating):
#   - 'diag' (whose per-component statistics are sums about c from 3 components,
#     MOMENTS_ABOUT_CENTRE_MIN_COMPONENTS): 0.78-0.93 at K = 5 and d = 2 to 16; from d = 16,
#     0.71-0.89 at K = 5 and 0.82-0.88 at K = 12; 0.97-0.99 at K = 7 and 8 at d = 16,
#     0.76-0.85 at d = 32 to 128. With 16 components or more the expanded kernel is as fast
#     or faster (1.0-1.07 from d = 16, 1.04-1.48 below); with 7 to 12 below d = 16 the two
#     are within 5-8% either way, and the expanded kernel keeps them. Predictions took
#     0.82-0.90 of the time.
#   - 'full': 0.89 at K = 5, d = 16, and 0.62-0.76 at d = 24 to 64; at K = 6 0.90 at d = 24
#     and 0.75-0.82 at d = 32 to 64 (1.04 at d = 16); at K = 7 0.90 and 0.87 at d = 48 and
#     64 (0.96 at d = 32); from K = 8, 0.97 at d = 64 and 1.05-1.99 otherwise; 1.16 at
#     d = 12, K = 6. Predictions took 0.58-0.88 of the time.
#   'spherical''s expanded kernel is ahead everywhere but at d = 2 (0.93-0.98 at K = 5
#   and 8), and 'tied''s within 2-4% at K = 5.
EXPANDED_FEATURES = {"full": range(1, 65), "tied": range(1, 257), "diag": range(1, 513),
                     "spherical": range(1, 513)}
EXPANDED_MIN_COMPONENTS = 5
EXPANDED_SMALL_FULL = 8
EXPANDED_SMALL_FULL_ROWS = 100_000
EXPANDED_MIN_COMPONENTS_FROM = {"diag": ((1, 6), (16, 13)),
                                "full": ((16, 6), (24, 7), (48, 8))}
# ... and only while the expanded quadratic form's rounding error, in log-density units,
# stays below ~2e-11 for rows within 3 sigma of their component: a bound on it is eps times
# max_k (|m_k| + 3 sigma_k)' |Lambda_k| (|m_k| + 3 sigma_k), with m_k = mu_k - c, and this
# is the largest scale allowed: 2e-11 is far below float32 input precision and any
# statistical error, and |Lambda| overstates the error of correlated covariances. Beyond it
# (components hundreds of sigmas from the data's centre, or nearly singular) the
# per-component kernel runs, whose error is only linear in |m_k|.
EXPANDED_MAX_SCALE = 1e5

# 'diag' and 'spherical' mixtures of at least this many components, in the per-component
# kernel, sum their statistics about c where EXPANDED_MAX_SCALE allows (kernel_layout): in
# tiles of 4 components, at least half padding with 2 or 1. Passes took 0.89-0.91 of the time
# at d = 16 and 64 with 4 components, 0.94 with 3 (d = 5: 1.015), 1.0-1.03 with 2.
MOMENTS_ABOUT_CENTRE_MIN_COMPONENTS = 3

# The constant coefficient of eta's padding components (rows K to a multiple of 8): their
# log-densities, this times the constant feature 1, are below any real one, so that the
# kernel's running maximum may take them in unmasked (``_panels.log_density_product``). Finite,
# so that a padding column's feature 0 times it is 0 rather than NaN.
PADDED_LOG_DENSITY = -1e300


def _padded_eta(K, n_columns):
    """Zeros (padded(K), n_columns) but for the padding components' PADDED_LOG_DENSITY."""
    eta = np.zeros((padded(K), n_columns))
    eta[K:, 0] = PADDED_LOG_DENSITY
    return eta


def expanded_min_components(covariance_type, n_features, n_rows=None):
    """The fewest components with which a mixture of `n_features` runs the expanded kernel
    over `n_rows` rows (None: unknown, as many as may be), as set out above."""
    if (covariance_type == "full" and n_features <= EXPANDED_SMALL_FULL
            and (n_rows is None or n_rows >= EXPANDED_SMALL_FULL_ROWS)):
        return min(2, EXPANDED_MIN_COMPONENTS)
    fewest = EXPANDED_MIN_COMPONENTS
    for features, components in EXPANDED_MIN_COMPONENTS_FROM.get(covariance_type, ()):
        if n_features >= features:
            fewest = max(EXPANDED_MIN_COMPONENTS, components)
    return fewest


_ILL_DEFINED = (
    "Fitting the mixture model failed because some components have ill-defined empirical "
    "covariance (for instance caused by singleton or collapsed samples). Try to decrease the "
    "number of components, increase reg_covar, or scale the input data."
)


@functools.cache
def upper_pairs(d):
    """(a, b) for a <= b < d in row order: the expanded kernel's order of the products
    y_a y_b (np.triu_indices, made once per d: it took a fifth of an iteration's Python)."""
    a, b = np.triu_indices(d)
    a.setflags(write=False)
    b.setflags(write=False)
    return a, b


def precisions_cholesky_from_covariances(covariances, covariance_type):
    """U with U U^T = inverse covariance (upper triangular), or 1/sqrt for diag/spherical."""
    if covariance_type in ("diag", "spherical"):
        if np.any(covariances <= 0.0):
            raise ValueError(_ILL_DEFINED)
        return 1.0 / np.sqrt(covariances)
    mats = covariances[None] if covariance_type == "tied" else covariances
    out = np.empty_like(mats)
    # LAPACK's factorization and triangular inverse called directly: this runs every EM
    # iteration, and scipy.linalg's checks around the same calls took 8-13 times longer
    # (1.34 ms against 0.17 for K = 64, d = 16).
    if not np.all(np.isfinite(mats)):  # overflow; potrf would not notice a NaN
        raise ValueError(_ILL_DEFINED)
    potrf, trtri = lapack.get_lapack_funcs(("potrf", "trtri"), (mats,))
    for k, cov in enumerate(mats):
        L, info = potrf(cov, lower=True, clean=True)
        if info != 0:  # not positive definite
            raise ValueError(_ILL_DEFINED)
        L_inv, info = trtri(L, lower=True)
        if info != 0:
            raise ValueError(_ILL_DEFINED)
        out[k] = L_inv.T
    return out[0] if covariance_type == "tied" else out


def precisions_cholesky_from_precisions(precisions, covariance_type):
    """Upper-triangular U with U U^T = precision, from the precision matrices themselves."""
    if covariance_type in ("diag", "spherical"):
        return np.sqrt(precisions)
    mats = precisions[None] if covariance_type == "tied" else precisions
    out = np.empty_like(mats)
    potrf = lapack.get_lapack_funcs("potrf", (mats,))  # scipy.linalg.cholesky's own call
    for k, prec in enumerate(mats):
        # J P J = L L^T with J the exchange matrix gives P = (J L J)(J L J)^T, J L J upper.
        L, info = potrf(prec[::-1, ::-1], lower=True, clean=True)
        if info != 0:
            raise np.linalg.LinAlgError(f"precision matrix {k} is not positive definite")
        out[k] = L[::-1, ::-1]
    return out[0] if covariance_type == "tied" else out


def covariances_from_precisions_cholesky(precisions_cholesky, covariance_type):
    """Inverse of :func:`precisions_cholesky_from_covariances`."""
    if covariance_type in ("diag", "spherical"):
        return 1.0 / precisions_cholesky**2
    mats = precisions_cholesky[None] if covariance_type == "tied" else precisions_cholesky
    out = np.empty_like(mats)
    trtrs = lapack.get_lapack_funcs("trtrs", (mats,))  # scipy.linalg.solve_triangular's call
    eye = np.eye(mats.shape[1])
    for k, U in enumerate(mats):
        U_inv, info = trtrs(U, eye, lower=False)
        if info != 0:
            raise np.linalg.LinAlgError(f"precision factor {k} is singular")
        out[k] = U_inv.T @ U_inv
    return out[0] if covariance_type == "tied" else out


def precisions_from_cholesky(precisions_cholesky, covariance_type):
    """The precision matrices U U^T (or squares for diag/spherical)."""
    if covariance_type in ("diag", "spherical"):
        return precisions_cholesky**2
    if covariance_type == "tied":
        return precisions_cholesky @ precisions_cholesky.T
    return np.matmul(precisions_cholesky, precisions_cholesky.transpose(0, 2, 1))


# Parameters of at most this many entries are compared by their bytes first
# (:meth:`GaussianParams.holds`).
_BYTES_COMPARED_MAX = 4096


def _kernel_operand(a):
    """`a` as the kernels take it: C-contiguous, float64 and writeable. Numba compiles a kernel
    again for a read-only array (8-10 s), which a model's arrays are when it was unpickled from
    a memory map, say; a copy of these small arrays costs nothing by comparison."""
    a = np.ascontiguousarray(a, dtype=np.float64)
    return a if a.flags.writeable else a.copy()


@dataclass
class GaussianParams:
    """Weights, means and precision Cholesky factors of a Gaussian mixture (float64).

    Its layouts for the kernels (:meth:`kernel_layout`, :meth:`expanded_layout`) are made
    once and handed out again on later calls: treat the parameters as fixed once made, and
    the layouts' arrays as read-only (the kernels only read them).
    """

    covariance_type: str
    weights: np.ndarray
    means: np.ndarray
    precisions_cholesky: np.ndarray
    covariances: np.ndarray | None = None
    _layouts: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    _bytes: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def holds(self, covariance_type, weights, means, precisions_cholesky, covariances) -> bool:
        """Whether these are the parameters this holds: equal values, a NaN matching a NaN."""
        if covariance_type != self.covariance_type:
            return False
        pairs = (("weights", weights), ("means", means),
                 ("precisions_cholesky", precisions_cholesky), ("covariances", covariances))
        return all(self._holds(name, a) for name, a in pairs)

    def _holds(self, name, a) -> bool:
        """Whether `a` equals the array this holds as `name`.

        Arrays of up to _BYTES_COMPARED_MAX entries are first compared with the bytes kept of
        this one: an unchanged model's arrays match at once, where np.array_equal took 2-3 µs
        each, 9 of a one-row ``predict``'s 45 µs. Larger ones, and any that differs in its
        bits (-0.0 for 0.0, a list, another layout), are compared by value: copying a large
        array's bytes took longer than that.
        """
        b = getattr(self, name)
        if a is None or b is None:
            return a is None and b is None
        if b.size <= _BYTES_COMPARED_MAX:
            if name not in self._bytes:
                self._bytes[name] = b.tobytes()
            if (type(a) is np.ndarray and a.dtype == b.dtype and a.shape == b.shape
                    and a.tobytes() == self._bytes[name]):
                return True
        return np.array_equal(a, b, equal_nan=True)

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @classmethod
    def from_stats(cls, stats: GaussianStats, reg_covar: float, normalize: str = "sum"):
        """The M-step: maximum-likelihood parameters from the statistics, plus ``reg_covar``.

        ``normalize='sum'`` divides the component masses by their sum (an EM iteration);
        ``'n_samples'`` by the number of rows (an initialization), as scikit-learn does.
        """
        covariance_type = stats.covariance_type
        s0, s1, s2, shift = stats.s0, stats.s1, stats.s2, stats.shift
        nk = s0 + 10 * np.finfo(np.float64).eps
        means = (s0[:, None] * shift + s1) / nk[:, None]
        delta = means - shift
        d = shift.shape[1]
        if covariance_type == "full":
            cross = s1[:, :, None] * delta[:, None, :]
            scatter = s2 - cross - cross.transpose(0, 2, 1) + s0[:, None, None] * (
                delta[:, :, None] * delta[:, None, :]
            )
            covariances = scatter / nk[:, None, None]
            covariances[:, np.arange(d), np.arange(d)] += reg_covar
        elif covariance_type == "tied":
            between = means - shift[0]
            covariances = (s2 - (nk[:, None] * between).T @ between) / nk.sum()
            covariances.flat[:: d + 1] += reg_covar
        elif covariance_type == "diag":
            covariances = (s2 - 2 * delta * s1 + s0[:, None] * delta**2) / nk[:, None] + reg_covar
        else:
            trace = s2 - 2 * np.sum(delta * s1, axis=1) + s0 * np.sum(delta**2, axis=1)
            covariances = trace / (nk * d) + reg_covar
        weights = nk / (nk.sum() if normalize == "sum" else stats.n_samples)
        precisions_cholesky = precisions_cholesky_from_covariances(covariances, covariance_type)
        return cls(covariance_type, weights, means, precisions_cholesky, covariances)

    def _const(self, log_det):
        """log w_k + log det P_k - d/2 log(2 pi) for each component."""
        d = self.means.shape[1]
        with np.errstate(divide="ignore"):  # a weight of exactly 0 makes a component impossible
            return np.log(self.weights) + log_det - 0.5 * d * np.log(2 * np.pi)

    def _centre(self):
        return self.weights @ self.means / self.weights.sum()

    def _quadratic_terms(self):
        """(c, m = means - c, precisions, log det P, scale): the precisions (K, d, d), or
        (K, d) where diagonal; `scale` (K,) bounds the rounding error, in units of eps, that
        terms about c rather than each mean cost (see EXPANDED_MAX_SCALE)."""
        ct = self.covariance_type
        K, d = self.means.shape
        U = self.precisions_cholesky
        centre = self._centre()
        m = self.means - centre
        if ct in ("full", "tied"):
            shared = ct == "tied"
            factors = U[None] if shared else U
            precisions = np.matmul(factors, factors.transpose(0, 2, 1))
            covariances = self.covariances
            if covariances is None:
                covariances = covariances_from_precisions_cholesky(U, ct)
            if shared:
                covariances = covariances[None]
            variances = np.diagonal(covariances, axis1=1, axis2=2)
            log_det = np.log(np.diagonal(factors, axis1=1, axis2=2)).sum(axis=1)
        else:  # diagonal precisions, (K, d)
            precisions = np.broadcast_to(U[:, None] ** 2 if ct == "spherical" else U**2, (K, d))
            variances = 1.0 / precisions
            log_det = np.log(U).sum(axis=1) if ct == "diag" else d * np.log(U)
        reach = np.abs(m) + 3.0 * np.sqrt(np.abs(variances))
        if ct == "tied":  # one precision for all: broadcast over the components
            precisions = np.broadcast_to(precisions, (K, d, d))
        if ct in ("full", "tied"):
            scale = np.einsum("ka,kab,kb->k", reach, np.abs(precisions), reach)
        else:
            scale = np.sum(precisions * reach**2, axis=1)
        return centre, m, precisions, log_det, scale

    def layout_depends_on_rows(self):
        """Whether :meth:`expanded_layout` depends on the number of rows: a small 'full'
        mixture runs the expanded kernel only over many rows (EXPANDED_SMALL_FULL_ROWS).
        Where it does, a pass over rows of unknown number counts them first
        (``fastem._em.count_rows_if_needed``), so that a stream takes the kernel, and so the
        bits, of the same rows in memory."""
        K, d = self.means.shape
        return (expanded_min_components(self.covariance_type, d, None) <= K
                < expanded_min_components(self.covariance_type, d, 0))

    def expanded_layout(self, n_rows=None):
        """(kind, centre, eta, row_factor) as
        `fastem._kernels.gaussian_expanded.expanded_pass` reads them, or None where that
        kernel would be slower over `n_rows` rows (None: unknown) or lose accuracy (see
        EXPANDED_FEATURES, expanded_min_components and EXPANDED_MAX_SCALE)."""
        ct = self.covariance_type
        K, d = self.means.shape
        if (ct not in EXPANDED_FEATURES or d not in EXPANDED_FEATURES[ct]
                or K < expanded_min_components(ct, d, n_rows)):
            return None
        key = ("expanded",)  # whatever the rows: they only choose the kernel, above
        if key not in self._layouts:
            self._layouts[key] = self._expanded_layout()
        return self._layouts[key]

    def _expanded_layout(self):
        """:meth:`expanded_layout` whatever the rows, or None where it would lose accuracy."""
        ct = self.covariance_type
        K, d = self.means.shape
        U = self.precisions_cholesky
        centre, m, precisions, log_det, scale = self._quadratic_terms()
        if not np.all(scale <= EXPANDED_MAX_SCALE):  # also refuses NaN
            return None
        kind = _KIND[ct]
        n_feat = n_features_expanded(kind, d)
        row_factor = np.zeros((0, 0))
        if ct == "tied":
            # The quadratic term -|U^T y|^2 / 2 is every component's: the kernel takes it off
            # each row's log-likelihood from U^T, and it stays out of eta.
            row_factor = np.zeros((padded(d), padded(d)))
            row_factor[:d, :d] = U.T
            eta = _padded_eta(K, padded(1 + scatter_rows(d)))
            eta[:K, 0] = (self._const(np.broadcast_to(log_det, K))
                          - 0.5 * np.einsum("ka,kab,kb->k", m, precisions, m))
            eta[:K, 1 : 1 + d] = m @ precisions[0]
            return kind, np.ascontiguousarray(centre, dtype=np.float64), eta, row_factor
        eta = _padded_eta(K, padded(n_feat))
        if ct == "full":
            eta[:K, 0] = self._const(log_det) - 0.5 * np.einsum("ka,kab,kb->k", m, precisions, m)
            eta[:K, 1 : 1 + d] = np.einsum("kab,kb->ka", precisions, m)
            a, b = upper_pairs(d)
            eta[:K, 1 + d : n_feat] = np.where(a == b, -0.5, -1.0) * precisions[:, a, b]
        else:
            eta[:K, 0] = self._const(log_det) - 0.5 * np.sum(precisions * m**2, axis=1)
            eta[:K, 1 : 1 + d] = precisions * m
            # 'diag': one coefficient per y_j^2; 'spherical': one for |y|^2
            eta[:K, 1 + d : n_feat] = -0.5 * precisions[:, : n_feat - 1 - d]
        return kind, np.ascontiguousarray(centre, dtype=np.float64), eta, row_factor

    def kernel_layout(self, moments_about_centre=False):
        """(kind, shift, centre, prec, aux, const) as `fastem._kernels.gaussian.gaussian_pass`
        reads them (see the table in that module).

        With `moments_about_centre`, 'diag' and 'spherical' get a shift of zeros where that
        is faster (MOMENTS_ABOUT_CENTRE_MIN_COMPONENTS) and the expanded kernel's accuracy
        bound allows (EXPANDED_MAX_SCALE): the kernel then sums their statistics about c, in
        fewer operations, and the M-step's move to the means loses less than that bound.
        Statistics are about ``shift + centre`` for these two covariance types, about
        ``shift`` for the others."""
        key = ("kernel", bool(moments_about_centre))
        if key not in self._layouts:
            self._layouts[key] = self._kernel_layout(moments_about_centre)
        return self._layouts[key]

    def _kernel_layout(self, moments_about_centre):
        ct = self.covariance_type
        K, d = self.means.shape
        U = self.precisions_cholesky
        means = _kernel_operand(self.means)
        centre = self._centre()
        aux = np.zeros((K, 0))
        shift = means
        if ct == "full":
            prec = U.transpose(0, 2, 1)  # the kernel multiplies P^T (d, d) @ (x - c)^T (d, nb)
            log_det = np.log(np.diagonal(U, axis1=1, axis2=2)).sum(axis=1)
            aux = np.einsum("kd,kde->ke", means - centre, U)
        elif ct == "tied":
            prec = U.T[None]
            log_det = np.full(K, np.log(np.diag(U)).sum())
            aux = (means - centre) @ U
            shift = np.repeat(centre[None], K, axis=0)  # statistics around one common centre
        else:
            # The kernel takes the rows less c, and the means less c as its shift: each term
            # (x - mu_k) p_k is then (x - c) p_k - (mu_k - c) p_k, one multiply-add, with an
            # error of eps * |mu_k - c| / sigma as in 'full' (see there)
            shift = means - centre
            factors = U if ct == "diag" else U[:, None]
            prec = U[:, None, :] if ct == "diag" else U[:, None, None]
            aux = shift * factors
            if (moments_about_centre and K >= MOMENTS_ABOUT_CENTRE_MIN_COMPONENTS
                    and np.all(self._quadratic_terms()[4] <= EXPANDED_MAX_SCALE)):
                shift = np.zeros_like(shift)
            log_det = np.log(U).sum(axis=1) if ct == "diag" else d * np.log(U)
        const = self._const(log_det)
        return (
            _KIND[ct],
            shift,
            _kernel_operand(centre),
            _kernel_operand(prec),
            _kernel_operand(aux),
            _kernel_operand(const),
        )
