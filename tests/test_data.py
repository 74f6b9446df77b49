"""fastem.data: every source delivers exactly its data in the promised chunks, bad input fails
with a clear message, prefetching changes nothing but the timing, sampling is uniform, and
reading a big memory-mapped file keeps the process's own memory flat."""

import gc
import itertools
import mmap
import os
import pickle
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from fastem._kernels._config import BLOCK_ROWS
from fastem.data import (
    ArrayLikeSource,
    ArraySource,
    HDF5Source,
    MemmapSource,
    NpySource,
    RawFileSource,
    StreamSource,
    ZarrSource,
    _sample_indices,
    allocate_output,
    as_source,
    check_chunk_size,
    prefetched,
    sample_rows,
)

N, D = 23, 3
CHUNK_SIZES = [1, 5, N, N + 7, None]


def make_data(n=N, d=D, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)) * 100


def expected_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype.kind == "f" and dtype.itemsize in (4, 8):
        return np.dtype(dtype.type)
    return np.dtype(np.float64)


def collect(source, chunk_size=None, prefetch=False):
    """Concatenate a pass's blocks, checking the chunk contract on the way."""
    blocks, next_start = [], 0
    limit = chunk_size
    for start, block in source.chunks(chunk_size, prefetch=prefetch):
        assert start == next_start
        assert type(block) is np.ndarray
        assert block.ndim == 2 and block.shape[0] >= 1 and block.shape[1] == source.n_features
        assert block.flags.c_contiguous
        assert block.dtype == source.dtype
        if limit is not None:
            assert block.shape[0] <= limit
            if blocks:  # only the last block may be short
                assert blocks[-1].shape[0] == limit
        blocks.append(block.copy())  # a block is valid until the next one is requested
        next_start += block.shape[0]
    return np.concatenate(blocks)


def check_source(source, X, prefetch_too=True):
    want = X.astype(expected_dtype(X.dtype))
    assert source.dtype == want.dtype
    prefetches = (False, True) if prefetch_too else (False,)
    for chunk_size, prefetch in itertools.product(CHUNK_SIZES, prefetches):
        got = collect(source, chunk_size, prefetch)
        assert got.dtype == want.dtype
        assert_array_equal(got, want)
    assert source.n_samples == X.shape[0]
    idx = np.array([5, 0, N - 1, 5, 3])
    assert_array_equal(source.take(idx), want[idx])
    assert source.take(idx).dtype == want.dtype


# ---------------------------------------------------------------------------- sources
ARRAY_VARIANTS = {
    "c-float64": lambda X: X,
    "c-float32": lambda X: X.astype(np.float32),
    "f-order": lambda X: np.asfortranarray(X),
    "strided-rows": lambda X: np.repeat(X, 2, axis=0)[::2],
    "strided-cols": lambda X: np.repeat(X, 2, axis=1)[:, ::2],
    "int32": lambda X: X.astype(np.int32),
    "uint8": lambda X: np.abs(X).astype(np.uint8),
    "float16": lambda X: X.astype(np.float16),
    "byteswapped-f8": lambda X: X.astype(">f8"),
    "byteswapped-f4": lambda X: X.astype(">f4"),
    "bool": lambda X: X > 0,
}


@pytest.mark.parametrize("variant", ARRAY_VARIANTS)
def test_ndarray(variant):
    X = ARRAY_VARIANTS[variant](make_data())
    source = as_source(X)
    assert type(source) is ArraySource
    check_source(source, X)


def test_ndarray_zero_copy():
    X = make_data().astype(np.float32)
    (start, block), = as_source(X).chunks()  # in memory: one chunk, the array itself
    assert start == 0 and np.shares_memory(block, X)
    assert all(np.shares_memory(b, X) for _, b in as_source(X).chunks(4, prefetch=True))


def test_list_input():
    X = make_data()
    check_source(as_source(X.tolist()), X, prefetch_too=False)


@pytest.mark.parametrize("dtype", ["float32", "float64", ">f8", "int16"])
@pytest.mark.parametrize("order", ["C", "F"])
def test_memmap(tmp_path, dtype, order):
    X = make_data().astype(dtype)
    mm = np.memmap(tmp_path / "x.bin", dtype=dtype, mode="w+", shape=X.shape, order=order)
    mm[:] = X
    mm.flush()
    source = as_source(mm)
    assert type(source) is MemmapSource
    check_source(source, X)
    if dtype in ("float32", "float64") and order == "C":
        for prefetch in (False, True):
            assert all(np.shares_memory(b, mm) for _, b in source.chunks(4, prefetch=prefetch))


def test_memmap_default_chunks_are_bounded(tmp_path):
    X = np.zeros((3 * 2**16, 64), dtype=np.float64)  # 96 MiB
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=X.dtype, shape=X.shape)
    source = as_source(mm)
    sizes = [b.shape[0] for _, b in source.chunks()]
    assert len(sizes) > 1 and sizes[0] == source.default_chunk_size()


@pytest.mark.parametrize("dtype", ["float32", "float64", ">f8", "int16", "float16"])
@pytest.mark.parametrize("fortran", [False, True])
@pytest.mark.parametrize("as_path", [str, lambda p: p])
def test_npy_path(tmp_path, dtype, fortran, as_path):
    X = make_data().astype(dtype)
    if fortran:
        X = np.asfortranarray(X)
    np.save(tmp_path / "x.npy", X)
    source = as_source(as_path(tmp_path / "x.npy"))
    assert type(source) is NpySource
    check_source(source, X)


@pytest.mark.parametrize("dtype", ["float32", "<f8", ">f8", "int16", "uint32"])
def test_raw_file(tmp_path, dtype):
    X = make_data().astype(dtype)
    path = tmp_path / "x.raw"
    X.tofile(path)
    source = as_source(path, dtype=dtype, shape=X.shape)
    assert type(source) is RawFileSource
    check_source(source, X)
    check_source(RawFileSource(str(path), dtype, (-1, D)), X, prefetch_too=False)


def test_raw_file_offset(tmp_path):
    X = make_data().astype(np.float32)
    path = tmp_path / "x.raw"
    with open(path, "wb") as f:
        f.write(b"HEADER!!")
        X.tofile(f)
    check_source(RawFileSource(path, np.float32, (N, D), offset=8), X)


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "float16"])
@pytest.mark.parametrize("chunks", [None, (7, D)])
def test_hdf5(tmp_path, dtype, chunks):
    h5py = pytest.importorskip("h5py")
    X = make_data().astype(dtype)
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("x", data=X, chunks=chunks)
    with h5py.File(tmp_path / "x.h5", "r") as f:
        source = as_source(f["x"])
        assert type(source) is HDF5Source
        check_source(source, X)
        with pytest.raises(TypeError, match="not an HDF5 dataset"):
            as_source(f)


def test_hdf5_auto_chunks_align_with_storage(tmp_path):
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f.create_dataset("x", shape=(10_000, 4), dtype="f4", chunks=(1000, 4))
    with h5py.File(tmp_path / "x.h5", "r") as f:
        size = as_source(f["x"])._auto_chunk_size()
    assert size % 1000 == 0 and size % BLOCK_ROWS == 0


@pytest.mark.parametrize("dtype", ["float32", "float64", "int16"])
def test_zarr(tmp_path, dtype):
    zarr = pytest.importorskip("zarr")
    X = make_data().astype(dtype)
    z = zarr.create_array(store=str(tmp_path / "x.zarr"), shape=X.shape, chunks=(7, D),
                          dtype=dtype)
    z[:] = X
    source = as_source(z)
    assert type(source) is ZarrSource
    check_source(source, X)
    check_source(as_source(tmp_path / "x.zarr"), X, prefetch_too=False)  # a store's path


class Store:
    """A minimal array-like store: shape, dtype, ndim and row slices; counts its reads."""

    def __init__(self, array, fail_at=None):
        self.array = array
        self.shape, self.dtype, self.ndim = array.shape, array.dtype, array.ndim
        self.reads = 0
        self.fail_at = fail_at

    def __getitem__(self, key):
        assert isinstance(key, slice) and key.step is None
        self.reads += 1
        if self.fail_at is not None and self.reads >= self.fail_at:
            raise OSError("disk on fire")
        return self.array[key].tolist()  # anything numpy.asarray understands


@pytest.mark.parametrize("dtype", ["float64", "float32", "int64"])
def test_array_like(dtype):
    X = make_data().astype(dtype)
    source = as_source(Store(X))
    assert type(source) is ArrayLikeSource
    check_source(source, X)


def test_array_like_take_reads_little():
    X = make_data(n=100_000, d=2)
    store = Store(X)
    source = as_source(store)
    idx = np.array([99_999, 3, 50_000, 4, 3])
    assert_array_equal(source.take(idx), X[idx])
    assert store.reads == 3  # {3, 4}, 50_000 and 99_999; nothing in between


def stream_of(X, sizes, dtype=None):
    """A generator function yielding X in pieces of the given sizes (cycled), empty ones too."""

    def make():
        start, i = 0, 0
        while start < len(X):
            m = sizes[i % len(sizes)]
            piece = X[start : start + m]
            yield piece if dtype is None else piece.astype(dtype)
            start += m
            i += 1

    return make


@pytest.mark.parametrize("sizes", [[1], [4], [N], [3, 0, 11, 1], [100]])
@pytest.mark.parametrize("dtype", ["float64", "float32", "int16"])
def test_stream(sizes, dtype):
    X = make_data().astype(dtype)
    source = as_source(stream_of(X, sizes))
    assert type(source) is StreamSource
    assert source.n_samples is None and source.n_features == D
    assert source.dtype == expected_dtype(dtype)
    check_source(source, X)


def test_stream_n_samples_known_after_first_full_pass():
    X = make_data()
    source = as_source(stream_of(X, [4]))
    for _ in source.chunks(2):
        break  # an interrupted pass teaches nothing
    assert source.n_samples is None
    collect(source, 5)
    assert source.n_samples == N
    assert_array_equal(collect(source, 5), X)


def test_stream_reusing_its_buffer():
    """A reader that refills one array: correct with and without a reader thread."""
    X = make_data(n=40)

    def make():
        buf = np.empty((8, D))
        for start in range(0, 40, 8):
            buf[:] = X[start : start + 8]
            yield buf

    source = as_source(make)
    for chunk_size, prefetch in itertools.product([3, 8, 16, None], [False, True]):
        assert_array_equal(collect(source, chunk_size, prefetch), X)


def test_stream_blocks_are_exact_whatever_the_pieces():
    X = make_data(n=1000)
    source = as_source(stream_of(X, [1, 300, 7, 0, 64]))
    sizes = [b.shape[0] for _, b in source.chunks(128)]
    assert sizes == [128] * 7 + [104]


def test_stream_reads_data_once_per_pass():
    X = make_data()
    calls = []

    def make():
        calls.append(1)
        yield from (X[i : i + 4] for i in range(0, N, 4))

    source = as_source(make)
    assert len(calls) == 1  # the first chunk is read to learn n_features and dtype...
    collect(source)
    assert len(calls) == 1  # ...and handed over to the first pass
    collect(source)
    assert len(calls) == 2


# ---------------------------------------------------------------------------- prefetch
def test_prefetch_propagates_stream_errors():
    X = make_data()

    def make():
        yield X[:5]
        yield X[5:10]
        raise RuntimeError("network down")

    source = as_source(make)
    got = []
    with pytest.raises(RuntimeError, match="network down"):
        for _, block in source.chunks(5, prefetch=True):
            got.append(block.copy())
    assert_array_equal(np.concatenate(got), X[:10])
    assert not any(t.name == "fastem-prefetch" for t in threading.enumerate())


def test_prefetch_propagates_reader_errors():
    source = as_source(Store(make_data(), fail_at=3))
    with pytest.raises(OSError, match="disk on fire"):
        collect(source, 4, prefetch=True)


def test_prefetch_thread_stops_when_the_consumer_stops():
    source = as_source(make_data().astype(np.int32))
    it = source.chunks(2, prefetch=True)
    next(it)
    assert any(t.name == "fastem-prefetch" for t in threading.enumerate())
    it.close()
    assert not any(t.name == "fastem-prefetch" for t in threading.enumerate())
    # Abandoned without close: the generator's finalizer stops the thread too.
    it = source.chunks(2, prefetch=True)
    next(it)
    del it
    gc.collect()
    assert not any(t.name == "fastem-prefetch" for t in threading.enumerate())


def test_prefetch_keeps_at_most_two_items_in_flight():
    produced = []

    def items():
        for i in range(10):
            produced.append(i)
            yield i

    for i, item in enumerate(prefetched(items())):
        assert item == i
        time.sleep(0.01)  # give the reader every chance to run ahead
        assert len(produced) <= i + 2


def test_prefetched_helper_and_errors_in_first_item():
    assert list(prefetched(range(5))) == list(range(5))
    assert list(prefetched([])) == []

    def bad():
        raise KeyError("first")
        yield

    with pytest.raises(KeyError, match="first"):
        list(prefetched(bad()))


# ---------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("bad, error", [(0, ValueError), (-1, ValueError), (1.5, TypeError),
                                        (True, TypeError), ("8", TypeError)])
def test_bad_chunk_size(bad, error):
    source = as_source(make_data())
    with pytest.raises(error, match="chunk_size must be a positive integer"):
        source.chunks(bad)  # raised at the call, before iterating
    with pytest.raises(error, match="chunk_size"):
        check_chunk_size(bad)


def test_chunk_size_numpy_integer():
    assert check_chunk_size(np.int64(3)) == 3
    assert_array_equal(collect(as_source(make_data()), np.int32(4)), make_data())


@pytest.mark.parametrize("X, match", [
    (np.zeros(5), r"1-D .* X.reshape\(-1, 1\)"),
    (np.zeros((2, 3, 4)), "3-D"),
    (np.zeros((5, 0)), "0 features"),
    (np.zeros((0, 3)), "empty"),
])
def test_bad_shapes(tmp_path, X, match):
    with pytest.raises(ValueError, match=match):
        as_source(X)
    np.save(tmp_path / "x.npy", X)
    with pytest.raises(ValueError, match=match):
        as_source(tmp_path / "x.npy")
    with pytest.raises(ValueError, match=match):
        as_source(Store(X))


def test_non_numeric_data(tmp_path):
    with pytest.raises(TypeError, match="numeric"):
        as_source(np.array([["a", "b"]]))
    with pytest.raises(TypeError, match="numeric"):
        as_source(np.zeros((3, 2), dtype=complex))
    np.save(tmp_path / "s.npy", np.zeros((3, 2), dtype="U3"))
    with pytest.raises(TypeError, match="numeric"):
        as_source(tmp_path / "s.npy")


def test_truncated_npy(tmp_path):
    X = make_data()
    np.save(tmp_path / "x.npy", X)
    data = (tmp_path / "x.npy").read_bytes()
    for cut, match in [(len(data) - 8, "truncated"), (100, "truncated|not a valid"),
                       (20, "not a valid"), (3, "not a valid"), (0, "not a valid")]:
        (tmp_path / "t.npy").write_bytes(data[:cut])
        with pytest.raises(ValueError, match=match):
            as_source(tmp_path / "t.npy")
    (tmp_path / "long.npy").write_bytes(data + b"junk")
    with pytest.raises(ValueError, match="longer than its header"):
        as_source(tmp_path / "long.npy")
    (tmp_path / "garbage.npy").write_bytes(os.urandom(500))
    with pytest.raises(ValueError, match="not a valid .npy"):
        as_source(tmp_path / "garbage.npy")
    header = data[:128].replace(b"'descr'", b"'dexcr'")
    (tmp_path / "h.npy").write_bytes(header + data[128:])
    with pytest.raises(ValueError, match="not a valid .npy"):
        as_source(tmp_path / "h.npy")


class Bomb:
    """Unpickling it creates a directory: the proof that something was unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_object_npy_is_refused_without_unpickling(tmp_path):
    proof = tmp_path / "proof"
    np.save(tmp_path / "proof.npy", np.array([[Bomb(str(proof))]], dtype=object),
            allow_pickle=True)
    np.load(tmp_path / "proof.npy", allow_pickle=True)
    assert proof.exists()  # the bomb works

    marker = tmp_path / "unpickled"
    np.save(tmp_path / "obj.npy", np.array([[Bomb(str(marker)), 1.0]], dtype=object),
            allow_pickle=True)
    with pytest.raises(TypeError, match="Python objects.*never unpickles"):
        as_source(tmp_path / "obj.npy")
    with pytest.raises(TypeError, match="Python objects"):
        NpySource(str(tmp_path / "obj.npy"))
    assert not marker.exists()


def test_pickle_file_is_not_loaded(tmp_path):
    marker = tmp_path / "unpickled"
    with open(tmp_path / "x.pkl", "wb") as f:
        pickle.dump(Bomb(str(marker)), f)
    with pytest.raises(ValueError, match="Cannot tell how to read"):
        as_source(tmp_path / "x.pkl")
    assert not marker.exists()


def test_file_paths_that_are_not_data(tmp_path):
    with pytest.raises(FileNotFoundError):
        as_source(tmp_path / "missing.npy")
    np.savez(tmp_path / "x.npz", a=make_data())
    with pytest.raises(ValueError, match="npz"):
        as_source(tmp_path / "x.npz")
    with pytest.raises(ValueError, match="directory"):
        as_source(tmp_path)


@pytest.mark.parametrize("kind", ["npy", "memmap", "raw"])
def test_file_changed_between_passes(tmp_path, kind):
    X = make_data()
    path = tmp_path / ("x.npy" if kind == "npy" else "x.data")

    def open_source():
        if kind == "npy":
            np.save(path, X)
            return as_source(str(path))
        X.tofile(path)
        if kind == "memmap":
            return as_source(np.memmap(path, dtype=X.dtype, mode="r", shape=X.shape))
        return as_source(path, dtype=X.dtype, shape=X.shape)

    # Size change (a truncation would make a memory map crash with SIGBUS when read).
    source = open_source()
    collect(source, 5)
    with open(path, "ab") as f:
        f.write(b"x" * 8)
    with pytest.raises(ValueError, match="changed since fastem opened it.*size changed"):
        source.chunks(5)
    with pytest.raises(ValueError, match="changed since fastem opened it"):
        source.take([0])
    del source

    # Same size, rewritten in place (mtime moved explicitly: file systems have coarse clocks).
    source = open_source()
    collect(source, 5)
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(st.st_size - 8)
        f.write(np.float64(1.5).tobytes())
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(ValueError, match="it was modified"):
        collect(source, 5, prefetch=True)
    del source

    # Replaced by another file, then deleted.
    source = open_source()
    os.replace(path, tmp_path / "old")
    path.write_bytes((tmp_path / "old").read_bytes())
    with pytest.raises(ValueError, match="replaced"):
        source.chunks()
    os.remove(path)
    with pytest.raises(ValueError, match="deleted or moved"):
        source.chunks()


def test_npy_header_change_with_the_same_size_and_mtime(tmp_path):
    X = make_data(n=4, d=4)
    path = tmp_path / "x.npy"
    np.save(path, X)
    source = as_source(path)
    st = os.stat(path)
    np.save(path, X.reshape(2, 8))  # same bytes count, another header
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(ValueError, match="header changed"):
        source.chunks()


def test_raw_file_errors(tmp_path):
    X = make_data()
    X.tofile(tmp_path / "x.raw")
    with pytest.raises(ValueError, match="has 552 bytes.*needs 576"):
        as_source(tmp_path / "x.raw", dtype=np.float64, shape=(N + 1, D))
    with pytest.raises(ValueError, match="not a whole number of rows"):
        as_source(tmp_path / "x.raw", dtype=np.float64, shape=(-1, 5))
    with pytest.raises(TypeError, match="both dtype= and shape="):
        as_source(tmp_path / "x.raw", dtype=np.float64)
    with pytest.raises(TypeError, match="must be its path"):
        as_source(X, dtype=np.float64, shape=X.shape)
    np.save(tmp_path / "x.npy", X)
    size = os.path.getsize(tmp_path / "x.npy")
    with pytest.raises(ValueError, match="is a .npy file"):
        as_source(tmp_path / "x.npy", dtype=np.uint8, shape=(size, 1))


def test_raw_file_shrinking_while_read(tmp_path):
    X = make_data(n=1000)
    X.tofile(tmp_path / "x.raw")
    source = as_source(tmp_path / "x.raw", dtype=X.dtype, shape=X.shape)
    it = source.chunks(100)
    next(it)
    os.truncate(tmp_path / "x.raw", 500 * 8 * D)
    with pytest.raises(ValueError, match="ended early"):
        list(it)


def test_stream_errors():
    X = make_data()
    with pytest.raises(ValueError, match="yielded no rows"):
        as_source(lambda: iter([]))
    with pytest.raises(ValueError, match="yielded no rows"):
        as_source(lambda: iter([np.zeros((0, 3))]))
    with pytest.raises(ValueError, match="2-D"):
        as_source(lambda: iter([np.zeros(3)]))
    with pytest.raises(TypeError, match="must return an iterable"):
        as_source(lambda: 42)
    with pytest.raises(TypeError, match="one-shot iterator"):
        as_source(iter([X]))
    with pytest.raises(TypeError, match="one-shot iterator"):
        as_source(stream_of(X, [4])())

    def widths():
        yield X[:4]
        yield X[4:8, :2]

    with pytest.raises(ValueError, match="Chunk 1 of the stream has 2 columns, but the first had"):
        collect(as_source(widths))

    def dtypes():
        yield X[:4]
        yield X[4:8].astype(np.float32)

    with pytest.raises(TypeError, match="Chunk 1 of the stream has dtype float32, but the first"):
        collect(as_source(dtypes), prefetch=True)

    def dims():
        yield X[:4]
        yield X[4]

    with pytest.raises(ValueError, match="Chunk 1 of the stream has shape"):
        collect(as_source(dims))


def test_stream_changing_between_passes():
    X = make_data()
    n_rows = [N]

    def make():
        yield X[: n_rows[0]]

    source = as_source(make)
    collect(source)
    n_rows[0] = N - 3
    with pytest.raises(ValueError, match="yielded 20 rows in this pass but 23 in its first"):
        collect(source)
    n_rows[0] = N + 5
    X = make_data(n=N + 5)
    with pytest.raises(ValueError, match="more than the 23 rows"):
        collect(source)


def test_stream_of_one_generator_object():
    gen = stream_of(make_data(), [4])()
    source = as_source(lambda: gen)  # the same, soon exhausted, generator every time
    collect(source)
    with pytest.raises(ValueError, match="same iterator again"):
        collect(source)


def test_unknown_objects():
    with pytest.raises(TypeError, match="Cannot read rows from an object of type object"):
        as_source(object())
    sparse = pytest.importorskip("scipy.sparse")
    with pytest.raises(TypeError, match="Sparse"):
        as_source(sparse.csr_matrix(np.eye(3)))


def test_optional_stores_not_imported():
    code = (
        "import sys, numpy as np, fastem.data as d; "
        "d.as_source(np.zeros((2, 2))); "
        "assert 'h5py' not in sys.modules and 'zarr' not in sys.modules, 'imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_default_chunk_size_is_whole_kernel_blocks():
    for d, dtype in [(1, np.float32), (3, np.float64), (100, np.float32), (10_000, np.float64)]:
        source = as_source(np.zeros((2, d), dtype=dtype))
        assert source.default_chunk_size() % BLOCK_ROWS == 0


# ---------------------------------------------------------------------------- sampling
def subset_counts(draw, trials):
    counts = {}
    for t in range(trials):
        key = tuple(draw(np.random.RandomState(t))[:, 0].astype(int).tolist())
        counts[key] = counts.get(key, 0) + 1
    return counts


def chi2(counts, n_cells, trials):
    expected = trials / n_cells
    observed = np.array(list(counts.values()) + [0] * (n_cells - len(counts)))
    return ((observed - expected) ** 2 / expected).sum()


@pytest.mark.parametrize("k", [2, 4])  # 2k <= n: distinct draws; else: draws of the rows left out
def test_sample_rows_known_n_is_uniform_over_subsets(k):
    X = np.arange(6.0)[:, None]
    trials = 3000
    counts = subset_counts(lambda rs: sample_rows(X, k, rs), trials)
    assert len(counts) == 15 and all(sorted(key) == list(key) for key in counts)
    assert chi2(counts, 15, trials) < 45  # 14 degrees of freedom: p ~ 5e-5


def test_sample_rows_stream_is_uniform_over_subsets():
    X = np.arange(6.0)[:, None]
    trials = 3000
    counts = subset_counts(lambda rs: sample_rows(as_source(stream_of(X, [2, 1, 3])), 2, rs, 1),
                           trials)
    assert len(counts) == 15
    assert chi2(counts, 15, trials) < 45


@pytest.mark.parametrize("stream", [False, True])
def test_sample_rows_every_row_reachable(stream):
    n, k, trials = 300, 10, 600
    X = np.arange(float(n))[:, None]
    hits = np.zeros(n)
    for t in range(trials):
        source = as_source(stream_of(X, [7, 50])) if stream else as_source(X)
        sample = sample_rows(source, k, np.random.RandomState(t), chunk_size=16)
        assert sample.shape == (k, 1) and len(np.unique(sample)) == k
        assert np.all(np.diff(sample[:, 0]) > 0)  # in row order
        hits[sample[:, 0].astype(int)] += 1
    assert hits.min() > 0
    expected = trials * k / n  # 20 per row, sd ~4.4
    assert abs(hits[: n // 2].mean() - expected) < 2 and abs(hits[n // 2 :].mean() - expected) < 2


def test_sample_rows_reproducible_and_independent_of_chunk_size():
    X = make_data(n=5000, d=2)
    samples = [sample_rows(as_source(stream_of(X, [333])), 50, np.random.RandomState(7), cs)
               for cs in (1, 64, 1000, 10_000, None)]
    for s in samples[1:]:
        assert_array_equal(s, samples[0])
    assert_array_equal(sample_rows(X, 50, np.random.RandomState(7)),
                       sample_rows(X, 50, np.random.RandomState(7)))
    assert not np.array_equal(sample_rows(X, 50, np.random.RandomState(7)),
                              sample_rows(X, 50, np.random.RandomState(8)))


def test_sample_rows_more_than_available():
    X = make_data()
    assert_array_equal(sample_rows(X, 100, np.random.RandomState(0)), X)
    source = as_source(stream_of(X, [5]))
    assert_array_equal(sample_rows(source, 100, np.random.RandomState(0)), X)
    assert source.n_samples == N


def test_sample_rows_dtype_and_sources(tmp_path):
    X = make_data(n=500).astype(np.float32)
    np.save(tmp_path / "x.npy", X)
    for src in (X, str(tmp_path / "x.npy"), Store(X), stream_of(X, [64])):
        sample = sample_rows(src, 20, np.random.RandomState(0))
        assert sample.dtype == np.float32 and sample.shape == (20, D)
        assert all((X == row).all(axis=1).any() for row in sample)


def test_sample_indices_of_a_huge_population():
    rs = np.random.RandomState(0)
    idx = _sample_indices(10**12, 1000, rs)  # must not allocate anything of size 10**12
    assert idx.shape == (1000,) and idx.dtype == np.int64
    assert len(np.unique(idx)) == 1000 and idx.min() >= 0 and idx.max() < 10**12


def test_sample_rows_bad_arguments():
    X = make_data()
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="sample size"):
            sample_rows(X, bad, np.random.RandomState(0))
    with pytest.raises(TypeError, match="random_state"):
        sample_rows(X, 3, "seed")


# ---------------------------------------------------------------------------- outputs
def test_allocate_output(tmp_path):
    out = allocate_output(None, (5, 2), np.float64)
    assert out.shape == (5, 2) and out.dtype == np.float64 and out.flags.c_contiguous
    assert allocate_output(None, 5, np.int64).shape == (5,)
    mine = np.empty((5, 2))
    assert allocate_output(mine, (5, 2), np.float64) is mine
    mm = np.lib.format.open_memmap(tmp_path / "out.npy", mode="w+", dtype=np.int64, shape=(7,))
    assert allocate_output(mm, (7,), np.int64) is mm
    with pytest.raises(ValueError, match=r"shape \(5, 3\)"):
        allocate_output(np.empty((5, 3)), (5, 2), np.float64)
    with pytest.raises(TypeError, match="dtype float32"):
        allocate_output(np.empty((5, 2), dtype=np.float32), (5, 2), np.float64)
    with pytest.raises(TypeError, match="dtype >f8"):
        allocate_output(np.empty((5, 2), dtype=">f8"), (5, 2), np.float64)
    readonly = np.empty((5, 2))
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        allocate_output(readonly, (5, 2), np.float64)
    with pytest.raises(ValueError, match="C-contiguous"):
        allocate_output(np.empty((2, 5)).T, (5, 2), np.float64)
    with pytest.raises(TypeError, match="numpy array"):
        allocate_output([[0.0] * 2] * 5, (5, 2), np.float64)


# ---------------------------------------------------------------------------- memory
def anon_rss() -> int:
    """Anonymous resident memory in bytes: the process's own, not the mapped file's pages.

    psutil's USS would also count the mapped file's pages (they are private to the process),
    which a zero-copy read must touch: only Linux's RssAnon separates the two.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    pytest.skip("needs RssAnon in /proc/self/status (Linux)")


@pytest.mark.parametrize("dtype, chunk_size", [("<f4", None), (">f4", 2**19)])
def test_big_npy_keeps_memory_flat(tmp_path, dtype, chunk_size):
    """400 MB .npy, read with prefetch: views of the page cache (native) or converted chunks
    in two reused 8 MiB buffers (byte-swapped); either way no whole-file read."""
    n, d = 25 * 2**20, 4  # 400 MiB of float32
    path = tmp_path / "big.npy"
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=(n, d))
    step = 2**20
    for start in range(0, n, step):
        mm[start : start + step] = start // step
    mm.flush()
    del mm
    gc.collect()
    base = anon_rss()
    source = as_source(path)
    peak, total, rows = base, 0.0, 0
    for start, block in source.chunks(chunk_size, prefetch=True):
        total += float(block[:, 0].sum(dtype=np.float64))
        rows += block.shape[0]
        peak = max(peak, anon_rss())
    assert rows == n
    assert total == sum(float(v) * step for v in range(n // step))
    assert peak - base < 100 * 2**20, f"anonymous memory grew by {(peak - base) / 2**20:.0f} MiB"


def test_memmap_prefetch_asks_the_os_to_read_ahead(tmp_path, monkeypatch):
    X = make_data(n=100_000)
    np.save(tmp_path / "x.npy", X)
    source = as_source(tmp_path / "x.npy")
    if not hasattr(source._mmap, "madvise"):
        pytest.skip("no madvise on this platform")
    calls = []

    def advise(advice, start=0, length=0):
        source._mmap.madvise(advice, start, length)  # a bad range would raise here
        calls.append((advice, start, length))

    monkeypatch.setattr(source, "_madvise", advise)
    assert_array_equal(collect(source, 10_000, prefetch=True), X)
    assert calls[0][0] == mmap.MADV_SEQUENTIAL
    assert [c[0] for c in calls[1:]] == [mmap.MADV_WILLNEED] * 9  # every chunk but the first
