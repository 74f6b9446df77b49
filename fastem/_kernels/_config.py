"""Compilation settings shared by every kernel."""

import os

from numba import types
from numba.extending import intrinsic

# Compiled kernels are cached on disk next to their source; FASTEM_NUMBA_CACHE=0 turns the
# cache off (useful when profiling or when the package directory is read-only).
CACHE = os.environ.get("FASTEM_NUMBA_CACHE", "1") != "0"

# Fast-math flags without 'nnan' and 'ninf' (the log-sum-exp needs -inf to behave, and the
# finiteness checks on the data must not be optimized away) and without 'reassoc'. With
# reassociation LLVM may split a sum into vector lanes, and it did so differently in a kernel
# compiled in the running process (which calls its helpers' own compiled copies) and in the
# same kernel loaded from the disk cache (whose helpers were re-optimized inside it): a first,
# compiling run and every later run differed in the last bit. Without it every sum keeps its
# written order, the two agree bit for bit, and the exp and log are within 1 ulp. The hot loops
# vectorize across rows; the sums along rows are written with explicit vector lanes
# (``_tiles.py``), as LLVM may no longer split a scalar sum into lanes itself.
FASTMATH = {"nsz", "arcp", "contract", "afn"}

# Rows per block. Partial statistics belong to blocks, not to threads, and are merged in block
# order, so results are bit-identical for any number of threads, and for any chunk size that is
# a multiple of BLOCK_ROWS.
BLOCK_ROWS = 256

# The options of every kernel. error_model="numpy": a float division by zero gives inf or NaN
# instead of raising ZeroDivisionError, whose check in every division stopped LLVM from
# vectorizing any loop that divides (the log-sum-exp's 1/s among them). Inputs are validated
# in Python, so no kernel divides by zero on purpose. no_cfunc_wrapper: Numba otherwise also
# builds a C-callable wrapper of every compiled function, which nothing here calls; without
# them the per-component kernel compiled 0.25-0.4 s faster.
JIT = dict(cache=CACHE, fastmath=FASTMATH, nogil=True, error_model="numpy",
           no_cfunc_wrapper=True)


@intrinsic
def prefer_wide_vectors(typingctx):
    """Let LLVM vectorize the calling function's loops with the CPU's widest vectors.

    LLVM's tuning for AVX-512 CPUs prefers 256-bit vectors (a guard against the clock drop
    some of them take on 512-bit instructions), so loops that Numba vectorizes use half the
    lanes the CPU has. The kernels are long, throughput-bound loops, where the full width
    measured faster: fastem's exp took 0.55 ns instead of 0.88 per element on one core. A call
    to this, first in a kernel function, sets that function's preference to 512 bits; on CPUs
    without AVX-512 LLVM still uses the widest vectors they have.
    """

    def codegen(context, builder, signature, args):
        # llvmlite knows no string attributes by name; the set underneath prints any entry.
        # Should a later llvmlite store attributes otherwise, LLVM's default width stays.
        attributes = builder.function.attributes
        if isinstance(attributes, set):
            set.add(attributes, '"prefer-vector-width"="512"')
        return context.get_dummy_value()

    return types.void(), codegen
