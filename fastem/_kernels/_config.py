"""Compilation settings shared by every kernel."""

import os

from numba import njit, types
from numba.core.registry import CPUDispatcher
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


class _CompiledCallsOnly(CPUDispatcher):
    """A Numba function built without its Python entry point (:func:`njit_internal`): a call
    from Python raises, where Numba would jump to the missing entry."""

    def __call__(self, *args, **kwargs):
        raise TypeError(f"{self.py_func.__qualname__} is built to be called from fastem's "
                        "compiled kernels only; call it from a Numba function")


def njit_internal(**options):
    """``numba.njit(**options)`` for a function that only compiled code calls: without the
    Python entry point Numba otherwise builds for every function (code that unpacks each
    argument from a Python object, optimized and compiled to machine code like the rest).
    Those of the tasks and of the helpers that only they call took 1.0-1.2 s of a default
    fit's cold compile (20.9 s against 19.9, medians of alternating runs)."""

    def decorate(py_func):
        dispatcher = njit(no_cpython_wrapper=True, **options)(py_func)
        dispatcher.__class__ = _CompiledCallsOnly
        return dispatcher

    return decorate


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
