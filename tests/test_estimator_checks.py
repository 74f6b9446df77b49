"""scikit-learn's estimator checks, with the settings scikit-learn tests its own
GaussianMixture with (``n_init=2, max_iter=5``: sklearn/utils/_test_common/instance_generator.py).

No check is expected to fail: ``expected_failed_checks`` maps a check's name to the reason it
fails, and is empty. With ``max_iter=5`` some fits stop before converging, by design, so
``ConvergenceWarning`` is ignored here.
"""

import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from fastem import GaussianMixture

ESTIMATORS = [
    GaussianMixture(n_init=2, max_iter=5),
    GaussianMixture(n_components=2, covariance_type="diag", init_params="random_from_data",
                    max_iter=5, chunk_size=256, n_jobs=1),
]


def expected_failed_checks(estimator):
    return {}


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@parametrize_with_checks(ESTIMATORS, expected_failed_checks=expected_failed_checks)
def test_sklearn_compatible(estimator, check):
    check(estimator)
