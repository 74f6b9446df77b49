"""Launching the kernels' parallel loops safely from several Python threads at once.

The kernels release the GIL, so fits and predictions may run side by side in Python threads
(a thread pool, or joblib's threading backend). Numba runs parallel loops on one of three
threading layers: TBB and OpenMP take launches from any number of threads, but the
workqueue layer, the one left where neither library is installed, aborts the whole process
on a second concurrent launch. Under it, :func:`one_at_a_time` makes each launch wait for the
one running; under the others it costs one check of a module flag.
"""

import contextlib
import threading

import numba

_LOCK = threading.Lock()
# Whether the chosen layer takes concurrent launches; None until Numba has chosen one (at the
# first parallel launch in the process), and fixed from then on.
_THREADSAFE = None


def _threadsafe():
    global _THREADSAFE
    if _THREADSAFE is None:
        try:
            layer = numba.threading_layer()
        except ValueError:  # no parallel loop has run yet: the layer is still to be chosen
            return False
        _THREADSAFE = layer != "workqueue"
    return _THREADSAFE


@contextlib.contextmanager
def one_at_a_time():
    """Hold a process-wide lock around a parallel launch, unless the threading layer is known
    to take concurrent launches."""
    if _threadsafe():
        yield
        return
    with _LOCK:
        yield
