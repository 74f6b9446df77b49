"""The copy of a block's rows into the kernels' column layout, against NumPy's transpose."""

import numpy as np
import pytest

from fastem._kernels.gaussian import _load_columns


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("d", [1, 2, 3, 5, 7, 8, 13, 16, 24, 67])
@pytest.mark.parametrize("rows", [(0, 256), (37, 290), (5, 9)], ids=["block", "offset-tail", "short"])
def test_load_columns_is_the_transpose(dtype, d, rows):
    """Whole 8 x 8 tiles, 8 rows of fewer features (d < 8), features and rows past them,
    the row-by-row copy (float64, d = 16) and float32 widened to float64, from any starting
    row of a read-only array (the kernels' view of every chunk)."""
    r0, r1 = rows
    X = np.random.default_rng(d).normal(size=(300, d)).astype(dtype)
    X.flags.writeable = False
    XT = np.full((d, r1 - r0), np.nan)
    _load_columns(X, r0, r1, XT)
    assert np.array_equal(XT, X[r0:r1].T.astype(np.float64))
