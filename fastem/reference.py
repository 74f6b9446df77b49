"""Textbook EM for Gaussian mixtures in plain NumPy.

This module is the oracle the Numba kernels are tested against and the baseline in the
benchmarks, so it favours being easy to check against a textbook over being fast. It follows
the parameter conventions of :class:`sklearn.mixture.GaussianMixture` exactly (but shares no
code with it):

* ``covariance_type`` is one of ``'full'`` (covariances of shape ``(K, d, d)``), ``'tied'``
  (``(d, d)``), ``'diag'`` (``(K, d)``) or ``'spherical'`` (``(K,)``).
* ``precisions_cholesky`` is scikit-learn's ``precisions_cholesky_``: for a covariance
  ``C = L @ L.T`` (``L`` lower triangular) it is the upper-triangular ``U = inv(L).T``, so that
  the precision is ``U @ U.T``; for 'diag' and 'spherical' it is ``1 / sqrt(C)``.
* The M-step adds ``10 * eps`` to the component counts ``nk`` and ``reg_covar`` to the diagonal
  of every covariance, and normalizes the weights as ``nk / nk.sum()``.

Unlike scikit-learn, the second moments are always computed from centred data
(``x - mean_k``), so that data with a large offset loses no precision.

Every function checks its arrays' shapes against one another and the values its formulas
cannot take (NaN or infinity in the data or the parameters, negative weights, factors whose
diagonal is not positive), and says which array was wrong and what it expected. These checks
are its own, beside the estimator's (``fastem._validation``): the oracle imports nothing from
the package it checks, so that a mistake there cannot hide on both sides of a test.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = [
    "COVARIANCE_TYPES",
    "precisions_cholesky_from_covariances",
    "covariances_from_precisions_cholesky",
    "precisions_from_cholesky",
    "log_gaussian_prob",
    "e_step",
    "m_step",
    "em",
]

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")


def _check_covariance_type(covariance_type):
    if covariance_type not in COVARIANCE_TYPES:
        raise ValueError(
            f"covariance_type must be one of {COVARIANCE_TYPES}, got {covariance_type!r}"
        )


# The shape of a covariance (or of its precision's Cholesky factor) per covariance type, in
# the number of components K and of features d.
_SHAPES = {"full": ("K", "d", "d"), "tied": ("d", "d"), "diag": ("K", "d"),
           "spherical": ("K",)}


def _check_data(X):
    """X as a 2-D float array of finite values with at least one row and one feature."""
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] < 1 or X.shape[1] < 1:
        raise ValueError(f"X must be a 2-D array of shape (n_samples, n_features) with at "
                         f"least one of each, got shape {X.shape}")
    if not np.issubdtype(X.dtype, np.number) or np.iscomplexobj(X):
        raise ValueError(f"X must hold real numbers, got dtype {X.dtype}")
    if not np.isfinite(X).all():
        raise ValueError("X holds NaN or infinity: remove or impute those rows first")
    return X if np.issubdtype(X.dtype, np.floating) else X.astype(np.float64)


def _check_shape(name, a, covariance_type, K=None, d=None):
    """`a` as an array of the shape _SHAPES gives `covariance_type`, with K components and d
    features where they are given (else any); returns it."""
    a = np.asarray(a)
    sizes = {"K": K, "d": d}
    axes = _SHAPES[covariance_type]
    square = len(axes) >= 2 and axes[-2:] == ("d", "d")
    if (a.ndim != len(axes)
            or any(sizes[axis] is not None and n != sizes[axis] for axis, n in zip(axes, a.shape))
            or (square and a.shape[-1] != a.shape[-2])):
        expected = ", ".join(str(sizes[axis] or axis) for axis in axes)
        raise ValueError(f"{name} must have shape ({expected}{',' if len(axes) == 1 else ''}) "
                         f"for covariance_type={covariance_type!r}, got {a.shape}")
    return a


def _check_model(X, means, precisions_cholesky, covariance_type, weights=None):
    """The model's arrays, checked against each other and X (see :func:`_check_shape`)."""
    _check_covariance_type(covariance_type)
    X = _check_data(X)
    means = np.asarray(means)
    if means.ndim != 2 or means.shape[0] < 1 or means.shape[1] != X.shape[1]:
        raise ValueError(f"means must have shape (n_components, {X.shape[1]}) for X of "
                         f"{X.shape[1]} features, got {means.shape}")
    K, d = means.shape
    precisions_cholesky = _check_shape("precisions_cholesky", precisions_cholesky,
                                       covariance_type, K, d)
    if not np.isfinite(means).all():
        raise ValueError("means hold NaN or infinity")
    # the log-determinant is the sum of the logs of the factors' diagonals
    diagonals = (np.diagonal(precisions_cholesky, axis1=-2, axis2=-1)
                 if covariance_type in ("full", "tied") else precisions_cholesky)
    if not (np.isfinite(precisions_cholesky).all() and (diagonals > 0).all()):
        raise ValueError("precisions_cholesky must be finite, with positive diagonals ('full', "
                         "'tied') or entries ('diag', 'spherical')")
    if weights is not None:
        weights = np.asarray(weights)
        if weights.shape != (K,):
            raise ValueError(f"weights must have shape ({K},) for {K} components, got "
                             f"{weights.shape}")
        if not (np.isfinite(weights).all() and (weights >= 0).all()):
            raise ValueError("weights must be finite and >= 0")
    return X, means, precisions_cholesky, weights


def _check_reg_covar(reg_covar):
    if not isinstance(reg_covar, numbers.Real) or not np.isfinite(reg_covar) or reg_covar < 0:
        raise ValueError(f"reg_covar must be a finite number >= 0, got {reg_covar!r}")


def _inverse_lower_cholesky_transposed(covariance):
    """``inv(L).T`` for ``covariance = L @ L.T``: upper triangular, precision ``U @ U.T``."""
    lower = np.linalg.cholesky(covariance)
    identity = np.eye(covariance.shape[0], dtype=covariance.dtype)
    return np.linalg.solve(lower, identity).T


def precisions_cholesky_from_covariances(covariances, covariance_type):
    """Cholesky factors of the precisions, as scikit-learn's ``precisions_cholesky_``.

    Parameters
    ----------
    covariances : ndarray
        Shape ``(K, d, d)`` for 'full', ``(d, d)`` for 'tied', ``(K, d)`` for 'diag' and
        ``(K,)`` for 'spherical'.
    covariance_type : {'full', 'tied', 'diag', 'spherical'}

    Returns
    -------
    precisions_cholesky : ndarray
        Same shape as `covariances`. For 'full'/'tied', the upper-triangular ``U = inv(L).T``
        where ``L`` is the lower Cholesky factor of the covariance; otherwise ``1 / sqrt(C)``.
    """
    _check_covariance_type(covariance_type)
    covariances = _check_shape("covariances", covariances, covariance_type)
    if covariance_type == "full":
        return np.stack([_inverse_lower_cholesky_transposed(c) for c in covariances])
    if covariance_type == "tied":
        return _inverse_lower_cholesky_transposed(covariances)
    return 1.0 / np.sqrt(covariances)


def covariances_from_precisions_cholesky(precisions_cholesky, covariance_type):
    """Covariances from the Cholesky factors of the precisions (inverse of the function above).

    Parameters
    ----------
    precisions_cholesky : ndarray
        Shape ``(K, d, d)`` for 'full', ``(d, d)`` for 'tied', ``(K, d)`` for 'diag' and
        ``(K,)`` for 'spherical'.
    covariance_type : {'full', 'tied', 'diag', 'spherical'}

    Returns
    -------
    covariances : ndarray
        Same shape as `precisions_cholesky`. With precision ``U @ U.T``, the covariance is
        ``inv(U).T @ inv(U)``; for 'diag'/'spherical' it is ``1 / p**2``.
    """
    _check_covariance_type(covariance_type)
    precisions_cholesky = _check_shape("precisions_cholesky", precisions_cholesky,
                                       covariance_type)
    if covariance_type in ("full", "tied"):
        full = covariance_type == "full"
        prec_chol = precisions_cholesky if full else precisions_cholesky[np.newaxis]
        identity = np.eye(prec_chol.shape[-1], dtype=prec_chol.dtype)
        inv_u = np.stack([np.linalg.solve(u, identity) for u in prec_chol])
        covariances = np.swapaxes(inv_u, 1, 2) @ inv_u
        return covariances if full else covariances[0]
    return 1.0 / precisions_cholesky**2


def precisions_from_cholesky(precisions_cholesky, covariance_type):
    """The precision matrices ``U @ U.T`` (squares for 'diag'/'spherical'): what scikit-learn's
    ``precisions_`` holds and its ``precisions_init`` takes."""
    _check_covariance_type(covariance_type)
    u = _check_shape("precisions_cholesky", precisions_cholesky, covariance_type)
    if covariance_type == "full":
        return u @ np.swapaxes(u, 1, 2)
    if covariance_type == "tied":
        return u @ u.T
    return u**2


def log_gaussian_prob(X, means, precisions_cholesky, covariance_type):
    """Log density of every sample under every component, ``log N(x_n | mu_k, Sigma_k)``.

    With ``U_k`` the precision Cholesky factor (``Sigma_k^-1 = U_k @ U_k.T``)::

        log N(x | mu_k, Sigma_k) = -0.5 * (d * log(2 pi) + ||(x - mu_k) @ U_k||^2)
                                   + sum(log(diag(U_k)))

    Parameters
    ----------
    X : ndarray of shape (N, d)
    means : ndarray of shape (K, d)
    precisions_cholesky : ndarray
        Shape ``(K, d, d)`` for 'full', ``(d, d)`` for 'tied', ``(K, d)`` for 'diag' and
        ``(K,)`` for 'spherical'.
    covariance_type : {'full', 'tied', 'diag', 'spherical'}

    Returns
    -------
    log_prob : ndarray of shape (N, K)
        Log densities, without the log weights.
    """
    X, means, prec_chol, _ = _check_model(X, means, precisions_cholesky, covariance_type)
    return _log_gaussian_prob(X, means, prec_chol, covariance_type)


def _log_gaussian_prob(X, means, prec_chol, covariance_type):
    """:func:`log_gaussian_prob` of checked arrays (:func:`_check_model`)."""
    n_features = X.shape[1]
    diff = X[:, np.newaxis, :] - means[np.newaxis, :, :]  # (N, K, d)
    if covariance_type == "full":
        y = np.einsum("nki,kij->nkj", diff, prec_chol)
        log_det = np.log(np.diagonal(prec_chol, axis1=1, axis2=2)).sum(axis=1)
    elif covariance_type == "tied":
        y = diff @ prec_chol
        log_det = np.log(np.diagonal(prec_chol)).sum()
    elif covariance_type == "diag":
        y = diff * prec_chol
        log_det = np.log(prec_chol).sum(axis=1)
    else:  # spherical
        y = diff * prec_chol[:, np.newaxis]
        log_det = n_features * np.log(prec_chol)
    squared_mahalanobis = (y**2).sum(axis=2)  # (N, K)
    return -0.5 * (n_features * math.log(2 * math.pi) + squared_mahalanobis) + log_det


def e_step(X, weights, means, precisions_cholesky, covariance_type):
    """E-step: log responsibilities and mean log-likelihood.

    Parameters
    ----------
    X : ndarray of shape (N, d)
    weights : ndarray of shape (K,)
    means : ndarray of shape (K, d)
    precisions_cholesky : ndarray
        See :func:`log_gaussian_prob`.
    covariance_type : {'full', 'tied', 'diag', 'spherical'}

    Returns
    -------
    log_resp : ndarray of shape (N, K)
        ``log p(k | x_n)``; each row log-sum-exps to 0.
    mean_log_likelihood : float
        ``mean_n log sum_k w_k N(x_n | mu_k, Sigma_k)`` (scikit-learn's lower bound).
    """
    X, means, precisions_cholesky, weights = _check_model(X, means, precisions_cholesky,
                                                          covariance_type, weights)
    return _e_step(X, weights, means, precisions_cholesky, covariance_type)


def _e_step(X, weights, means, precisions_cholesky, covariance_type):
    """:func:`e_step` of checked arrays (:func:`_check_model`)."""
    weighted = _log_gaussian_prob(X, means, precisions_cholesky, covariance_type)
    weighted = weighted + np.log(weights)
    row_max = weighted.max(axis=1, keepdims=True)  # log-sum-exp, shifted for stability
    log_norm = row_max + np.log(np.exp(weighted - row_max).sum(axis=1, keepdims=True))
    return weighted - log_norm, float(log_norm.mean())


def m_step(X, resp, covariance_type, reg_covar):
    """M-step: maximum-likelihood parameters given the responsibilities.

    Parameters
    ----------
    X : ndarray of shape (N, d)
    resp : ndarray of shape (N, K)
        Responsibilities (not their logs); rows sum to 1.
    covariance_type : {'full', 'tied', 'diag', 'spherical'}
    reg_covar : float
        Added to the diagonal of every covariance.

    Returns
    -------
    weights : ndarray of shape (K,)
        ``nk / nk.sum()``, with ``nk = resp.sum(0) + 10 * eps``.
    means : ndarray of shape (K, d)
        ``resp.T @ X / nk``.
    covariances : ndarray
        Shape ``(K, d, d)`` for 'full', ``(d, d)`` for 'tied', ``(K, d)`` for 'diag' and
        ``(K,)`` for 'spherical'. Computed from centred data ``x_n - mu_k``: 'full' is
        ``sum_n r_nk (x_n - mu_k)(x_n - mu_k)^T / nk``; 'tied' is the sum over components of
        the same scatter, divided by ``nk.sum()``; 'diag' is the diagonal of 'full';
        'spherical' the mean of 'diag'. ``reg_covar`` is then added to the diagonal.
    """
    _check_covariance_type(covariance_type)
    X, resp = _check_data(X), np.asarray(resp)
    if resp.ndim != 2 or resp.shape[0] != X.shape[0] or resp.shape[1] < 1:
        raise ValueError(f"resp must have shape ({X.shape[0]}, n_components) for X of "
                         f"{X.shape[0]} rows, got {resp.shape}")
    _check_reg_covar(reg_covar)
    return _m_step(X, resp, covariance_type, reg_covar)


def _m_step(X, resp, covariance_type, reg_covar):
    """:func:`m_step` of checked arrays: X (:func:`_check_data`) and resp of X's rows."""
    n_features = X.shape[1]
    # The 10 * eps keeps an empty component from dividing by zero (as scikit-learn does).
    nk = resp.sum(axis=0) + 10 * np.finfo(resp.dtype).eps
    weights = nk / nk.sum()
    means = (resp.T @ X) / nk[:, np.newaxis]
    if covariance_type in ("full", "tied"):
        scatter = np.empty((len(nk), n_features, n_features), dtype=means.dtype)
        for k in range(len(nk)):
            diff = X - means[k]  # centred data, (N, d)
            scatter[k] = (resp[:, k, np.newaxis] * diff).T @ diff
        if covariance_type == "full":
            covariances = scatter / nk[:, np.newaxis, np.newaxis]
        else:
            covariances = scatter.sum(axis=0) / nk.sum()
        covariances = covariances + reg_covar * np.eye(n_features, dtype=covariances.dtype)
    else:
        diff = X[:, np.newaxis, :] - means[np.newaxis, :, :]  # centred data, (N, K, d)
        variances = np.einsum("nk,nkd->kd", resp, diff**2) / nk[:, np.newaxis] + reg_covar
        covariances = variances if covariance_type == "diag" else variances.mean(axis=1)
    return weights, means, covariances


def em(X, weights, means, precisions_cholesky, covariance_type="full", reg_covar=1e-6, n_iter=10):
    """Run `n_iter` EM iterations from the given parameters, in scikit-learn's order.

    Each iteration is an E-step under the current parameters followed by an M-step, so
    ``em(...)[-1]['lower_bound']`` equals scikit-learn's ``lower_bound_`` after
    ``max_iter=n_iter, tol=0`` from the same initial parameters.

    Parameters
    ----------
    X : ndarray of shape (N, d)
    weights : ndarray of shape (K,)
    means : ndarray of shape (K, d)
    precisions_cholesky : ndarray
        Initial precision Cholesky factors; see :func:`log_gaussian_prob`.
    covariance_type : {'full', 'tied', 'diag', 'spherical'}, default='full'
    reg_covar : float, default=1e-6
    n_iter : int, default=10

    Returns
    -------
    history : list of dict
        One dict per iteration with keys ``'lower_bound'`` (mean log-likelihood of `X` under
        the parameters *before* this iteration's M-step), and ``'weights'``, ``'means'``,
        ``'covariances'``, ``'precisions_cholesky'`` (the parameters *after* it).
    """
    X, means, precisions_cholesky, weights = _check_model(X, means, precisions_cholesky,
                                                          covariance_type, weights)
    _check_reg_covar(reg_covar)
    if isinstance(n_iter, bool) or not isinstance(n_iter, (int, np.integer)) or n_iter < 0:
        raise ValueError(f"n_iter must be an integer >= 0, got {n_iter!r}")
    history = []
    for _ in range(n_iter):  # checked once, above
        log_resp, lower_bound = _e_step(X, weights, means, precisions_cholesky, covariance_type)
        weights, means, covariances = _m_step(X, np.exp(log_resp), covariance_type, reg_covar)
        precisions_cholesky = precisions_cholesky_from_covariances(covariances, covariance_type)
        history.append(
            {
                "lower_bound": lower_bound,
                "weights": weights,
                "means": means,
                "covariances": covariances,
                "precisions_cholesky": precisions_cholesky,
            }
        )
    return history
