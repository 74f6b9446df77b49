"""Array views for the kernels' hot loops that cost no reference counting.

Every Numba array carries a pointer to its memory's reference count, and every view made of it
(a slice, a reshape, a row of a 2-D array, an argument kept in a variable) adds one to that
count and later takes one away, each an atomic instruction. The block functions make a dozen
views per block of 256 rows, of the rows themselves and of each task's scratch, and the two
threads' atomics on the shared arrays' counts contend for one cache line. At d = 2, K = 8 on two
threads they took 14% of the kernel's time (perf), and a fit's iteration ran 12.5% faster
without them ('diag': 14%; d = 16, K = 16 'full': 2.6%). NRT skips both steps for an array
whose count pointer is null, as it is for the views here.

A borrowed view does not keep its memory alive: the function that makes it must hold the
array it came from for as long as the view is used.
"""

from numba import njit, types
from numba.extending import intrinsic
from numba.np.arrayobj import populate_array

from ._config import CACHE


def _borrowed_view(context, builder, array_type, value):
    src = context.make_array(array_type)(context, builder, value)
    view = context.make_array(array_type)(context, builder)
    populate_array(view, data=src.data, shape=src.shape, strides=src.strides,
                   itemsize=src.itemsize, meminfo=None)
    return view._getvalue()


@intrinsic
def borrowed(typingctx, a):
    """The array `a` itself, holding no reference to its memory (null reference count); for a
    tuple of arrays (a task's scratch), the tuple of their borrowed views."""
    if isinstance(a, types.Array):
        def codegen(context, builder, signature, args):
            return _borrowed_view(context, builder, a, args[0])

        return a(a), codegen
    if isinstance(a, types.BaseTuple) and all(isinstance(t, types.Array) for t in a.types):
        def codegen(context, builder, signature, args):
            views = [_borrowed_view(context, builder, t, builder.extract_value(args[0], i))
                     for i, t in enumerate(a.types)]
            return context.make_tuple(builder, a, views)

        return a(a), codegen
    return None


@intrinsic
def flat(typingctx, a):
    """A C-contiguous array of any shape as one row of all its entries, without the call into
    Numba's reshape helper."""
    if not (isinstance(a, types.Array) and a.layout == "C"):
        return None
    flat_type = a.copy(ndim=1, layout="C")

    def codegen(context, builder, signature, args):
        src = context.make_array(a)(context, builder, args[0])
        view = context.make_array(flat_type)(context, builder)
        populate_array(view, data=src.data, shape=[src.nitems], strides=[src.itemsize],
                       itemsize=src.itemsize, meminfo=src.meminfo)
        context.nrt.incref(builder, flat_type, view._getvalue())  # a new reference, as _matrix
        return view._getvalue()

    return flat_type(a), codegen


@intrinsic
def _matrix(typingctx, buffer, rows, cols):
    if not (isinstance(buffer, types.Array) and buffer.ndim == 1 and buffer.layout == "C"):
        return None
    matrix_type = buffer.copy(ndim=2, layout="C")

    def codegen(context, builder, signature, args):
        src = context.make_array(buffer)(context, builder, args[0])
        n_rows = context.cast(builder, args[1], signature.args[1], types.intp)
        n_cols = context.cast(builder, args[2], signature.args[2], types.intp)
        view = context.make_array(matrix_type)(context, builder)
        populate_array(view, data=src.data, shape=[n_rows, n_cols],
                       strides=[builder.mul(n_cols, src.itemsize), src.itemsize],
                       itemsize=src.itemsize, meminfo=src.meminfo)
        # A new reference, like any view: free (a null test) when `buffer` is borrowed.
        context.nrt.incref(builder, matrix_type, view._getvalue())
        return view._getvalue()

    return matrix_type(buffer, rows, cols), codegen


# Not inlined at Numba's level, as the blocks' code once needed: it was the body of a prange
# loop, and a `raise` written into such a body keeps Numba from making the loop parallel.
@njit(cache=CACHE)
def matrix(buffer, rows, cols):
    """buffer[:rows * cols] as a C-contiguous (rows, cols) matrix, without the call into
    Numba's reshape helper (1% of a pass at d = 2, K = 8)."""
    if rows < 0 or cols < 0 or rows * cols > buffer.shape[0]:
        raise ValueError("matrix: the buffer is too small for the shape")
    return _matrix(buffer, rows, cols)


@intrinsic
def keep_alive(typingctx, a):
    """Nothing, but a use of `a` (any value): the array, or tuple of arrays, that borrowed
    views were made of is released only after this point."""

    def codegen(context, builder, signature, args):
        return context.get_dummy_value()

    return types.void(a), codegen
