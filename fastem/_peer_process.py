"""A benchmark peer that runs in a process of its own, for ``fastem._bench.prepare``.

oneDAL and fastem's Numba kernels use one TBB runtime when both are installed (Numba picks
TBB as its threading layer when it finds it, and scikit-learn-intelex brings it). After a oneDAL
run, TBB's worker thread stays with oneDAL's task arena for a while, and fastem's parallel loops
in the same process then ran partly on one core: at (1M, 2, 8) 'full', fastem's fits took 0.0076
and 0.0080 s/iter alone and 0.0084 and 0.0091 right after one oneDAL run in the same process,
recovering over a few fits; the benchmark report, which alternates the peers, gave 0.0096
against 0.0083 with fastem alone. Neither library is used that way by anyone timing one of
them, so the peers in :data:`ISOLATED_PEERS` run in a worker process that never shares a
runtime with fastem. The parent still alternates their runs with the other peers' runs, and
times each one around its request: a pipe round trip adds about 20 microseconds.

The worker gets the rows once per array: a memory-mapped ``.npy`` file by its path (so the peer
reads the same file), an array in memory through a temporary ``.npy`` in shared memory, which
the worker loads into memory of its own and deletes.
"""

from __future__ import annotations

import atexit
import importlib
import os
import socket
import subprocess
import sys
import tempfile
import traceback
import warnings
from multiprocessing.connection import Connection

import numpy as np

# Peers that run in a worker process (see above).
ISOLATED_PEERS = ("daal4py",)


def _load_rows(spec):
    kind, path, dtype, shape, offset = spec
    if kind == "memmap":
        return np.memmap(path, dtype=np.dtype(dtype), mode="r", offset=offset,
                         shape=tuple(shape))
    try:
        return np.load(path)
    finally:
        os.unlink(path)


def _worker(conn) -> None:
    """Serve requests until the parent closes the pipe: ``("import", module)``, ``("rows",
    spec)``, ``("prepare", peer, start, n_iter, threads)``, ``("run",)``. Each reply is
    ``("ok", value)`` or ``("error", (exception name, message))``."""
    from . import _bench

    X = run = None
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        command, *args = request
        try:
            if command == "rows":
                X, run = None, None  # the previous rows are freed first
                X = _load_rows(args[0])
                reply = None
            elif command == "import":  # whether the peer's library loads here
                try:
                    with warnings.catch_warnings():  # as _bench.import_daal4py
                        warnings.simplefilter("ignore")
                        importlib.import_module(args[0])
                except ImportError as error:
                    raise _bench.Unavailable(f"{args[0]} does not import: {error}") from None
                reply = None
            elif command == "prepare":
                peer, start, n_iter, threads = args
                run = _bench.prepare_here(peer, X, start, n_iter=n_iter, threads=threads)
                reply = None
            elif command == "run":
                before = _bench.status_bytes("VmRSS")
                _bench.reset_peak_rss()
                result = run()
                reply = (result, before, _bench.status_bytes("VmHWM"))
            else:
                raise ValueError(f"unknown request {command!r}")
            conn.send(("ok", reply))
        except BaseException as error:  # reported to the parent, which raises it there
            conn.send(("error", (type(error).__name__,
                                 f"{error}\n{traceback.format_exc(limit=4)}")))


class PeerProcess:
    """A worker process (``python -m fastem._peer_process``) that prepares and runs one peer's
    fits on request.

    A fresh interpreter on one end of a socket pair rather than a ``multiprocessing`` child:
    its spawn start would run the calling script again in the child, where a script without
    an ``if __name__ == "__main__"`` guard starts the benchmark over.
    """

    def __init__(self):
        ours, theirs = socket.socketpair()
        self._process = subprocess.Popen(
            [sys.executable, "-m", __name__, str(theirs.fileno())], pass_fds=[theirs.fileno()])
        theirs.close()
        self._conn = Connection(ours.detach())
        self._rows = None  # the array the worker holds now (kept alive: its id is its key)

    def request(self, *message):
        """Send one request and return its reply's value, raising the worker's error here."""
        from ._bench import EarlyStop, Unavailable

        self._conn.send(message)
        try:
            status, value = self._conn.recv()
        except EOFError:
            raise RuntimeError("the benchmark's peer process died "
                               f"(exit code {self._process.poll()})") from None
        if status == "ok":
            return value
        name, text = value
        if name == "EarlyStop":
            raise EarlyStop(text.split("\n", 1)[0])
        if name == "Unavailable":
            raise Unavailable(text.split("\n", 1)[0])
        raise RuntimeError(f"{name} in the benchmark's peer process: {text}")

    def send_rows(self, X) -> None:
        """Give the worker X (once per array)."""
        if self._rows is X:
            return
        if isinstance(X, np.memmap) and X.filename is not None:
            self.request("rows", ("memmap", X.filename, X.dtype.str, X.shape, X.offset))
        else:
            folder = "/dev/shm" if os.path.isdir("/dev/shm") else None
            handle, path = tempfile.mkstemp(suffix=".npy", prefix="fastem-bench-", dir=folder)
            try:
                with os.fdopen(handle, "wb") as f:
                    np.save(f, np.asarray(X))
                self.request("rows", ("file", path, None, None, None))
            finally:
                if os.path.exists(path):  # the worker deletes it once loaded
                    os.unlink(path)
        self._rows = X

    def close(self) -> None:
        self._conn.close()  # the worker sees the end of its requests and returns
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()


_process: PeerProcess | None = None


def peer_process() -> PeerProcess:
    """The worker process, started on first use and stopped at exit."""
    global _process
    if _process is None:
        _process = PeerProcess()
        atexit.register(_process.close)
    return _process


def prepare_isolated(peer, X, start, *, n_iter, threads):
    """:func:`fastem._bench.prepare` for a peer in :data:`ISOLATED_PEERS`: the run callable
    asks the worker process for one run and returns its ``(weights, means)``. After a run its
    attributes ``rss_before`` and ``peak_rss`` are the worker's resident memory just before
    and at its peak during the run (bytes; None where they cannot be read)."""
    process = peer_process()
    process.send_rows(X)
    process.request("prepare", peer, start, n_iter, threads)

    def run():
        result, run.rss_before, run.peak_rss = process.request("run")
        return result

    run.rss_before = run.peak_rss = None
    return run


if __name__ == "__main__":
    # Library output goes to stderr: this process's stdout is the parent's.
    _worker(Connection(int(sys.argv[1])))
