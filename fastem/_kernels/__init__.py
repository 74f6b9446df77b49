"""Numba kernels of fastem.

Everything jitted lives in this private package and imports only numpy and numba, so the
public modules (validation, the EM loop, the M-step, the estimators) stay plain Python and
nothing is compiled at import time.
"""
