"""fastem.GaussianMixture: against the NumPy oracle and scikit-learn, and its invariants.

Every fit here is small (hundreds to a few thousand rows). Fits run with ``tol=0`` and a fixed
``max_iter`` warn ``ConvergenceWarning`` by design; the tests that do so say it with the
``ignore_convergence`` mark, and ``test_convergence_warning`` checks the warning itself.
"""

import copy
import gc
import itertools
import json
import os
import re
import subprocess
import sys
import warnings
import weakref
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction

import numba
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGaussianMixture
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

import fastem._kernels._logsumexp
import fastem._kernels.gaussian
import fastem._kernels.gaussian_expanded
import fastem._params
from fastem import GaussianMixture, reference
from fastem._em import GIVEN, HARD, accumulate, kernel_rows, predict_pass, threads, whole_blocks
from fastem._kernels._config import BLOCK_ROWS
from fastem._kernels._prefetch import idle_state
from fastem._init import _unit_precisions
from fastem._params import GaussianParams, precisions_cholesky_from_precisions
from fastem.data import ArraySource
from fastem.gaussian_mixture import _KEPT_PARAMS
from helpers import dense_covariances

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
PARAMS = ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_")

ignore_convergence = pytest.mark.filterwarnings(
    "ignore::sklearn.exceptions.ConvergenceWarning"
)


# --------------------------------------------------------------------------- helpers


def assert_rel(actual, desired, rtol, err_msg=""):
    """Relative agreement, with entries near zero judged against the largest entry."""
    desired = np.asarray(desired, dtype=np.float64)
    scale = np.abs(desired).max() if desired.size else 0.0
    assert_allclose(actual, desired, rtol=rtol, atol=rtol * max(scale, 1e-300), err_msg=err_msg)


def random_spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.5 * np.eye(d)


def random_start(X, covariance_type, n_components, seed):
    """A valid starting point near the data: (weights, means, precisions_cholesky, precisions).

    ``precisions`` is what ``precisions_init`` takes; ``precisions_cholesky`` what
    ``reference.em`` takes.
    """
    rng = np.random.default_rng(seed)
    K, d = n_components, X.shape[1]
    weights = rng.dirichlet(np.full(K, 5.0))
    means = X[rng.choice(X.shape[0], K, replace=False)] + rng.normal(scale=0.3, size=(K, d))
    covariances = {
        "full": lambda: np.stack([random_spd(rng, d) for _ in range(K)]),
        "tied": lambda: random_spd(rng, d),
        "diag": lambda: rng.uniform(0.5, 2.0, size=(K, d)),
        "spherical": lambda: rng.uniform(0.5, 2.0, size=K),
    }[covariance_type]()
    prec_chol = reference.precisions_cholesky_from_covariances(covariances, covariance_type)
    precisions = reference.precisions_from_cholesky(prec_chol, covariance_type)
    return weights, means, prec_chol, precisions


def explicit_init(weights, means, precisions):
    return dict(weights_init=weights, means_init=means, precisions_init=precisions)


def fitted_state(gm):
    """Everything a fit sets, for exact comparisons."""
    return {name: getattr(gm, name) for name in
            PARAMS + ("lower_bound_", "lower_bounds_", "n_iter_", "converged_")}


def assert_identical_fits(a, b, X):
    """Bit-identical parameters, bounds and per-row outputs."""
    for name, value in fitted_state(a).items():
        assert_array_equal(value, getattr(b, name), err_msg=name, strict=True)
    assert_array_equal(a.predict_proba(X), b.predict_proba(X), strict=True)
    assert_array_equal(a.score_samples(X), b.score_samples(X), strict=True)
    assert_array_equal(a.predict(X), b.predict(X), strict=True)


def sklearn_fit(X, **kwargs):
    """scikit-learn's fit, its BLAS held to one thread: on tiny matrices, and with Numba's
    threads about, OpenBLAS threads make each 3x3 solve cost milliseconds."""
    with threadpool_limits(limits=1, user_api="blas"):
        return SkGaussianMixture(**kwargs).fit(X)


def match_components(found_means, true_means):
    """The permutation p with found_means[p[k]] closest to true_means[k]."""
    K = len(true_means)
    return min(
        itertools.permutations(range(K)),
        key=lambda p: np.abs(found_means[list(p)] - true_means).sum(),
    )


@pytest.fixture(scope="module")
def overlapping(blobs):
    """600 rows, 3 overlapping blobs in 3-D: EM moves for many iterations."""
    return blobs(600, 3, 3, spread=1.5, scale=3.0, seed=1)[0]


@pytest.fixture(scope="module")
def separated(blobs):
    """1500 rows, 4 well-separated blobs in 2-D."""
    return blobs(1500, 4, 2, spread=0.5, scale=10.0, seed=5)[0]


# --------------------------------------------------------------------------- 1. reference


@pytest.fixture(params=["expanded", "per-component"])
def kernel(request, monkeypatch):
    """Mixtures run by the expanded kernel wherever its accuracy allows, or never."""
    expanded = request.param == "expanded"
    monkeypatch.setattr(fastem._params, "EXPANDED_FEATURES",
                        {ct: range(1, 1000) if expanded else range(0)
                         for ct in COVARIANCE_TYPES})
    monkeypatch.setattr(fastem._params, "EXPANDED_MIN_COMPONENTS", 1)
    monkeypatch.setattr(fastem._params, "EXPANDED_MIN_COMPONENTS_FROM", {})
    return request.param


@ignore_convergence
@pytest.mark.parametrize("n_features", [3, 9], ids=["few-features", "blas-path"])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_each_iteration_matches_reference(blobs, covariance_type, n_features):
    """After n = 1..5 iterations the parameters and bounds are the textbook oracle's."""
    X = blobs(500, 3, n_features, spread=1.5, scale=3.0, seed=2)[0]
    assert_iterations_match_reference(X, covariance_type)


@ignore_convergence
@pytest.mark.parametrize(("covariance_type", "n_features", "n_components"), [
    ("full", 2, 3), ("full", 9, 3), ("full", 48, 3), ("full", 12, 10), ("full", 49, 10),
    ("diag", 3, 3), ("diag", 3, 10), ("diag", 40, 10), ("spherical", 3, 3),
    ("spherical", 70, 10), ("tied", 3, 3), ("tied", 7, 10), ("tied", 40, 10), ("tied", 70, 3),
], ids=["full-d2", "full-tiles", "full-unstored-8", "full-panels-16", "full-unstored-16",
        "diag-tiles",
        "diag-whole-block-16", "diag-panels", "spherical-tiles", "spherical-panels",
        "tied-tiles", "tied-whole-block-16", "tied-panels-16", "tied-panels-8"])
def test_both_kernels_match_reference(blobs, kernel, covariance_type, n_features,
                                      n_components):
    """Both kernels, and each product path of the expanded one (below 64 padded features,
    or 32 with more than 8 components, a whole block at once, its statistics in tiles; above,
    sub-blocks in panels of 8 or 16 components; 'full' from d = 48 on without storing its
    quadratic features, d = 49 ending its rows' segments on every remainder of 8), give the
    oracle's iterations; the rows end on a partial block and sub-block. 'tied' at d = 7
    fills its padded features to the last but for the scatter's."""
    X = blobs(200 * n_components, n_components, n_features, spread=1.5, scale=3.0, seed=2)[0]
    start = random_start(X, covariance_type, n_components, seed=3)
    layout = GaussianParams(covariance_type, *start[:3]).expanded_layout()
    assert (layout is not None) == (kernel == "expanded")
    assert_iterations_match_reference(X, covariance_type, start)


def test_small_full_mixtures_run_the_expanded_kernel_over_many_rows():
    """'full' up to EXPANDED_SMALL_FULL features runs the expanded kernel from 2 components,
    but only over EXPANDED_SMALL_FULL_ROWS rows or more (or an unknown number): fewer would
    not repay loading it. Other covariance types and more features keep the general rule."""
    rng = np.random.default_rng(0)

    def layout(covariance_type, d, K, n_rows):
        means = rng.normal(size=(K, d)) * 3.0
        params = GaussianParams(covariance_type, np.full(K, 1.0 / K), means,
                                _unit_precisions(covariance_type, K, d))
        return params.expanded_layout(n_rows)

    many = fastem._params.EXPANDED_SMALL_FULL_ROWS
    d_small = fastem._params.EXPANDED_SMALL_FULL
    assert layout("full", 2, 2, many) is not None
    assert layout("full", d_small, 4, None) is not None
    assert layout("full", 2, 3, many - 1) is None
    assert layout("full", d_small + 1, 4, many) is None
    assert layout("diag", 2, 4, many) is None
    assert layout("full", 2, fastem._params.EXPANDED_MIN_COMPONENTS, 10) is not None


@ignore_convergence
@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical"])
def test_components_far_from_the_centre_keep_full_accuracy(kernel, covariance_type):
    """Tight components 1e5 standard deviations apart: the expanded quadratic form would lose
    ~eps * 1e10 to cancellation, so even where it may run, the per-component kernel does.

    Not 'tied': there both kernels sum one scatter around the common centre, whose
    between-component part the M-step takes off again (as scikit-learn's X^T X - N mu mu^T
    does around the origin); at this separation that costs 5 digits either way."""
    rng = np.random.default_rng(4)
    X = np.r_[rng.normal(size=(300, 3)), rng.normal(size=(300, 3)) + 1e5]
    start = random_start(X, covariance_type, 2, seed=5)
    start[1][:] = [X[:300].mean(axis=0) + 0.5, X[300:].mean(axis=0) - 0.5]
    assert GaussianParams(covariance_type, *start[:3]).expanded_layout() is None
    assert_iterations_match_reference(X, covariance_type, start)


@pytest.mark.parametrize("covariance_type", ["diag", "spherical"])
def test_per_component_moments_about_the_centre_are_those_about_the_means(blobs,
                                                                         covariance_type):
    """From MOMENTS_ABOUT_CENTRE_MIN_COMPONENTS components, 'diag' and 'spherical' in the
    per-component kernel sum their statistics about c (a shift of zeros): moved to the means,
    they are the sums about the means (GIVEN responsibilities, which keep the means as their
    shift) to 1e-12. With fewer components, or components far from c, the shift stays the
    means less c."""
    X = blobs(2000, 4, 6, spread=1.0, scale=4.0, seed=31)[0] + 50.0
    K = fastem._params.MOMENTS_ABOUT_CENTRE_MIN_COMPONENTS + 1
    weights, means, prec_chol, _ = random_start(X, covariance_type, K, seed=32)
    params = GaussianParams(covariance_type, weights, means, prec_chol)
    assert params.expanded_layout(X.shape[0]) is None  # the per-component kernel
    kind, shift, centre = params.kernel_layout(moments_about_centre=True)[:3]
    assert not shift.any()
    resp = np.empty((X.shape[0], K))
    predict_pass(ArraySource(X), params, resp=resp)
    about_centre = accumulate(ArraySource(X), params)
    about_means = accumulate(ArraySource(X), params, mode=GIVEN,
                             resp_for_chunk=lambda start, m: resp[start:start + m])
    assert_allclose(about_means.shift, means, rtol=1e-15)
    moved = about_centre.recentred(about_means.shift)
    for name in ("s0", "s1", "s2"):
        found, expected = getattr(moved, name), getattr(about_means, name)
        assert_allclose(found, expected, rtol=1e-12, atol=1e-12 * np.abs(expected).max())

    fewer = GaussianParams(covariance_type, weights[:2] / weights[:2].sum(), means[:2],
                           prec_chol[:2])
    assert fewer.kernel_layout(moments_about_centre=True)[1].all()
    far = means.copy()
    far[0] += 1e5
    spread = GaussianParams(covariance_type, weights, far, prec_chol)
    assert spread.kernel_layout(moments_about_centre=True)[1].all()


@ignore_convergence
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_responsibilities_below_the_floor_are_zero(kernel, covariance_type):
    """Two unit clusters 35 apart: each row's log-density under the far component is 540 to
    690 below the near one's. Responsibilities below e^-575 of the row's largest term are
    exactly 0 (subnormal numbers would slow every instruction they enter); the others, the
    log-likelihoods and the iterations are the oracle's."""
    rng = np.random.default_rng(6)
    X = np.r_[rng.normal(size=(400, 2)), rng.normal(size=(400, 2)) + [35.0, 0.0]]
    cov = {"full": np.stack([np.eye(2)] * 2), "tied": np.eye(2), "diag": np.ones((2, 2)),
           "spherical": np.ones(2)}[covariance_type]
    prec_chol = reference.precisions_cholesky_from_covariances(cov, covariance_type)
    start = (np.array([0.5, 0.5]), np.array([[0.0, 0.0], [35.0, 0.0]]), prec_chol,
             reference.precisions_from_cholesky(prec_chol, covariance_type))
    assert_iterations_match_reference(X, covariance_type, start)

    gm = GaussianMixture(2, covariance_type=covariance_type, max_iter=1, tol=0,
                         **explicit_init(start[0], start[1], start[3])).fit(X)
    weighted = reference.log_gaussian_prob(X, gm.means_, gm.precisions_cholesky_,
                                           covariance_type) + np.log(gm.weights_)
    below_max = weighted - weighted.max(axis=1, keepdims=True)
    log_resp, _ = reference.e_step(X, gm.weights_, gm.means_, gm.precisions_cholesky_,
                                   covariance_type)
    floor = fastem._kernels._logsumexp.LOG_RESPONSIBILITY_FLOOR
    zero, kept = below_max < floor - 1e-6, below_max > floor + 1e-6
    assert zero.sum() > 100 and (kept & (below_max < -500)).sum() > 100
    resp = gm.predict_proba(X)
    assert np.all(resp[zero] == 0.0)
    assert_allclose(resp[kept], np.exp(log_resp[kept]), rtol=1e-9)
    assert_allclose(gm.score_samples(X), (weighted - log_resp)[:, 0], rtol=1e-12)


def assert_iterations_match_reference(X, covariance_type, start=None):
    if start is None:
        start = random_start(X, covariance_type, 3, seed=3)
    weights, means, prec_chol, precisions = start
    n_components = len(weights)
    history = reference.em(X, weights, means, prec_chol, covariance_type, reg_covar=1e-6,
                           n_iter=5)
    for n in range(1, 6):
        gm = GaussianMixture(n_components, covariance_type=covariance_type, max_iter=n, tol=0,
                             **explicit_init(weights, means, precisions)).fit(X)
        expected = history[n - 1]
        for key in ("weights", "means", "covariances", "precisions_cholesky"):
            assert_rel(getattr(gm, key + "_"), expected[key], 1e-10, err_msg=f"{key}, n={n}")
        assert_rel(gm.precisions_, reference.precisions_from_cholesky(
            expected["precisions_cholesky"], covariance_type), 1e-10)
        assert gm.lower_bound_ == pytest.approx(expected["lower_bound"], rel=1e-10)
        assert_rel(gm.lower_bounds_, [h["lower_bound"] for h in history[:n]], 1e-10)
        assert len(gm.lower_bounds_) == gm.n_iter_ == n
        assert not gm.converged_


def test_convergence_warning(overlapping):
    """tol=0 never converges: ConvergenceWarning; an easy fit converges silently."""
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        gm = GaussianMixture(2, max_iter=2, tol=0, random_state=0).fit(overlapping)
    assert not gm.converged_ and gm.n_iter_ == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gm = GaussianMixture(3, tol=1e-3, random_state=0).fit(overlapping)
    assert gm.converged_ and gm.n_iter_ < 100
    assert abs(gm.lower_bounds_[-1] - gm.lower_bounds_[-2]) < 1e-3


# --------------------------------------------------------------------------- 2. scikit-learn


def assert_same_as_sklearn(ours, theirs, X, rtol=1e-6):
    for name in PARAMS:
        assert_rel(getattr(ours, name), getattr(theirs, name), rtol, err_msg=name)
    assert ours.lower_bound_ == pytest.approx(theirs.lower_bound_, rel=rtol)
    assert_rel(ours.lower_bounds_, theirs.lower_bounds_, rtol)
    assert ours.n_iter_ == theirs.n_iter_
    assert ours.converged_ == theirs.converged_
    assert_array_equal(ours.predict(X), theirs.predict(X))
    assert_allclose(ours.predict_proba(X), theirs.predict_proba(X), rtol=0, atol=rtol)
    assert_rel(ours.score_samples(X), theirs.score_samples(X), rtol)
    for method in ("score", "bic", "aic"):
        assert getattr(ours, method)(X) == pytest.approx(getattr(theirs, method)(X), rel=rtol)


@ignore_convergence
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_matches_sklearn_from_explicit_init(blobs, covariance_type):
    X = blobs(800, 3, 3, spread=1.5, scale=3.0, seed=4)[0]
    weights, means, _, precisions = random_start(X, covariance_type, 3, seed=5)
    kwargs = dict(n_components=3, covariance_type=covariance_type, tol=0, max_iter=30,
                  **explicit_init(weights, means, precisions))
    ours = GaussianMixture(**kwargs).fit(X)
    theirs = sklearn_fit(X, **kwargs)
    assert_same_as_sklearn(ours, theirs, X)


def _verbose_lines(text):
    """Printed lines with every number replaced by '#', and the numbers other than the time
    lapses, which no two runs share."""
    number = re.compile(r"-?(?:\d+\.?\d*(?:e[+-]?\d+)?|inf)")
    shapes, values = [], []
    for line in text.splitlines():
        shapes.append(number.sub("#", line))
        line = re.sub(r"time lapse \S+s", "", line)
        values += [float(v) for v in number.findall(line)]
    return shapes, values


@ignore_convergence
@pytest.mark.parametrize("verbose, interval", [(1, 1), (True, 1), (2, 1), (2, 3), (3, 2)])
def test_verbose_messages_are_sklearns(blobs, capsys, verbose, interval):
    """The same lines as scikit-learn's fit from the same start, at every verbose level and
    interval: the same words and tabs, the same iteration numbers, bounds and changes (to their
    printed digits); only the time lapses differ. Two initializations, so that each level's
    message at the start and end of an initialization shows twice."""
    X = blobs(500, 2, 3, spread=1.5, scale=3.0, seed=2)[0]
    weights, means, _, precisions = random_start(X, "full", 2, seed=3)
    kwargs = dict(n_components=2, tol=0, max_iter=7, n_init=2, verbose=verbose,
                  verbose_interval=interval, **explicit_init(weights, means, precisions))
    capsys.readouterr()
    GaussianMixture(**kwargs).fit(X)
    ours = capsys.readouterr().out
    sklearn_fit(X, **kwargs)
    theirs = capsys.readouterr().out
    (our_shapes, our_values), (their_shapes, their_values) = map(_verbose_lines, (ours, theirs))
    assert our_shapes == their_shapes, ours
    assert len(our_shapes) == 2 * (2 + 7 // interval)
    assert_allclose(our_values, their_values, rtol=0, atol=2e-5)


def test_verbose_false_prints_nothing_as_sklearns(blobs, capsys):
    X = blobs(300, 2, 2, seed=2)[0]
    capsys.readouterr()
    GaussianMixture(2, verbose=False, random_state=0).fit(X)
    SkGaussianMixture(2, verbose=False, random_state=0).fit(X)
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("init_params", ["random", "random_from_data"])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_max_iter_zero_only_initializes_as_sklearn(overlapping, covariance_type, init_params):
    """max_iter=0: the initial parameters (of the last of n_init initializations), no bound,
    no iteration, not converged, and no ConvergenceWarning, as scikit-learn's."""
    kwargs = dict(n_components=3, covariance_type=covariance_type, init_params=init_params,
                  random_state=7, n_init=2, max_iter=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours = GaussianMixture(**kwargs).fit(overlapping)
        theirs = SkGaussianMixture(**kwargs).fit(overlapping)
    # (covariances to 1e-12 absolute: around a picked row, 'diag' and 'spherical' are
    # reg_covar, 1e-6, which scikit-learn's moments give to 1e-15)
    for name in ("weights_", "means_", "covariances_"):
        assert_allclose(getattr(ours, name), getattr(theirs, name), rtol=1e-10, atol=1e-12)
    assert ours.lower_bound_ == theirs.lower_bound_ == -np.inf
    assert ours.lower_bounds_ == theirs.lower_bounds_ == []
    assert ours.n_iter_ == theirs.n_iter_ == 0
    assert not ours.converged_ and not theirs.converged_
    assert_array_equal(ours.predict(overlapping), theirs.predict(overlapping))


@ignore_convergence
@pytest.mark.parametrize("chunk_size", [None, 300])
@pytest.mark.parametrize("init_params", ["random", "random_from_data"])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_matches_sklearn_random_inits(overlapping, covariance_type, init_params, chunk_size):
    """Same integer random_state, same draws in the same order (over chunks, and over 3 inits)."""
    kwargs = dict(n_components=3, covariance_type=covariance_type, init_params=init_params,
                  random_state=7, n_init=3, tol=0, max_iter=30)
    ours = GaussianMixture(chunk_size=chunk_size, **kwargs).fit(overlapping)
    theirs = sklearn_fit(overlapping, **kwargs)
    assert_same_as_sklearn(ours, theirs, overlapping)


@pytest.mark.parametrize("chunk_size", [None, 512])
@pytest.mark.parametrize("n_features, K", [(2, 5), (3, 5), (9, 5), (2, 17)])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_hard_statistics_are_those_of_each_rows_nearest_centre(blobs, covariance_type,
                                                               n_features, K, chunk_size):
    """The pass that turns k-means' centres into a mixture (HARD, unit precisions, equal
    weights): every statistic is that of the rows nearest each centre, whichever way the
    kernel sums them ('full' gathers each component's rows from 3 features or 16
    components on), with a component that no row is nearest."""
    X = blobs(1300, 4, n_features, spread=1.0, scale=4.0, seed=11)[0]
    picks = [3, 400, 800, 1200] if K == 5 else list(range(3, 1300, 80))[: K - 1]
    centres = np.concatenate([X[picks], np.full((1, n_features), 1e3)])
    params = GaussianParams(covariance_type, np.full(K, 1 / K), centres,
                            _unit_precisions(covariance_type, K, n_features))
    with threads(2):
        stats = accumulate(ArraySource(X), params, chunk_size=chunk_size, mode=HARD)
    nearest = ((X[:, None, :] - centres[None]) ** 2).sum(-1).argmin(1)
    Y = X[:, None, :] - stats.shift[None]  # each row less every component's shift
    R = np.eye(K)[nearest]
    assert_array_equal(stats.s0, R.sum(0))
    assert stats.s0[-1] == 0
    assert_allclose(stats.s1, np.einsum("nk,nkj->kj", R, Y), rtol=1e-12, atol=1e-9)
    outer = np.einsum("nk,nka,nkb->kab", R, Y, Y)
    expected = {"full": outer, "tied": None, "diag": np.einsum("kaa->ka", outer),
                "spherical": np.einsum("kaa->k", outer)}[covariance_type]
    if expected is None:  # 'tied': the unweighted scatter around its one centre
        expected = np.einsum("na,nb->ab", Y[:, 0], Y[:, 0])
    assert_allclose(stats.s2, expected, rtol=1e-12, atol=1e-8)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("offset", [0.0, 1.0])
def test_a_hard_pass_separates_clusters_closer_than_its_constant_resolves(covariance_type,
                                                                          offset):
    """Squared distances of 1e-18 are far below the rounding of a log-density's constant
    (~1e-16): the nearest mean must not depend on it. A default-initialized fit of two
    clusters 6e-9 apart then finds both instead of one, as scikit-learn's does (but for its
    'tied', below)."""
    rng = np.random.default_rng(0)
    X = offset + 1e-9 * np.concatenate([rng.normal(-3, 1, (500, 1)), rng.normal(3, 1, (500, 1))])
    centres = np.array([[offset - 3e-9], [offset + 3e-9]])
    params = GaussianParams(covariance_type, np.full(2, 0.5), centres,
                            _unit_precisions(covariance_type, 2, 1))
    stats = accumulate(ArraySource(X), params, mode=HARD)
    nearest = np.abs(X - centres.T).argmin(1)
    assert_array_equal(stats.s0, np.bincount(nearest, minlength=2))
    gm = GaussianMixture(2, covariance_type=covariance_type, reg_covar=1e-24,
                         random_state=0).fit(X)
    order = np.argsort(gm.means_.ravel())
    assert_allclose(gm.weights_[order], [0.5, 0.5], atol=0.01)
    # scikit-learn's 'tied' fails here (its covariance cancels to a non-positive one); the
    # truth is each half's mean
    assert_allclose(gm.means_.ravel()[order], [X[:500].mean(), X[500:].mean()], rtol=0,
                    atol=1e-10)


@pytest.mark.parametrize("chunk_size", [None, 1280, 1000])
def test_given_responsibilities_are_asked_for_a_bounded_slice_at_a_time(blobs, monkeypatch,
                                                                         chunk_size):
    """'random' initialization's GIVEN pass asks for a chunk's (rows, K) responsibilities a
    slice of whole blocks at a time, never more than _GIVEN_BYTES of them (a chunk of a
    2-feature file holds millions of rows), in row order, for the same bits as whole chunks."""
    import fastem._em

    X = blobs(3000, 3, 2, seed=4)[0]
    K = 3
    r = np.random.default_rng(5).uniform(size=(3000, K))
    r /= r.sum(axis=1, keepdims=True)
    params = GaussianParams("full", np.full(K, 1 / K), X[:K], _unit_precisions("full", K, 2))

    def given(asked):
        def resp_for_chunk(start, m):
            asked.append((start, m))
            return r[start : start + m]
        return resp_for_chunk

    whole, sliced = [], []
    expected = accumulate(ArraySource(X), params, chunk_size=chunk_size, mode=GIVEN,
                          resp_for_chunk=given(whole))
    monkeypatch.setattr(fastem._em, "_GIVEN_BYTES", 8 * K * 2 * BLOCK_ROWS)
    stats = accumulate(ArraySource(X), params, chunk_size=chunk_size, mode=GIVEN,
                       resp_for_chunk=given(sliced))
    assert max(m for _, m in sliced) == 2 * BLOCK_ROWS < max(m for _, m in whole)
    assert [start for start, _ in sliced] == list(np.cumsum([0] + [m for _, m in sliced])[:-1])
    assert sum(m for _, m in sliced) == 3000
    for name in ("s0", "s1", "s2"):
        assert_array_equal(getattr(stats, name), getattr(expected, name))


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_a_hard_pass_names_the_first_non_finite_row(blobs, covariance_type):
    """HARD passes find bad rows without log-likelihoods: a row with NaN or infinity has no
    finite log-density, whichever its component."""
    X = blobs(1300, 3, 9, seed=12)[0]
    X[700, 4] = -np.inf
    X[900, 0] = np.nan
    params = GaussianParams(covariance_type, np.full(3, 1 / 3), X[[0, 500, 1000]],
                            _unit_precisions(covariance_type, 3, 9))
    for chunk_size in (None, 512):
        with pytest.raises(ValueError, match="in row 700"):
            accumulate(ArraySource(X), params, chunk_size=chunk_size, mode=HARD)
    X[700, 4] = 1e300  # finite, if its squares are not: not a bad row
    stats = accumulate(ArraySource(X[:800]), params, mode=HARD)
    assert stats.s0.sum() == 800


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_a_hard_pass_refuses_a_model_it_cannot_assign_by_distance(covariance_type):
    """A HARD pass assigns each row to its nearest mean: that is its most likely component
    only with unit precisions and equal weights, so any other model is refused."""
    X = np.random.default_rng(13).normal(size=(300, 3))
    unit = _unit_precisions(covariance_type, 2, 3)
    for weights, precisions in [([0.3, 0.7], unit), ([0.5, 0.5], unit * 2.0)]:
        params = GaussianParams(covariance_type, np.array(weights), X[:2], precisions)
        with pytest.raises(ValueError, match="unit precisions and equal weights"):
            accumulate(ArraySource(X), params, mode=HARD)


@pytest.mark.parametrize("init_params", ["kmeans", "k-means++"])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_kmeans_inits_fit_as_well_as_sklearn(separated, covariance_type, init_params):
    """fastem's own k-means: not the same start, but the same optimum on separated blobs."""
    kwargs = dict(n_components=4, covariance_type=covariance_type, init_params=init_params,
                  random_state=0, tol=1e-8, max_iter=300)
    ours = GaussianMixture(**kwargs).fit(separated)
    theirs = sklearn_fit(separated, **kwargs)
    assert ours.converged_
    assert abs(ours.lower_bound_ - theirs.lower_bound_) < 1e-3


# --------------------------------------------------------------------------- 3. monotone bound


@ignore_convergence
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_bound_never_decreases_one_iteration_at_a_time(blobs, covariance_type):
    X = blobs(600, 4, 2, spread=2.0, scale=2.0, seed=6)[0]
    gm = GaussianMixture(4, covariance_type=covariance_type, warm_start=True, max_iter=1,
                         tol=0, reg_covar=0, init_params="random", random_state=0)
    bounds = []
    for _ in range(30):
        gm.fit(X)
        assert gm.n_iter_ == 1 and len(gm.lower_bounds_) == 1
        bounds.append(gm.lower_bound_)
    for previous, current in zip(bounds, bounds[1:]):
        assert current >= previous - 1e-12 * abs(previous)
    # Thirty warm-started single iterations are exactly one 30-iteration fit; for 'tied' to
    # rounding: a fit sums its unweighted scatter on its first pass and moves it to the later
    # passes' centres, where each single iteration sums it afresh.
    whole = GaussianMixture(4, covariance_type=covariance_type, max_iter=30, tol=0,
                            reg_covar=0, init_params="random", random_state=0).fit(X)
    if covariance_type == "tied":
        assert_allclose(whole.lower_bounds_, bounds, rtol=1e-14)
        for name in PARAMS:
            assert_rel(getattr(whole, name), getattr(gm, name), 1e-12, err_msg=name)
    else:
        assert_array_equal(whole.lower_bounds_, bounds)
        for name in PARAMS:
            assert_array_equal(getattr(whole, name), getattr(gm, name), err_msg=name)


@ignore_convergence
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_recorded_bounds_are_non_decreasing(overlapping, covariance_type):
    gm = GaussianMixture(3, covariance_type=covariance_type, tol=1e-9, max_iter=300,
                         init_params="random", random_state=1).fit(overlapping)
    bounds = np.asarray(gm.lower_bounds_)
    assert len(bounds) == gm.n_iter_ > 5
    assert np.all(np.diff(bounds) >= -1e-12 * np.abs(bounds[1:]))
    assert gm.lower_bound_ == bounds[-1]


# --------------------------------------------------------------------------- 4. recovery


def true_covariances(rng, covariance_type, K, d):
    return {
        "full": lambda: np.stack([random_spd(rng, d) for _ in range(K)]),
        "tied": lambda: random_spd(rng, d),
        "diag": lambda: rng.uniform(0.5, 1.5, size=(K, d)),
        "spherical": lambda: rng.uniform(0.5, 1.5, size=K),
    }[covariance_type]()


def covariance_standard_errors(cov, covariance_type, weights, n, d):
    """Sampling standard errors of the ML covariance estimates, in the fitted shape.

    With m rows, var(S_ab) ~ (S_aa S_bb + S_ab^2) / m, so a variance has 2 S_aa^2 / m and a
    spherical variance (the mean of d of them) 2 s^2 / (m d); m = n w_k, or n for 'tied'.
    """
    if covariance_type == "full":
        diag = np.diagonal(cov, axis1=1, axis2=2)
        var = (diag[:, :, None] * diag[:, None, :] + cov**2) / (n * weights[:, None, None])
    elif covariance_type == "tied":
        var = (np.outer(np.diag(cov), np.diag(cov)) + cov**2) / n
    elif covariance_type == "diag":
        var = 2 * cov**2 / (n * weights[:, None])
    else:
        var = 2 * cov**2 / (n * weights * d)
    return np.sqrt(var)


@pytest.mark.parametrize("n_features", [2, 4])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_recovers_known_mixture(covariance_type, n_features):
    """Data drawn from a known separated mixture: estimates within 5 standard errors."""
    K, d, n = 3, n_features, 20_000
    rng = np.random.default_rng(100 + d)
    weights = np.array([0.5, 0.3, 0.2])
    means = 10.0 * np.eye(K, d) + rng.normal(size=(K, d))  # pairwise distances about 10-14
    covariances = true_covariances(rng, covariance_type, K, d)
    full = dense_covariances(covariances, covariance_type, K, d)
    labels = rng.choice(K, size=n, p=weights)
    noise = rng.standard_normal(size=(n, d))
    X = means[labels] + np.einsum("nij,nj->ni", np.linalg.cholesky(full)[labels], noise)

    gm = GaussianMixture(K, covariance_type=covariance_type, tol=1e-8, max_iter=500,
                         random_state=0).fit(X)
    assert gm.converged_
    p = list(match_components(gm.means_, means))

    assert_within_standard_errors(gm.weights_[p], weights, np.sqrt(weights * (1 - weights) / n))
    mean_se = np.sqrt(np.diagonal(full, axis1=1, axis2=2) / (n * weights[:, None]))
    assert_within_standard_errors(gm.means_[p], means, mean_se)
    cov_se = covariance_standard_errors(covariances, covariance_type, weights, n, d)
    found = gm.covariances_ if covariance_type == "tied" else gm.covariances_[p]
    assert_within_standard_errors(found, covariances, cov_se)


def assert_within_standard_errors(found, true, se, n_se=5.0):
    z = np.abs(np.asarray(found) - true) / se
    assert z.max() < n_se, f"{z.max():.2f} standard errors off:\nfound {found}\ntrue {true}"


# --------------------------------------------------------------------------- 5. float32


@ignore_convergence
@pytest.mark.parametrize("init", ["explicit", "random_from_data"])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_float32_agrees_with_float64(blobs, covariance_type, init):
    X32 = blobs(1000, 3, 3, spread=1.5, scale=3.0, seed=8)[0].astype(np.float32)
    X64 = X32.astype(np.float64)  # the very same values
    if init == "explicit":
        weights, means, _, precisions = random_start(X64, covariance_type, 3, seed=9)
        kwargs = explicit_init(weights, means, precisions)
    else:
        kwargs = dict(init_params="random_from_data", random_state=3)
    fits = [GaussianMixture(3, covariance_type=covariance_type, tol=0, max_iter=20, **kwargs)
            .fit(X) for X in (X32, X64)]
    for name in PARAMS:
        assert getattr(fits[0], name).dtype == np.float64
        assert_rel(getattr(fits[0], name), getattr(fits[1], name), 1e-5, err_msg=name)
    assert fits[0].lower_bound_ == pytest.approx(fits[1].lower_bound_, rel=1e-5)
    proba = fits[0].predict_proba(X32)
    assert proba.dtype == np.float64
    assert_allclose(proba, fits[1].predict_proba(X64), atol=1e-5)
    assert fits[0].score_samples(X32).dtype == np.float64


@pytest.mark.parametrize(("covariance_type", "n_features", "n_components", "sub_blocks"), [
    ("diag", 3, 6, False), ("tied", 5, 6, False), ("spherical", 2, 9, False),
    ("full", 12, 6, True), ("diag", 16, 16, True),  # 'diag' at d = 16 reads rows in tiles
])
def test_expanded_kernels_widen_float32_exactly(covariance_type, n_features, n_components,
                                                sub_blocks):
    """float32 rows reach the expanded kernels as they are and are widened on the way in (in
    the transposing tiles, or straight into the 'diag' features): the statistics and the
    log-likelihood are those of the same values given as float64, to the bit."""
    rng = np.random.default_rng(25)
    X32 = (rng.normal(size=(3 * BLOCK_ROWS + 17, n_features)) * 2.0 + 1.0).astype(np.float32)
    X64 = X32.astype(np.float64)
    weights, means, prec_chol, _ = random_start(X64, covariance_type, n_components, seed=26)
    params = GaussianParams(covariance_type, weights, means, prec_chol)
    kind, _, eta, _ = params.expanded_layout(X32.shape[0])
    assert fastem._kernels.gaussian_expanded.uses_sub_blocks(kind, *eta.shape[::-1]) == sub_blocks
    found, expected = (accumulate(ArraySource(X), params) for X in (X32, X64))
    assert found.loglik == expected.loglik
    for name in ("s0", "s1", "s2"):
        assert_array_equal(getattr(found, name), getattr(expected, name), err_msg=name)


# --------------------------------------------------------------------------- 6. threads, chunks

N_ODD = 7 * BLOCK_ROWS + 37  # not a multiple of the block size


@ignore_convergence
@pytest.mark.parametrize("init_params", ["kmeans", "random"])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_bits_do_not_depend_on_threads_or_block_multiple_chunks(blobs, kernel, covariance_type,
                                                                 init_params):
    X = blobs(N_ODD, 3, 3, spread=1.5, scale=3.0, seed=11)[0]
    base = dict(n_components=3, covariance_type=covariance_type, init_params=init_params,
                random_state=0, tol=0, max_iter=10)
    serial = GaussianMixture(n_jobs=1, **base).fit(X)
    for kwargs in [dict(n_jobs=2), dict(n_jobs=None), dict(n_jobs=-1),
                   dict(chunk_size=BLOCK_ROWS), dict(chunk_size=BLOCK_ROWS, n_jobs=2),
                   dict(chunk_size=4 * BLOCK_ROWS), dict(n_jobs=2, chunk_size=2 * BLOCK_ROWS)]:
        assert_identical_fits(GaussianMixture(**kwargs, **base).fit(X), serial, X)
    # Other chunk sizes cut blocks differently: equal up to rounding.
    other = GaussianMixture(chunk_size=1000, **base).fit(X)
    for name in PARAMS:
        assert_rel(getattr(other, name), getattr(serial, name), 1e-12, err_msg=name)
    assert_rel(other.lower_bounds_, serial.lower_bounds_, 1e-12)


@pytest.mark.parametrize(("covariance_type", "n_components", "expanded"),
                         [("diag", 3, False), ("tied", 3, False), ("diag", 16, True)])
def test_bits_do_not_depend_on_threads_in_waves_taken_several_blocks_at_a_time(
        covariance_type, n_components, expanded):
    """Both kernels hand waves of TAKE_MIN_WAVE blocks or more out TAKE_BLOCKS at a time: on
    one thread or two, their statistics are those of smaller waves, taken one block at a
    time, to the bit."""
    from fastem._em import threads
    from fastem._kernels._atomic import TAKE_MIN_WAVE

    rng = np.random.default_rng(28)
    X = rng.normal(size=(TAKE_MIN_WAVE * BLOCK_ROWS + 3 * BLOCK_ROWS + 37, 2))
    weights, means, prec_chol, _ = random_start(X, covariance_type, n_components, seed=29)
    params = GaussianParams(covariance_type, weights, means, prec_chol)
    assert (params.expanded_layout(X.shape[0]) is not None) == expanded
    with threads(1):  # chunks, hence waves, of half TAKE_MIN_WAVE blocks
        serial = accumulate(ArraySource(X), params, chunk_size=TAKE_MIN_WAVE // 2 * BLOCK_ROWS)
    for n_jobs, chunk_size in [(1, None), (2, None), (2, TAKE_MIN_WAVE * BLOCK_ROWS)]:
        with threads(n_jobs):
            found = accumulate(ArraySource(X), params, chunk_size=chunk_size)
        assert found.loglik == serial.loglik
        for name in ("s0", "s1", "s2"):
            assert_array_equal(getattr(found, name), getattr(serial, name), err_msg=name)


@ignore_convergence
def test_bits_do_not_depend_on_threads_or_chunks_without_stored_features(blobs):
    """The same for 'full' at d >= UNSTORED_MIN_FEATURES, whose quadratic features are formed
    in registers and whose statistics are summed segment by segment (and predictions too)."""
    d = fastem._kernels.gaussian_expanded.UNSTORED_MIN_FEATURES + 1
    X = blobs(N_ODD, 10, d, spread=1.5, scale=3.0, seed=12)[0]
    base = dict(n_components=10, covariance_type="full", random_state=0, tol=0, max_iter=3)
    serial = GaussianMixture(n_jobs=1, **base).fit(X)
    assert GaussianParams("full", serial.weights_, serial.means_,
                          serial.precisions_cholesky_).expanded_layout() is not None
    for kwargs in [dict(n_jobs=2), dict(chunk_size=BLOCK_ROWS, n_jobs=2),
                   dict(chunk_size=3 * BLOCK_ROWS)]:
        assert_identical_fits(GaussianMixture(**kwargs, **base).fit(X), serial, X)


@ignore_convergence
def test_bounds_bits_do_not_depend_on_block_multiple_chunks(blobs):
    X = blobs(N_ODD, 3, 3, spread=1.5, scale=3.0, seed=11)[0]
    base = dict(n_components=3, random_state=0, tol=0, max_iter=10)
    whole = GaussianMixture(**base).fit(X)
    for chunk_size in (2 * BLOCK_ROWS, 4 * BLOCK_ROWS):
        chunked = GaussianMixture(chunk_size=chunk_size, **base).fit(X)
        assert_array_equal(chunked.lower_bounds_, whole.lower_bounds_)
        assert chunked.score(X) == whole.score(X)


@ignore_convergence
def test_n_jobs_leaves_numba_threads_as_they_were(overlapping):
    before = numba.get_num_threads()
    GaussianMixture(2, n_jobs=1, max_iter=3, random_state=0).fit(overlapping)
    assert numba.get_num_threads() == before


@ignore_convergence
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_calls_on_one_block_agree_with_calls_on_many(blobs, kernel, covariance_type):
    """A call on one block of rows or fewer runs its task on the calling thread, without a
    parallel launch and without touching the thread count; each row's outputs are still, bit
    for bit, those of the same row in a call over many blocks on two threads."""
    X = blobs(N_ODD, 3, 3, spread=1.5, scale=3.0, seed=11)[0]
    gm = GaussianMixture(3, covariance_type=covariance_type, random_state=0, max_iter=5,
                         n_jobs=2).fit(X)
    methods = ("predict", "predict_proba", "score_samples")
    whole = {method: getattr(gm, method)(X) for method in methods}
    before = numba.get_num_threads()
    for rows in (slice(0, 1), slice(5, 105), slice(BLOCK_ROWS, 2 * BLOCK_ROWS)):
        for method in methods:
            assert_array_equal(getattr(gm, method)(X[rows]), whole[method][rows],
                               err_msg=f"{method} {rows}")
        # the kernel sums the rows in its own order, NumPy's mean in another
        assert_rel(gm.score(X[rows]), whole["score_samples"][rows].mean(), 1e-14)
    assert numba.get_num_threads() == before


@ignore_convergence
def test_concurrent_fits_match_serial(overlapping):
    """Two fits at once from Python threads (the kernels release the GIL) change no bit."""
    configs = [dict(covariance_type="full", n_jobs=1), dict(covariance_type="diag", n_jobs=2),
               dict(covariance_type="full", n_jobs=None)]
    models = [GaussianMixture(3, random_state=0, tol=0, max_iter=15, **c) for c in configs]
    serial = [clone(m).fit(overlapping) for m in models]
    for _ in range(2):
        with ThreadPoolExecutor(max_workers=len(models)) as pool:
            parallel = list(pool.map(lambda m: clone(m).fit(overlapping), models))
        for a, b in zip(parallel, serial):
            assert_identical_fits(a, b, overlapping)


_CONCURRENT_SCRIPT = """
import json, sys, warnings
from concurrent.futures import ThreadPoolExecutor
import numba, numpy as np
from fastem import GaussianMixture
warnings.simplefilter("ignore")
X = np.random.default_rng(0).normal(size=(20000, 5))
def fit(args):
    covariance_type, n_components = args
    gm = GaussianMixture(n_components, covariance_type=covariance_type, init_params="k-means++",
                         random_state=0, max_iter=4, tol=0).fit(X)
    return [float(v).hex() for v in np.r_[gm.means_.ravel(), gm.lower_bounds_]]
jobs = [(c, k) for c in ("full", "diag", "spherical", "tied") for k in (3, 6)]
serial = [fit(job) for job in jobs]
with ThreadPoolExecutor(len(jobs)) as pool:
    concurrent = list(pool.map(fit, jobs))
json.dump({"layer": numba.threading_layer(), "same": concurrent == serial}, sys.stdout)
"""


def test_concurrent_fits_on_numbas_workqueue_layer():
    """Numba's workqueue threading layer, the one left where neither TBB nor OpenMP is
    installed, aborts the process on a second concurrent parallel launch: fastem's launches
    then take turns (``_kernels._launch``), and fits from eight threads at once (k-means++
    seeding, Lloyd passes, both E-step kernels) finish with the bits of serial ones."""
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue", PYTHONWARNINGS="ignore")
    done = subprocess.run([sys.executable, "-c", _CONCURRENT_SCRIPT], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout) == {"layer": "workqueue", "same": True}


# --------------------------------------------------------------------------- 7. offset data


@ignore_convergence
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_offset_float64(blobs, covariance_type):
    X = blobs(1000, 2, 3, spread=1.0, scale=3.0, seed=12)[0]
    weights, means, _, precisions = random_start(X, covariance_type, 2, seed=13)
    fits = [
        GaussianMixture(2, covariance_type=covariance_type, tol=0, max_iter=20,
                        **explicit_init(weights, means + offset, precisions)).fit(X + offset)
        for offset in (0.0, 1e6)
    ]
    assert_rel(fits[1].covariances_, fits[0].covariances_, 1e-6)
    assert_rel(fits[1].weights_, fits[0].weights_, 1e-6)
    assert_allclose(fits[1].means_ - 1e6, fits[0].means_, rtol=0, atol=1e-6)
    assert_allclose(fits[1].predict_proba(X + 1e6), fits[0].predict_proba(X), atol=1e-6)


@ignore_convergence
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_offset_float32_does_not_cancel(blobs, covariance_type):
    """float32 data at 1e6 (unit-variance blobs rounded to steps of 1/16): covariances as the
    float64 oracle computes them on the very same values."""
    X = blobs(1000, 2, 3, spread=1.0, scale=3.0, seed=12)[0]
    X32 = (X + 1e6).astype(np.float32)
    truth = X32.astype(np.float64)
    weights, means, prec_chol, precisions = random_start(truth, covariance_type, 2, seed=13)
    expected = reference.em(truth, weights, means, prec_chol, covariance_type, 1e-6, 10)[-1]
    gm = GaussianMixture(2, covariance_type=covariance_type, tol=0, max_iter=10,
                         **explicit_init(weights, means, precisions)).fit(X32)
    assert_rel(gm.covariances_, expected["covariances"], 1e-4)
    assert_allclose(gm.means_, expected["means"], rtol=1e-9)
    assert_rel(gm.weights_, expected["weights"], 1e-6)
    full = dense_covariances(gm.covariances_, covariance_type, 2, 3)
    assert np.all(np.diagonal(full, axis1=1, axis2=2) > 0.5)


# --------------------------------------------------------------------------- 8. API


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_fit_predict_equals_fit_then_predict(overlapping, covariance_type):
    for max_iter in (2, 100):  # also when not converged: labels from the final parameters
        kwargs = dict(n_components=3, covariance_type=covariance_type, max_iter=max_iter,
                      random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            labels = GaussianMixture(**kwargs).fit_predict(overlapping)
            gm = GaussianMixture(**kwargs).fit(overlapping)
        assert_array_equal(labels, gm.predict(overlapping))
        assert_array_equal(labels, gm.predict_proba(overlapping).argmax(axis=1))


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_sample(separated, covariance_type):
    gm = GaussianMixture(4, covariance_type=covariance_type, random_state=0).fit(separated)
    X, y = gm.sample(4000)
    assert X.shape == (4000, 2) and y.shape == (4000,)
    counts = np.bincount(y, minlength=4)
    assert counts.sum() == 4000 and np.all(np.diff(y) >= 0)  # grouped by component
    assert_allclose(counts / 4000, gm.weights_, atol=0.05)
    for k in range(4):
        assert_allclose(X[y == k].mean(axis=0), gm.means_[k], atol=0.1)
    assert gm.sample(1)[0].shape == (1, 2)
    # Same random_state, same draws.
    assert_array_equal(gm.sample(10)[0], gm.sample(10)[0])


def test_clone_and_params(overlapping):
    gm = GaussianMixture(3, covariance_type="diag", n_jobs=1, chunk_size=512, random_state=4)
    params = gm.get_params()
    expected_keys = set(SkGaussianMixture().get_params()) | {"n_jobs", "chunk_size", "progress"}
    assert set(params) == expected_keys
    assert params["chunk_size"] == 512 and params["covariance_type"] == "diag"
    gm.fit(overlapping)
    twin = clone(gm)
    assert twin.get_params() == params
    assert not hasattr(twin, "weights_")
    assert gm.set_params(n_components=2, tol=1e-4) is gm
    assert gm.n_components == 2 and gm.tol == 1e-4
    assert_identical_fits(clone(twin).fit(overlapping), twin.fit(overlapping), overlapping)


def test_pipeline_with_scaler(separated):
    pipe = make_pipeline(StandardScaler(), GaussianMixture(4, random_state=0)).fit(separated)
    scaled = StandardScaler().fit_transform(separated)
    alone = GaussianMixture(4, random_state=0).fit(scaled)
    assert_array_equal(pipe.predict(separated), alone.predict(scaled))
    assert pipe.score(separated) == pytest.approx(alone.score(scaled), rel=1e-12)


def test_grid_search_over_n_components(separated):
    search = GridSearchCV(GaussianMixture(random_state=0), {"n_components": [1, 2, 4]}, cv=3)
    search.fit(separated)
    scores = search.cv_results_["mean_test_score"]
    assert np.all(np.isfinite(scores))
    assert search.best_params_ == {"n_components": 4}  # the true number of blobs
    assert search.best_score_ == scores.max()
    assert search.best_estimator_.means_.shape == (4, 2)


def test_score_is_mean_of_score_samples(overlapping):
    gm = GaussianMixture(3, random_state=0).fit(overlapping)
    assert gm.score(overlapping) == pytest.approx(gm.score_samples(overlapping).mean(),
                                                  rel=1e-12)
    assert_allclose(gm.predict_proba(overlapping).sum(axis=1), 1.0, rtol=1e-12)


@ignore_convergence
@pytest.mark.parametrize("n_components", [2, 8], ids=["per-component", "expanded"])
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_methods_see_the_attributes_as_they_are_now(separated, covariance_type, n_components):
    """A model keeps its parameters' layout from one call to the next (``_KEPT_PARAMS``), and
    lays them out again when an attribute changes, in place or replaced: each answer is that
    of a copy of the model that never kept anything."""
    X = separated
    gm = GaussianMixture(n_components, covariance_type=covariance_type, max_iter=5,
                         random_state=0).fit(X)
    first = gm.predict_proba(X)
    assert_array_equal(gm.predict_proba(X), first)
    gm.means_[0] += 0.5  # in place
    moved = gm.predict_proba(X)
    assert not np.array_equal(moved, first)
    assert_array_equal(moved, copy.deepcopy(gm).predict_proba(X))
    gm.weights_ = gm.weights_[::-1].copy()  # replaced
    assert_array_equal(gm.score_samples(X), copy.deepcopy(gm).score_samples(X))
    gm.covariances_ = gm.covariances_ * 2.0  # not read by the kernels, but kept in step
    gm.precisions_cholesky_ *= 1 / np.sqrt(2.0)
    assert_array_equal(gm.predict(X), copy.deepcopy(gm).predict(X))
    assert_array_equal(gm.score_samples(X), copy.deepcopy(gm).score_samples(X))


@pytest.mark.parametrize("n_rows", [3, 3000], ids=["bytes-first", "by-value"])
def test_kept_parameters_hold_what_equals_them(n_rows):
    """GaussianParams.holds, which tells whether a model's kept layout still serves: equal
    values are held (an equal copy, another memory layout, a list, -0.0 for 0.0, a NaN for a
    NaN), a change of one entry anywhere is not. Small arrays are compared by their bytes
    first, large ones (here 6000 entries) by value only."""
    rng = np.random.default_rng(0)
    means = rng.normal(size=(n_rows, 2))
    means[0, 0] = 0.0
    weights, prec = np.full(n_rows, 1.0 / n_rows), np.ones((n_rows, 2))
    kept = GaussianParams("diag", weights.copy(), means.copy(), prec.copy())

    def holds(m, covariance_type="diag", covariances=None):
        return kept.holds(covariance_type, weights, m, prec, covariances)

    assert holds(means) and holds(means)  # the second time against the kept bytes
    assert holds(np.asfortranarray(means)) and holds(means.tolist())
    signed = means.copy()
    signed[0, 0] = -0.0
    assert holds(signed)
    for i in (0, n_rows // 2, n_rows - 1):
        moved = means.copy()
        moved[i, 1] = np.nextafter(moved[i, 1], np.inf)
        assert not holds(moved)
    assert not holds(means[:-1])
    assert not holds(means, covariance_type="spherical")
    assert not holds(means, covariances=prec)
    with_nan = means.copy()
    with_nan[-1, 1] = np.nan
    assert GaussianParams("diag", weights, with_nan.copy(), prec).holds(
        "diag", weights, with_nan, prec, None)
    assert not holds(with_nan)


def test_kept_parameters_leave_the_model_alone_and_go_with_it(separated):
    """What a model's methods keep is kept outside it (scikit-learn's estimators must not
    change their own __dict__ when they predict) and goes when the model does."""
    gm = GaussianMixture(3, random_state=0).fit(separated)
    before = dict(vars(gm))
    gm.predict(separated)
    gm.score(separated)
    assert vars(gm).keys() == before.keys()
    assert all(vars(gm)[key] is value for key, value in before.items())
    assert gm in _KEPT_PARAMS
    kept, model = len(_KEPT_PARAMS), weakref.ref(gm)
    del gm
    gc.collect()
    assert model() is None  # not kept alive by what it kept
    assert len(_KEPT_PARAMS) <= kept - 1  # (other models of earlier tests may go too)


@pytest.mark.parametrize("make", [
    pytest.param(lambda X: np.asfortranarray(X), id="fortran"),
    pytest.param(lambda X: X.astype(">f8"), id="byte-swapped"),
    pytest.param(lambda X: np.repeat(X, 2, axis=0)[::2], id="strided"),
    pytest.param(lambda X: X.tolist(), id="list"),
])
def test_hostile_layouts_give_the_same_fit(overlapping, make):
    expected = GaussianMixture(3, random_state=0).fit(overlapping)
    assert_identical_fits(GaussianMixture(3, random_state=0).fit(make(overlapping)), expected,
                          overlapping)


def test_integer_and_float16_data_are_fitted_as_float64(overlapping):
    for dtype in (np.int64, np.float16):
        X = overlapping.astype(dtype)
        expected = GaussianMixture(3, random_state=0).fit(X.astype(np.float64))
        assert_identical_fits(GaussianMixture(3, random_state=0).fit(X), expected,
                              X.astype(np.float64))


# --------------------------------------------------------------------------- 9. statistics


def test_per_component_kernel_takes_whole_blocks(overlapping):
    """A chunk reaches ``gaussian_pass`` as whole blocks, its shorter last block in a call of
    its own (every task's scratch is the size of one block); the kernel refuses anything
    else rather than read past its scratch."""
    for m in (1, BLOCK_ROWS - 1, BLOCK_ROWS, BLOCK_ROWS + 1, 3 * BLOCK_ROWS, 3 * BLOCK_ROWS + 7):
        ranges = whole_blocks(m)
        assert ranges[0][0] == 0 and ranges[-1][1] == m
        assert all(b == a2 for (_, b), (a2, _) in zip(ranges, ranges[1:]))
        assert all(b - a <= BLOCK_ROWS or (b - a) % BLOCK_ROWS == 0 for a, b in ranges)
    X = overlapping[: BLOCK_ROWS + 10]
    weights, means, _, precisions = random_start(X, "diag", 3, seed=3)
    params = GaussianParams("diag", weights, means,
                            precisions_cholesky_from_precisions(precisions, "diag"))
    kind, shift, centre, prec, aux, const = params.kernel_layout()
    K, d = shift.shape
    with pytest.raises(ValueError, match="whole blocks"):
        fastem._kernels.gaussian.gaussian_pass(
            kind, 0, kernel_rows(X, d), shift, centre, prec, aux, const, np.empty((0, K)),
            True, BLOCK_ROWS, 16, 2, np.zeros(1), np.zeros(K), np.zeros((K, d)),
            np.zeros((K, 1, d)), np.empty(0), np.empty((0, K)), np.empty(0, dtype=np.int64))


@pytest.mark.parametrize("covariance_type", ["full", "tied"])
@pytest.mark.parametrize("n_features", [8, 12])
def test_dense_log_densities_the_same_bits_in_whole_and_short_blocks(covariance_type,
                                                                     n_features):
    """From SMALL_D features the per-component kernel multiplies the rows by the precision
    factors in register panels in whole blocks (a multiple of 8 rows), and by loops over the
    triangle in a shorter block; both add the same terms in the same order, so a row's
    log-likelihood does not depend on the block it came in."""
    assert n_features >= fastem._kernels.gaussian.SMALL_D
    rng = np.random.default_rng(21)
    X = rng.normal(size=(BLOCK_ROWS, n_features)) * 3.0 + 10.0
    weights, means, prec_chol, _ = random_start(X, covariance_type, 3, seed=22)
    params = GaussianParams(covariance_type, weights, means, prec_chol)
    assert params.expanded_layout(X.shape[0]) is None  # the per-component kernel
    whole, short = np.empty(BLOCK_ROWS), np.empty(BLOCK_ROWS - 1)
    predict_pass(ArraySource(X), params, row_loglik=whole)
    predict_pass(ArraySource(X[:-1]), params, row_loglik=short)
    assert_array_equal(short, whole[:-1])
    log_resp, _ = reference.e_step(X, weights, means, prec_chol, covariance_type)
    weighted = (reference.log_gaussian_prob(X, means, prec_chol, covariance_type)
                + np.log(weights))
    assert_allclose(whole, (weighted - log_resp)[:, 0], rtol=1e-12)


@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical", "tied"])
def test_expanded_kernel_scores_rows_far_from_every_component(covariance_type):
    """With the fewest components that run it (5, or 6 for 'diag'), the expanded kernel's
    panels hold 2 or 3 padding components, which the product folds into each row's maximum
    with the rest; for rows some 60 standard deviations from every component (log-densities
    below -750) the padding's must stay lower still, or every exp of the log-sum-exp would
    underflow."""
    rng = np.random.default_rng(26)
    X = rng.normal(size=(BLOCK_ROWS, 2))
    K = fastem._params.expanded_min_components(covariance_type, 2, X.shape[0])
    assert K % 8 != 0
    weights, means, prec_chol, _ = random_start(X, covariance_type, K, seed=27)
    params = GaussianParams(covariance_type, weights, means, prec_chol)
    assert params.expanded_layout(X.shape[0]) is not None
    far = X + 60.0
    row_loglik = np.empty(far.shape[0])
    predict_pass(ArraySource(far), params, row_loglik=row_loglik)
    log_resp, _ = reference.e_step(far, weights, means, prec_chol, covariance_type)
    weighted = (reference.log_gaussian_prob(far, means, prec_chol, covariance_type)
                + np.log(weights))
    expected = (weighted - log_resp)[:, 0]
    assert expected.max() < -750.0  # exp underflows below -708
    assert_allclose(row_loglik, expected, rtol=1e-10)


def _fma(a, b, c):
    """a * b + c rounded once, in exact arithmetic."""
    return float(Fraction(a) * Fraction(b) + Fraction(c))


@pytest.mark.parametrize("n_features", [2, 3, 4, 5, 9])
@pytest.mark.parametrize("scaled", [True, False], ids=["diag", "dense"])
def test_log_densities_in_exact_arithmetic(n_features, scaled):
    """The per-component kernel's log-densities: each y_j = Z c_j - off_j rounded once,
    round(y0^2), then each further y_j^2 added in feature order with one rounding, then
    c - a / 2, whether in one sweep (2 or 3 features; a third, at d = 2, the first again
    times 0) or four features a sweep and then one; each component reads its own rows of a
    stacked Z ('full')."""
    rng = np.random.default_rng(25)
    d, nb, K = n_features, 37, 3
    Z = rng.normal(size=(K * d, nb)) * 4.0 + 1.0
    off, prec = rng.normal(size=(K, d)), rng.random(size=(K, 1, d)) + 0.5
    const = rng.normal(size=K)
    logp = np.full((K, nb), np.nan)
    kernels = fastem._kernels.gaussian
    kernels._log_densities(scaled, kernels.DIAG if scaled else kernels.FULL, Z, d, off,
                           prec if scaled else prec[:, :, :0], const, logp, idle_state())
    for k in range(K):
        factors = prec[k, 0] if scaled else np.ones(d)
        for i in range(nb):
            y = [_fma(Z[k * d + j, i], factors[j], -off[k, j]) for j in range(d)]
            a = y[0] * y[0]
            for j in range(1, d):
                a = _fma(y[j], y[j], a)
            assert logp[k, i] == _fma(-0.5, a, const[k])


@pytest.mark.parametrize("n_features", [1, 4, 5, 7, 9, 16])
@pytest.mark.parametrize("covariance_type", ["diag", "spherical"])
def test_diagonal_log_densities_are_each_components_own_sum(n_features, covariance_type):
    """'diag' and 'spherical' sum every component's log-densities four features per sweep,
    all components' sweeps over four rows before the next four: each component's row has the
    bits of that component alone, and is its log-density, from the offsets (mu_k - c) p_k."""
    rng = np.random.default_rng(26)
    d, nb, K = n_features, 37, 4
    kernels = fastem._kernels.gaussian
    kind = kernels.DIAG if covariance_type == "diag" else kernels.SPHERICAL
    XT = rng.normal(size=(d, nb)) * 3.0 + 2.0
    shift = rng.normal(size=(K, d))
    prec = rng.random(size=(K, 1, d if kind == kernels.DIAG else 1)) + 0.5
    const = rng.normal(size=K)
    logp = np.full((K, nb), np.nan)
    p = prec if kind == kernels.DIAG else np.repeat(prec, d, axis=2)
    aux = shift * p[:, 0]
    kernels._logp_diagonal(kind, XT, aux, prec, const, logp, idle_state())
    for k in range(K):
        alone = np.full((1, nb), np.nan)
        kernels._logp_diagonal(kind, XT, aux[k:k + 1], prec[k:k + 1], const[k:k + 1], alone,
                               idle_state())
        assert_array_equal(logp[k], alone[0])
    expected = const[:, None] - 0.5 * (((XT[None] - shift[:, :, None]) * p.transpose(0, 2, 1))
                                       ** 2).sum(axis=1)
    assert_allclose(logp, expected, rtol=1e-14, atol=0)


@numba.njit
def _call_compiled(function, *args):
    """function(*args), called from compiled code: the kernels' tasks have no Python entry."""
    return function(*args)


def test_each_kernel_refuses_the_layouts_of_the_other(overlapping):
    """The per-component kernel's tasks are compiled as three functions, chosen in Python by
    covariance type, and the expanded kernel's as four, by block layout and for 'tied'; called
    directly with another's, a task raises rather than run code it was compiled without.
    (Tasks are called from compiled code only: from a compiled function here.)"""
    X = overlapping[:BLOCK_ROWS]
    K, d = 3, X.shape[1]
    weights, means, _, precisions = random_start(X, "diag", K, seed=23)
    params = GaussianParams("diag", weights, means,
                            precisions_cholesky_from_precisions(precisions, "diag"))
    kind, shift, centre, prec, aux, const = params.kernel_layout()
    for wrong in (fastem._kernels.gaussian._full_task, fastem._kernels.gaussian._tied_task):
        with pytest.raises(ValueError, match="covariance type"):
            _call_compiled(wrong, 0, 1, kind, 0, kernel_rows(X, d), shift, centre, np.zeros(d),
                           prec, np.empty((0, 0)), aux, const, np.empty((0, K)), True,
                           BLOCK_ROWS, BLOCK_ROWS, 1, np.zeros((1, K)), np.zeros((1, K, d)),
                           np.zeros((1, K, 1, d)), np.zeros(1), np.zeros(1, np.int64),
                           np.empty(0), np.empty((0, K)), np.empty(0, dtype=np.int64),
                           np.zeros(1, np.int64))
    gx = fastem._kernels.gaussian_expanded

    def expanded_task(task, params, X):
        K = params.n_components
        kind, centre, eta, row_factor = params.expanded_layout()
        Kv, Fp = eta.shape
        _call_compiled(task, 0, 1, kind, kernel_rows(X, X.shape[1]), centre, eta, row_factor,
                       K, True, BLOCK_ROWS, gx.sub_rows(kind, Fp, Kv, BLOCK_ROWS), 1,
                       np.zeros((1, Fp, Kv)), np.zeros((1, 1, 0, 0)), np.zeros(1),
                       np.zeros(1, np.int64), np.empty(0), np.empty((0, K)),
                       np.empty(0, np.int64), np.zeros(1, np.int64))

    weights, means, _, precisions = random_start(X, "full", 8, seed=24)
    params = GaussianParams("full", weights, means,
                            precisions_cholesky_from_precisions(precisions, "full"))
    eta = params.expanded_layout()[2]
    assert not gx.uses_sub_blocks(gx.FULL, *eta.shape[::-1])  # the whole-block kernel's
    for wrong in (gx._sub_block_task, gx._unstored_sub_block_task, gx._tied_block_task):
        with pytest.raises(ValueError, match="layout's blocks"):
            expanded_task(wrong, params, X)
    # 'tied': whole blocks too, but with its own terms
    weights, means, _, precisions = random_start(X, "tied", 8, seed=24)
    params = GaussianParams("tied", weights, means,
                            precisions_cholesky_from_precisions(precisions, "tied"))
    with pytest.raises(ValueError, match="layout's blocks"):
        expanded_task(gx._whole_block_task, params, X)
    # 'full' at d = 64, K = 16: sub-blocks that never store their quadratic features
    X = np.random.default_rng(25).normal(size=(BLOCK_ROWS, 64))
    weights, means, _, precisions = random_start(X, "full", 16, seed=26)
    params = GaussianParams("full", weights, means,
                            precisions_cholesky_from_precisions(precisions, "full"))
    eta = params.expanded_layout()[2]
    assert gx.uses_sub_blocks(gx.FULL, *eta.shape[::-1])
    assert not gx._stores_features(gx.FULL, 64, eta.shape[0])
    with pytest.raises(ValueError, match="layout's blocks"):
        expanded_task(gx._sub_block_task, params, X)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_read_only_models_reach_the_kernels_writeable(overlapping, covariance_type):
    """A model's arrays may be read-only (unpickled from a memory map, as scikit-learn's
    estimator checks do); the kernels still get writeable arrays, the Numba type they were
    compiled for, rather than compile a copy of 8-10 s for read-only ones."""
    weights, means, prec_chol, _ = random_start(overlapping, covariance_type, 3, seed=27)
    for a in (weights, means, prec_chol):
        a.flags.writeable = False
    layout = GaussianParams(covariance_type, weights, means, prec_chol).kernel_layout()
    assert all(a.flags.writeable and a.flags.c_contiguous for a in layout[1:])


@pytest.mark.parametrize(("covariance_type", "n_features", "n_components", "sub_blocks"), [
    ("full", 2, 12, False), ("diag", 4, 20, False), ("spherical", 30, 64, True),
    ("diag", 16, 66, True),
])
def test_expanded_statistics_from_scaled_features(blobs, monkeypatch, covariance_type,
                                                  n_features, n_components, sub_blocks):
    """With at least twice as many components as features, the expanded kernels leave the
    responsibilities unscaled and divide each row's features by its sum of exps instead: the
    statistics, and through the M-step the parameters, are the per-component kernel's."""
    X = blobs(2 * BLOCK_ROWS + 40, n_components, n_features, spread=1.5, scale=3.0, seed=28)[0]
    weights, means, prec_chol, _ = random_start(X, covariance_type, n_components, seed=29)
    params = GaussianParams(covariance_type, weights, means, prec_chol)
    kind, _, eta, _ = params.expanded_layout(X.shape[0])
    gx = fastem._kernels.gaussian_expanded
    assert 2 * gx.n_features_expanded(kind, n_features) <= n_components
    assert gx.uses_sub_blocks(kind, *eta.shape[::-1]) == sub_blocks
    expanded = accumulate(ArraySource(X), params)
    monkeypatch.setattr(fastem._params, "EXPANDED_FEATURES", {})
    per_component = accumulate(ArraySource(X), params)
    assert expanded.loglik == pytest.approx(per_component.loglik, rel=1e-12)
    assert_rel(expanded.s0, per_component.s0, 1e-12, err_msg="s0")
    found = GaussianParams.from_stats(expanded, 1e-6)
    expected = GaussianParams.from_stats(per_component, 1e-6)
    for name in ("weights", "means", "covariances"):
        assert_rel(getattr(found, name), getattr(expected, name), 1e-10, err_msg=name)


@pytest.mark.parametrize("n_components", [10, 20, 30], ids=["Kv16", "Kv24", "Kv32"])
def test_unstored_full_statistics_match_the_per_component_kernel(blobs, monkeypatch,
                                                                  n_components):
    """At d = 64, where 'full' never stores its quadratic features with up to 32 padded
    components, one pass gives the per-component kernel's log-likelihood and, through the
    M-step, its parameters: the quadratic statistics summed segment by segment as
    sum y_b (y_a r), for one and several panels of components."""
    X = blobs(3000, n_components, 64, spread=1.5, scale=3.0, seed=4)[0]
    weights, means, prec_chol, _ = random_start(X, "full", n_components, seed=5)
    params = GaussianParams("full", weights, means, prec_chol)
    assert params.expanded_layout(X.shape[0]) is not None
    expanded = accumulate(ArraySource(X), params)
    monkeypatch.setattr(fastem._params, "EXPANDED_FEATURES", {})
    per_component = accumulate(ArraySource(X), params)
    assert expanded.loglik == pytest.approx(per_component.loglik, rel=1e-12)
    found = GaussianParams.from_stats(expanded, 1e-6)
    expected = GaussianParams.from_stats(per_component, 1e-6)
    for name in ("weights", "means", "covariances"):
        assert_rel(getattr(found, name), getattr(expected, name), 1e-10, err_msg=name)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_statistics_add_up(overlapping, kernel, covariance_type):
    X = overlapping
    weights, means, _, precisions = random_start(X, covariance_type, 3, seed=14)
    params = GaussianParams(covariance_type, weights, means,
                            precisions_cholesky_from_precisions(precisions, covariance_type))
    moved = GaussianParams(covariance_type, weights[::-1].copy(), means + 2.5,
                           params.precisions_cholesky)
    cut = 250  # not a multiple of the block size
    whole = accumulate(ArraySource(X), params)
    halves = accumulate(ArraySource(X[:cut]), params) + accumulate(ArraySource(X[cut:]), params)
    assert_stats_close(halves, whole, 1e-12)
    assert halves.n_samples == whole.n_samples == X.shape[0]
    assert halves.loglik == pytest.approx(whole.loglik, rel=1e-12)

    # Given responsibilities, the statistics about another shift are the same statistics:
    # halves summarized around different shifts add up, and recentring moves between them.
    resp = np.random.default_rng(15).dirichlet(np.ones(3), size=X.shape[0])

    def given(source, p, r):
        return accumulate(source, p, mode=GIVEN, resp_for_chunk=lambda s, m: r[s : s + m])

    whole = given(ArraySource(X), params, resp)
    around_moved = given(ArraySource(X), moved, resp)
    assert not np.array_equal(whole.shift, around_moved.shift)
    mixed = given(ArraySource(X[:cut]), params, resp[:cut]) + \
        given(ArraySource(X[cut:]), moved, resp[cut:])
    assert_array_equal(mixed.shift, whole.shift)
    assert_stats_close(mixed, whole, 1e-10)
    assert_stats_close(whole.recentred(around_moved.shift), around_moved, 1e-10)
    assert_stats_close(around_moved.recentred(whole.shift), whole, 1e-10)

    # And the M-step of those statistics is the oracle's M-step of those responsibilities.
    expected = reference.m_step(X, resp, covariance_type, 1e-6)
    found = GaussianParams.from_stats(mixed, 1e-6)
    for value, reference_value in zip((found.weights, found.means, found.covariances), expected):
        assert_rel(value, reference_value, 1e-10)


@pytest.mark.parametrize("n_features", [3, 7, 16, 33])
def test_tied_scatter_of_the_expanded_kernel(n_features):
    """'tied''s one unweighted scatter, which the expanded kernel sums as a whole (d, d)
    product per block, is symmetric to the bit and is numpy's (X - c)^T (X - c), c the
    statistics' shift; d = 7 fills the padded layout but for the scatter's tile rows."""
    rng = np.random.default_rng(16)
    X = rng.normal(size=(3 * BLOCK_ROWS + 17, n_features)) * rng.uniform(0.5, 3.0, n_features)
    X += 5.0
    weights, means, _, precisions = random_start(X, "tied", 6, seed=17)
    params = GaussianParams("tied", weights, means,
                            precisions_cholesky_from_precisions(precisions, "tied"))
    assert params.expanded_layout() is not None
    stats = accumulate(ArraySource(X), params)
    assert_array_equal(stats.s2, stats.s2.T)
    Y = X - stats.shift[0]
    assert_rel(stats.s2, Y.T @ Y, 1e-13)


@pytest.mark.parametrize("n_features", [2, 16])
def test_tied_scatter_moved_from_an_earlier_pass(kernel, n_features):
    """After its first pass an EM fit takes 'tied''s unweighted scatter, which depends on the
    rows alone, from that pass's statistics moved to the new centre, and either kernel skips
    its (d, d) product per row. Moved, it is the summed one to rounding, symmetric to the bit,
    also for rows 1e4 from the origin; everything else is the same bits."""
    rng = np.random.default_rng(20)
    X = 1e4 + rng.normal(size=(3 * BLOCK_ROWS + 17, n_features)) * rng.uniform(0.5, 3.0,
                                                                              n_features)
    X[::2] += 4.0
    first, moved = (GaussianParams("tied", *random_start(X, "tied", 6, seed=seed)[:3])
                    for seed in (21, 22))
    assert (moved.expanded_layout() is not None) == (kernel == "expanded")
    earlier = accumulate(ArraySource(X), first)
    summed = accumulate(ArraySource(X), moved)
    reused = accumulate(ArraySource(X), moved, rows_scatter=earlier)
    assert not np.array_equal(earlier.shift, summed.shift)
    assert_array_equal(reused.s2, reused.s2.T)
    assert_rel(reused.s2, summed.s2, 1e-11)
    assert reused.loglik == summed.loglik and reused.n_samples == summed.n_samples
    for name in ("shift", "s0", "s1"):
        assert_array_equal(getattr(reused, name), getattr(summed, name), err_msg=name)


@pytest.mark.parametrize(("covariance_type", "n_features", "n_components"), [
    ("full", 2, 3), ("spherical", 2, 9), ("tied", 2, 9), ("diag", 4, 6), ("diag", 3, 10),
])
def test_expanded_statistics_stay_zero_past_the_features_and_components(
        covariance_type, n_features, n_components):
    """Whole blocks sum their statistics in 4 x 4 tiles only up to the last tile that holds a
    feature and a component, and zero the rest of their slot: the totals' entries past the F
    features and past the K components stay exactly zero, as ``expanded_pass`` promises,
    while the entries inside them are numpy's sums of phi(x - c) r_k."""
    rng = np.random.default_rng(18)
    X = rng.normal(size=(3 * BLOCK_ROWS + 17, n_features)) * 2.0
    weights, means, _, precisions = random_start(X, covariance_type, n_components, seed=19)
    params = GaussianParams(covariance_type, weights, means,
                            precisions_cholesky_from_precisions(precisions, covariance_type))
    kind, centre, eta, row_factor = params.expanded_layout()
    gx = fastem._kernels.gaussian_expanded
    assert not gx.uses_sub_blocks(kind, *eta.shape[::-1])
    F, (Kv, Fp) = gx.n_features_expanded(kind, n_features), eta.shape
    totals = np.zeros((Fp, Kv))
    scatter = np.zeros((1, n_features, n_features) if covariance_type == "tied" else (0, 0, 0))
    resp = np.empty((X.shape[0], n_components))
    bad = gx.expanded_pass(kind, kernel_rows(X, n_features), centre, eta, row_factor,
                           n_components, True, BLOCK_ROWS, 16, 2, np.zeros(1), totals, scatter,
                           np.empty(0), np.empty((0, n_components)), np.empty(0, np.int64))
    assert bad == -1
    assert not totals[F:].any() and not totals[:, n_components:].any()
    # The responsibilities from a pass without statistics, and the features as written out.
    gx.expanded_pass(kind, kernel_rows(X, n_features), centre, eta, row_factor, n_components,
                     False, BLOCK_ROWS, 16, 2, np.zeros(1), np.empty((0, 0)),
                     np.empty((0, 0, 0)), np.empty(0), resp, np.empty(0, np.int64))
    Y = X - centre
    if covariance_type == "full":
        a, b = np.triu_indices(n_features)
        quadratic = Y[:, a] * Y[:, b]
    elif covariance_type == "diag":
        quadratic = Y**2
    elif covariance_type == "spherical":
        quadratic = (Y**2).sum(axis=1, keepdims=True)
    else:
        quadratic = np.empty((X.shape[0], 0))
    Phi = np.hstack([np.ones((X.shape[0], 1)), Y, quadratic])
    assert Phi.shape[1] == F
    assert_rel(totals[:F, :n_components], Phi.T @ resp, 1e-12)


def assert_stats_close(a, b, rtol):
    assert a.covariance_type == b.covariance_type
    assert_array_equal(a.shift, b.shift)
    for name in ("s0", "s1", "s2"):
        assert_rel(getattr(a, name), getattr(b, name), rtol, err_msg=name)
