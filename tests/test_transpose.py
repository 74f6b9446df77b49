"""The copy of a block's rows into the kernels' column layout, against NumPy's transpose."""

import numpy as np
import pytest

from fastem._kernels._transpose import load_columns


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("d", [3, 13])
def test_load_columns_without_a_centre_copies_the_rows(dtype, d):
    """No centre (the k-means kernel's load): the rows as they are, in the tiles and past
    them."""
    X = np.random.default_rng(d).normal(size=(300, d)).astype(dtype)
    X.flags.writeable = False
    XT = np.full((d, 253), np.nan)
    load_columns(X, 40, 293, XT, None)
    assert np.array_equal(XT, X[40:293].T.astype(np.float64))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("d", [1, 2, 3, 5, 7, 8, 13, 16, 24, 67])
@pytest.mark.parametrize("rows", [(0, 256), (37, 290), (5, 9)],
                         ids=["block", "offset-tail", "short"])
@pytest.mark.parametrize("centred", [False, True], ids=["less-zeros", "less-centre"])
def test_load_columns_is_the_transpose(dtype, d, rows, centred):
    """Whole 8 x 8 tiles, 8 rows of fewer features (d < 8), features and rows past them,
    the row-by-row copy (float64, d = 16) and float32 widened to float64, from any starting
    row of a read-only array (the kernels' view of every chunk); less a centre, each entry
    the float64 difference, in the tiles as past them."""
    r0, r1 = rows
    rng = np.random.default_rng(d)
    X = rng.normal(size=(300, d)).astype(dtype)
    X.flags.writeable = False
    centre = rng.normal(size=d) * 10.0 if centred else np.zeros(d)  # zeros: 'full''s origin
    XT = np.full((d, r1 - r0), np.nan)
    load_columns(X, r0, r1, XT, centre)
    expected = X[r0:r1].T.astype(np.float64) - centre[:, None]
    assert np.array_equal(XT, expected)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("d", [8, 16, 64])
@pytest.mark.parametrize("rows", [(0, 256), (37, 293), (5, 13)], ids=["block", "offset", "short"])
def test_diag_features_from_rows_are_those_of_the_columns(dtype, d, rows):
    """The 'diag' features taken straight from the rows, in 8 x 8 tiles, are the same bits as
    those of the transposed copy."""
    from fastem._kernels.gaussian import DIAG
    from fastem._kernels.gaussian_expanded import _diag_features_from_rows, _features

    r0, r1 = rows
    rng = np.random.default_rng(d)
    X = (rng.normal(size=(300, d)) * 5 + 3).astype(dtype)
    X.flags.writeable = False
    centre = rng.normal(size=d)
    F = 1 + 2 * d
    expected = np.full((F, r1 - r0), np.nan)
    load_columns(X, r0, r1, expected[1:1 + d], centre)
    _features(DIAG, expected, d, r1 - r0)
    Phi = np.full((F, r1 - r0), np.nan)
    _diag_features_from_rows(X, r0, r1, centre, Phi)
    assert np.array_equal(Phi, expected)
