"""Data sources: where fastem reads rows from, one chunk at a time.

Every fastem operation (initialization, each EM pass, predict, score) reads its data through a
:class:`DataSource`, so in-memory arrays, memory-mapped files, chunked stores and streams are
all the same thing to the rest of the package: an iterable of ``(start, block)`` pairs, where
``block`` is a C-contiguous float32 or float64 array of shape ``(m, n_features)`` holding rows
``start:start + m``.

Dtype policy (the same as scikit-learn's): float32 and float64 data keep their dtype; any other
dtype is converted to float64, one chunk at a time.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator

import numpy as np

__all__ = ["DataSource", "ArraySource", "as_source", "check_chunk_size", "DEFAULT_CHUNK_BYTES"]

# A chunk of about this many bytes amortizes the per-chunk overhead (a parallel region, a
# statistics merge) while keeping out-of-core memory small and flat.
DEFAULT_CHUNK_BYTES = 32 * 2**20

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _working_dtype(dtype) -> np.dtype:
    """The dtype chunks are delivered in: float32/float64 kept, anything else float64."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f" and dtype.itemsize in (4, 8):
        return np.dtype(dtype.type)  # native byte order
    if dtype.kind not in "biuf":
        raise TypeError(
            f"fastem fits numeric data; got dtype {dtype}. Convert it to float32 or float64 first."
        )
    return np.dtype(np.float64)


def check_chunk_size(chunk_size) -> int | None:
    """Validate a user-given chunk size (rows per chunk); ``None`` means automatic."""
    if chunk_size is None:
        return None
    if isinstance(chunk_size, (bool, np.bool_)) or not isinstance(chunk_size, numbers.Integral):
        raise TypeError(f"chunk_size must be a positive integer or None, got {chunk_size!r}.")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size}.")
    return int(chunk_size)


class DataSource:
    """Rows of a two-dimensional dataset, read one chunk at a time.

    Attributes
    ----------
    n_features : int
        Number of columns.
    dtype : numpy.dtype
        float32 or float64: the dtype of the blocks :meth:`chunks` yields.
    n_samples : int or None
        Number of rows, or None while unknown (a stream before its first full pass).
    """

    n_features: int
    dtype: np.dtype
    n_samples: int | None

    def default_chunk_size(self) -> int:
        """Rows per chunk when the user does not choose: about ``DEFAULT_CHUNK_BYTES``."""
        return max(1024, DEFAULT_CHUNK_BYTES // (self.n_features * self.dtype.itemsize))

    def chunks(self, chunk_size: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, block)`` for consecutive row ranges covering the data once.

        ``block`` is C-contiguous, of dtype :attr:`dtype` and shape ``(m, n_features)`` with
        ``m >= 1``. It may be a view into the source or a reused buffer: use it before asking
        for the next chunk.
        """
        raise NotImplementedError

    def take(self, indices: np.ndarray) -> np.ndarray:
        """Rows at the given sorted row indices, as a new float array ``(len(indices), d)``."""
        raise NotImplementedError


class ArraySource(DataSource):
    """An in-memory two-dimensional array (or anything numpy can view as one without copying)."""

    def __init__(self, array: np.ndarray):
        if array.ndim != 2:
            raise ValueError(f"Expected a 2-D array of shape (n_samples, n_features), got {array.ndim}-D.")
        self.array = array
        self.n_samples, self.n_features = array.shape
        self.dtype = _working_dtype(array.dtype)

    def _convert(self, block: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(block, dtype=self.dtype)

    def chunks(self, chunk_size=None):
        n = self.n_samples
        # A C-contiguous float array needs no copy, so it is handed over whole unless the user
        # asked for smaller chunks.
        no_copy = self.array.dtype == self.dtype and self.array.flags.c_contiguous
        if chunk_size is None:
            chunk_size = n if no_copy else self.default_chunk_size()
        for start in range(0, n, chunk_size):
            yield start, self._convert(self.array[start : start + chunk_size])

    def take(self, indices):
        return np.array(self.array[np.asarray(indices)], dtype=self.dtype, order="C")


def as_source(X) -> DataSource:
    """Wrap ``X`` as a :class:`DataSource`.

    Parameters
    ----------
    X : DataSource or numpy.ndarray
        The data. A DataSource is returned as it is.

    Returns
    -------
    DataSource
    """
    if isinstance(X, DataSource):
        return X
    if isinstance(X, np.ndarray):
        return ArraySource(X)
    raise TypeError(
        f"Cannot read rows from an object of type {type(X).__name__}; pass a 2-D numpy array."
    )
