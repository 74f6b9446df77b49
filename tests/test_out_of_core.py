"""Out-of-core fitting through ``GaussianMixture``: files, stores and streams give the model of
the same data in memory, bit for bit; per-row outputs fill ``out=`` arrays and memmaps; bad
files, changing data and non-finite rows fail clearly without touching a fitted model; and a
pass over a memory-mapped file does not copy it.

``fastem.data`` itself (chunk contracts, every source's edge cases, sampling) is tested in
``test_data.py``; here almost everything goes through the estimator.
"""

import copy
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal, assert_equal
from sklearn.exceptions import ConvergenceWarning

import fastem.data
from fastem import GaussianMixture
from fastem.data import NpySource, as_source

h5py = pytest.importorskip("h5py")
zarr = pytest.importorskip("zarr")

# EM from 'random' may use all of max_iter; nothing else is expected to warn.
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")

N, D, K = 3000, 3, 3  # N is not a multiple of the chunk sizes
CHUNK = 512  # a multiple of the kernels' 256-row blocks
INITS = ("kmeans", "k-means++", "random", "random_from_data")
SOURCES = ("ndarray", "memmap-r", "memmap-r+", "npy", "raw", "hdf5", "zarr", "array-like",
           "stream")
FITTED = ("weights_", "means_", "covariances_", "precisions_", "precisions_cholesky_",
          "lower_bounds_", "lower_bound_", "n_iter_", "converged_", "n_features_in_")


def settings(init_params="kmeans", covariance_type="full", **extra):
    params = dict(n_components=K, covariance_type=covariance_type, init_params=init_params,
                  random_state=0, tol=1e-4, max_iter=30, chunk_size=CHUNK)
    params.update(extra)
    return params


def assert_same_model(got, want):
    for name in FITTED:
        a, b = getattr(got, name), getattr(want, name)
        assert np.array_equal(a, b), f"{name} differs: {a!r} != {b!r}"


def snapshot(est):
    return copy.deepcopy(est.__dict__)


def assert_state_is(est, state):
    """The estimator's whole state (parameters and fitted attributes) equals ``state``."""
    assert est.__dict__.keys() == state.keys()
    assert_equal(est.__dict__, state)


class Rows:
    """A bare 2-D store: ``shape``, ``dtype``, ``ndim`` and row slicing, nothing else."""

    def __init__(self, array):
        self._array = array
        self.shape = array.shape
        self.dtype = array.dtype
        self.ndim = array.ndim

    def __getitem__(self, key):
        return self._array[key].copy()


def piece_sizes(n):
    """Uneven stream pieces: 1, 700, 0 (skipped), 3, 1000, 517, 1, 700, ... covering n rows."""
    sizes, cycle, total = [], (1, 700, 0, 3, 1000, 517), 0
    while total < n:
        m = min(cycle[len(sizes) % len(cycle)], n - total)
        sizes.append(m)
        total += m
    return sizes


def stream(X, sizes=None):
    """A callable returning a fresh generator of pieces of X of varying sizes."""
    sizes = piece_sizes(X.shape[0]) if sizes is None else sizes

    def pieces():
        start = 0
        for m in sizes:
            yield X[start : start + m]
            start += m

    return pieces


class Files:
    """One dataset as every kind of source, files written once per module."""

    def __init__(self, X, folder):
        self.X = X
        self.folder = folder
        tag = X.dtype.name
        self.npy = str(folder / f"x-{tag}.npy")
        self.raw = str(folder / f"x-{tag}.raw")
        np.save(self.npy, X)
        X.tofile(self.raw)
        self.h5 = h5py.File(folder / f"x-{tag}.h5", "w")
        self.h5.create_dataset("x", data=X, chunks=(400, X.shape[1]))
        self.zarr = zarr.open_array(str(folder / f"x-{tag}.zarr"), mode="w", shape=X.shape,
                                    chunks=(700, X.shape[1]), dtype=X.dtype)
        self.zarr[:] = X

    def get(self, kind):
        if kind == "ndarray":
            return self.X.copy()
        if kind == "memmap-r":
            return np.load(self.npy, mmap_mode="r")
        if kind == "memmap-r+":
            return np.load(self.npy, mmap_mode="r+")
        if kind == "npy":
            return self.npy
        if kind == "raw":
            return as_source(self.raw, dtype=self.X.dtype, shape=self.X.shape)
        if kind == "hdf5":
            return self.h5["x"]
        if kind == "zarr":
            return self.zarr
        if kind == "array-like":
            return Rows(self.X)
        if kind == "stream":
            return stream(self.X)
        raise ValueError(kind)


@pytest.fixture(scope="module")
def X(blobs):
    return blobs(N, K, D)[0]


@pytest.fixture(scope="module")
def files(X, tmp_path_factory):
    folder = tmp_path_factory.mktemp("ooc")
    made = {np.float64: Files(X, folder), np.float32: Files(X.astype(np.float32), folder)}
    yield made
    for f in made.values():
        f.h5.close()


_in_memory = {}


def in_memory(X, **params):
    """The model fitted on the in-memory array (cached: many tests compare with it)."""
    key = (X.dtype.name, tuple(sorted(params.items())))
    if key not in _in_memory:
        _in_memory[key] = GaussianMixture(**params).fit(X)
    return _in_memory[key]


# --------------------------------------------------------------------------- same model


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
@pytest.mark.parametrize("init_params", INITS)
@pytest.mark.parametrize("kind", SOURCES)
def test_every_source_fits_the_in_memory_model(files, kind, init_params, covariance_type):
    params = settings(init_params, covariance_type)
    want = in_memory(files[np.float64].X, **params)
    got = GaussianMixture(**params).fit(files[np.float64].get(kind))
    assert_same_model(got, want)
    assert got.n_iter_ > 1


@pytest.mark.parametrize("init_params", INITS)
@pytest.mark.parametrize("kind", ["memmap-r", "npy", "raw", "hdf5", "zarr", "stream"])
def test_float32_files_fit_the_in_memory_float32_model(files, kind, init_params):
    params = settings(init_params, "diag" if init_params == "random" else "full")
    want = in_memory(files[np.float32].X, **params)
    got = GaussianMixture(**params).fit(files[np.float32].get(kind))
    assert_same_model(got, want)


def test_stream_with_more_rows_than_the_kmeans_sample(blobs):
    """Beyond k-means' 10,000-row sample a stream's rows are sampled as an array's are."""
    X = blobs(12_001, K, D, seed=1)[0]
    params = settings("kmeans", "diag")
    assert_same_model(GaussianMixture(**params).fit(stream(X, [1, 5000, 7000])),
                      GaussianMixture(**params).fit(X))


@pytest.mark.parametrize("init_params", INITS)
def test_chunk_size_changes_only_the_rounding(files, init_params):
    models = [GaussianMixture(**settings(init_params, chunk_size=c)).fit(files[np.float64].npy)
              for c in (512, 1000, None)]
    for other in models[1:]:
        assert other.n_iter_ == models[0].n_iter_
        for name in ("weights_", "means_", "covariances_", "precisions_cholesky_",
                     "lower_bounds_"):
            assert_allclose(getattr(other, name), getattr(models[0], name), rtol=1e-10,
                            atol=1e-12, err_msg=name)


def test_warm_start_from_a_file(files):
    X, path = files[np.float64].X, files[np.float64].npy
    params = settings("k-means++", warm_start=True, max_iter=2)
    on_file, in_mem = GaussianMixture(**params), GaussianMixture(**params)
    for _ in range(3):
        on_file.fit(path)
        in_mem.fit(X)
        assert_same_model(on_file, in_mem)


# --------------------------------------------------------------------------- per-row outputs

OUTPUTS = [  # method, trailing shape, dtype
    ("predict", (), np.int64),
    ("predict_proba", (K,), np.float64),
    ("score_samples", (), np.float64),
]


@pytest.fixture(scope="module")
def model(X):
    return in_memory(X, **settings())


@pytest.mark.parametrize("method, trailing, dtype", OUTPUTS)
@pytest.mark.parametrize("kind", ["npy", "memmap-r", "raw", "hdf5", "zarr", "array-like",
                                  "stream"])
def test_per_row_outputs_fill_out(files, model, tmp_path, kind, method, trailing, dtype):
    want = getattr(model, method)(files[np.float64].X)
    assert_array_equal(getattr(model, method)(files[np.float64].get(kind)), want)

    out = np.full((N,) + trailing, -7, dtype=dtype)
    result = getattr(model, method)(files[np.float64].get(kind), out=out)
    assert result is out
    assert_array_equal(out, want)

    mapped = np.lib.format.open_memmap(tmp_path / "out.npy", mode="w+", dtype=dtype,
                                       shape=(N,) + trailing)
    result = getattr(model, method)(files[np.float64].get(kind), out=mapped)
    assert result is mapped
    mapped.flush()
    del mapped, result
    assert_array_equal(np.load(tmp_path / "out.npy"), want)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_a_stream_takes_the_kernel_of_its_rows_in_memory(X, covariance_type):
    """A small 'full' mixture runs the expanded kernel only over many rows, so a stream whose
    rows are not yet counted is counted first: a warm start (no initialization pass to count
    them) and a score give the bits of the same rows in memory. 'diag' needs no count: the
    stream is read once per pass."""
    start = in_memory(X, **settings(covariance_type=covariance_type))
    reads = []

    def counted_stream():
        reads.append(1)
        return stream(X)()

    def warm(data):
        gm = copy.deepcopy(start)
        gm.set_params(warm_start=True, max_iter=2, tol=0.0)
        with pytest.warns(ConvergenceWarning):
            return gm.fit(data)

    assert_same_model(warm(counted_stream), warm(X))
    assert len(reads) == (3 if covariance_type == "full" else 2)
    reads.clear()
    assert start.score(counted_stream) == start.score(X)
    assert len(reads) == (2 if covariance_type == "full" else 1)


def test_score_bic_aic_on_a_file(files, model):
    X, path = files[np.float64].X, files[np.float64].npy
    for method in ("score", "bic", "aic"):
        assert getattr(model, method)(path) == getattr(model, method)(X), method
        assert getattr(model, method)(stream(X)) == getattr(model, method)(X), method


@pytest.mark.parametrize("kind", ["npy", "stream"])
def test_fit_predict_on_a_file(files, kind):
    X = files[np.float64].X
    params = settings("random_from_data")
    labels = GaussianMixture(**params).fit_predict(files[np.float64].get(kind))
    assert_array_equal(labels, GaussianMixture(**params).fit_predict(X))
    assert_array_equal(labels, GaussianMixture(**params).fit(X).predict(X))


@pytest.mark.parametrize("method, trailing, dtype", OUTPUTS)
def test_bad_out(files, model, tmp_path, method, trailing, dtype):
    path = files[np.float64].npy
    shape = (N,) + trailing
    other_dtype = np.float64 if dtype == np.int64 else np.float32
    read_only = np.zeros(shape, dtype=dtype)
    read_only.setflags(write=False)
    np.save(tmp_path / "ro.npy", np.zeros(shape, dtype=dtype))
    strided = np.zeros((2 * N,) + trailing, dtype=dtype)[::2]
    cases = [
        (np.zeros((N - 1,) + trailing, dtype=dtype), ValueError, "out has shape"),
        (np.zeros((N, K + 1), dtype=dtype), ValueError, "out has shape"),
        (np.zeros(shape, dtype=other_dtype), TypeError, "out has dtype"),
        (np.zeros(shape, dtype=np.dtype(dtype).newbyteorder()), TypeError, "out has dtype"),
        (read_only, ValueError, "out is read-only"),
        (np.load(tmp_path / "ro.npy", mmap_mode="r"), ValueError, "out is read-only"),
        (strided, ValueError, "C-contiguous"),
        (np.zeros(shape, dtype=dtype).tolist(), TypeError, "out must be a numpy array"),
    ]
    if trailing:
        cases.append((np.zeros(shape, dtype=dtype, order="F"), ValueError, "C-contiguous"))
    for out, error, match in cases:
        before = np.array(out, copy=True)
        with pytest.raises(error, match=match):
            getattr(model, method)(path, out=out)
        assert_array_equal(np.asarray(out), before)  # nothing written


# --------------------------------------------------------------------------- bad files


@pytest.fixture
def fitted(files):
    """A fitted model, fresh for each test (tests check that failures leave it untouched)."""
    return copy.deepcopy(in_memory(files[np.float64].X, **settings()))


class Bomb:
    """Unpickling it creates a directory: the proof that something was unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_bad_npy_files(fitted, files, tmp_path):
    with open(files[np.float64].npy, "rb") as f:
        data = f.read()
    (tmp_path / "truncated.npy").write_bytes(data[: len(data) - 24])
    (tmp_path / "header.npy").write_bytes(data[:10] + b"{'garbage" + data[19:])
    (tmp_path / "junk.npy").write_bytes(os.urandom(300))
    marker = tmp_path / "unpickled"
    np.save(tmp_path / "objects.npy", np.array([[Bomb(str(marker)), 1.0]] * 4, dtype=object),
            allow_pickle=True)
    state = snapshot(fitted)
    for method in ("fit", "predict", "score_samples", "score"):
        with pytest.raises(ValueError, match="truncated"):
            getattr(fitted, method)(str(tmp_path / "truncated.npy"))
        for name in ("header.npy", "junk.npy"):
            with pytest.raises(ValueError, match="not a valid .npy"):
                getattr(fitted, method)(str(tmp_path / name))
        with pytest.raises(TypeError, match="Python objects.*never unpickles"):
            getattr(fitted, method)(str(tmp_path / "objects.npy"))
        assert_state_is(fitted, state)
    assert not marker.exists()


class RewrittenDuringFit(NpySource):
    """An .npy source whose file is rewritten (shorter) just before its ``at``-th pass."""

    def __init__(self, path, at):
        super().__init__(path)
        self.at, self.passes = at, 0

    def _begin_pass(self):
        self.passes += 1
        if self.passes == self.at:
            np.save(self.path, np.load(self.path)[:-100])
        super()._begin_pass()


@pytest.mark.parametrize("at", [1, 2, 5])
def test_npy_rewritten_during_fit(fitted, files, tmp_path, at):
    path = str(tmp_path / "x.npy")
    np.save(path, files[np.float64].X)
    state = snapshot(fitted)
    with pytest.raises(ValueError, match="changed since fastem opened it: its size changed"):
        fitted.fit(RewrittenDuringFit(path, at))
    assert_state_is(fitted, state)


TRUNCATED_SCRIPT = textwrap.dedent("""
    import copy, sys, warnings
    import numpy as np
    import fastem

    path = sys.argv[1]
    X = np.random.default_rng(0).normal(size=(30_000, 3))  # more than the 64 KiB granularity
    np.save(path, X)
    mapped = np.load(path, mmap_mode="r")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = fastem.GaussianMixture(2, init_params="random_from_data", max_iter=3,
                                       random_state=0).fit(mapped)
    state = copy.deepcopy(model.__dict__)
    np.save(path, X[:1000])  # truncates the mapped file: reading the old map is a SIGBUS
    for method in ("predict", "score_samples", "score", "fit"):
        try:
            getattr(model, method)(mapped)
        except ValueError as error:
            assert "truncated or rewritten" in str(error), error
        else:
            raise AssertionError(method + " read a truncated memmap")
    np.testing.assert_equal(model.__dict__, state)
    np.save(path, X[:, :2])  # a path is opened again: its new width is seen
    try:
        model.predict(path)
    except ValueError as error:
        assert "X has 2 features, but GaussianMixture is expecting 3" in str(error), error
    else:
        raise AssertionError("predicted 2 features")
    print("ok")
""")


def test_memmap_truncated_after_fit(tmp_path):
    """np.save over a mapped file truncates it. Run in a subprocess: should the check ever go,
    the SIGBUS would kill that process, not the test session."""
    done = subprocess.run([sys.executable, "-c", TRUNCATED_SCRIPT, str(tmp_path / "x.npy")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.returncode, done.stderr[-3000:])
    assert done.stdout.strip().endswith("ok")


class Resized(Rows):
    """A store that takes ``new_rows`` rows of ``array`` after ``after`` reads reaching its
    last row: between two passes (or a sample and a pass), never inside one."""

    def __init__(self, array, new_rows, after):
        super().__init__(array[:N])
        self._all, self.new_rows, self.after, self.ends = array, new_rows, after, 0

    def __getitem__(self, key):
        part = super().__getitem__(key)
        if isinstance(key, slice) and key.stop == self.shape[0]:
            self.ends += 1
            if self.ends == self.after:
                self._array = self._all[: self.new_rows]
                self.shape = self._array.shape
        return part


@pytest.mark.parametrize("after", [1, 3])
@pytest.mark.parametrize("new_rows", [N - 10, N + 10])
def test_store_resized_between_passes(fitted, files, new_rows, after):
    X = np.concatenate([files[np.float64].X, files[np.float64].X[:10]])
    state = snapshot(fitted)
    store = Resized(X, new_rows, after)
    with pytest.raises(ValueError, match=rf"array-like changed shape from \({N}, {D}\) to "
                                         rf"\({new_rows}, {D}\)"):
        fitted.fit(store)
    assert store.ends == after
    assert_state_is(fitted, state)


def test_hdf5_dataset_resized_between_passes(files, tmp_path):
    X = files[np.float64].X
    with h5py.File(tmp_path / "r.h5", "w") as f:
        ds = f.create_dataset("x", data=X, maxshape=(None, D), chunks=(256, D))
        source = as_source(ds)
        for _ in source.chunks(CHUNK):
            pass
        for rows in (N + 100, N - 100):
            ds.resize((rows, D))
            with pytest.raises(ValueError, match="HDF5 dataset changed shape"):
                source.chunks(CHUNK)


class ChangingStream:
    """A stream whose ``at``-th pass differs: ``how`` in 'more', 'fewer', 'empty'."""

    def __init__(self, X, at, how):
        self.X, self.at, self.how, self.calls = X, at, how, 0

    def __call__(self):
        self.calls += 1
        X = self.X
        if self.calls == self.at:
            X = {"more": np.concatenate([X, X[:5]]), "fewer": X[:-5], "empty": X[:0]}[self.how]
        return iter([X[: len(X) // 2], X[len(X) // 2 :]])


@pytest.mark.parametrize("how, match", [
    ("more", "more than the 3000 rows of its first pass"),
    ("fewer", "yielded 2995 rows in this pass but 3000 in its first"),
    ("empty", "yielded no rows in this pass"),
])
def test_stream_changing_between_passes(fitted, files, how, match):
    state = snapshot(fitted)
    for at in (2, 4):
        with pytest.raises(ValueError, match=match):
            fitted.fit(ChangingStream(files[np.float64].X, at, how))
        assert_state_is(fitted, state)
    with pytest.raises(ValueError, match=match):
        fitted.predict(ChangingStream(files[np.float64].X, 2, how))  # counts rows first


def test_bad_streams(fitted, files):
    X = files[np.float64].X
    state = snapshot(fitted)
    cases = [
        (lambda: iter([X[:100], X[100:, :2]]), ValueError, "Chunk 1 of the stream has 2 col"),
        (lambda: iter([X[:100], X[100:].astype(np.float32)]), TypeError, "Chunk 1.*dtype"),
        (lambda: iter([X[:100], X[100:, 0]]), ValueError, "Chunk 1 of the stream has shape"),
        (lambda: iter([]), ValueError, "yielded no rows"),
        (lambda: iter([X[:0], X[:0]]), ValueError, "yielded no rows"),
        (lambda: 42, TypeError, "must return an iterable"),
        (iter([X]), TypeError, "one-shot iterator"),
        ((piece for piece in [X]), TypeError, "one-shot iterator"),
    ]
    for bad, error, match in cases:
        for method in ("fit", "predict", "score_samples"):
            with pytest.raises(error, match=match):
                getattr(fitted, method)(bad)
        assert_state_is(fitted, state)


@pytest.mark.parametrize("chunk_size, error", [(0, ValueError), (-1, ValueError),
                                               (1.5, TypeError), ("512", TypeError)])
def test_bad_chunk_size(fitted, files, chunk_size, error):
    path = files[np.float64].npy
    state = snapshot(fitted)
    for method in ("fit", "predict", "predict_proba", "score_samples", "score"):
        model = copy.deepcopy(fitted).set_params(chunk_size=chunk_size)
        with pytest.raises(error, match="chunk_size must be a positive integer"):
            getattr(model, method)(path)
    with pytest.raises(error, match="chunk_size must be a positive integer"):
        fitted.set_params(chunk_size=chunk_size).fit(path)
    fitted.set_params(chunk_size=CHUNK)
    assert_state_is(fitted, state)


# --------------------------------------------------------------------------- non-finite rows

BAD_ROW = 5000  # in the fifth of six 1024-row chunks


@pytest.fixture(scope="module")
def bad_data(blobs, tmp_path_factory):
    """6000 rows with one non-finite value in row 5000, as an array and an .npy file."""
    X = blobs(6000, K, D, seed=2)[0].copy()
    X[BAD_ROW, 1] = np.nan
    path = str(tmp_path_factory.mktemp("bad") / "bad.npy")
    np.save(path, X)
    return X, path


def bad_sources(X, path, value):
    Xv = X.copy()
    Xv[BAD_ROW, 1] = value
    np.save(path, Xv)
    return {"npy": path, "stream": stream(Xv, [1, 999, 2000, 1500, 1500]), "array-like": Rows(Xv)}


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf], ids=["nan", "+inf", "-inf"])
@pytest.mark.parametrize("init_params", INITS)
def test_fit_names_the_global_row(fitted, bad_data, tmp_path, init_params, value):
    X, _ = bad_data
    state = snapshot(fitted)
    fitted.set_params(init_params=init_params, chunk_size=1024)
    state["init_params"], state["chunk_size"] = init_params, 1024
    for kind, source in bad_sources(X, str(tmp_path / "bad.npy"), value).items():
        with pytest.raises(ValueError, match=rf"NaN or infinity in row {BAD_ROW}\b"):
            fitted.fit(source)
        assert_state_is(fitted, state)


@pytest.mark.parametrize("method", ["predict", "predict_proba", "score_samples", "score",
                                    "bic", "aic"])
def test_inference_names_the_global_row(fitted, bad_data, tmp_path, method):
    X, _ = bad_data
    fitted.set_params(chunk_size=1024)
    state = snapshot(fitted)
    for kind, source in bad_sources(X, str(tmp_path / "bad.npy"), np.inf).items():
        with pytest.raises(ValueError, match=rf"NaN or infinity in row {BAD_ROW}\b"):
            getattr(fitted, method)(source)
        assert_state_is(fitted, state)


def test_fit_with_explicit_start_names_the_global_row(fitted, bad_data):
    _, path = bad_data
    start = dict(weights_init=fitted.weights_, means_init=fitted.means_,
                 precisions_init=fitted.precisions_)
    model = GaussianMixture(**settings(chunk_size=1024, **start))
    with pytest.raises(ValueError, match=rf"NaN or infinity in row {BAD_ROW}\b"):
        model.fit(path)
    assert not hasattr(model, "weights_")


# --------------------------------------------------------------------------- memory

MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys, threading, warnings
    import numpy as np
    import fastem

    def rss(field):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024

    path, warm = sys.argv[1], sys.argv[2]
    params = dict(n_components=4, covariance_type="diag", max_iter=3, tol=0.0, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fastem.GaussianMixture(**params).fit(warm)  # compiled (or loaded) outside the count
    before = rss("RssAnon")
    peak = [before]
    done = threading.Event()

    def watch():
        while not done.wait(0.005):
            peak[0] = max(peak[0], rss("RssAnon"))

    watcher = threading.Thread(target=watch)
    watcher.start()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = fastem.GaussianMixture(**params).fit(path)
    done.set()
    watcher.join()
    peak[0] = max(peak[0], rss("RssAnon"))
    print(json.dumps({"before": before, "peak": peak[0], "n_iter": model.n_iter_}))
""")


def write_npy(path, n, d, dtype=np.float32, step=1 << 18, seed=0):
    """An .npy of n rows (4 shifted blobs) written chunk by chunk through a memmap."""
    rng = np.random.default_rng(seed)
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(n, d))
    for start in range(0, n, step):
        m = min(step, n - start)
        block = rng.standard_normal((m, d), dtype=np.float32)
        block += 6.0 * rng.integers(4, size=(m, 1))
        mm[start : start + m] = block
    mm.flush()
    del mm


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RssAnon is Linux's")
def test_fitting_a_memmapped_file_does_not_copy_it(tmp_path):
    """k-means initialization and 3 EM iterations on a 200 MB .npy, in a fresh process: the
    process's own (anonymous) memory grows by well under the file's size."""
    n, d = 3_276_800, 16  # 200 MiB of float32
    path, warm = str(tmp_path / "big.npy"), str(tmp_path / "warm.npy")
    write_npy(path, n, d)
    write_npy(warm, 5000, d)
    done = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, path, warm],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    growth = result["peak"] - result["before"]
    assert result["n_iter"] == 3
    assert growth < 60 * 2**20, f"RssAnon grew by {growth / 2**20:.0f} MiB ({result})"


def rss_file():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssFile:"):
                return int(line.split()[1]) * 1024
    pytest.skip("needs RssFile in /proc/self/status")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RssFile is Linux's")
@pytest.mark.parametrize("mode", ["npy", "r", "r+"])
def test_pages_behind_a_pass_are_unmapped(tmp_path, monkeypatch, mode):
    """Beyond a window (256 MiB, here 1 MiB) the file's pages behind the read position leave
    the process, so a file bigger than the RAM is read with flat resident memory."""
    import fastem.data

    window, chunk_rows, d = 2**20, 4096, 8
    monkeypatch.setattr(fastem.data, "_MAPPED_BYTES", window)
    path = str(tmp_path / "x.npy")
    write_npy(path, 400_000, d, dtype=np.float64)  # 25.6 MB
    source = as_source(path if mode == "npy" else np.load(path, mmap_mode=mode))
    base = rss_file()
    peak = base
    for start, block in source.chunks(chunk_rows, prefetch=True):
        block.sum()  # touch every page of the block
        peak = max(peak, rss_file())
    assert peak - base < window + 3 * chunk_rows * d * 8 + 2**20, (peak - base) / 2**20
    assert rss_file() - base < 2**20  # the last pages too, once the pass is over


def test_unmapping_never_loses_changes_in_a_memmap(files, tmp_path, monkeypatch):
    """Pages are dropped only where they hold nothing of their own: a 'c' map's private
    changes stay (it is never unmapped), an 'r+' map's unsaved changes go to the file."""
    import fastem.data

    monkeypatch.setattr(fastem.data, "_MAPPED_BYTES", 0)
    X = np.repeat(files[np.float64].X, 20, axis=0)  # 1.4 MB
    changed = X.copy()
    changed[::7] *= 2.0
    params = settings("random_from_data", chunk_size=1024)
    want = GaussianMixture(**params).fit(changed)
    for mode in ("c", "r+"):
        path = str(tmp_path / f"{mode}.npy")
        np.save(path, X)
        mapped = np.load(path, mmap_mode=mode)
        mapped[::7] *= 2.0  # not flushed
        for _ in range(2):
            assert_same_model(GaussianMixture(**params).fit(mapped), want)
            assert_array_equal(mapped, changed)
        del mapped
        assert_array_equal(np.load(path), changed if mode == "r+" else X)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_npy_bigger_than_half_the_memory_is_read_not_mapped(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    X = np.concatenate([rng.normal(size=(900, 3)), rng.normal(5, 1, size=(700, 3))])
    path = tmp_path / "big.npy"
    np.save(path, X)
    monkeypatch.setattr(fastem.data, "_read_above_bytes", lambda: 0)
    source = fastem.data.as_source(path)
    assert isinstance(source, fastem.data.RawFileSource)
    assert np.array_equal(np.concatenate([b.copy() for _, b in source.chunks(512)]), X)
    base = dict(n_components=2, random_state=0, tol=0, max_iter=5, chunk_size=512)
    from_file = GaussianMixture(**base).fit(path)
    in_memory = GaussianMixture(**base).fit(X)
    for name in ("weights_", "means_", "covariances_", "lower_bounds_"):
        assert np.array_equal(getattr(from_file, name), getattr(in_memory, name)), name
