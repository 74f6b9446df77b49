"""Small helpers shared by the test modules."""

import numpy as np


def dense_covariances(covariances, covariance_type, K, d):
    """The (K, d, d) matrices a set of covariances stands for."""
    if covariance_type == "full":
        return np.asarray(covariances)
    if covariance_type == "tied":
        return np.broadcast_to(covariances, (K, d, d))
    if covariance_type == "diag":
        return np.stack([np.diag(c) for c in covariances])
    return np.stack([c * np.eye(d) for c in covariances])
