"""fastem's k-means initialization: kernels against naive oracles, and the properties the
mixture initialization relies on (accuracy, determinism, precision, error reporting)."""

import itertools

import numba
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from fastem._em import kernel_rows, threads
from fastem._kernels._config import BLOCK_ROWS
from fastem._kernels.kmeans import (CENTER_GROUP, KPP_BLOCK_ROWS, kpp_min_distances,
                                    lloyd_chunk)
from fastem._kmeans import _Lloyd, _kmeans_plusplus, kmeans_centers, nearest_centers
from fastem.data import DataSource, as_source, sample_rows

# Small shapes keep the tests fast; the k-means kernels are compiled for float64 and, in one
# test, float32 only.
N_FEATURES = 3


def make_blobs(n=12_000, k=5, d=N_FEATURES, spread=1.0, scale=10.0, seed=0):
    """Gaussian blobs of (nearly) equal size around ``k`` random centers."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=scale, size=(k, d))
    labels = rng.integers(k, size=n)
    X = centers[labels] + rng.normal(scale=spread, size=(n, d))
    return X, centers


def match_centers(found, true):
    """Max distance between two center sets after the best permutation."""
    return min(
        np.abs(found[list(p)] - true).max() for p in itertools.permutations(range(len(true)))
    )


def fit(X, k=5, seed=0, **kwargs):
    return kmeans_centers(X, k, random_state=np.random.RandomState(seed), **kwargs)


class StreamSource(DataSource):
    """Rows of an array delivered in fixed chunks, ``n_samples`` unknown until a full pass."""

    def __init__(self, array, chunk):
        self.array = np.ascontiguousarray(array)
        self.n_features = array.shape[1]
        self.dtype = self.array.dtype
        self.n_samples = None
        self.chunk = chunk

    def chunks(self, chunk_size=None):
        for start in range(0, self.array.shape[0], self.chunk):
            # A reused buffer, as a stream reader might hand out.
            yield start, self.array[start : start + self.chunk].copy()
        self.n_samples = self.array.shape[0]


# --------------------------------------------------------------------------- kernels

def naive_lloyd(X, centers):
    X = X.astype(np.float64)
    dist = ((X[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2)
    labels = dist.argmin(axis=1)
    K = len(centers)
    counts = np.bincount(labels, minlength=K)
    sums = np.zeros_like(centers)
    np.add.at(sums, labels, X - centers[labels])
    return labels, dist[np.arange(len(X)), labels], counts, sums


def run_kernel(X, centers, wave, chunk=None):
    K, d = centers.shape
    counts, sums, inertia = np.zeros(K, np.int64), np.zeros((K, d)), np.zeros(1)
    labels, min_dist = np.empty(len(X), np.int64), np.empty(len(X))
    bufs = (np.zeros((wave, K), np.int64), np.zeros((wave, K, d)), np.zeros(wave),
            np.zeros(wave, np.int64))
    chunk = chunk or len(X)
    bad = []
    for s in range(0, len(X), chunk):
        bad.append(lloyd_chunk(kernel_rows(X[s : s + chunk], d), centers, BLOCK_ROWS, counts,
                               sums, inertia,
                               labels[s : s + chunk], min_dist[s : s + chunk], *bufs))
    return bad, labels, min_dist, counts, sums, inertia[0]


def assert_matches_oracle(found, oracle, sums_atol):
    """run_kernel's outputs on rows with no bad one against naive_lloyd's."""
    bad, l2, d2, c2, s2, inertia = found
    labels, dist, counts, sums = oracle
    assert bad == [-1]
    assert_array_equal(l2, labels)
    assert_allclose(d2, dist, rtol=1e-12)
    assert_array_equal(c2, counts)
    assert_allclose(s2, sums, rtol=1e-12, atol=sums_atol)
    assert_allclose(inertia, dist.sum(), rtol=1e-12)


def test_lloyd_kernel_matches_naive_oracle():
    X, _ = make_blobs(n=3 * BLOCK_ROWS + 17, seed=1)
    centers = X[:4] + 0.1
    assert_matches_oracle(run_kernel(X, centers, wave=2), naive_lloyd(X, centers), 1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("d", [1, 7, 8, 13, 24])
def test_lloyd_kernel_matches_naive_oracle_at_any_width(d, dtype):
    """Every layout of the block's transposed copy: 8-row groups of narrow rows (d < 8),
    8 x 8 tiles with features past the last tile, and the rows past the last 8."""
    X, _ = make_blobs(n=2 * BLOCK_ROWS + 13, k=6, d=d, seed=7)
    X = X.astype(dtype)
    centers = X[5:11].astype(np.float64) + 0.1
    with threads(2):
        found = run_kernel(X, centers, wave=2)
    assert_matches_oracle(found, naive_lloyd(X, centers), 1e-9)


@pytest.mark.parametrize("n_clusters", sorted({1, CENTER_GROUP - 1, CENTER_GROUP + 1,
                                                2 * CENTER_GROUP + 3} - {0}))
def test_lloyd_kernel_exact_distances_and_ties_across_center_groups(n_clusters):
    """The distances run CENTER_GROUP centers at a time: on integer data every distance is
    exact, and a row as near to two centers goes to the first of them, in the same group or
    in a later one."""
    rng = np.random.default_rng(8)
    d = 5
    X = rng.integers(-20, 20, size=(BLOCK_ROWS + 37, d)).astype(np.float64)
    centers = rng.integers(-20, 20, size=(n_clusters, d)).astype(np.float64)
    if n_clusters > 1:
        centers[-1] = centers[0]  # a later copy of center 0, in another group when K > group
        X[:10] = centers[0] + np.eye(d)[np.arange(10) % d]  # nearest to both copies
    found = run_kernel(X, centers, wave=2)
    labels, dist, counts, sums = naive_lloyd(X, centers)
    assert found[0] == [-1]
    assert_array_equal(found[1], labels)  # argmin takes the first of ties, as the kernel must
    assert_array_equal(found[2], dist)
    assert_array_equal(found[3], counts)
    if n_clusters > 1:
        assert (found[1][:10] == 0).all()


def test_lloyd_kernel_bits_independent_of_wave_and_aligned_chunks():
    X, _ = make_blobs(n=10 * BLOCK_ROWS + 5, seed=2)
    centers = X[:5].copy()
    ref = run_kernel(X, centers, wave=128)
    for wave, chunk in [(1, None), (3, None), (4, 2 * BLOCK_ROWS), (7, 3 * BLOCK_ROWS)]:
        got = run_kernel(X, centers, wave=wave, chunk=chunk)
        for a, b in zip(ref[1:], got[1:]):
            assert_array_equal(a, b)


def test_lloyd_kernel_reports_first_nonfinite_row_and_skips_it():
    X, _ = make_blobs(n=4 * BLOCK_ROWS, seed=3)
    X[BLOCK_ROWS + 9, 1] = np.inf
    X[3 * BLOCK_ROWS + 1, 0] = np.nan
    centers = X[:3].copy()
    bad, labels, dist, counts, _, _ = run_kernel(X, centers, wave=8)
    assert bad == [BLOCK_ROWS + 9]
    assert labels[BLOCK_ROWS + 9] == -1 and np.isnan(dist[BLOCK_ROWS + 9])
    assert counts.sum() == len(X) - 2


def test_kpp_kernel_matches_naive_oracle():
    X, _ = make_blobs(n=500, seed=4)
    closest = np.random.default_rng(0).uniform(0, 50, size=len(X))
    candidates = np.array([0, 7, 499], dtype=np.int64)
    out = np.empty((3, len(X)))
    kpp_min_distances(kernel_rows(X, X.shape[1]), candidates, closest, out)
    expected = np.minimum(((X[None, :, :] - X[candidates][:, None, :]) ** 2).sum(-1), closest)
    assert_allclose(out, expected, rtol=1e-12)


@pytest.mark.parametrize("n_threads", [1, 2])
def test_kpp_kernel_covers_every_row_of_several_blocks(n_threads):
    """The kernel's parallel iterations are blocks of KPP_BLOCK_ROWS rows; the last one short."""
    n = 2 * KPP_BLOCK_ROWS + 37
    X, _ = make_blobs(n=n, seed=6)
    closest = np.random.default_rng(1).uniform(0, 50, size=n)
    candidates = np.array([n - 1, KPP_BLOCK_ROWS, 3], dtype=np.int64)
    out = np.full((3, n), np.nan)
    with threads(n_threads):
        kpp_min_distances(kernel_rows(X, X.shape[1]), candidates, closest, out)
    expected = np.minimum(((X[None, :, :] - X[candidates][:, None, :]) ** 2).sum(-1), closest)
    assert_allclose(out, expected, rtol=1e-12)


def test_kmeans_plusplus_picks_distinct_sample_rows():
    X, _ = make_blobs(n=300, k=4, seed=5)
    centers = _kmeans_plusplus(X, 20, np.random.RandomState(0))
    rows = {tuple(r) for r in X}
    assert all(tuple(c) in rows for c in centers)
    assert len({tuple(c) for c in centers}) == 20


def test_lloyd_wrapper_rejects_mismatched_shapes():
    lloyd = _Lloyd(3, N_FEATURES)
    acc = lloyd.new_accumulators()
    centers = np.zeros((3, N_FEATURES))
    with pytest.raises(ValueError):
        lloyd.chunk(np.zeros((5, N_FEATURES + 1)), centers, acc)
    with pytest.raises(ValueError):
        lloyd.chunk(np.zeros((5, N_FEATURES)), np.zeros((4, N_FEATURES)), acc)
    with pytest.raises(ValueError):
        lloyd.chunk(np.zeros((N_FEATURES, 5)).T, centers, acc)
    with pytest.raises(ValueError):
        lloyd.chunk(np.zeros((5, N_FEATURES)), centers, acc, np.empty(4, np.int64), np.empty(4))


# --------------------------------------------------------------------------- kmeans_centers

def test_recovers_well_separated_centers():
    X, true = make_blobs(n=20_000, k=5, spread=0.5, scale=20.0, seed=6)
    centers = fit(X, 5, sample_size=2_000)
    assert centers.shape == (5, N_FEATURES) and centers.dtype == np.float64
    assert match_centers(centers, true) < 0.05


def test_inertia_close_to_sklearn():
    from sklearn.cluster import KMeans

    X, _ = make_blobs(n=6_000, k=8, spread=2.0, scale=5.0, seed=7)
    ours = nearest_centers(X, fit(X, 8, sample_size=1_000))[2]
    theirs = KMeans(8, n_init=3, random_state=0).fit(X).inertia_
    assert ours <= 1.03 * theirs


def test_bit_identical_across_threads_and_aligned_chunk_sizes():
    X, _ = make_blobs(n=20_000, k=5, spread=3.0, seed=8)
    kwargs = dict(sample_size=1_000, tol=0.0, n_full_passes=3)
    saved = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one_thread = fit(X, 5, **kwargs)
        numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
        two_threads = fit(X, 5, **kwargs)
    finally:
        numba.set_num_threads(saved)
    assert_array_equal(one_thread, two_threads)
    assert_array_equal(fit(X, 5, chunk_size=BLOCK_ROWS * 7, **kwargs), one_thread)
    assert_array_equal(fit(X, 5, chunk_size=len(X), **kwargs), one_thread)


def test_float32_agrees_with_float64():
    X, _ = make_blobs(n=10_000, k=4, spread=2.0, seed=9)
    X32 = X.astype(np.float32)
    c32 = fit(X32, 4, sample_size=1_000)
    c64 = fit(X32.astype(np.float64), 4, sample_size=1_000)
    assert c32.dtype == np.float64
    assert_allclose(c32, c64, rtol=1e-10, atol=1e-10)


def test_large_offset_gives_shifted_centers():
    X, _ = make_blobs(n=10_000, k=4, spread=2.0, seed=10)
    offset = 1e6
    c = fit(X, 4, sample_size=1_000)
    c_off = fit(X + offset, 4, sample_size=1_000)
    assert_allclose(c_off, c + offset, rtol=1e-9)
    # Also the differences from the offset, i.e. the information a raw sum would lose.
    assert_allclose(c_off - offset, c, atol=1e-6)


@pytest.mark.parametrize("sample_size", [None, 100])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_row_is_named(sample_size, bad):
    X, _ = make_blobs(n=5_000, seed=11)
    X[1234, 2] = bad
    with pytest.raises(ValueError, match=r"NaN or infinity in row 1234\."):
        fit(X, 3, sample_size=sample_size, chunk_size=1000)


def test_nonfinite_row_in_full_pass_is_named():
    X, _ = make_blobs(n=5_000, seed=12)
    X[1234, 0] = np.nan
    # Precondition: this seed's sample misses row 1234, so the chunked pass must catch it.
    assert np.isfinite(sample_rows(as_source(X), 10, np.random.RandomState(0))).all()
    with pytest.raises(ValueError, match=r"row 1234\."):
        kmeans_centers(X, 3, random_state=np.random.RandomState(0), sample_size=10,
                       chunk_size=3 * BLOCK_ROWS)


def test_reproducible_with_same_seed():
    X, _ = make_blobs(n=8_000, k=6, spread=3.0, seed=13)
    assert_array_equal(fit(X, 6, seed=3, sample_size=500), fit(X, 6, seed=3, sample_size=500))
    assert not np.array_equal(fit(X, 6, seed=3, sample_size=500),
                              fit(X, 6, seed=4, sample_size=500))


def test_single_cluster_is_the_mean():
    X, _ = make_blobs(n=3_000, seed=14)
    assert_allclose(fit(X, 1, sample_size=200)[0], X.mean(axis=0), rtol=1e-10, atol=1e-10)


def test_as_many_clusters_as_rows():
    X, _ = make_blobs(n=40, seed=15)
    centers = fit(X, 40)
    assert_allclose(np.sort(centers, axis=0), np.sort(X, axis=0), rtol=1e-12)
    assert len({tuple(c) for c in centers}) == 40


def test_stream_source_with_unknown_length():
    X, true = make_blobs(n=9_000, k=4, spread=0.5, scale=20.0, seed=16)
    source = StreamSource(X, chunk=BLOCK_ROWS * 5)
    centers = fit(source, 4, sample_size=700)
    assert match_centers(centers, true) < 0.05
    assert_array_equal(centers, fit(StreamSource(X, chunk=BLOCK_ROWS * 5), 4, sample_size=700))


def test_too_few_rows_and_bad_parameters():
    X, _ = make_blobs(n=10, seed=17)
    with pytest.raises(ValueError, match="n_clusters"):
        fit(X, 11)
    with pytest.raises(ValueError, match="n_clusters"):
        fit(StreamSource(X, chunk=4), 11)
    with pytest.raises(ValueError):
        fit(X, 0)
    with pytest.raises(TypeError):
        fit(X, 2.5)


def test_nearest_centers_names_bad_row_with_offset():
    X, _ = make_blobs(n=600, seed=18)
    X[300, 1] = np.nan
    with pytest.raises(ValueError, match=r"row 1300\."):
        nearest_centers(X, X[:3], start=1000)


def test_memory_layout_does_not_change_the_bits():
    X, _ = make_blobs(n=5_000, k=3, spread=3.0, seed=19)
    assert_array_equal(fit(np.asfortranarray(X), 3, sample_size=500), fit(X, 3, sample_size=500))


def test_concurrent_calls_from_python_threads():
    from concurrent.futures import ThreadPoolExecutor

    X, _ = make_blobs(n=6_000, k=4, spread=3.0, seed=20)
    expected = [fit(X, 4, seed=s, sample_size=500) for s in range(4)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        got = list(pool.map(lambda s: fit(X, 4, seed=s, sample_size=500), range(4)))
    for a, b in zip(expected, got):
        assert_array_equal(a, b)


def test_empty_cluster_moves_to_farthest_sample_row():
    from fastem._kmeans import _new_centers, _relocate

    X = np.array([[0.0, 0, 0], [1, 0, 0], [10, 0, 0], [0, 0, 0.5]])
    centers = np.array([[0.0, 0, 0], [100, 100, 100], [10, 0, 0]])
    lloyd = _Lloyd(3, 3)
    acc = lloyd.new_accumulators()
    labels, dist = np.empty(4, np.int64), np.empty(4)
    lloyd.chunk(X, centers, acc, labels, dist)
    new, empty = _new_centers(centers, acc)
    assert_array_equal(empty, [1])
    _relocate(new, empty, X, dist)
    assert_array_equal(new[1], X[1])  # row 1 is the farthest from its center
    assert_allclose(new[0], [1 / 3, 0, 0.5 / 3])


def test_fewer_distinct_rows_than_clusters():
    X = np.repeat(np.eye(N_FEATURES), 50, axis=0)
    centers = fit(X, 5)
    assert np.all(np.isfinite(centers))
    assert {tuple(c) for c in centers} == {tuple(r) for r in np.eye(N_FEATURES)}
