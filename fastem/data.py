"""Data sources: where fastem reads rows from, one chunk at a time.

Every fastem operation (initialization, each EM pass, predict, score) reads its data through a
:class:`DataSource`, so in-memory arrays, memory-mapped files, chunked stores and streams are
all the same thing to the rest of the package: an iterable of ``(start, block)`` pairs, where
``block`` is a C-contiguous float32 or float64 array of shape ``(m, n_features)``, ``m >= 1``,
holding rows ``start:start + m``. Every block but the last has exactly ``chunk_size`` rows, so
chunk boundaries (and hence results) do not depend on how a file or a stream is laid out.

Dtype policy (the same as scikit-learn's): float32 and float64 data keep their dtype; any other
numeric dtype (integers, float16, byte-swapped floats) is converted to float64, one chunk at a
time, into a reused buffer.

===========================  ================================================================
input to :func:`as_source`   source
===========================  ================================================================
``numpy.ndarray``            :class:`ArraySource` (views when C-contiguous float32/64)
``numpy.memmap``             :class:`MemmapSource` (views, ``MADV_SEQUENTIAL``, file checked)
path to a ``.npy`` file      :class:`NpySource` (memory-mapped, never unpickles); a C-order
                             file over half the RAM: :class:`RawFileSource` past its header
path, ``dtype=``, ``shape=`` :class:`RawFileSource` (headerless binary rows, read by chunks)
``h5py.Dataset``             :class:`HDF5Source`
zarr array                   :class:`ZarrSource`
``shape``/``dtype``/``ndim`` :class:`ArrayLikeSource` (any store sliced as ``obj[a:b]``)
and ``obj[a:b]``
callable                     :class:`StreamSource` (returns a fresh iterator of chunks)
===========================  ================================================================

A block is valid until the next one is requested: it may be a view of the source or a buffer
that the next chunk overwrites. Copy it to keep it.

``chunks(chunk_size, prefetch=True)`` reads the next chunk in a background thread while the
caller works on the current one (the kernels release the GIL), with at most two chunks in
flight. Zero-copy memory-mapped chunks are not copied: there a background thread announces the
next chunk to the OS (``MADV_WILLNEED``) and faults its pages in.

h5py and zarr are optional: their objects are recognized by their module name, and neither is
imported by this module.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import numbers
import os
import queue
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator

import numpy as np

from ._kernels._config import BLOCK_ROWS

__all__ = [
    "DataSource",
    "ArraySource",
    "MemmapSource",
    "NpySource",
    "RawFileSource",
    "ArrayLikeSource",
    "HDF5Source",
    "ZarrSource",
    "StreamSource",
    "as_source",
    "prefetched",
    "first_nonfinite_row",
    "count_rows",
    "sample_rows",
    "allocate_output",
    "check_chunk_size",
    "DEFAULT_CHUNK_BYTES",
]

# A chunk of about this many bytes amortizes the per-chunk overhead (a parallel region, a
# statistics merge) while keeping out-of-core memory small and flat.
DEFAULT_CHUNK_BYTES = 32 * 2**20

_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_NPY_MAGIC = b"\x93NUMPY"


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
        raise TypeError(
            f"chunk_size must be a positive integer (rows per chunk) or None, got {chunk_size!r}."
        )
    if chunk_size < 1:
        raise ValueError(
            f"chunk_size must be a positive integer (rows per chunk) or None, got {chunk_size}."
        )
    return int(chunk_size)


def _check_shape(shape, what: str) -> tuple[int, int]:
    """``(n_samples, n_features)`` of a 2-D shape with at least one row and one column."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2:
        hint = ""
        if len(shape) == 1:
            hint = (
                " Reshape it with X.reshape(-1, 1) if it holds a single feature, or "
                "X.reshape(1, -1) if it holds a single sample."
            )
        raise ValueError(
            f"Expected 2-D data of shape (n_samples, n_features), but {what} is {len(shape)}-D "
            f"with shape {shape}.{hint}"
        )
    n, d = shape
    if d < 1:
        raise ValueError(f"{what} has 0 features (shape {shape}); at least 1 is required.")
    if n < 1:
        raise ValueError(f"{what} is empty (shape {shape}); at least 1 sample is required.")
    return n, d


def _as_indices(indices, n_samples: int | None) -> np.ndarray:
    """Row indices as a 1-D int64 array, checked against ``n_samples`` when it is known."""
    idx = np.asarray(indices)
    if idx.ndim != 1 or (idx.size and idx.dtype.kind not in "iu"):
        raise TypeError(f"Row indices must be a 1-D integer array, got {idx.dtype} {idx.shape}.")
    idx = idx.astype(np.int64, copy=False)
    if idx.size and (idx.min() < 0 or (n_samples is not None and idx.max() >= n_samples)):
        raise IndexError(
            f"Row indices must lie in [0, {n_samples}), got [{idx.min()}, {idx.max()}]."
        )
    return idx


class _BufferRing:
    """Up to ``count`` reusable ``(rows, n_features)`` buffers, handed out in turn.

    One buffer when the consumer reads synchronously; two with a prefetching reader thread, so
    the chunk being filled is never the one being used (see :func:`prefetched`).
    """

    def __init__(self, count: int, rows: int, n_features: int, dtype):
        self.count = count
        self.shape = (rows, n_features)
        self.dtype = dtype
        self.buffers: list[np.ndarray] = []
        self.i = 0

    def next(self, m: int) -> np.ndarray:
        if len(self.buffers) < self.count:  # allocated lazily: one chunk of data needs one
            self.buffers.append(np.empty(self.shape, dtype=self.dtype))
        buf = self.buffers[self.i % self.count]
        self.i += 1
        return buf[:m]


class _FileGuard:
    """Detects that a file changed after it was opened: identity, size, mtime, a header.

    Checked at the start of every pass: a truncated memory-mapped file would otherwise kill the
    process with SIGBUS, and a rewritten one would silently mix two datasets in one fit.
    """

    def __init__(self, path, header: bytes = b""):
        self.path = path
        self.header = header
        self.state = self._stat()

    def _stat(self):
        st = os.stat(self.path)
        return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns

    def check(self) -> None:
        try:
            state = self._stat()
        except FileNotFoundError:
            raise ValueError(
                f"The file {os.fsdecode(self.path)!r} was deleted or moved after fastem opened "
                "it. The data must stay unchanged while it is read."
            ) from None
        what = None
        if state[:2] != self.state[:2]:
            what = "it was replaced by another file"
        elif state[2] != self.state[2]:
            what = f"its size changed from {self.state[2]} to {state[2]} bytes"
        elif state[3] != self.state[3]:
            what = "it was modified"
        elif self.header:
            # Catches a rewrite within the file system's mtime granularity.
            with open(self.path, "rb") as f:
                if f.read(len(self.header)) != self.header:
                    what = "its header changed"
        if what is not None:
            raise ValueError(
                f"The file {os.fsdecode(self.path)!r} changed since fastem opened it: {what}. "
                "The data must stay unchanged while it is read (every EM iteration reads it "
                "again); open it again with fastem.data.as_source once it is final."
            )


# ---------------------------------------------------------------------------- prefetching
_ITEM, _END, _ERROR = 0, 1, 2


def prefetched(iterable: Iterable) -> Iterator:
    """Iterate over ``iterable`` in a background thread, one item ahead of the caller.

    While the caller works on item ``i``, the thread produces item ``i + 1``; it starts item
    ``i + 2`` only once the caller asks for it, so at most two items are in flight and an
    iterator may alternate between two reused buffers. An item is therefore valid until the
    next one is requested.

    Parameters
    ----------
    iterable : iterable
        Iterated (and closed, if it has ``close``) in the background thread only.

    Yields
    ------
    item
        The items of ``iterable``, in order. An exception raised while producing one is raised
        here, in the caller's thread.

    Notes
    -----
    The thread starts at the first ``next()`` and stops when the iteration ends, fails, or the
    returned generator is closed (``close()``, garbage collection, or leaving a
    ``contextlib.closing`` block): an abandoned iteration leaves no thread behind.
    """
    return _prefetch(iter(iterable))


def _prefetch(iterator: Iterator) -> Iterator:
    results: queue.SimpleQueue = queue.SimpleQueue()
    # Tokens for items in flight: the one the caller holds and the one being produced.
    slots = threading.Semaphore(2)
    stop = threading.Event()

    def produce():
        try:
            while True:
                slots.acquire()
                if stop.is_set():
                    return
                try:
                    item = next(iterator)
                except StopIteration:
                    results.put((_END, None))
                    return
                results.put((_ITEM, item))
                del item  # do not keep the caller's item alive while producing the next
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            results.put((_ERROR, exc))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                try:
                    close()
                except BaseException as exc:  # noqa: BLE001
                    results.put((_ERROR, exc))

    thread = threading.Thread(target=produce, name="fastem-prefetch", daemon=True)
    thread.start()
    try:
        holding = False
        while True:
            kind, value = results.get()
            if holding:
                slots.release()  # the caller asked for this item: the previous one is done
            if kind == _END:
                return
            if kind == _ERROR:
                raise value
            holding = True
            yield value
    finally:
        stop.set()
        slots.release()  # wake the producer if it waits for a slot
        thread.join()


# ---------------------------------------------------------------------------- sources
class DataSource:
    """Rows of a two-dimensional dataset, read one chunk at a time.

    Subclasses implement ``_iter_chunks(chunk_size, prefetch)`` (a generator of
    ``(start, block)``) and, when they can do better than one scan, :meth:`take`.

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
    # True when chunks are views of data already addressable in memory (no reading to overlap).
    _zero_copy = False

    def __repr__(self):
        return (
            f"{type(self).__name__}(n_samples={self.n_samples}, n_features={self.n_features}, "
            f"dtype={self.dtype})"
        )

    def default_chunk_size(self) -> int:
        """Rows per chunk when the user does not choose.

        About ``DEFAULT_CHUNK_BYTES``, and a multiple of the kernels' block size so that the
        results equal those of any other such chunk size bit for bit.
        """
        rows = DEFAULT_CHUNK_BYTES // (self.n_features * self.dtype.itemsize)
        return max(1024, rows // BLOCK_ROWS * BLOCK_ROWS)

    def _auto_chunk_size(self) -> int:
        return self.default_chunk_size()

    def _begin_pass(self) -> None:
        """Checks made when a pass starts (a file that changed since it was opened)."""

    def chunks(
        self, chunk_size: int | None = None, prefetch: bool = False
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, block)`` for consecutive row ranges covering the data once.

        Parameters
        ----------
        chunk_size : int or None, default=None
            Rows per block; every block but the last has exactly this many. ``None`` picks
            a size of about ``DEFAULT_CHUNK_BYTES`` (the whole array for a C-contiguous float
            array in memory).
        prefetch : bool, default=False
            Read the next block in a background thread while the caller processes the current
            one (at most two blocks in flight). Useful when blocks are read or converted
            (files, HDF5/Zarr, streams, dtype conversion); for zero-copy memory-mapped blocks
            it only asks the OS to read the next block's pages ahead.

        Returns
        -------
        iterator of (int, ndarray of shape (m, n_features))
            ``block`` is C-contiguous, of dtype :attr:`dtype`, with ``1 <= m <= chunk_size``.
            It may be a view into the source or a reused buffer: it is valid until the next
            block is requested. Closing the iterator early releases files and threads.

        Raises
        ------
        TypeError, ValueError
            At once for a bad ``chunk_size`` or a file that changed since it was opened;
            during the iteration for data that turns out to be malformed.
        """
        chunk_size = check_chunk_size(chunk_size)
        if chunk_size is None:
            chunk_size = self._auto_chunk_size()
        self._begin_pass()
        if prefetch and not self._zero_copy:
            return _prefetch(self._iter_chunks(chunk_size, True))
        return self._iter_chunks(chunk_size, prefetch)

    def _iter_chunks(self, chunk_size: int, prefetch: bool) -> Iterator[tuple[int, np.ndarray]]:
        raise NotImplementedError

    def take(self, indices) -> np.ndarray:
        """Rows at the given row indices.

        This default reads one pass over the chunks; sources with random access override it.

        Parameters
        ----------
        indices : array-like of int, shape (k,)
            Row indices, sorted or not, repeats allowed.

        Returns
        -------
        ndarray of shape (k, n_features), dtype :attr:`dtype`
            A new C-contiguous array.
        """
        idx = _as_indices(indices, self.n_samples)
        order = np.argsort(idx, kind="stable")
        wanted = idx[order]
        rows = np.empty((idx.size, self.n_features), dtype=self.dtype)
        p = 0
        if idx.size:
            with contextlib.closing(self.chunks()) as chunks:
                for start, block in chunks:
                    q = int(np.searchsorted(wanted, start + block.shape[0]))
                    rows[p:q] = block[wanted[p:q] - start]
                    p = q
                    if p == idx.size:
                        break
        if p < idx.size:
            raise IndexError(f"Row index {wanted[p]} is out of range: the data has fewer rows.")
        out = np.empty_like(rows)
        out[order] = rows
        return out


class ArraySource(DataSource):
    """An in-memory two-dimensional array.

    C-contiguous float32/float64 arrays are read without copying; any other layout or dtype is
    converted chunk by chunk into a reused buffer.

    Parameters
    ----------
    array : ndarray of shape (n_samples, n_features)
    """

    def __init__(self, array: np.ndarray):
        if not isinstance(array, np.ndarray):
            raise TypeError(f"ArraySource needs a numpy array, got {type(array).__name__}.")
        self.n_samples, self.n_features = _check_shape(array.shape, "the array")
        self.array = array
        self.dtype = _working_dtype(array.dtype)
        self._zero_copy = array.dtype == self.dtype and array.flags.c_contiguous

    def _auto_chunk_size(self) -> int:
        # Data already in memory needs no chunking unless it must be converted.
        return self.n_samples if self._zero_copy else self.default_chunk_size()

    def _readahead(self, start: int, rows: int) -> threading.Thread | None:
        """Start bringing rows ``start:start + rows`` in (memory maps only): returns the thread
        doing it, to be joined before those rows are used, or None."""
        return None

    def _iter_chunks(self, chunk_size, prefetch):
        n = self.n_samples
        if self._zero_copy:
            pending = None
            for start in range(0, n, chunk_size):
                if prefetch:
                    if pending is not None:
                        pending.join()
                    pending = self._readahead(start + chunk_size, chunk_size)
                yield start, np.asarray(self.array[start : start + chunk_size])
            return
        ring = _BufferRing(2 if prefetch else 1, min(chunk_size, n), self.n_features, self.dtype)
        for start in range(0, n, chunk_size):
            part = self.array[start : start + chunk_size]
            block = ring.next(part.shape[0])
            np.copyto(block, part, casting="unsafe")
            yield start, block

    def take(self, indices):
        idx = _as_indices(indices, self.n_samples)
        return np.array(self.array[idx], dtype=self.dtype, order="C")


def _mmap_address(mm) -> int | None:
    """Address of the first byte of an ``mmap.mmap``, or None when it cannot be exported."""
    try:
        return np.frombuffer(mm, dtype=np.uint8, count=1).ctypes.data
    except (TypeError, ValueError, BufferError):
        return None


# At most this many bytes of a memory map stay mapped behind the read position (see
# MemmapSource): the bound of a pass's resident file pages, whatever the file's size.
_MAPPED_BYTES = 256 * 2**20
# Bytes per MADV_WILLNEED call when the next chunk of a memory map is announced.
_WILLNEED_BYTES = 2**20


def _check_mapping_backed(filename, offset: int, length: int) -> None:
    """Raise if the file under a memory map no longer covers it.

    A ``numpy.memmap`` made before its file was truncated (for instance rewritten with
    ``numpy.save``) would kill the process with SIGBUS on its first read past the new end.
    """
    start = offset - offset % mmap.ALLOCATIONGRANULARITY  # where numpy.memmap maps from
    size = os.stat(filename).st_size
    if size < start + length:
        raise ValueError(
            f"The file {os.fsdecode(filename)!r} under this memmap has {size} bytes, fewer than "
            f"the {start + length} it had when it was mapped: it was truncated or rewritten "
            "since. Map it again (numpy.load(path, mmap_mode='r')) once it is final."
        )


class MemmapSource(ArraySource):
    """A ``numpy.memmap`` (for instance a file bigger than the memory).

    C-contiguous float32/float64 maps are read without copying: data in the page cache is as
    fast as data in memory. The mapping is marked for sequential access (``MADV_SEQUENTIAL``),
    and the mapped file, if any, is checked for changes at the start of every pass.

    Pages of a C-contiguous map more than ``_MAPPED_BYTES`` (256 MiB) behind the read position
    are dropped from the process (``MADV_DONTNEED``; they stay in the page cache), so that the
    resident memory of a pass over a file bigger than the RAM stays flat; a smaller map stays
    mapped, and repeated passes over it cost no page faults. That is done only where it cannot
    lose data: maps opened with mode 'r', 'r+' or 'w+' (whose written pages belong to the file),
    as :class:`NpySource` makes them; a user's mode 'c' map, which may hold private changes, is
    left alone.

    Parameters
    ----------
    array : numpy.memmap of shape (n_samples, n_features)
    """

    def __init__(self, array: np.memmap, *, _guard: _FileGuard | None = None,
                 _release: bool | None = None):
        super().__init__(array)
        self._mmap = getattr(array, "_mmap", None)
        self._map_base = _mmap_address(self._mmap) if self._mmap is not None else None
        if _release is None:
            _release = getattr(array, "mode", None) in ("r", "r+", "w+")
        self._release = bool(_release and self._map_base is not None
                             and array.flags.c_contiguous and hasattr(mmap, "MADV_DONTNEED"))
        filename = getattr(array, "filename", None)
        if filename is not None and os.path.isfile(filename):
            if self._mmap is not None:
                _check_mapping_backed(filename, array.offset, len(self._mmap))
            if _guard is None:
                _guard = _FileGuard(filename)
        self._guard = _guard

    def _auto_chunk_size(self) -> int:
        # Never the whole map: per-chunk work arrays must stay small for files bigger than RAM.
        return self.default_chunk_size()

    def _madvise(self, advice, start: int = 0, length: int = 0) -> None:
        if self._mmap is None or advice is None or not hasattr(self._mmap, "madvise"):
            return
        try:
            self._mmap.madvise(advice, start, length)
        except (OSError, ValueError):
            pass  # a hint only

    def _begin_pass(self):
        if self._guard is not None:
            self._guard.check()
        self._madvise(getattr(mmap, "MADV_SEQUENTIAL", None))

    def _iter_chunks(self, chunk_size, prefetch):
        chunks = super()._iter_chunks(chunk_size, prefetch)
        row_bytes = self.n_features * self.array.dtype.itemsize
        if not self._release or self.n_samples * row_bytes <= _MAPPED_BYTES:
            yield from chunks
            return
        first = self.array.ctypes.data - self._map_base  # offset of row 0 in the map
        released = first - first % mmap.PAGESIZE
        for start, block in chunks:
            yield start, block
            # The caller asked for the next block: pages more than _MAPPED_BYTES behind the end
            # of this one are done with.
            end = first + (start + block.shape[0]) * row_bytes - _MAPPED_BYTES
            end -= end % mmap.PAGESIZE
            if end > released:
                self._drop_pages(released, end)
                released = end
        # The whole pass is done: the last pages too, or the next pass would start with them
        # and its own first _MAPPED_BYTES mapped.
        if released < len(self._mmap):
            self._drop_pages(released, len(self._mmap))

    def _drop_pages(self, begin: int, end: int) -> None:
        """Unmap bytes ``begin:end`` (page-aligned) of the map from this process: they stay in
        the page cache (or, if written through a shared map, go back to the file) and are
        mapped again on the next access."""
        try:
            self._mmap.madvise(mmap.MADV_DONTNEED, begin, end - begin)
        except (OSError, ValueError):
            self._release = False  # not supported here: keep the pages mapped

    def _readahead(self, start, rows):
        if self._map_base is None or start >= self.n_samples:
            return None
        view = self.array[start : start + rows]
        thread = threading.Thread(target=self._fault_in, args=(view,), daemon=True,
                                  name="fastem-readahead")
        thread.start()
        return thread

    def _fault_in(self, view):
        """Read and map the pages of ``view`` on this (background) thread.

        Linux reads ahead at most the device's readahead window (often 128 KiB to 8 MiB) per
        call, so the chunk is announced in pieces; then one value per page is read, so that
        the page faults of mapping it (about 0.4 s per GB) are taken here, overlapping the
        kernels' work on the current chunk, instead of on the kernels' threads.
        """
        begin = view.ctypes.data - self._map_base
        end = begin + view.nbytes
        advice = getattr(mmap, "MADV_WILLNEED", None)
        for piece in range(begin - begin % mmap.PAGESIZE, end, _WILLNEED_BYTES):
            self._madvise(advice, piece, min(_WILLNEED_BYTES, end - piece))
        flat = view.reshape(-1)
        np.add.reduce(flat[:: max(1, mmap.PAGESIZE // flat.itemsize)], dtype=np.float64)

    def take(self, indices):
        if self._guard is not None:
            self._guard.check()
        return super().take(indices)


def _read_npy_header(path):
    """``(shape, fortran_order, dtype, header_bytes)`` of a .npy file, checked against its size."""
    name = os.fsdecode(path)
    with open(path, "rb") as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
            elif version in ((2, 0), (3, 0)):
                # 3.0 differs from 2.0 only in allowing UTF-8 field names (never numeric data).
                shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(f)
            else:
                raise ValueError(f"unsupported format version {version}")
        except (ValueError, SyntaxError, EOFError, UnicodeDecodeError, KeyError) as err:
            raise ValueError(
                f"{name!r} is not a valid .npy file (bad or truncated header: {err})."
            ) from err
        header_end = f.tell()
        size = os.fstat(f.fileno()).st_size
        f.seek(0)
        header = f.read(header_end)
    if dtype.hasobject:
        # Refused from the header alone: the pickled objects are never read.
        raise TypeError(
            f"{name!r} holds Python objects (dtype {dtype}); fastem reads numeric arrays only and "
            "never unpickles data. Save a float32 or float64 array with numpy.save instead."
        )
    expected = header_end + math.prod(shape) * dtype.itemsize
    if size != expected:
        state = "truncated" if size < expected else "longer than its header says"
        raise ValueError(
            f"{name!r} is {state}: its header describes an array of shape {shape} and dtype "
            f"{dtype} ({expected} bytes with the header) but the file has {size} bytes. "
            "Write it again, e.g. with numpy.save."
        )
    return shape, fortran_order, dtype, header


class NpySource(MemmapSource):
    """A ``.npy`` file, memory-mapped read-only.

    The header is validated first: object arrays are refused without unpickling anything, and a
    truncated or corrupt file raises ``ValueError``. The file's size, modification time and
    header are checked again at the start of every pass.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by ``numpy.save`` holding a 2-D numeric array.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        shape, _, dtype, header = _read_npy_header(self.path)
        name = os.fsdecode(self.path)
        _working_dtype(dtype)
        _check_shape(shape, f"the array in {name!r}")
        guard = _FileGuard(self.path, header)
        # Read-only, not copy-on-write: Linux refuses a private writeable map larger than the
        # memory it could commit (ENOMEM for a file bigger than the RAM). The kernels compile a
        # read-only specialization once, and it is cached like the others.
        array = np.load(self.path, mmap_mode="r", allow_pickle=False)
        super().__init__(array, _guard=guard)


class RawFileSource(DataSource):
    """A headerless binary file of rows in C order, read chunk by chunk.

    Chunks are read with ``readinto`` into reused buffers (converted if the file's dtype is not
    native float32/float64): a file that shrinks while it is read gives a ``ValueError``
    rather than the SIGBUS of a memory map. The file is checked for changes at every pass.

    Parameters
    ----------
    path : str or os.PathLike
    dtype : dtype-like
        Dtype of the values in the file, e.g. ``'<f4'``, ``np.int16``.
    shape : tuple of int (n_samples, n_features)
        ``n_samples`` may be -1: inferred from the file size.
    offset : int, default=0
        Bytes to skip at the start of the file.
    """

    def __init__(self, path, dtype, shape, offset: int = 0):
        self.path = os.fspath(path)
        name = os.fsdecode(self.path)
        self.file_dtype = np.dtype(dtype)
        self.dtype = _working_dtype(self.file_dtype)
        if isinstance(offset, bool) or not isinstance(offset, numbers.Integral) or offset < 0:
            raise ValueError(f"offset must be a non-negative integer, got {offset!r}.")
        self.offset = int(offset)
        try:
            shape = tuple(int(s) for s in shape)
        except TypeError:
            raise TypeError(
                f"shape must be a tuple (n_samples, n_features), got {shape!r}."
            ) from None
        if len(shape) != 2:
            raise ValueError(f"shape must be (n_samples, n_features), got {shape}.")
        size = os.stat(self.path).st_size
        row_bytes = shape[1] * self.file_dtype.itemsize
        if shape[0] == -1 and shape[1] > 0:
            if (size - self.offset) % row_bytes or size < self.offset:
                raise ValueError(
                    f"{name!r} has {size} bytes, which after an offset of {self.offset} is not a "
                    f"whole number of rows of {shape[1]} x {self.file_dtype} ({row_bytes} bytes)."
                )
            shape = ((size - self.offset) // row_bytes, shape[1])
        self.n_samples, self.n_features = _check_shape(shape, f"the raw file {name!r}")
        expected = self.offset + self.n_samples * row_bytes
        if size != expected:
            raise ValueError(
                f"{name!r} has {size} bytes, but shape {shape} of {self.file_dtype} at offset "
                f"{self.offset} needs {expected}. Check dtype=, shape= and offset=."
            )
        if self.offset == 0:
            with open(self.path, "rb") as f:
                if f.read(len(_NPY_MAGIC)) == _NPY_MAGIC:
                    raise ValueError(
                        f"{name!r} is a .npy file, not a raw one: pass it without dtype= and "
                        "shape= so that its header is read."
                    )
        self._guard = _FileGuard(self.path)

    def _begin_pass(self):
        self._guard.check()

    def _iter_chunks(self, chunk_size, prefetch):
        n, d = self.n_samples, self.n_features
        rows = min(chunk_size, n)
        ring = _BufferRing(2 if prefetch else 1, rows, d, self.dtype)
        direct = self.file_dtype == self.dtype
        # Raw bytes are converted before the block is yielded, so one raw buffer is enough.
        raw = None if direct else _BufferRing(1, rows, d, self.file_dtype)
        with open(self.path, "rb", buffering=0) as f:
            if hasattr(os, "posix_fadvise"):
                with contextlib.suppress(OSError):
                    os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
            f.seek(self.offset)
            for start in range(0, n, chunk_size):
                m = min(chunk_size, n - start)
                block = ring.next(m)
                target = block if direct else raw.next(m)
                self._read_into(f, target)
                if not direct:
                    np.copyto(block, target, casting="unsafe")
                yield start, block

    def _read_into(self, f, array: np.ndarray) -> None:
        view = memoryview(array).cast("B")
        done = 0
        while done < len(view):
            got = f.readinto(view[done:])  # may be partial: reads are capped near 2 GiB
            if not got:
                raise ValueError(
                    f"{os.fsdecode(self.path)!r} ended early: it shrank while being read. "
                    "The data must stay unchanged while it is read."
                )
            done += got

    def take(self, indices):
        idx = _as_indices(indices, self.n_samples)
        self._guard.check()
        mapped = np.memmap(self.path, dtype=self.file_dtype, mode="r", offset=self.offset,
                           shape=(self.n_samples, self.n_features))
        try:
            return np.array(mapped[idx], dtype=self.dtype, order="C")
        finally:
            del mapped


class ArrayLikeSource(DataSource):
    """Any 2-D store with ``shape``, ``dtype``, ``ndim`` and row slicing ``obj[a:b]``.

    ``obj[a:b]`` must return something ``numpy.asarray`` turns into an ``(b - a, n_features)``
    array (dask arrays, xarray variables, custom readers...). When the store is chunked
    (``obj.chunks``), automatic chunk sizes are whole numbers of storage chunks.

    Parameters
    ----------
    obj : array-like store of shape (n_samples, n_features)
    """

    _what = "array-like"

    def __init__(self, obj):
        missing = [a for a in ("shape", "dtype", "ndim", "__getitem__") if not hasattr(obj, a)]
        if missing:
            raise TypeError(
                f"Cannot read rows from {type(obj).__name__}: it has no {', '.join(missing)}."
            )
        self.obj = obj
        self.n_samples, self.n_features = _check_shape(obj.shape, f"the {self._what}")
        try:
            self.obj_dtype = np.dtype(obj.dtype)
        except TypeError:
            raise TypeError(
                f"The {self._what}'s dtype {obj.dtype!r} is not a numpy dtype."
            ) from None
        self.dtype = _working_dtype(self.obj_dtype)

    def _begin_pass(self):
        # A resizable store (an h5py dataset with maxshape, a zarr array) may have grown or
        # shrunk since: reading on would silently drop the new rows or fail in the store.
        shape = tuple(getattr(self.obj, "shape", ()))
        if shape != (self.n_samples, self.n_features):
            raise ValueError(
                f"The {self._what} changed shape from {(self.n_samples, self.n_features)} to "
                f"{shape} since fastem opened it: the data must stay unchanged while it is read."
            )

    def _storage_rows(self) -> int | None:
        chunks = getattr(self.obj, "chunks", None)
        if isinstance(chunks, tuple) and chunks and isinstance(chunks[0], numbers.Integral):
            return int(chunks[0])
        return None

    def _auto_chunk_size(self) -> int:
        base = self.default_chunk_size()
        rows = self._storage_rows()
        if rows:
            # Whole storage chunks (each decompressed once) that are also whole kernel blocks.
            step = math.lcm(BLOCK_ROWS, rows)
            if step <= 2 * base:
                return max(step, base // step * step)
        return base

    def _fetch(self, start: int, stop: int) -> np.ndarray:
        part = np.asarray(self.obj[start:stop])
        if part.shape != (stop - start, self.n_features):
            raise ValueError(
                f"{type(self.obj).__name__}[{start}:{stop}] returned shape {part.shape}, "
                f"expected {(stop - start, self.n_features)}."
            )
        return part

    def _read(self, start: int, stop: int, ring: _BufferRing) -> np.ndarray:
        part = self._fetch(start, stop)
        if part.dtype == self.dtype and part.flags.c_contiguous:
            return part  # freshly read: no copy needed
        block = ring.next(stop - start)
        np.copyto(block, part, casting="unsafe")
        return block

    def _iter_chunks(self, chunk_size, prefetch):
        n = self.n_samples
        ring = _BufferRing(2 if prefetch else 1, min(chunk_size, n), self.n_features, self.dtype)
        for start in range(0, n, chunk_size):
            yield start, self._read(start, min(start + chunk_size, n), ring)

    def take(self, indices):
        # Indices close to each other are read together as one slice; bounded by a chunk.
        idx = _as_indices(indices, self.n_samples)
        wanted, inverse = np.unique(idx, return_inverse=True)
        rows = np.empty((wanted.size, self.n_features), dtype=self.dtype)
        row_bytes = self.n_features * self.obj_dtype.itemsize
        gap = max(self._storage_rows() or 1, 65536 // row_bytes, 1)
        span = self._auto_chunk_size()
        bounds = np.concatenate(([0], np.flatnonzero(np.diff(wanted) > gap) + 1, [wanted.size]))
        for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
            while lo < hi:
                first = int(wanted[lo])
                cut = lo + int(np.searchsorted(wanted[lo:hi], first + span))
                part = self._fetch(first, int(wanted[cut - 1]) + 1)
                rows[lo:cut] = part[wanted[lo:cut] - first]
                lo = cut
        return rows[inverse.reshape(-1)]


class HDF5Source(ArrayLikeSource):
    """An ``h5py.Dataset``, read with ``read_direct`` into reused buffers.

    HDF5 converts integer and float16 data to the working dtype while reading. Automatic chunk
    sizes are whole numbers of the dataset's storage chunks. Keep the file open while fitting.

    Parameters
    ----------
    dataset : h5py.Dataset of shape (n_samples, n_features)
    """

    _what = "HDF5 dataset"

    def _read(self, start, stop, ring):
        block = ring.next(stop - start)
        self.obj.read_direct(block, np.s_[start:stop])
        return block


class ZarrSource(ArrayLikeSource):
    """A zarr array. Automatic chunk sizes are whole numbers of its shards or chunks.

    Parameters
    ----------
    array : zarr.Array of shape (n_samples, n_features)
    """

    _what = "zarr array"

    def _storage_rows(self):
        shards = getattr(self.obj, "shards", None)  # zarr 3: the unit of a read
        if isinstance(shards, tuple) and shards:
            return int(shards[0])
        return super()._storage_rows()


class StreamSource(DataSource):
    """Chunks from a callable that returns a fresh iterator each time it is called.

    Every pass calls ``make_chunks()`` and reads its iterator to the end, so the data can be
    read once per EM iteration without ever being held whole. The chunks may have any number
    of rows; they are regrouped into blocks of exactly ``chunk_size`` rows (the last excepted),
    so results do not depend on how the stream cuts its data.

    The first chunk is read when the source is created (for ``n_features`` and ``dtype``) and
    handed to the first pass. ``n_samples`` is None until a first full pass; every later pass
    must yield the same number of rows, and every chunk the same width and dtype.

    Parameters
    ----------
    make_chunks : callable returning an iterable of array-like of shape (m_i, n_features)
        For instance a generator function. Its arrays may be reused buffers.
    """

    def __init__(self, make_chunks: Callable[[], Iterable]):
        if not callable(make_chunks):
            raise TypeError("StreamSource needs a callable that returns a fresh iterator.")
        self.make_chunks = make_chunks
        self.n_samples = None
        self._chunk_dtype = None
        self._last_iterator = None
        iterator = self._open()
        first = None
        try:
            for item in iterator:
                first = self._check_piece(item, 0)
                if first.shape[0]:
                    break
        except BaseException:
            _close(iterator)
            raise
        if first is None or not first.shape[0]:
            _close(iterator)
            raise ValueError(
                "The stream yielded no rows: its callable must return an iterator over at least "
                "one non-empty 2-D array."
            )
        # Handed to the first pass, which uses it before advancing the iterator: no copy needed
        # even if the iterator reuses its arrays.
        self._pending = (iterator, first)

    def _open(self) -> Iterator:
        result = self.make_chunks()
        try:
            iterator = iter(result)
        except TypeError:
            raise TypeError(
                f"The stream's callable must return an iterable of 2-D arrays; it returned "
                f"{type(result).__name__}."
            ) from None
        if self._last_iterator is not None and self._last_iterator() is iterator:
            raise ValueError(
                "The stream's callable returned the same iterator again: it must return a fresh "
                "one on every call (pass the generator function, not a generator)."
            )
        with contextlib.suppress(TypeError):
            self._last_iterator = weakref.ref(iterator)
        return iterator

    def _check_piece(self, item, i: int) -> np.ndarray:
        piece = np.asarray(item)
        if piece.ndim != 2:
            raise ValueError(
                f"Chunk {i} of the stream has shape {piece.shape}: every chunk must be a 2-D "
                "array of shape (rows, n_features)."
            )
        if self._chunk_dtype is None:
            self.dtype = _working_dtype(piece.dtype)
            if piece.shape[1] < 1:
                raise ValueError(f"Chunk {i} of the stream has 0 features (shape {piece.shape}).")
            self._chunk_dtype = piece.dtype
            self.n_features = piece.shape[1]
        if piece.shape[1] != self.n_features:
            raise ValueError(
                f"Chunk {i} of the stream has {piece.shape[1]} columns, but the first had "
                f"{self.n_features}: every chunk must have the same number of features."
            )
        if piece.dtype != self._chunk_dtype:
            raise TypeError(
                f"Chunk {i} of the stream has dtype {piece.dtype}, but the first had "
                f"{self._chunk_dtype}: yield every chunk with the same dtype."
            )
        return piece

    def _pieces(self) -> Iterator[np.ndarray]:
        """The non-empty, validated arrays of one pass."""
        if self._pending is not None:
            iterator, first = self._pending
            self._pending = None
        else:
            iterator, first = self._open(), None
        try:
            i = 0
            if first is not None:
                yield first
                i = 1
            for item in iterator:
                piece = self._check_piece(item, i)
                i += 1
                if piece.shape[0]:
                    yield piece
        finally:
            _close(iterator)

    def _iter_chunks(self, chunk_size, prefetch):
        known = self.n_samples
        rows = chunk_size if known is None else min(chunk_size, known)
        ring = _BufferRing(2 if prefetch else 1, rows, self.n_features, self.dtype)
        buf, filled, start = None, 0, 0
        with contextlib.closing(self._pieces()) as pieces:
            for piece in pieces:
                m = piece.shape[0]
                if known is not None and start + filled + m > known:
                    raise ValueError(
                        f"The stream yielded more than the {known} rows of its first pass: "
                        "every call of its callable must yield the same data."
                    )
                pos = 0
                while pos < m:
                    # A whole block inside one chunk is handed over as a view, unless a reader
                    # thread would then overwrite it through the stream's own buffer reuse.
                    if (filled == 0 and m - pos >= chunk_size and not prefetch
                            and piece.dtype == self.dtype and piece.flags.c_contiguous):
                        yield start, piece[pos : pos + chunk_size]
                        start += chunk_size
                        pos += chunk_size
                        continue
                    if buf is None:
                        buf = ring.next(rows)
                    t = min(chunk_size - filled, m - pos)
                    np.copyto(buf[filled : filled + t], piece[pos : pos + t], casting="unsafe")
                    filled += t
                    pos += t
                    if filled == chunk_size:
                        yield start, buf
                        start += chunk_size
                        buf, filled = None, 0
            if filled:
                yield start, buf[:filled]
                start += filled
        if start == 0:
            raise ValueError(
                "The stream yielded no rows in this pass: its callable must return a fresh "
                "iterator over the same data on every call."
            )
        if known is None:
            self.n_samples = start
        elif start != known:
            raise ValueError(
                f"The stream yielded {start} rows in this pass but {known} in its first: every "
                "call of its callable must yield the same data."
            )


def _close(iterator) -> None:
    close = getattr(iterator, "close", None)
    if close is not None:
        close()


# ---------------------------------------------------------------------------- as_source
def _is_path(X) -> bool:
    return isinstance(X, (str, bytes, os.PathLike))


def _read_above_bytes() -> int:
    """Files larger than this (half the physical memory) are read, not memory-mapped.

    A pass over a map of a file that does not fit in the page cache pays a page fault for every
    4 KiB page (about 0.4 s of CPU per GB, on the threads that compute); ``readinto`` into two
    reused buffers on the prefetch thread costs a copy (about 0.1 s per GB) that overlaps the
    kernels. Smaller files stay mapped: once cached, a map needs no copy at all.
    """
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2
    except (ValueError, OSError, AttributeError):
        return 2**62


def _open_path(path) -> DataSource:
    path = os.fspath(path)
    name = os.fsdecode(path)
    if os.path.isdir(path):
        if any(os.path.exists(os.path.join(name, f)) for f in ("zarr.json", ".zarray")):
            import zarr  # optional: only when a zarr store is given

            return ZarrSource(zarr.open_array(name, mode="r"))
        raise ValueError(f"{name!r} is a directory; pass a .npy file, a raw file or a zarr array.")
    if not os.path.exists(path):
        raise FileNotFoundError(f"No such file: {name!r}.")
    with open(path, "rb") as f:
        magic = f.read(8)
    if magic.startswith(_NPY_MAGIC) or name.lower().endswith(".npy"):
        if os.stat(path).st_size > _read_above_bytes():
            shape, fortran_order, dtype, header = _read_npy_header(path)
            if not fortran_order and len(shape) == 2:
                _working_dtype(dtype)
                return RawFileSource(path, dtype, shape, offset=len(header))
        return NpySource(path)
    if name.lower().endswith(".npz"):
        raise ValueError(
            f"{name!r} is an .npz archive of several arrays; save the one to fit with numpy.save "
            "and pass that .npy file."
        )
    if magic.startswith(b"\x89HDF"):
        raise ValueError(
            f"{name!r} is an HDF5 file; pass one of its datasets: h5py.File(path)['name']."
        )
    raise ValueError(
        f"Cannot tell how to read {name!r}: pass a .npy file, or a raw binary file with "
        "dtype= and shape=."
    )


def as_source(X, *, dtype=None, shape=None) -> DataSource:
    """Wrap ``X`` as a :class:`DataSource`.

    Parameters
    ----------
    X : DataSource, ndarray, numpy.memmap, str or os.PathLike, h5py.Dataset, zarr array, \
array-like store, or callable
        The data, of shape (n_samples, n_features). A DataSource is returned as it is. A path
        names a ``.npy`` file, a zarr store, or (with ``dtype`` and ``shape``) a raw binary
        file. A callable must return a fresh iterator of 2-D chunks on every call. Lists and
        objects with ``__array__`` are converted with ``numpy.asarray``.
    dtype : dtype-like, optional
        For a raw binary file: the dtype of its values.
    shape : tuple of int (n_samples, n_features), optional
        For a raw binary file; ``n_samples`` may be -1 (inferred from the file size).

    Returns
    -------
    DataSource

    Raises
    ------
    TypeError
        For an object fastem cannot read rows from, or non-numeric data.
    ValueError
        For data that is not 2-D, has no row or no column, or a malformed file.
    """
    if dtype is not None or shape is not None:
        if not _is_path(X):
            raise TypeError("dtype= and shape= describe a raw binary file: X must be its path.")
        if dtype is None or shape is None:
            raise TypeError("A raw binary file needs both dtype= and shape=.")
        return RawFileSource(X, dtype, shape)
    if isinstance(X, DataSource):
        return X
    if isinstance(X, np.memmap):
        return MemmapSource(X)
    if isinstance(X, np.ndarray):
        return ArraySource(X)
    if _is_path(X):
        return _open_path(X)
    package = type(X).__module__.split(".")[0]
    if package == "h5py":
        if not hasattr(X, "read_direct"):
            raise TypeError(
                f"{type(X).__name__} is not an HDF5 dataset; pass one, e.g. h5py_file['name']."
            )
        return HDF5Source(X)
    if package == "zarr":
        if not hasattr(X, "shape"):
            raise TypeError(
                f"{type(X).__name__} is not a zarr array; pass one, e.g. group['name']."
            )
        return ZarrSource(X)
    if package == "scipy" and hasattr(X, "tocsr"):
        raise TypeError("Sparse matrices are not supported; convert X to a dense array.")
    if all(hasattr(X, a) for a in ("shape", "dtype", "ndim", "__getitem__")):
        return ArrayLikeSource(X)
    if callable(X):
        return StreamSource(X)
    if isinstance(X, Iterator):
        raise TypeError(
            "X is a one-shot iterator, but fitting reads the data several times. Pass a callable "
            "that returns a fresh iterator on every call, e.g. lambda: read_chunks(path)."
        )
    if isinstance(X, (list, tuple)) or hasattr(X, "__array__"):
        return ArraySource(np.asarray(X))
    raise TypeError(
        f"Cannot read rows from an object of type {type(X).__name__}; pass a 2-D array, a "
        "memmap or .npy path, an HDF5/zarr array, or a callable returning chunks."
    )


# ---------------------------------------------------------------------------- sampling
def _check_random_state(random_state) -> np.random.RandomState:
    if isinstance(random_state, np.random.RandomState):
        return random_state
    if random_state is None:
        return np.random.mtrand._rand
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        return np.random.RandomState(random_state)
    raise TypeError(
        f"random_state must be a numpy RandomState, an int or None, got {random_state!r}."
    )


def _distinct_uniform(n: int, k: int, rs) -> np.ndarray:
    """``k`` distinct integers of ``range(n)``, a uniform subset, sorted; needs ``2k <= n``.

    O(k) memory, where ``rs.choice(n, k, replace=False)`` would permute all ``n``. Distinct
    draws are collected until there are enough: by symmetry the set is a uniform subset of its
    size, and a uniform ``k``-subset of it is a uniform ``k``-subset of ``range(n)``.
    """
    chosen = np.empty(0, dtype=np.int64)
    while chosen.size < k:
        missing = k - chosen.size
        fresh = (n - chosen.size) / n  # >= 1/2: the chance that a draw is new
        draw = rs.randint(0, n, size=int(missing / fresh * 1.25) + 16, dtype=np.int64)
        chosen = np.union1d(chosen, draw)
    if chosen.size > k:
        chosen = np.sort(chosen[rs.permutation(chosen.size)[:k]])
    return chosen


def _sample_indices(n: int, k: int, rs) -> np.ndarray:
    """A uniform random ``min(k, n)``-subset of ``range(n)``, sorted, int64."""
    if k >= n:
        return np.arange(n, dtype=np.int64)
    if 2 * k <= n:
        return _distinct_uniform(n, k, rs)
    # Most rows: draw the ones to leave out (one byte per row, at most twice the k indices).
    keep = np.ones(n, dtype=bool)
    keep[_distinct_uniform(n, n - k, rs)] = False
    return np.flatnonzero(keep).astype(np.int64)


_SKIP_BATCH = 4096


def _skip_batch(rs, k: int, log_w: float, last: int):
    """The next ``_SKIP_BATCH`` replacements of Li's Algorithm L, vectorized.

    Returns ``(positions, slots, log_w, last)``: increasing row positions, the reservoir slot
    each one replaces, and the state after them. The random numbers drawn do not depend on
    the chunking, so neither does the sample.
    """
    a = 1.0 - rs.random_sample(_SKIP_BATCH)  # (0, 1]: log(a) is finite
    b = 1.0 - rs.random_sample(_SKIP_BATCH)
    slots = rs.randint(0, k, size=_SKIP_BATCH)
    steps = np.log(b) / k  # W_{j+1} = W_j * b_j ** (1 / k)
    log_ws = log_w + np.concatenate(([0.0], np.cumsum(steps[:-1])))
    with np.errstate(all="ignore"):
        skip = np.floor(np.log(a) / np.log1p(-np.exp(log_ws))) + 1.0
    # W == 1 (probability ~2**-53), or W underflowing to 0 many steps past any real data.
    skip = np.nan_to_num(skip, nan=1.0, posinf=2.0**40)
    positions = last + np.cumsum(np.minimum(skip, 2.0**40).astype(np.int64))
    return positions, slots, float(log_ws[-1] + steps[-1]), int(positions[-1])


def _reservoir_sample(source: DataSource, k: int, rs, chunk_size) -> np.ndarray:
    """One pass of reservoir sampling (Algorithm L): ``min(k, n)`` rows in row order."""
    rows = np.empty((k, source.n_features), dtype=source.dtype)
    row_index = np.empty(k, dtype=np.int64)
    filled = 0
    log_w, last = 0.0, -1
    positions = np.empty(0, dtype=np.int64)
    slots = np.empty(0, dtype=np.int64)
    p = 0
    with contextlib.closing(source.chunks(chunk_size)) as chunks:
        for start, block in chunks:
            m = block.shape[0]
            stop = start + m
            if filled < k:
                t = min(k - filled, m)
                rows[filled : filled + t] = block[:t]
                row_index[filled : filled + t] = np.arange(start, start + t)
                filled += t
                if filled < k:
                    continue
                log_w = math.log(1.0 - rs.random_sample()) / k
                last = start + t - 1
            hit_pos, hit_slot = [], []
            while True:
                if p == positions.size:
                    positions, slots, log_w, last = _skip_batch(rs, k, log_w, last)
                    p = 0
                q = p + int(np.searchsorted(positions[p:], stop))
                hit_pos.append(positions[p:q])
                hit_slot.append(slots[p:q])
                p = q
                if p < positions.size:
                    break
            hit_pos = np.concatenate(hit_pos)
            if hit_pos.size:
                hit_slot = np.concatenate(hit_slot)
                # A slot hit twice in one chunk keeps the later row, as the sequential loop would.
                _, last_hit = np.unique(hit_slot[::-1], return_index=True)
                keep = hit_pos.size - 1 - last_hit
                rows[hit_slot[keep]] = block[hit_pos[keep] - start]
                row_index[hit_slot[keep]] = hit_pos[keep]
    order = np.argsort(row_index[:filled], kind="stable")
    return rows[:filled][order]


def sample_rows(source, n: int, random_state, chunk_size: int | None = None) -> np.ndarray:
    """A uniform random sample of ``min(n, n_samples)`` distinct rows, in row order.

    When the number of rows is known, sorted random indices are drawn (O(n) memory, whatever
    the number of rows) and read with :meth:`DataSource.take`. Otherwise (a stream before its
    first full pass) one pass of reservoir sampling (Li's Algorithm L, vectorized per chunk)
    draws the sample; its result does not depend on ``chunk_size``.

    Parameters
    ----------
    source : DataSource or anything :func:`as_source` accepts
    n : int
        Sample size, at least 1.
    random_state : numpy.random.RandomState
        The only source of randomness (an int seed or None are also accepted).
    chunk_size : int or None, default=None
        Rows per chunk for the reservoir pass.

    Returns
    -------
    ndarray of shape (min(n, n_samples), n_features), dtype ``source.dtype``
        A new array, rows in increasing row order.
    """
    source = as_source(source)
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"The sample size must be a positive integer, got {n!r}.")
    rs = _check_random_state(random_state)
    chunk_size = check_chunk_size(chunk_size)
    if source.n_samples is None:
        return _reservoir_sample(source, int(n), rs, chunk_size)
    indices = _sample_indices(source.n_samples, int(n), rs)
    return np.ascontiguousarray(source.take(indices), dtype=source.dtype)


# ---------------------------------------------------------------------------- outputs
def count_rows(source: DataSource, chunk_size: int | None = None) -> int:
    """The number of rows of ``source``: as it knows it, or counted in a pass of their own (a
    stream knows its rows after one pass over them)."""
    if source.n_samples is None:
        for _ in source.chunks(chunk_size):
            pass
    return source.n_samples


def first_nonfinite_row(source, chunk_size: int | None = None) -> int:
    """Index of the first row holding NaN or infinity, or -1: one pass over the chunks.

    The kernels check rows as they compute; this scan serves the places that find bad values
    in a sample and must still name the first bad row of the whole data.
    """
    for start, block in as_source(source).chunks(chunk_size):
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            return start + int(np.argmin(finite))
    return -1


def allocate_output(out, shape, dtype) -> np.ndarray:
    """Check a user-given ``out=`` array, or allocate one.

    Per-row results (labels, responsibilities, log-likelihoods) of billions of rows may not fit
    in memory: the caller can pass a writeable ``numpy.memmap`` (for instance from
    ``numpy.lib.format.open_memmap``) that the chunks' results are written into.

    Parameters
    ----------
    out : ndarray, numpy.memmap or None
        The caller's array, or None to allocate a new one.
    shape : int or tuple of int
        The required shape.
    dtype : dtype-like
        The required dtype (native byte order).

    Returns
    -------
    ndarray of shape ``shape`` and dtype ``dtype``
        ``out`` itself when it is valid, else a new uninitialized C-contiguous array.

    Raises
    ------
    TypeError
        If ``out`` is not a numpy array or has another dtype.
    ValueError
        If ``out`` has another shape, is read-only or is not C-contiguous.
    """
    shape = (int(shape),) if isinstance(shape, numbers.Integral) else tuple(int(s) for s in shape)
    dtype = np.dtype(dtype)
    if out is None:
        return np.empty(shape, dtype=dtype)
    if not isinstance(out, np.ndarray):
        raise TypeError(
            f"out must be a numpy array or memmap of shape {shape} and dtype {dtype}, got "
            f"{type(out).__name__}."
        )
    if out.shape != shape:
        raise ValueError(f"out has shape {out.shape}, but the result has shape {shape}.")
    if out.dtype != dtype:
        raise TypeError(f"out has dtype {out.dtype}, but the result needs {dtype} (native order).")
    if not out.flags.writeable:
        raise ValueError(
            "out is read-only; pass a writeable array (a memmap opened with mode 'r+' or 'w+')."
        )
    if not out.flags.c_contiguous:
        raise ValueError("out must be C-contiguous: results are written into it chunk by chunk.")
    return out
