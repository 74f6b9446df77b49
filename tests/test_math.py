"""fastem's vectorizable exp and log against NumPy's, over the ranges the log-sum-exp uses."""

import numpy as np
import pytest
from numba import njit

from fastem._kernels._config import FASTMATH
from fastem._kernels._math import exp_nonpositive, log_at_least_one


@njit(fastmath=FASTMATH, error_model="numpy")
def _apply(log, x):
    """exp_nonpositive (or log_at_least_one) over x in a loop, as the kernels use them."""
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = log_at_least_one(x[i]) if log else exp_nonpositive(x[i])
    return out


def _apply_exp(x):
    return _apply(False, x)


def _apply_log(x):
    return _apply(True, x)


def ulps(actual, desired):
    return np.abs(actual - desired) / np.spacing(np.abs(desired))


def test_exp_accuracy_down_to_underflow():
    """Within 2 ulp (1 measured) down to underflow: the kernels' fast-math flags keep the
    two-part range reduction exact."""
    rng = np.random.default_rng(0)
    x = np.r_[0.0, -np.logspace(-12, np.log10(700.0), 20_000), -rng.uniform(0, 40, 20_000),
              -0.5 * np.log(2), 0.5 * np.log(2) - 1.0]
    error = ulps(_apply_exp(x), np.exp(x))
    assert error.max() <= 2
    assert _apply_exp(np.array([0.0]))[0] == 1.0  # the row's largest term is exactly 1


def test_exp_is_zero_below_minus_708_75_and_for_minus_inf():
    assert np.all(_apply_exp(np.array([-708.75, -709.0, -745.2, -1e300, -np.inf])) == 0.0)
    # Between -708.75 and -708, where exp underflows, it is tiny and not negative.
    tail = _apply_exp(np.linspace(-708.74, -708.0, 1000))
    assert np.all((tail >= 0.0) & (tail <= 2 * np.exp(-708.0)))


def test_log_within_a_few_ulp_from_one_to_many_components():
    rng = np.random.default_rng(1)
    x = np.r_[1.0, np.nextafter(1.0, 2.0), 1.0 + rng.random(20_000) * 1023.0, np.sqrt(2.0),
              np.nextafter(np.sqrt(2.0), 0.0), 2.0, 3.0, 1e300]
    actual, desired = _apply_log(x), np.log(x)
    assert ulps(actual[1:], desired[1:]).max() <= 2
    assert actual[0] == 0.0
    assert np.abs(actual - desired).max() <= 2 * np.spacing(np.log(1024.0))


@pytest.mark.parametrize("value", [np.nan, np.inf, 0.5, 0.0, -1.0])
def test_log_outside_its_range_is_nan(value):
    assert np.isnan(_apply_log(np.array([value]))[0])
