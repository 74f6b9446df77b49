"""Compilation settings shared by every kernel."""

import os

# Compiled kernels are cached on disk next to their source; FASTEM_NUMBA_CACHE=0 turns the
# cache off (useful when profiling or when the package directory is read-only).
CACHE = os.environ.get("FASTEM_NUMBA_CACHE", "1") != "0"

# Fast-math flags without 'nnan' and 'ninf': the log-sum-exp needs -inf to behave, and the
# finiteness checks on the data must not be optimized away.
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}

# Rows per block. Partial statistics belong to blocks, not to threads, and are merged in block
# order, so results are bit-identical for any number of threads, and for any chunk size that is
# a multiple of BLOCK_ROWS.
BLOCK_ROWS = 256

# The options of every kernel. error_model="numpy": a float division by zero gives inf or NaN
# instead of raising ZeroDivisionError, whose check in every division stopped LLVM from
# vectorizing any loop that divides (the log-sum-exp's 1/s among them). Inputs are validated
# in Python, so no kernel divides by zero on purpose.
JIT = dict(cache=CACHE, fastmath=FASTMATH, nogil=True, error_model="numpy")
