"""Sufficient statistics of a Gaussian mixture: a small value that adds with ``+``.

A pass over a block, a chunk, a thread's share or (later) a cluster worker's partition makes one
:class:`GaussianStats`; summing them gives the statistics of all the rows, and the M-step needs
nothing else. That one property gives out-of-core, parallel and distributed fitting.

Moments are kept around a shift (the means of the parameters that produced the
responsibilities, or, from the expanded kernel and for 'tied', one common centre near the
data) rather than around zero: raw moments E[x x^T] - E[x] E[x]^T cancel catastrophically
for data far from the origin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["GaussianStats", "s2_shape"]


def s2_shape(covariance_type: str, K: int, d: int) -> tuple:
    """Shape of the second-moment statistic for a covariance type."""
    return {"full": (K, d, d), "tied": (d, d), "diag": (K, d), "spherical": (K,)}[covariance_type]



@dataclass
class GaussianStats:
    """Responsibility-weighted statistics of some rows, around ``shift``.

    With r_nk the responsibilities and c_k = ``shift[k]``:

    * ``s0[k] = sum_n r_nk``
    * ``s1[k] = sum_n r_nk (x_n - c_k)``
    * ``s2``: 'full' ``[k] = sum_n r_nk (x_n - c_k)(x_n - c_k)^T``; 'diag' the diagonals of
      those; 'spherical' their traces; 'tied' ``sum_n (x_n - c)(x_n - c)^T`` around the one
      common shift ``c`` (every row of ``shift`` equal).

    Attributes
    ----------
    covariance_type : {'full', 'tied', 'diag', 'spherical'}
    shift : ndarray of shape (n_components, n_features)
    n_samples : int
        Number of rows summarized.
    loglik : float
        Sum of the rows' log-likelihoods under the parameters that gave the responsibilities.
    s0 : ndarray of shape (n_components,)
    s1 : ndarray of shape (n_components, n_features)
    s2 : ndarray, shape as above
    """

    covariance_type: str
    shift: np.ndarray
    n_samples: int
    loglik: float
    s0: np.ndarray
    s1: np.ndarray
    s2: np.ndarray

    @classmethod
    def zeros(cls, covariance_type: str, shift: np.ndarray) -> GaussianStats:
        """Empty statistics around ``shift``: the identity of ``+``."""
        shift = np.array(shift, dtype=np.float64, order="C")
        K, d = shift.shape
        return cls(
            covariance_type, shift, 0, 0.0, np.zeros(K), np.zeros((K, d)),
            np.zeros(s2_shape(covariance_type, K, d)),
        )

    def recentred(self, shift: np.ndarray) -> GaussianStats:
        """The same statistics expressed around another shift."""
        shift = np.asarray(shift, dtype=np.float64)
        delta = self.shift - shift  # (K, d): x - new = (x - old) + delta
        s0, s1, s2 = self.s0, self.s1, self.s2
        new_s1 = s1 + s0[:, None] * delta
        if self.covariance_type == "tied":
            total = s1.sum(axis=0)  # sum_n (x_n - c): responsibilities sum to 1 over k
            dc = delta[0]
            cross = np.outer(total, dc)
            # Each term symmetric to the bit, as the scatter is: so is the sum.
            new_s2 = s2 + (cross + cross.T) + self.n_samples * np.outer(dc, dc)
        elif self.covariance_type == "full":
            cross = s1[:, :, None] * delta[:, None, :]
            new_s2 = s2 + cross + cross.transpose(0, 2, 1) + s0[:, None, None] * (
                delta[:, :, None] * delta[:, None, :]
            )
        elif self.covariance_type == "diag":
            new_s2 = s2 + 2 * s1 * delta + s0[:, None] * delta**2
        else:
            new_s2 = s2 + 2 * np.sum(s1 * delta, axis=1) + s0 * np.sum(delta**2, axis=1)
        return GaussianStats(self.covariance_type, shift.copy(), self.n_samples, self.loglik,
                             s0.copy(), new_s1, new_s2)

    def __add__(self, other: GaussianStats) -> GaussianStats:
        if not isinstance(other, GaussianStats):
            return NotImplemented
        if other.covariance_type != self.covariance_type or other.shift.shape != self.shift.shape:
            raise ValueError(
                "Cannot add statistics of different models: "
                f"{self.covariance_type} {self.shift.shape} and "
                f"{other.covariance_type} {other.shift.shape}."
            )
        if not np.array_equal(other.shift, self.shift):
            other = other.recentred(self.shift)
        return GaussianStats(
            self.covariance_type, self.shift.copy(), self.n_samples + other.n_samples,
            self.loglik + other.loglik, self.s0 + other.s0, self.s1 + other.s1,
            self.s2 + other.s2,
        )
