"""Numba kernels of fastem.

Everything jitted lives in this private package and imports only numpy and numba, so the
public modules (validation, the EM loop, the M-step, the estimators) stay plain Python and
nothing is compiled at import time. Importing it first drops cached kernels compiled from
other sources than these (see ``_cache.py``).
"""

from ._cache import clear_stale_cache

clear_stale_cache()
