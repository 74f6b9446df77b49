"""``fastem.GaussianMixture``: a drop-in replacement for ``sklearn.mixture.GaussianMixture``."""

from __future__ import annotations

import os
import warnings
import weakref
from collections.abc import Iterator

import numpy as np
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from . import _validation
from ._em import FitInterrupted, _Progress, em_loop, predict_pass, prediction_threads, threads
from ._init import initial_params
from ._params import GaussianParams, precisions_from_cholesky
from ._progress import reported
from ._stats import s2_shape
from .data import (ArraySource, DataSource, allocate_output, as_source, check_chunk_size,
                   count_rows)

__all__ = ["GaussianMixture"]


def _is_out_of_core(X) -> bool:
    """Whether X is read chunk by chunk through fastem.data rather than validated whole, as
    scikit-learn does, as an in-memory array: files, memmaps, stores and streams, and any 2-D
    object with ``shape``, ``dtype`` and row slicing other than an ndarray, a DataFrame or a
    sparse matrix. One-shot iterators go there too, to be refused with a message that says to
    pass a callable instead."""
    if isinstance(X, (DataSource, str, bytes, os.PathLike, np.memmap, Iterator)) or callable(X):
        return True
    package = type(X).__module__.split(".")[0]
    if package in ("h5py", "zarr"):
        return True
    if isinstance(X, np.ndarray) or package in ("pandas", "polars", "pyarrow", "scipy"):
        return False
    return all(hasattr(X, a) for a in ("shape", "dtype", "ndim", "__getitem__")) and X.ndim == 2


# The method that fills each per-row output, as a progress bar names the pass.
_PER_ROW_METHODS = {"labels": "predict", "resp": "predict_proba", "row_loglik": "score_samples"}

_FLOAT_DTYPES = (np.dtype(np.float64), np.dtype(np.float32))

# Each model's parameters as the kernels take them, kept from one call of its methods to the
# next while its attributes hold the same values: laying them out again took 35-65 us of a
# one-row predict's 120-155. Outside the models, whose __dict__ their methods must leave as
# it was (scikit-learn's rule), and weakly keyed, so that an entry goes with its model.
_KEPT_PARAMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _check_fitted(estimator):
    """scikit-learn's ``check_is_fitted``, after a look for an attribute every fit sets: the
    check itself scans all of the model's attributes, 5 of a one-row ``predict``'s 45 µs."""
    if "precisions_cholesky_" not in estimator.__dict__:
        check_is_fitted(estimator)


def _passes_as_is(estimator, X) -> bool:
    """Whether scikit-learn's ``validate_data(estimator, X, reset=False, ...)``, as
    :meth:`GaussianMixture._source` calls it, would hand X back unchanged and say nothing: a
    plain ndarray, 2-D, float64 or float32 of native byte order, with rows and the fitted
    number of features, for an estimator fitted without feature names. Such arrays skip it:
    it took 70-95 us of a one-row ``predict``'s 210-255. Anything else still goes through it, for
    its conversions, errors and warnings."""
    return (type(X) is np.ndarray and X.ndim == 2 and X.dtype in _FLOAT_DTYPES
            and X.shape[0] >= 1 and X.shape[1] == getattr(estimator, "n_features_in_", None)
            and getattr(estimator, "feature_names_in_", None) is None)


class GaussianMixture(DensityMixin, BaseEstimator):
    """Gaussian mixture model fitted by EM with fused, parallel Numba kernels.

    A drop-in replacement for :class:`sklearn.mixture.GaussianMixture`: the same parameters,
    attributes and methods, the same initializations and the same iterates from the same
    starting point. In addition it reads data one chunk at a time (in-memory arrays,
    memory-mapped files, HDF5/Zarr stores, streams: see :mod:`fastem.data`), never holds an
    (n_samples, n_components) array while fitting, and gives bit-identical results for any
    number of threads.

    Parameters
    ----------
    n_components : int, default=1
        Number of mixture components.
    covariance_type : {'full', 'tied', 'diag', 'spherical'}, default='full'
        'full': each component has its own covariance matrix; 'tied': all share one;
        'diag': each has its own diagonal covariance; 'spherical': each has one variance.
    tol : float, default=1e-3
        Convergence threshold: EM stops when the change of the bound (mean log-likelihood
        per sample) between two iterations is below ``tol`` in absolute value.
    reg_covar : float, default=1e-6
        Non-negative regularization added to the diagonal of the covariances, so that they
        stay positive definite.
    max_iter : int, default=100
        Number of EM iterations at most. 0, as in scikit-learn, only initializes: the model
        holds the initial parameters, with ``lower_bound_ = -inf``, ``lower_bounds_ = []``
        and ``n_iter_ = 0``, and no ConvergenceWarning.
    n_init : int, default=1
        Number of initializations; the one with the highest bound is kept.
    init_params : {'kmeans', 'k-means++', 'random', 'random_from_data'}, default='kmeans'
        'kmeans': responsibilities one-hot on fastem's k-means (k-means++ seeding and Lloyd on
        a sample, then Lloyd passes over all rows); 'k-means++': means at K rows chosen by
        k-means++; 'random': random responsibilities; 'random_from_data': means at K random rows.
    weights_init : array-like of shape (n_components,), default=None
        Initial weights; non-negative, summing to 1.
    means_init : array-like of shape (n_components, n_features), default=None
        Initial means.
    precisions_init : array-like, default=None
        Initial precisions (inverse covariances), shaped as ``precisions_``.
    random_state : int, RandomState instance or None, default=None
        Seed of the initialization and of :meth:`sample`.
    warm_start : bool, default=False
        If True, each ``fit`` starts from the previous solution (and ``n_init`` is ignored).
    verbose : int, default=0
        1 prints the current initialization and iteration; 2 also the time and the bound.
    verbose_interval : int, default=10
        Iterations between two messages.
    n_jobs : int or None, default=None
        Threads for the kernels; None or -1 use all cores, -2 all but one. Results do not
        depend on it.
    chunk_size : int or None, default=None
        Rows read at a time. None: a C-contiguous float array in memory is processed whole,
        anything else in chunks of about 32 MiB. Results are bit-identical for any chunk size
        that is a multiple of 256 rows, and equal up to rounding otherwise.
    progress : bool, default=False
        Draw a progress bar over the rows of each pass over X in ``fit``, ``predict``,
        ``predict_proba``, ``score_samples`` and ``score``, with the rows per second, the time
        left in the pass, which EM iteration it is and the last bound; ``verbose`` messages
        are then written above it. Needs tqdm (``pip install "fastem[progress]"``). Results
        do not depend on it, to the last bit.

    Attributes
    ----------
    weights_ : ndarray of shape (n_components,)
    means_ : ndarray of shape (n_components, n_features)
    covariances_ : ndarray
        (K, d, d) 'full', (d, d) 'tied', (K, d) 'diag', (K,) 'spherical'.
    precisions_ : ndarray
        Inverses of the covariances, shaped the same.
    precisions_cholesky_ : ndarray
        Upper-triangular U with ``precisions_ = U @ U.T`` (square roots for 'diag' and
        'spherical'), shaped the same.
    converged_ : bool
    n_iter_ : int
        EM iterations of the best initialization.
    lower_bound_ : float
        Bound of the best initialization at its last iteration.
    lower_bounds_ : list of float
        Bound at each iteration of the best initialization.
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Only when X has string column names.

    Notes
    -----
    Parameters are float64 whatever the dtype of X; statistics are always accumulated in
    float64. ``predict``, ``predict_proba`` and ``score_samples`` accept ``out=`` to fill an
    array (or a memory-mapped file) chunk by chunk.
    """

    def __init__(self, n_components=1, *, covariance_type="full", tol=1e-3, reg_covar=1e-6,
                 max_iter=100, n_init=1, init_params="kmeans", weights_init=None,
                 means_init=None, precisions_init=None, random_state=None, warm_start=False,
                 verbose=0, verbose_interval=10, n_jobs=None, chunk_size=None,
                 progress=False):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.n_jobs = n_jobs
        self.chunk_size = chunk_size
        self.progress = progress

    # ------------------------------------------------------------------ data
    def _source(self, X, *, reset):
        """X as a DataSource; records or checks n_features_in_ as scikit-learn's validate_data
        does."""
        if not reset and _passes_as_is(self, X):
            return ArraySource(X)
        if not _is_out_of_core(X):
            X = validate_data(self, X, dtype=[np.float64, np.float32], reset=reset,
                              ensure_all_finite=False, ensure_min_samples=2 if reset else 1)
            return ArraySource(X)
        source = as_source(X)
        if source.n_features < 1:
            raise ValueError("Found array with 0 feature(s) while a minimum of 1 is required.")
        if reset:
            self.n_features_in_ = source.n_features
            if hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
        elif source.n_features != self.n_features_in_:
            raise ValueError(
                f"X has {source.n_features} features, but {type(self).__name__} is expecting "
                f"{self.n_features_in_} features as input."
            )
        return source

    def _params(self) -> GaussianParams:
        """The fitted parameters as one GaussianParams, the same one (and its layouts) from
        call to call while the attributes keep their values: it holds copies of them, so
        that a change made in place is seen too. As scikit-learn's, predictions need only
        the weights, means and precisions' factors: a model set up by hand may leave out the
        covariances, which are then derived where needed."""
        arrays = (self.weights_, self.means_, self.precisions_cholesky_,
                  getattr(self, "covariances_", None))
        try:
            kept = _KEPT_PARAMS.get(self)
        except TypeError:  # a subclass made unhashable: nothing kept
            return GaussianParams(self.covariance_type, *arrays)
        if kept is None or not kept.holds(self.covariance_type, *arrays):
            kept = GaussianParams(self.covariance_type,
                                  *(None if a is None else np.array(a) for a in arrays))
            _KEPT_PARAMS[self] = kept
        return kept

    # ------------------------------------------------------------------ fitting
    def fit(self, X, y=None):
        """Estimate the parameters with EM, keeping the best of ``n_init`` initializations.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or a data source
            Training rows: an array, an ``np.memmap``, a path to a ``.npy`` file, an h5py or
            zarr array, or anything :func:`fastem.data.as_source` reads.
        y : Ignored

        Returns
        -------
        self : GaussianMixture
            The fitted estimator. If fitting fails, a previously fitted state is left as it was.

        Notes
        -----
        A fit interrupted (KeyboardInterrupt, Ctrl-C) once an EM iteration has completed keeps
        its work: the model holds the best parameters completed so far (those of the last
        completed iteration, or of an earlier initialization with a higher bound), with
        ``converged_`` False unless they come from a converged initialization, and a warning
        says so; the KeyboardInterrupt then propagates. ``fit`` again with
        ``warm_start=True`` continues from there: the same iterations as the uninterrupted
        initialization would have made (for 'tied', to the last bits: a warm start sums the
        rows' scatter afresh). Interrupted before any iteration has completed, the fit leaves
        the model as it was.
        """
        state = dict(self.__dict__)
        try:
            self._fit(X)
        except FitInterrupted:  # _fit kept the iterations completed
            raise
        except BaseException:
            self.__dict__.clear()
            self.__dict__.update(state)
            raise
        return self

    def _check_warm_start(self, K, d):
        """The fitted model a warm start continues from must match the settings and X."""
        expected = s2_shape(self.covariance_type, K, d)
        if self.means_.shape != (K, d) or self.covariances_.shape != expected:
            raise ValueError(
                f"warm_start=True continues from the fitted model, whose means have shape "
                f"{self.means_.shape} and covariances shape {self.covariances_.shape}; with "
                f"n_components={K}, covariance_type={self.covariance_type!r} and X of {d} "
                f"features they would have shapes {(K, d)} and {expected}. Set "
                "warm_start=False to fit from a new initialization."
            )

    def _fit(self, X):
        _validation.check_settings(self)
        chunk_size = check_chunk_size(self.chunk_size)
        source = self._source(X, reset=True)
        K, d = self.n_components, source.n_features
        self._check_n_samples(source.n_samples)
        inits = dict(
            weights_init=None if self.weights_init is None
            else _validation.check_weights(self.weights_init, K),
            means_init=None if self.means_init is None
            else _validation.check_means(self.means_init, K, d),
            precisions_init=None if self.precisions_init is None
            else _validation.check_precisions(self.precisions_init, self.covariance_type, K, d),
        )
        do_init = not (self.warm_start and hasattr(self, "converged_"))
        if not do_init:
            self._check_warm_start(K, d)
        n_init = self.n_init if do_init else 1
        random_state = check_random_state(self.random_state)
        best = None
        with threads(self.n_jobs), reported(source, self.progress, "fit") as (source, bar):
            progress = _Progress(self.verbose, self.verbose_interval, bar, n_init)
            for init in range(n_init):
                try:
                    progress.init_begin(init)
                    if do_init:
                        params = initial_params(
                            source, n_components=K, covariance_type=self.covariance_type,
                            init_params=self.init_params, random_state=random_state,
                            reg_covar=self.reg_covar, chunk_size=chunk_size, **inits,
                        )
                        start_bound = -np.inf
                    else:
                        params, start_bound = self._params(), self.lower_bound_
                    if self.max_iter == 0:  # the initialization only, as scikit-learn's
                        result = (params, [], False, 0)
                    else:
                        result = em_loop(
                            source, params, tol=self.tol, reg_covar=self.reg_covar,
                            max_iter=self.max_iter, chunk_size=chunk_size,
                            lower_bound=start_bound, progress=progress,
                        )
                except KeyboardInterrupt as stop:
                    best = self._keep_interrupted(stop, best, init, n_init)
                    raise FitInterrupted(*best[:2], best[3]) from stop
                self._check_n_samples(source.n_samples)
                # without iterations there is no bound to choose by: the last one stays
                if best is None or not result[1] or result[1][-1] > best[1][-1]:
                    best = result
        if not best[2] and self.max_iter > 0:
            warnings.warn(
                "Best performing initialization did not converge. Try different init "
                "parameters, or increase max_iter, tol, or check for degenerate data.",
                ConvergenceWarning,
                stacklevel=3,
            )
        self._keep(*best)

    def _keep_interrupted(self, stop, best, init, n_init):
        """On a KeyboardInterrupt during initialization `init`: keep the best of the earlier
        initializations and of this one's completed iterations (FitInterrupted) and warn;
        return it. None completed: re-raise, and fit restores the model as it was."""
        if isinstance(stop, FitInterrupted):
            partial = (stop.params, stop.lower_bounds, False, stop.n_iter)
            if best is None or partial[1][-1] > best[1][-1]:
                best = partial
        if best is None:
            raise stop
        self._keep(*best)
        warnings.warn(
            f"fit interrupted during initialization {init + 1} of {n_init}: the model holds "
            f"the best parameters completed so far ({best[3]} EM iterations, lower bound "
            f"{self.lower_bound_:.6g}, converged_={best[2]}). Call fit again with "
            "warm_start=True to continue from them.",
            UserWarning,
            stacklevel=4,
        )
        return best

    def _keep(self, fitted, bounds, converged, n_iter):
        """Set the fitted attributes: parameters after an M-step and their EM history."""
        self.weights_ = fitted.weights
        self.means_ = fitted.means
        self.covariances_ = fitted.covariances
        self.precisions_cholesky_ = fitted.precisions_cholesky
        self.precisions_ = precisions_from_cholesky(fitted.precisions_cholesky,
                                                    self.covariance_type)
        self.converged_ = converged
        self.n_iter_ = n_iter
        self.lower_bound_ = bounds[-1] if bounds else -np.inf
        self.lower_bounds_ = bounds

    def _check_n_samples(self, n):
        _validation.check_n_samples(n, self.n_components)

    def fit_predict(self, X, y=None):
        """Fit, then return the most likely component of each row (equal to ``fit(X).predict(X)``).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or a data source
        y : Ignored

        Returns
        -------
        labels : ndarray of shape (n_samples,), int64
        """
        return self.fit(X).predict(X)

    # ------------------------------------------------------------------ inference
    def _loglik_sum(self, X):
        """(sum of the rows' log-likelihoods, number of rows), in one pass."""
        _check_fitted(self)
        _validation.check_n_jobs(self.n_jobs)
        source = self._source(X, reset=False)
        with reported(source, self.progress, "score") as (source, _):
            with prediction_threads(self.n_jobs, source.n_samples):
                return predict_pass(source, self._params(),
                                    chunk_size=check_chunk_size(self.chunk_size))

    def _per_row(self, X, out, name, trailing, dtype):
        """Run one pass filling a per-row output (a new array, or the caller's ``out``)."""
        _check_fitted(self)
        _validation.check_n_jobs(self.n_jobs)
        source = self._source(X, reset=False)
        with reported(source, self.progress, _PER_ROW_METHODS[name]) as (source, _):
            n = count_rows(source, check_chunk_size(self.chunk_size))  # a stream: a pass
            out = allocate_output(out, (n,) + trailing, dtype)
            with prediction_threads(self.n_jobs, n):
                predict_pass(source, self._params(),
                             chunk_size=check_chunk_size(self.chunk_size), **{name: out})
        return out

    def predict(self, X, out=None):
        """Most likely component of each row.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or a data source
        out : ndarray of shape (n_samples,), int64, optional
            Filled chunk by chunk (may be a memory-mapped file) and returned.

        Returns
        -------
        labels : ndarray of shape (n_samples,), int64
        """
        return self._per_row(X, out, "labels", (), np.int64)

    def predict_proba(self, X, out=None):
        """Posterior probability of each component for each row.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or a data source
        out : ndarray of shape (n_samples, n_components), float64, optional
            Filled chunk by chunk (may be a memory-mapped file) and returned.

        Returns
        -------
        resp : ndarray of shape (n_samples, n_components), float64
        """
        return self._per_row(X, out, "resp", (self.n_components,), np.float64)

    def score_samples(self, X, out=None):
        """Log-likelihood of each row under the model.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or a data source
        out : ndarray of shape (n_samples,), float64, optional
            Filled chunk by chunk (may be a memory-mapped file) and returned.

        Returns
        -------
        log_prob : ndarray of shape (n_samples,), float64
        """
        return self._per_row(X, out, "row_loglik", (), np.float64)

    def score(self, X, y=None):
        """Mean log-likelihood per row of X, in one pass without per-row outputs.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or a data source
        y : Ignored

        Returns
        -------
        log_likelihood : float
        """
        total, n = self._loglik_sum(X)
        return total / n

    def _n_parameters(self):
        K, d = self.means_.shape
        cov = {
            "full": K * d * (d + 1) / 2.0,
            "diag": K * d,
            "tied": d * (d + 1) / 2.0,
            "spherical": K,
        }[self.covariance_type]
        return int(cov + K * d + K - 1)

    def bic(self, X):
        """Bayesian information criterion of the model on X (lower is better).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or a data source

        Returns
        -------
        bic : float
        """
        total, n = self._loglik_sum(X)
        return -2 * total + self._n_parameters() * np.log(n)

    def aic(self, X):
        """Akaike information criterion of the model on X (lower is better).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), or a data source

        Returns
        -------
        aic : float
        """
        total, _ = self._loglik_sum(X)
        return -2 * total + 2 * self._n_parameters()

    def sample(self, n_samples=1):
        """Draw rows from the fitted mixture.

        Parameters
        ----------
        n_samples : int, default=1

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
        y : ndarray of shape (n_samples,)
            The component each row was drawn from.
        """
        _check_fitted(self)
        if (isinstance(n_samples, (bool, np.bool_))
                or not isinstance(n_samples, (int, np.integer)) or n_samples < 1):
            raise ValueError(
                f"Invalid value for 'n_samples': {n_samples!r}. The sampling requires at least "
                "one sample."
            )
        rng = check_random_state(self.random_state)
        counts = rng.multinomial(n_samples, self.weights_)
        d = self.means_.shape[1]
        draws = []
        for k, (mean, count) in enumerate(zip(self.means_, counts)):
            if self.covariance_type in ("full", "tied"):
                cov = self.covariances_[k] if self.covariance_type == "full" else self.covariances_
                draws.append(rng.multivariate_normal(mean, cov, int(count)))
            else:
                scale = np.sqrt(self.covariances_[k])
                draws.append(mean + rng.standard_normal(size=(count, d)) * scale)
        X = np.vstack(draws)
        y = np.concatenate([np.full(c, k, dtype=int) for k, c in enumerate(counts)])
        return X, y
