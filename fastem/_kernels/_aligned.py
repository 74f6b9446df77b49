"""Scratch buffers that start on a cache line.

The kernels move their data in 8-lane float64 vectors, 64 bytes, one cache line when aligned.
Numba aligns the arrays it makes to 32 bytes only, so whether a task's scratch began on a line
was luck, the same in every run of a process but not from one process or shape to the next:
when it did not, every vector load and store from it touched two lines. Made with the
intrinsics here, a pass took 1.5-12% less than with Numba's arrays at 20 shapes (paired in
one process, 2 threads; 'full' d = 64, K = 16: 11%), or as much as before where Numba's
happened to fall on lines. The data's own rows are read once, into these buffers: their
alignment changed nothing measurable (d = 2 to 64).
"""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic
from numba.np.arrayobj import populate_array

from ._config import JIT

# Bytes of a vector of 8 float64 (one AVX-512 register) and of a cache line.
VECTOR_BYTES = 64


def _aligned_codegen(ndim, zeroed, dtype=types.float64):
    """Code making an array of 8-byte `dtype` (float64 or int64) of `ndim` dimensions (a
    negative size counts as 0) whose memory starts on a VECTOR_BYTES boundary, all bytes zero
    if `zeroed`."""
    array_type = types.Array(dtype, ndim, "C")

    def codegen(context, builder, signature, args):
        intp = context.get_value_type(types.intp)
        shape = [context.cast(builder, value, ty, types.intp)
                 for value, ty in zip(args, signature.args)]
        shape = [builder.select(builder.icmp_signed("<", n, ir.Constant(intp, 0)),
                                ir.Constant(intp, 0), n) for n in shape]
        n = shape[0] if ndim == 1 else builder.mul(shape[0], shape[1])
        nbytes = builder.mul(n, ir.Constant(intp, 8))
        meminfo = context.nrt.meminfo_alloc_aligned(builder, size=nbytes, align=VECTOR_BYTES)
        with builder.if_then(cgutils.is_null(builder, meminfo), likely=False):
            context.call_conv.return_user_exc(builder, MemoryError,
                                              ("Allocating a kernel's scratch failed",))
        data = context.nrt.meminfo_data(builder, meminfo)
        if zeroed:
            cgutils.memset(builder, data, nbytes, 0)
        array = context.make_array(array_type)(context, builder)
        strides = [ir.Constant(intp, 8)] if ndim == 1 else [
            builder.mul(shape[1], ir.Constant(intp, 8)), ir.Constant(intp, 8)]
        populate_array(array, data=builder.bitcast(data, array.data.type), shape=shape,
                       strides=strides, itemsize=ir.Constant(intp, 8), meminfo=meminfo)
        return array._getvalue()

    return array_type, codegen


def _aligned_vector(name, zeroed, dtype, doc):
    """An intrinsic ``name(n)`` making an aligned 1-D array (:func:`_aligned_codegen`)."""

    def typer(typingctx, n):
        if not isinstance(n, types.Integer):
            return None
        array_type, codegen = _aligned_codegen(1, zeroed, dtype)
        return array_type(n), codegen

    typer.__name__ = typer.__qualname__ = name
    typer.__doc__ = doc
    return intrinsic(typer)


aligned_empty = _aligned_vector(
    "aligned_empty", False, types.float64,
    """np.empty(n) of float64, its first entry on a VECTOR_BYTES boundary.""")
# The kernels make their scratch with these intrinsics rather than with NumPy's functions:
# Numba compiles each of those for each of its signatures, 0.05-0.3 s of cold compile apiece.
aligned_int64_empty = _aligned_vector(
    "aligned_int64_empty", False, types.int64,
    """np.empty(n, dtype=np.int64), aligned as :func:`aligned_empty`.""")
aligned_int64_zeros = _aligned_vector(
    "aligned_int64_zeros", True, types.int64,
    """np.zeros(n, dtype=np.int64), aligned as :func:`aligned_empty`.""")


@intrinsic
def aligned_matrix(typingctx, rows, cols):
    """np.empty((rows, cols)) of float64 starting on a VECTOR_BYTES boundary (see
    :func:`aligned_empty`); every row does too when cols is a multiple of 8."""
    if not (isinstance(rows, types.Integer) and isinstance(cols, types.Integer)):
        return None
    array_type, codegen = _aligned_codegen(2, False)
    return array_type(rows, cols), codegen


@intrinsic
def aligned_zeros(typingctx, rows, cols):
    """np.zeros((rows, cols)) of float64, aligned as :func:`aligned_matrix`."""
    if not (isinstance(rows, types.Integer) and isinstance(cols, types.Integer)):
        return None
    array_type, codegen = _aligned_codegen(2, True)
    return array_type(rows, cols), codegen


@njit(inline="always", **JIT)
def row_length(n):
    """The row length of a scratch matrix that holds a block of n rows along its rows: n
    rounded up to whole cache lines of 8 float64, and to an odd number of lines.

    Walked down a column, a matrix whose rows are an even number of lines apart touches only
    a few of the L1 cache's sets (sets are picked by address bits 6 to 11: with 256 float64
    a row, 2 KiB, every row falls in one of two sets), and the lines of a column evict each
    other. With an odd number of lines between rows, every set takes its share. The blocks'
    transposed copies of the rows write such columns: at d = 64 on one core, with X in L2, the
    copy took 13.9 ns a row into rows of 264 float64 against 22.1 into rows of 256 (float32
    data; float64 23.3 against 30.6). The passes: ``gaussian.SPREAD_ROWS_MIN_FEATURES``.
    """
    lines = (n + VECTOR_BYTES // 8 - 1) // (VECTOR_BYTES // 8)
    return (lines | 1) * (VECTOR_BYTES // 8)


def aligned_array(shape, zeroed=False):
    """A float64 NumPy array of `shape` whose first entry is on a VECTOR_BYTES boundary (NumPy
    aligns to 16 bytes): for the kernels' per-block slots, allocated in Python."""
    n = int(np.prod(shape))
    lanes = VECTOR_BYTES // 8
    buffer = (np.zeros if zeroed else np.empty)(n + lanes)
    start = (-buffer.ctypes.data % VECTOR_BYTES) // 8
    return buffer[start : start + n].reshape(shape)
