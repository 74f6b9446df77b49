"""The benchmark's worker process for isolated peers: it must run exactly what the peer runs
in this process, on the same rows, and report its failures here."""

import glob
import os

import numpy as np
import pytest

from fastem import _bench
from fastem._peer_process import PeerProcess


@pytest.fixture(scope="module")
def worker():
    process = PeerProcess()
    yield process
    process.close()


@pytest.fixture(scope="module")
def problem():
    X = _bench.make_data(3000, 3, 2)
    return X, _bench.make_start(X, 2, "diag")


def _run_in(worker, peer, X, start):
    worker.send_rows(X)
    worker.request("prepare", peer, start, 2, 1)
    result, rss_before, peak = worker.request("run")
    return result, rss_before, peak


def test_worker_runs_what_runs_here_on_rows_in_memory(worker, problem):
    X, start = problem
    (weights, means), rss_before, peak = _run_in(worker, "reference", X, start)
    expected_weights, expected_means = _bench.prepare_here("reference", X, start, n_iter=2,
                                                           threads=1)()
    np.testing.assert_array_equal(weights, expected_weights)
    np.testing.assert_array_equal(means, expected_means)
    if os.path.exists("/proc/self/status"):
        assert 0 < rss_before <= peak
    # The rows went through a temporary file that the worker deleted once it had them.
    assert not glob.glob(os.path.join("/dev/shm", "fastem-bench-*.npy"))


def test_worker_reads_a_memory_mapped_file_in_place(worker, problem, tmp_path):
    X, start = problem
    path = tmp_path / "rows.npy"
    np.save(path, X)
    mapped = np.load(path, mmap_mode="r")
    (weights, means), _, _ = _run_in(worker, "reference", mapped, start)
    expected = _bench.prepare_here("reference", X, start, n_iter=2, threads=1)()
    np.testing.assert_array_equal(means, expected[1])


def test_prepare_runs_isolated_peers_in_the_worker(monkeypatch, problem):
    """A peer listed as isolated goes through the worker, with the same result."""
    from fastem import _peer_process

    X, start = problem
    monkeypatch.setattr(_peer_process, "ISOLATED_PEERS", ("reference",))
    run = _bench.prepare("reference", X, start, n_iter=2, threads=1)
    weights, means = run()
    assert run.peak_rss is None or run.peak_rss > 0
    expected = _bench.prepare_here("reference", X, start, n_iter=2, threads=1)()
    np.testing.assert_array_equal(means, expected[1])


def test_worker_errors_are_raised_here(worker, problem):
    X, start = problem
    worker.send_rows(X)
    with pytest.raises(RuntimeError, match="ValueError.*unknown peer 'nonesuch'"):
        worker.request("prepare", "nonesuch", start, 2, 1)
    # ... and the worker still serves the next request.
    (weights, _), _, _ = _run_in(worker, "reference", X, start)
    assert weights.shape == (2,)


def test_a_library_that_does_not_import_there_is_unavailable(worker):
    with pytest.raises(_bench.Unavailable, match="nonesuch_library does not import"):
        worker.request("import", "nonesuch_library")
