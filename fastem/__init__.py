"""fastem: fast, reproducible Expectation-Maximization for mixture models on big data.

>>> import numpy as np, fastem
>>> X = np.random.default_rng(0).normal(size=(1000, 2))
>>> gm = fastem.GaussianMixture(n_components=2, random_state=0).fit(X)
>>> gm.means_.shape
(2, 2)
"""

from .gaussian_mixture import GaussianMixture

__version__ = "0.1.0"

__all__ = ["GaussianMixture", "__version__"]
