"""Tests for fastem.reference, the plain-NumPy EM oracle."""


import numpy as np
import pytest
from scipy.stats import multivariate_normal
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture

from fastem import reference as ref
from helpers import dense_covariances

COVARIANCE_TYPES = ["full", "tied", "diag", "spherical"]


# --------------------------------------------------------------------------- helpers


def random_spd(rng, d):
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.3 * np.eye(d)


def random_covariances(rng, covariance_type, K, d):
    """Random valid covariances of the shape `covariance_type` requires."""
    if covariance_type == "full":
        return np.stack([random_spd(rng, d) for _ in range(K)])
    if covariance_type == "tied":
        return random_spd(rng, d)
    if covariance_type == "diag":
        return rng.uniform(0.3, 2.0, size=(K, d))
    return rng.uniform(0.3, 2.0, size=K)


def blobs(seed, N=500, d=3, K=3, separation=6.0):
    """Well-separated Gaussian blobs with random full covariances."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=separation, size=(K, d))
    labels = rng.integers(K, size=N)
    X = np.empty((N, d))
    for k in range(K):
        idx = labels == k
        X[idx] = rng.multivariate_normal(centers[k], random_spd(rng, d), size=idx.sum())
    return X, centers


def initial_parameters(seed, X, covariance_type, K):
    """A deliberately rough start: random data points, uniform weights, random covariances."""
    rng = np.random.default_rng(seed)
    d = X.shape[1]
    weights = np.full(K, 1.0 / K)
    means = X[rng.choice(len(X), size=K, replace=False)] + rng.normal(scale=0.5, size=(K, d))
    covariances = random_covariances(rng, covariance_type, K, d)
    prec_chol = ref.precisions_cholesky_from_covariances(covariances, covariance_type)
    return weights, means, prec_chol


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_log_gaussian_prob_matches_scipy(covariance_type):
    rng = np.random.default_rng(0)
    N, d, K = 50, 4, 3
    X = rng.normal(scale=2.0, size=(N, d))
    means = rng.normal(size=(K, d))
    covariances = random_covariances(rng, covariance_type, K, d)
    prec_chol = ref.precisions_cholesky_from_covariances(covariances, covariance_type)

    log_prob = ref.log_gaussian_prob(X, means, prec_chol, covariance_type)

    assert log_prob.shape == (N, K)
    dense = dense_covariances(covariances, covariance_type, K, d)
    expected = np.column_stack(
        [multivariate_normal(means[k], dense[k]).logpdf(X) for k in range(K)]
    )
    np.testing.assert_allclose(log_prob, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_precisions_cholesky_round_trip(covariance_type):
    rng = np.random.default_rng(1)
    K, d = 4, 5
    covariances = random_covariances(rng, covariance_type, K, d)

    prec_chol = ref.precisions_cholesky_from_covariances(covariances, covariance_type)
    back = ref.covariances_from_precisions_cholesky(prec_chol, covariance_type)

    assert prec_chol.shape == covariances.shape
    np.testing.assert_allclose(back, covariances, rtol=1e-12, atol=1e-14)
    if covariance_type in ("full", "tied"):
        # sklearn's convention: upper triangular, positive diagonal, precision = U @ U.T.
        U = np.atleast_3d(prec_chol.T).T
        C = np.atleast_3d(covariances.T).T
        assert np.all(np.tril(U, -1) == 0)
        assert np.all(np.diagonal(U, axis1=1, axis2=2) > 0)
        np.testing.assert_allclose(
            U @ np.swapaxes(U, 1, 2) @ C, np.broadcast_to(np.eye(d), C.shape), atol=1e-12
        )


def test_e_step_matches_mixture_density_and_is_stable():
    rng = np.random.default_rng(2)
    K, d = 3, 2
    X = rng.normal(size=(40, d))
    weights = np.array([0.2, 0.5, 0.3])
    means = rng.normal(size=(K, d))
    covariances = random_covariances(rng, "full", K, d)
    prec_chol = ref.precisions_cholesky_from_covariances(covariances, "full")

    log_resp, mean_ll = ref.e_step(X, weights, means, prec_chol, "full")

    density = sum(
        weights[k] * multivariate_normal(means[k], covariances[k]).pdf(X) for k in range(K)
    )
    np.testing.assert_allclose(mean_ll, np.log(density).mean(), rtol=1e-12)
    np.testing.assert_allclose(np.exp(log_resp).sum(axis=1), 1.0, rtol=1e-12)

    # Far from every component each density underflows to 0, but the log-sum-exp does not.
    far = X + 1e3
    log_resp, mean_ll = ref.e_step(far, weights, means, prec_chol, "full")
    assert np.isfinite(mean_ll) and np.all(np.isfinite(log_resp))
    np.testing.assert_allclose(np.exp(log_resp).sum(axis=1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_em_matches_sklearn(covariance_type):
    K, n_iter = 3, 15
    X, _ = blobs(seed=3, K=K)
    weights, means, prec_chol = initial_parameters(4, X, covariance_type, K)

    history = ref.em(X, weights, means, prec_chol, covariance_type, reg_covar=1e-6, n_iter=n_iter)

    gm = GaussianMixture(
        n_components=K,
        covariance_type=covariance_type,
        reg_covar=1e-6,
        max_iter=n_iter,
        tol=0,
        weights_init=weights,
        means_init=means,
        precisions_init=ref.precisions_from_cholesky(prec_chol, covariance_type),
    )
    with pytest.warns(ConvergenceWarning):
        gm.fit(X)

    assert len(history) == n_iter == gm.n_iter_
    last = history[-1]
    close = dict(rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(last["weights"], gm.weights_, **close)
    np.testing.assert_allclose(last["means"], gm.means_, **close)
    np.testing.assert_allclose(last["covariances"], gm.covariances_, **close)
    np.testing.assert_allclose(last["precisions_cholesky"], gm.precisions_cholesky_, **close)
    np.testing.assert_allclose(last["lower_bound"], gm.lower_bound_, rtol=1e-12)
    np.testing.assert_allclose([h["lower_bound"] for h in history], gm.lower_bounds_, rtol=1e-12)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_lower_bound_never_decreases(covariance_type):
    # reg_covar=0: with a regularized M-step, EM no longer maximizes the likelihood exactly,
    # so monotonicity is only guaranteed without it.
    K = 3
    X, _ = blobs(seed=5, N=400, K=K, separation=2.5)  # overlapping: many iterations of progress
    weights, means, prec_chol = initial_parameters(6, X, covariance_type, K)

    bounds = np.array(
        [h["lower_bound"] for h in ref.em(X, weights, means, prec_chol, covariance_type, 0.0, 60)]
    )

    assert bounds[-1] > bounds[0]
    steps = np.diff(bounds)
    assert np.all(steps >= -1e-12 * np.abs(bounds[1:])), steps.min()


def test_parameter_recovery():
    rng = np.random.default_rng(7)
    N, d = 20_000, 2
    true_weights = np.array([0.5, 0.3, 0.2])
    true_means = np.array([[0.0, 0.0], [6.0, 1.0], [-2.0, 7.0]])
    true_covs = np.array(
        [[[1.0, 0.3], [0.3, 0.5]], [[0.8, -0.2], [-0.2, 1.2]], [[0.5, 0.0], [0.0, 0.5]]]
    )
    labels = rng.choice(3, size=N, p=true_weights)
    X = np.empty((N, d))
    for k in range(3):
        idx = labels == k
        X[idx] = rng.multivariate_normal(true_means[k], true_covs[k], size=idx.sum())

    start_means = true_means + rng.normal(scale=1.0, size=true_means.shape)
    start_prec_chol = ref.precisions_cholesky_from_covariances(np.stack([np.eye(d)] * 3), "full")
    last = ref.em(X, np.full(3, 1 / 3), start_means, start_prec_chol, "full", n_iter=100)[-1]

    # The components are separated by many standard deviations, so the estimates carry only
    # sampling error: 5 standard errors of a proportion and of a mean.
    weight_se = np.sqrt(true_weights * (1 - true_weights) / N)
    mean_se = np.sqrt(np.diagonal(true_covs, axis1=1, axis2=2) / (N * true_weights[:, None]))
    assert np.all(np.abs(last["weights"] - true_weights) < 5 * weight_se)
    assert np.all(np.abs(last["means"] - true_means) < 5 * mean_se)
    # Covariances too, within a loose relative error (standard error ~ sqrt(2 / n_k) ~ 2%).
    np.testing.assert_allclose(last["covariances"], true_covs, atol=0.1)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_m_step_is_centred(covariance_type):
    rng = np.random.default_rng(8)
    X, _ = blobs(seed=9, N=300, K=3)
    resp = rng.dirichlet(np.ones(3), size=len(X))
    offset = 1e6

    w0, m0, c0 = ref.m_step(X, resp, covariance_type, 1e-6)
    w1, m1, c1 = ref.m_step(X + offset, resp, covariance_type, 1e-6)

    np.testing.assert_array_equal(w0, w1)
    np.testing.assert_allclose(m1 - offset, m0, atol=1e-8)
    np.testing.assert_allclose(c1, c0, rtol=1e-6)


@pytest.mark.parametrize(
    "call",
    [
        lambda: ref.precisions_cholesky_from_covariances(np.ones(3), "bogus"),
        lambda: ref.covariances_from_precisions_cholesky(np.ones(3), "bogus"),
        lambda: ref.log_gaussian_prob(np.ones((4, 2)), np.ones((3, 2)), np.ones(3), "bogus"),
        lambda: ref.e_step(np.ones((4, 2)), np.ones(3) / 3, np.ones((3, 2)), np.ones(3), "bogus"),
        lambda: ref.m_step(np.ones((4, 2)), np.ones((4, 3)) / 3, "bogus", 1e-6),
        lambda: ref.em(np.ones((4, 2)), np.ones(3) / 3, np.ones((3, 2)), np.ones(3), "bogus"),
    ],
)
def test_unknown_covariance_type_raises(call):
    with pytest.raises(ValueError, match="full.*tied.*diag.*spherical"):
        call()


def _model(covariance_type, K=3, d=2):
    """Valid (X, weights, means, precisions_cholesky) for 4 rows, K components, d features."""
    rng = np.random.default_rng(0)
    prec_chol = ref.precisions_cholesky_from_covariances(
        random_covariances(rng, covariance_type, K, d), covariance_type)
    return rng.normal(size=(4, d)), np.full(K, 1.0 / K), rng.normal(size=(K, d)), prec_chol


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("change, message", [
    (dict(X=np.ones(4)), r"X must be a 2-D array .* got shape \(4,\)"),
    (dict(X=np.ones((0, 2))), r"X must be a 2-D array .* got shape \(0, 2\)"),
    (dict(X=np.array([["a", "b"]])), "X must hold real numbers"),
    (dict(X=np.array([[0.0, np.nan]])), "X holds NaN or infinity"),
    (dict(X=np.ones((4, 3))), r"means must have shape \(n_components, 3\) .* got \(3, 2\)"),
    (dict(means=np.ones((3, 2, 1))), r"means must have shape \(n_components, 2\)"),
    (dict(means=np.full((3, 2), np.inf)), "means hold NaN or infinity"),
    (dict(weights=np.ones(2) / 2), r"weights must have shape \(3,\) for 3 components"),
    (dict(weights=np.array([0.5, 0.6, -0.1])), "weights must be finite and >= 0"),
    (dict(prec_chol=np.ones((2, 2, 2, 2))), "precisions_cholesky must have shape"),
    (dict(prec_chol="negative"), "precisions_cholesky must be finite, with positive"),
])
def test_bad_models_are_refused_with_what_was_wrong(covariance_type, change, message):
    """Each entry point that takes a model refuses shapes that do not fit together and values
    its formulas cannot take, saying which array and what was expected."""
    X, weights, means, prec_chol = _model(covariance_type)
    given = {**dict(X=X, weights=weights, means=means, prec_chol=prec_chol), **change}
    if isinstance(given["prec_chol"], str):
        given["prec_chol"] = -prec_chol
    X, weights, means, prec_chol = given["X"], given["weights"], given["means"], given["prec_chol"]
    calls = [lambda: ref.e_step(X, weights, means, prec_chol, covariance_type),
             lambda: ref.em(X, weights, means, prec_chol, covariance_type, n_iter=1)]
    if "weights" not in change:
        calls.append(lambda: ref.log_gaussian_prob(X, means, prec_chol, covariance_type))
    for call in calls:
        with pytest.raises(ValueError, match=message):
            call()


@pytest.mark.parametrize("covariance_type, shape, expected", [
    ("full", (3, 2, 3), r"\(K, d, d\)"), ("full", (2, 2), r"\(K, d, d\)"),
    ("tied", (3, 2, 2), r"\(d, d\)"), ("tied", (2, 3), r"\(d, d\)"),
    ("diag", (3,), r"\(K, d\)"), ("spherical", (3, 1), r"\(K,\)"),
])
def test_conversions_refuse_arrays_of_another_covariance_types_shape(covariance_type, shape,
                                                                      expected):
    a = np.ones(shape)
    for call, name in [(ref.precisions_cholesky_from_covariances, "covariances"),
                       (ref.covariances_from_precisions_cholesky, "precisions_cholesky"),
                       (ref.precisions_from_cholesky, "precisions_cholesky")]:
        with pytest.raises(ValueError, match=rf"{name} must have shape {expected} for "
                                             rf"covariance_type='{covariance_type}', got"):
            call(a, covariance_type)


@pytest.mark.parametrize("change, message", [
    (dict(resp=np.ones((3, 3)) / 3), r"resp must have shape \(4, n_components\)"),
    (dict(resp=np.ones(4)), r"resp must have shape \(4, n_components\)"),
    (dict(reg_covar=-1e-6), "reg_covar must be a finite number >= 0"),
    (dict(reg_covar=np.nan), "reg_covar must be a finite number >= 0"),
    (dict(reg_covar="1e-6"), "reg_covar must be a finite number >= 0"),
])
def test_m_step_refuses_responsibilities_or_regularization_it_cannot_use(change, message):
    given = {**dict(X=np.ones((4, 2)), resp=np.ones((4, 3)) / 3, reg_covar=1e-6), **change}
    with pytest.raises(ValueError, match=message):
        ref.m_step(given["X"], given["resp"], "full", given["reg_covar"])


@pytest.mark.parametrize("n_iter", [-1, 1.5, True, "3"])
def test_em_refuses_a_number_of_iterations_that_is_not_a_count(n_iter):
    X, weights, means, prec_chol = _model("diag")
    with pytest.raises(ValueError, match="n_iter must be an integer >= 0"):
        ref.em(X, weights, means, prec_chol, "diag", n_iter=n_iter)


def test_integer_data_is_taken_as_float():
    """Integer rows give the same model as the same rows in float64 (they are converted)."""
    X, weights, means, prec_chol = _model("full")
    X = np.round(X * 10).astype(np.int64)
    by_int = ref.em(X, weights, means, prec_chol, "full", n_iter=2)[-1]
    by_float = ref.em(X.astype(np.float64), weights, means, prec_chol, "full", n_iter=2)[-1]
    assert by_int["lower_bound"] == by_float["lower_bound"]
    np.testing.assert_array_equal(by_int["means"], by_float["means"])
