"""Bad input: every mistake raises a clear ValueError/TypeError from Python, and a failed fit
leaves a fitted model as it was. Degenerate but valid data fits, thanks to reg_covar."""

import copy
import itertools
import warnings

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.mixture import GaussianMixture as SkGaussianMixture
from sklearn.utils.validation import validate_data
from sklearn.utils._param_validation import InvalidParameterError

from fastem import GaussianMixture, _em as em, gaussian_mixture
from fastem.gaussian_mixture import _passes_as_is

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
INITS = ("kmeans", "k-means++", "random", "random_from_data")
BAD_VALUES = [pytest.param(np.nan, id="nan"), pytest.param(np.inf, id="+inf"),
              pytest.param(-np.inf, id="-inf")]
DTYPES = [pytest.param(np.float64, id="float64"), pytest.param(np.float32, id="float32")]
FIRST_BAD = r"NaN or infinity in row 37\b"


@pytest.fixture(scope="module")
def X():
    """400 rows, 2 blobs in 3-D."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3))
    X[:200] += 5.0
    return X


@pytest.fixture(scope="module")
def fitted(X):
    return GaussianMixture(2, random_state=0).fit(X)


def with_bad_rows(X, value, dtype, rows=(37, 290)):
    """X as dtype with `value` in the given rows (37 the first); other rows untouched."""
    Xb = X.astype(dtype)  # a copy
    for row in rows:
        Xb[row, row % X.shape[1]] = value
    return Xb


def explicit(K=2, d=3):
    return dict(weights_init=np.full(K, 1.0 / K), means_init=np.arange(K * d, dtype=float)
                .reshape(K, d), precisions_init=np.repeat(np.eye(d)[None], K, axis=0))


# --------------------------------------------------------------------------- non-finite X


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("value", BAD_VALUES)
@pytest.mark.parametrize("init", INITS + ("explicit",))
def test_fit_names_the_first_non_finite_row(X, value, dtype, init):
    kwargs = explicit() if init == "explicit" else dict(init_params=init, random_state=0)
    with pytest.raises(ValueError, match=FIRST_BAD):
        GaussianMixture(2, **kwargs).fit(with_bad_rows(X, value, dtype))


@pytest.mark.parametrize("init", INITS)
def test_fit_names_the_first_non_finite_row_beyond_the_first_chunk(X, init):
    Xb = with_bad_rows(X, np.nan, np.float64, rows=(300, 390))
    with pytest.raises(ValueError, match=r"NaN or infinity in row 300\b"):
        GaussianMixture(2, init_params=init, random_state=0, chunk_size=256).fit(Xb)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("value", BAD_VALUES)
@pytest.mark.parametrize("method", ["predict", "predict_proba", "score_samples", "score",
                                    "bic", "aic", "fit_predict"])
def test_methods_name_the_first_non_finite_row(fitted, X, method, value, dtype):
    model = copy.deepcopy(fitted)  # fit_predict refits
    with pytest.raises(ValueError, match=FIRST_BAD):
        getattr(model, method)(with_bad_rows(X, value, dtype))


def test_predict_names_rows_counted_from_the_start_across_chunks(fitted, X):
    model = copy.deepcopy(fitted).set_params(chunk_size=256)
    with pytest.raises(ValueError, match=r"NaN or infinity in row 300\b"):
        model.predict(with_bad_rows(X, np.inf, np.float64, rows=(300,)))


def test_non_finite_initial_parameters(X):
    with pytest.raises(ValueError, match="means_init contains NaN or infinity"):
        GaussianMixture(2, means_init=[[0, 0, np.nan], [1, 1, 1]]).fit(X)
    with pytest.raises(ValueError, match="weights_init contains NaN or infinity"):
        GaussianMixture(2, weights_init=[np.inf, 0.5]).fit(X)


# --------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("method", ["fit", "predict", "score_samples"])
def test_wrong_ndim(fitted, X, method):
    model = copy.deepcopy(fitted)
    with pytest.raises(ValueError, match="Expected 2D array, got 1D array"):
        getattr(model, method)(X[:, 0])
    with pytest.raises(ValueError, match="Found array with dim 3"):
        getattr(model, method)(X[None])


def test_empty_and_featureless(fitted, X):
    with pytest.raises(ValueError, match=r"0 sample\(s\)"):
        GaussianMixture(1).fit(X[:0])
    with pytest.raises(ValueError, match=r"1 sample\(s\).*minimum of 2"):
        GaussianMixture(1).fit(X[:1])
    with pytest.raises(ValueError, match=r"0 feature\(s\)"):
        GaussianMixture(1).fit(np.empty((10, 0)))
    with pytest.raises(ValueError, match=r"0 sample\(s\)"):
        fitted.predict(X[:0])


@pytest.mark.parametrize("method", ["predict", "predict_proba", "score_samples", "score",
                                    "bic", "aic"])
def test_different_number_of_features(fitted, X, method):
    with pytest.raises(ValueError, match="X has 2 features, but GaussianMixture is expecting 3"):
        getattr(fitted, method)(X[:, :2])


def _validated_as_is(model, X):
    """Whether scikit-learn's validate_data, called as GaussianMixture._source calls it for a
    fitted model, hands X itself back with no error and no warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            out = validate_data(model, X, dtype=[np.float64, np.float32], reset=False,
                                ensure_all_finite=False, ensure_min_samples=1)
        except (ValueError, TypeError, UserWarning):
            return False
    return out is X


def _candidate_inputs(X):
    """Arrays and array-likes a fitted model's methods may be given, valid or not."""
    return {
        "float64": X, "float32": X.astype(np.float32), "fortran": np.asfortranarray(X),
        "strided": X[::3], "reversed columns": X[:, ::-1], "one row": X[:1],
        "big-endian": X.astype(">f8"), "float16": X.astype(np.float16),
        "int64": X.astype(np.int64), "bool": X > 0, "complex": X.astype(complex),
        "object": X.astype(object), "1-D": X[:, 0], "3-D": X[None], "no rows": X[:0],
        "fewer features": X[:, :2], "more features": np.hstack([X, X]),
        "subclass": X.view(_ArraySubclass), "list": X[:5].tolist(),
        "read-only": _read_only(X),
    }


class _ArraySubclass(np.ndarray):
    """An ndarray subclass, which validate_data turns into a plain ndarray."""


def _read_only(X):
    X = X.copy()
    X.flags.writeable = False
    return X


@pytest.mark.parametrize("names", [False, True], ids=["fitted on an array",
                                                      "fitted with feature names"])
def test_inputs_that_skip_validation_are_those_it_would_pass_unchanged(fitted, X, names):
    """``_passes_as_is`` lets an input skip scikit-learn's validate_data only where that would
    return it unchanged and silently; the methods' results are the same either way."""
    model = copy.deepcopy(fitted)
    if names:  # as after a fit on a DataFrame: an array then draws scikit-learn's warning
        model.feature_names_in_ = np.array(["a", "b", "c"], dtype=object)
    skipped = []
    for name, candidate in _candidate_inputs(X).items():
        if _passes_as_is(model, candidate):
            assert _validated_as_is(model, candidate), name
            skipped.append(name)
    if names:
        assert skipped == []
    else:
        assert skipped == ["float64", "float32", "fortran", "strided", "reversed columns",
                           "one row", "read-only"]


@pytest.mark.parametrize("method", ["predict", "predict_proba", "score_samples", "score"])
def test_results_do_not_depend_on_skipping_validation(fitted, X, method, monkeypatch):
    for candidate in (X, X.astype(np.float32), np.asfortranarray(X[::3])):
        fast = getattr(fitted, method)(candidate)
        monkeypatch.setattr(gaussian_mixture, "_passes_as_is", lambda model, X: False)
        validated = getattr(fitted, method)(candidate)
        monkeypatch.undo()
        assert_array_equal(fast, validated)


@pytest.mark.parametrize("method", ["predict", "predict_proba", "score_samples", "score",
                                    "bic", "aic", "sample"])
def test_not_fitted(X, method):
    args = () if method == "sample" else (X,)
    with pytest.raises(NotFittedError):
        getattr(GaussianMixture(2), method)(*args)


def test_bad_sample_size(fitted):
    for n in (0, -1, 2.5):
        with pytest.raises(ValueError, match="n_samples"):
            fitted.sample(n)


# --------------------------------------------------------------------------- settings


BAD_SETTINGS = [
    (dict(n_components=0), ValueError, "n_components must be >= 1"),
    (dict(n_components=401), ValueError, "Expected n_samples >= n_components"),
    (dict(n_components=2.5), TypeError, "n_components must be an integer"),
    (dict(covariance_type="unknown"), ValueError, "covariance_type must be one of"),
    (dict(tol=-1e-3), ValueError, "tol must be >= 0"),
    (dict(tol=np.nan), ValueError, "tol must be finite"),
    (dict(reg_covar=-1e-6), ValueError, "reg_covar must be >= 0"),
    (dict(max_iter=-1), ValueError, "max_iter must be >= 0"),
    (dict(max_iter=10.0), TypeError, "max_iter must be an integer"),
    (dict(n_init=0), ValueError, "n_init must be >= 1"),
    (dict(init_params="kmeans++"), ValueError, "init_params must be one of"),
    (dict(warm_start="yes"), TypeError, "warm_start must be a bool"),
    (dict(chunk_size=0), ValueError, "chunk_size must be a positive integer"),
    (dict(chunk_size=-5), ValueError, "chunk_size must be a positive integer"),
    (dict(chunk_size=2.5), TypeError, "chunk_size must be a positive integer"),
    (dict(chunk_size="256"), TypeError, "chunk_size must be a positive integer"),
    (dict(n_jobs=0), ValueError, "n_jobs must be a positive number of threads"),
    (dict(n_jobs=1.5), TypeError, "n_jobs must be an integer"),
    (dict(verbose=-1), ValueError, "verbose must be >= 0"),
    (dict(verbose=0.5), TypeError, "verbose must be an integer"),
]


@pytest.mark.parametrize("kwargs, error, match", BAD_SETTINGS,
                         ids=[",".join(f"{k}={v!r}" for k, v in c[0].items())
                              for c in BAD_SETTINGS])
def test_bad_settings(X, kwargs, error, match):
    with pytest.raises(error, match=match):
        GaussianMixture(**{"n_components": 2, **kwargs}).fit(X)


# The cases whose message names the setting: all but chunk_size's (checked with the data
# sources' own errors) and n_components=401 (too many for the rows: a plain ValueError, as
# scikit-learn's)
@pytest.mark.parametrize("kwargs", [c[0] for c in BAD_SETTINGS
                                    if "chunk_size" not in c[0] and c[2].startswith(tuple(c[0]))],
                         ids=lambda kwargs: ",".join(f"{k}={v!r}" for k, v in kwargs.items()))
def test_a_bad_setting_is_both_a_value_and_a_type_error(X, kwargs):
    """As scikit-learn's InvalidParameterError: code written for its estimator catches a bad
    setting with either ``except ValueError`` or ``except TypeError``."""
    with pytest.raises(ValueError) as caught:
        GaussianMixture(**{"n_components": 2, **kwargs}).fit(X)
    assert isinstance(caught.value, TypeError)
    assert isinstance(caught.value, InvalidParameterError)


@pytest.mark.parametrize("n_jobs, match", [(0, "n_jobs must be a positive number of threads"),
                                           (1.5, "n_jobs must be an integer")])
@pytest.mark.parametrize("method", ["predict", "predict_proba", "score_samples", "score"])
def test_bad_n_jobs_set_after_fitting_is_named_by_predictions(fitted, X, n_jobs, match, method):
    model = copy.deepcopy(fitted).set_params(n_jobs=n_jobs)
    with pytest.raises(ValueError, match=match):
        getattr(model, method)(X)


def test_bad_chunk_size_in_predict(fitted, X):
    model = copy.deepcopy(fitted).set_params(chunk_size=0)
    with pytest.raises(ValueError, match="chunk_size must be a positive integer"):
        model.predict(X)


# --------------------------------------------------------------------------- initial parameters


@pytest.mark.parametrize("weights, match", [
    ([0.2, 0.3, 0.5], r"weights_init must have shape \(2,\)"),
    ([[0.5, 0.5]], r"weights_init must have shape \(2,\)"),
    ([-0.5, 1.5], r"weights_init must be in the range \[0, 1\]"),
    ([0.3, 0.3], "weights_init must sum to 1"),
    ([0.5, 0.5000001], "weights_init must sum to 1"),  # scikit-learn's tolerance, 1e-8
])
def test_bad_weights_init(X, weights, match):
    with pytest.raises(ValueError, match=match):
        GaussianMixture(2, weights_init=weights).fit(X)
    with pytest.raises(ValueError):  # scikit-learn refuses them too
        SkGaussianMixture(2, weights_init=weights).fit(X)


def test_bad_means_init(X):
    with pytest.raises(ValueError, match=r"means_init must have shape \(2, 3\)"):
        GaussianMixture(2, means_init=np.zeros((2, 4))).fit(X)
    with pytest.raises(ValueError, match=r"means_init must have shape \(2, 3\)"):
        GaussianMixture(2, means_init=np.zeros((3, 3))).fit(X)
    with pytest.raises(TypeError, match="means_init must be an array of numbers"):
        GaussianMixture(2, means_init=[["a", "b", "c"], ["d", "e", "f"]]).fit(X)


SHAPES = {"full": (2, 3, 3), "tied": (3, 3), "diag": (2, 3), "spherical": (2,)}


def good_precisions(covariance_type):
    return {"full": np.repeat(np.eye(3)[None], 2, axis=0), "tied": np.eye(3),
            "diag": np.ones((2, 3)), "spherical": np.ones(2)}[covariance_type]


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_bad_precisions_init(X, covariance_type):
    def fit(precisions):
        GaussianMixture(2, covariance_type=covariance_type,
                        precisions_init=precisions).fit(X)

    good = good_precisions(covariance_type)
    wrong_shape = np.ones(SHAPES[covariance_type] + (1,))
    with pytest.raises(ValueError, match="precisions_init must have shape"):
        fit(wrong_shape)
    if covariance_type in ("full", "tied"):
        asymmetric = good.copy()
        asymmetric[..., 0, 1] = 0.5
        with pytest.raises(ValueError, match="must be symmetric"):
            fit(asymmetric)
        indefinite = good.copy()
        indefinite[..., 2, 2] = -1.0
        with pytest.raises(ValueError, match="must be positive definite"):
            fit(indefinite)
        singular = good.copy()
        singular[..., 2, 2] = 0.0
        with pytest.raises(ValueError, match="must be positive definite"):
            fit(singular)
    else:
        for value in (0.0, -1.0):
            bad = good.copy()
            bad.flat[-1] = value
            with pytest.raises(ValueError, match="must be positive"):
                fit(bad)


# --------------------------------------------------------------------------- degenerate data


def assert_finite_fit(gm):
    for name in ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_"):
        assert np.all(np.isfinite(getattr(gm, name))), name
    assert np.isfinite(gm.lower_bound_)


def full_covariances(gm):
    cov, ct = gm.covariances_, gm.covariance_type
    K, d = gm.means_.shape
    if ct == "full":
        return cov
    if ct == "tied":
        return np.broadcast_to(cov, (K, d, d))
    if ct == "diag":
        return np.stack([np.diag(c) for c in cov])
    return np.stack([c * np.eye(d) for c in cov])


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_degenerate_data_fits_thanks_to_reg_covar(covariance_type, init):
    rng = np.random.default_rng(1)
    identical = np.full((100, 3), 2.5)
    constant_column = np.c_[rng.normal(size=(200, 2)), np.full(200, 5.0)]
    few_distinct = np.repeat(rng.normal(size=(3, 2)), 20, axis=0)  # 3 points, 5 components
    for data, K in ((identical, 1), (identical, 3), (constant_column, 2), (few_distinct, 5)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            gm = GaussianMixture(K, covariance_type=covariance_type, init_params=init,
                                 random_state=0).fit(data)
        assert_finite_fit(gm)
        assert_allclose(gm.weights_.sum(), 1.0)
        assert np.all(np.linalg.eigvalsh(full_covariances(gm)) >= 0.5e-6)
        if data is identical:
            # Components left empty (k-means finds one cluster) keep weight ~eps and the
            # mean 0, as in scikit-learn; the used ones sit on the point.
            used = gm.weights_ > 1e-8
            assert_allclose(gm.means_[used], 2.5, rtol=1e-12)
            assert_allclose(full_covariances(gm), np.broadcast_to(1e-6 * np.eye(3), (K, 3, 3)),
                            rtol=1e-6, atol=1e-15)
        if data is constant_column:
            assert_allclose(gm.means_[:, 2], 5.0, rtol=1e-12)
        assert np.all(np.isfinite(gm.score_samples(data)))


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_degenerate_data_without_reg_covar_says_what_to_do(covariance_type):
    with pytest.raises(ValueError, match="ill-defined empirical covariance.*increase reg_covar"):
        GaussianMixture(2, covariance_type=covariance_type, reg_covar=0).fit(np.ones((50, 3)))


# --------------------------------------------------------------------------- failed fits


def fitted_attributes(gm):
    return {k: copy.deepcopy(v) for k, v in vars(gm).items() if k.endswith("_")}


def assert_same_attributes(gm, before):
    after = fitted_attributes(gm)
    assert after.keys() == before.keys()
    for name, value in before.items():
        assert_array_equal(after[name], value, err_msg=name, strict=True)


def _interrupt(monkeypatch, module, name, call):
    """`module.name`'s `call`-th call from now raises KeyboardInterrupt, as Ctrl-C would."""
    real = getattr(module, name)
    calls = itertools.count(1)

    def interrupted(*args, **kwargs):
        if next(calls) == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, interrupted)


def _fit_quietly(gm, X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return gm.fit(X)


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical"])
def test_an_interrupted_fit_keeps_its_completed_iterations_and_continues_from_them(
        X, monkeypatch, covariance_type):
    """Ctrl-C in the 5th EM pass: the model holds what 4 iterations give, and a warm start
    of 2 more ends where an uninterrupted fit of 6 does, bit for bit ('tied' to the last
    bits: its warm start sums the rows' scatter afresh, where the fit moved its first
    pass's to each later centre)."""
    kwargs = dict(n_components=3, covariance_type=covariance_type, tol=0, random_state=0)
    whole = _fit_quietly(GaussianMixture(max_iter=6, **kwargs), X)
    four = _fit_quietly(GaussianMixture(max_iter=4, **kwargs), X)
    gm = GaussianMixture(max_iter=6, **kwargs)
    _interrupt(monkeypatch, em, "accumulate", 5)
    with pytest.warns(UserWarning, match=r"interrupted during initialization 1 of 1: .*\(4 EM "
                      r"iterations, .*converged_=False\)\. Call fit again with warm_start=True"):
        with pytest.raises(KeyboardInterrupt):
            gm.fit(X)
    monkeypatch.undo()
    assert_same_attributes(gm, fitted_attributes(four))
    _fit_quietly(gm.set_params(warm_start=True, max_iter=2), X)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_"):
        if covariance_type == "tied":
            assert_allclose(getattr(gm, name), getattr(whole, name), rtol=1e-12, err_msg=name)
        else:
            assert_array_equal(getattr(gm, name), getattr(whole, name), err_msg=name)
    assert_allclose(gm.lower_bounds_, whole.lower_bounds_[4:],
                    rtol=1e-14 if covariance_type == "tied" else 0)


@pytest.mark.parametrize("fitted_before", [False, True])
def test_a_fit_interrupted_before_any_iteration_leaves_the_model_as_it_was(
        X, monkeypatch, fitted_before):
    gm = GaussianMixture(2, random_state=0)
    if fitted_before:
        gm.fit(X[:300])
    before = fitted_attributes(gm)
    for module, name in [(gaussian_mixture, "initial_params"), (em, "accumulate")]:
        _interrupt(monkeypatch, module, name, 1)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no warning of kept work: there is none
            with pytest.raises(KeyboardInterrupt):
                gm.fit(X)
        monkeypatch.undo()
        assert_same_attributes(gm, before)
    if not fitted_before:
        with pytest.raises(NotFittedError):
            gm.predict(X)


@pytest.mark.parametrize("where", ["initialization", "EM"])
def test_an_interrupted_second_initialization_keeps_the_first(X, monkeypatch, where):
    kwargs = dict(n_components=3, random_state=0, tol=0, max_iter=5)
    first = _fit_quietly(GaussianMixture(**kwargs), X)  # n_init=2 draws it first
    gm = GaussianMixture(n_init=2, **kwargs)
    if where == "EM":  # the 2nd initialization's first pass: none of its own completed
        _interrupt(monkeypatch, em, "accumulate", 6)
    else:
        _interrupt(monkeypatch, gaussian_mixture, "initial_params", 2)
    with pytest.warns(UserWarning, match="interrupted during initialization 2 of 2"):
        with pytest.raises(KeyboardInterrupt):
            gm.fit(X)
    assert_same_attributes(gm, fitted_attributes(first))


@pytest.mark.parametrize("change", ["features", "n_components", "covariance_type"])
def test_warm_start_from_a_model_of_another_shape_says_what_to_do(X, change):
    gm = GaussianMixture(2, random_state=0, warm_start=True).fit(X)
    before = fitted_attributes(gm)
    data = np.c_[X, X[:, :1]] if change == "features" else X
    if change == "n_components":
        gm.set_params(n_components=3)
    elif change == "covariance_type":
        gm.set_params(covariance_type="diag")
    with pytest.raises(ValueError, match="warm_start=True continues from the fitted model"):
        gm.fit(data)
    assert_same_attributes(gm, before)
    gm.set_params(warm_start=False).fit(data)  # what the message says to do


@pytest.mark.parametrize("warm_start", [False, True])
def test_failed_fit_leaves_the_model_unchanged(X, warm_start):
    gm = GaussianMixture(2, random_state=0, warm_start=warm_start).fit(X)
    before = fitted_attributes(gm)
    labels = gm.predict(X)
    bad_data = [
        with_bad_rows(X, np.nan, np.float64),                         # NaN, same features
        np.c_[with_bad_rows(X, np.inf, np.float64), X[:, :1]],        # inf, 4 features
        X[:1],                                                        # too few rows
    ]
    for data in bad_data:
        with pytest.raises(ValueError):
            gm.fit(data)
        assert_same_attributes(gm, before)
        assert gm.n_features_in_ == 3
        assert_array_equal(gm.predict(X), labels)
    # A bad setting fails the same way.
    gm.set_params(tol=-1.0)
    with pytest.raises(ValueError, match="tol"):
        gm.fit(X)
    assert_same_attributes(gm, before)
    # And a fit that fails in its EM iterations (collapsed data, no regularization).
    gm.set_params(tol=1e-3, reg_covar=0.0, warm_start=False)
    with pytest.raises(ValueError, match="ill-defined"):
        gm.fit(np.ones((50, 3)))
    assert_same_attributes(gm, before)


@pytest.mark.parametrize("init", INITS)
def test_a_stream_of_too_few_rows_gets_the_same_message_whatever_the_initialization(X, init):
    """A stream's rows are known only once read: each initialization checks them then, with
    the message an array of as few rows gets."""
    from fastem.data import StreamSource

    with pytest.raises(ValueError, match="Expected n_samples >= n_components") as from_array:
        GaussianMixture(3, init_params=init).fit(X[:2])
    with pytest.raises(ValueError) as from_stream:
        GaussianMixture(3, init_params=init).fit(StreamSource(lambda: iter([X[:2]])))
    assert str(from_stream.value) == str(from_array.value)


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
@pytest.mark.parametrize("n_components", [2, 6])  # the per-component and expanded kernels
def test_rows_too_far_for_any_density_score_minus_infinity(X, covariance_type, n_components):
    """Rows so far from every component that their squared distances overflow have density 0:
    log-likelihood -inf, as scikit-learn's, not NaN; score is then -inf and bic +inf. The
    other rows keep their values. 120k rows also take the expanded kernel where it runs."""
    gm = GaussianMixture(n_components, covariance_type=covariance_type, random_state=0).fit(X)
    far = np.array([[1e155, 0.0, 0.0], [1e200, -1e200, 1e200], [1e300, 1e300, 1e300]])
    rows = np.concatenate([far, X[:1]])
    many = np.repeat(rows, 30_000, axis=0)
    expected = gm.score_samples(X[:1])[0]
    for data in (rows, many):
        scores = gm.score_samples(data)
        assert np.all(scores[np.abs(data).max(axis=1) > 1e100] == -np.inf)
        assert_allclose(scores[np.all(data == X[0], axis=1)], expected, rtol=1e-12)
    assert gm.score(rows) == -np.inf
    assert gm.bic(rows) == np.inf


@pytest.mark.parametrize("covariance_type", COVARIANCE_TYPES)
def test_a_model_set_up_by_hand_without_covariances_predicts(X, covariance_type):
    """As scikit-learn's: predictions need weights_, means_ and precisions_cholesky_ only."""
    fitted = GaussianMixture(2, covariance_type=covariance_type, random_state=0).fit(X)
    by_hand = GaussianMixture(2, covariance_type=covariance_type)
    by_hand.weights_ = fitted.weights_
    by_hand.means_ = fitted.means_
    by_hand.precisions_cholesky_ = fitted.precisions_cholesky_
    assert_array_equal(by_hand.score_samples(X), fitted.score_samples(X))
    assert_array_equal(by_hand.predict(X), fitted.predict(X))


def test_a_path_given_as_bytes_fits_as_the_same_path_as_str(X, tmp_path):
    path = tmp_path / "X.npy"
    np.save(path, X)
    from_bytes = GaussianMixture(2, random_state=0).fit(str(path).encode())
    from_str = GaussianMixture(2, random_state=0).fit(str(path))
    assert_array_equal(from_bytes.means_, from_str.means_)
