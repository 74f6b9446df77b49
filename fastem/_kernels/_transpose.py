"""Rows of the data into the kernels' column layout, 8 x 8 at a time in vector registers.

The kernels read a block of rows X[r0:r1] (row-major, as users store data) and work on its
transpose XT (features by rows), where every loop over rows is a contiguous vector loop. The
copy is the one pass over the data's bytes, and at high d it was slower than the memory
feeding it: element by element, in 8 x 8 tiles, it moved 7.4 GB/s on one core at d = 64,
against 10.8 for a plain row-major copy and 14.1 for a sum. :func:`transpose_tile` loads 8 rows
of 8 features as 8 vectors (widening float32 to float64 on the way), transposes them with
three rounds of shuffles and stores 8 vectors of 8 rows. :func:`load_columns` copies a block
with them, for the Gaussian kernels (less a centre) and the k-means kernel (as the rows are).
"""

import numpy as np
from llvmlite import ir
from numba import njit
from numba.core import cgutils, types
from numba.extending import intrinsic

from ._config import JIT, prefer_wide_vectors
from ._llvm import BYTE_PTR, I32, LANES, VEC, array_bytes, load_vector, splat

TILE = LANES  # rows and features per tile

# The three rounds, each combining vectors a and b (lanes 0-7 of a, 8-15 of b): interleave
# single lanes of row pairs, then pairs of lanes, then halves. After them vector k holds
# column k.
_SINGLES = ([0, 8, 2, 10, 4, 12, 6, 14], [1, 9, 3, 11, 5, 13, 7, 15])
_PAIRS = ([0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15])
_HALVES = ([0, 1, 2, 3, 8, 9, 10, 11], [4, 5, 6, 7, 12, 13, 14, 15])


def _is_row_major(a, dtypes):
    return (isinstance(a, types.Array) and a.ndim == 2 and a.layout == "C"
            and a.dtype in dtypes)


def _tile_columns(context, builder, x_ty, x_arg, r, j0):
    """The 8 x 8 tile X[r:r+8, j0:j0+8] as 8 float64 vectors, vector k holding column j0 + k:
    eight loads (float32 widened) and three rounds of shuffles."""
    x_base, x_stride = array_bytes(context, builder, x_ty, x_arg)
    intp = r.type
    elem = context.get_data_type(x_ty.dtype)
    col = builder.mul(j0, ir.Constant(intp, x_ty.dtype.bitwidth // 8))
    rows = []
    for u in range(TILE):
        offset = builder.add(builder.mul(builder.add(r, ir.Constant(intp, u)), x_stride), col)
        row = load_vector(builder, x_base, offset, ir.VectorType(elem, TILE),
                          align=x_ty.dtype.bitwidth // 8)
        rows.append(row if x_ty.dtype == types.float64 else builder.fpext(row, VEC))

    def combine(a, b, lanes):
        return builder.shuffle_vector(a, b, ir.Constant(ir.VectorType(I32, TILE), lanes))

    t = []
    for p in range(0, TILE, 2):
        t += [combine(rows[p], rows[p + 1], lanes) for lanes in _SINGLES]
    u = [None] * TILE
    for q in (0, 4):
        for s in (0, 1):
            u[q + s], u[q + s + 2] = (combine(t[q + s], t[q + s + 2], lanes)
                                      for lanes in _PAIRS)
    v = [None] * TILE
    for k in range(4):
        v[k], v[k + 4] = (combine(u[k], u[k + 4], lanes) for lanes in _HALVES)
    return v


def _is_centre(a):
    """Whether `a` can be a load's centre: a 1-D float64 array, or None for none (each
    compiles apart)."""
    return isinstance(a, types.NoneType) or (
        isinstance(a, types.Array) and a.ndim == 1 and a.dtype == types.float64)


def _less_centre(context, builder, c_ty, c_arg, j, column):
    """column - centre[j] (all lanes), or column as it is when there is no centre."""
    if isinstance(c_ty, types.NoneType):
        return column
    c = context.make_array(c_ty)(context, builder, c_arg)
    c_stride = cgutils.unpack_tuple(builder, c.strides, 1)[0]
    c_ptr = builder.bitcast(builder.gep(builder.bitcast(c.data, BYTE_PTR),
                                        [builder.mul(j, c_stride)]),
                            ir.DoubleType().as_pointer())
    return builder.fsub(column, splat(builder, builder.load(c_ptr), column.type))


def _store_row_vector(builder, base, stride, row, i, vector):
    """vector into base's row `row`, columns i:i+8 (a float64 matrix with row stride
    `stride` bytes)."""
    intp = row.type
    offset = builder.add(builder.mul(row, stride), builder.mul(i, ir.Constant(intp, 8)))
    ptr = builder.bitcast(builder.gep(base, [offset]), VEC.as_pointer())
    builder.store(vector, ptr, align=8)


@intrinsic
def transpose_tile(typingctx, X, r, j0, XT, i, centre):
    """XT[j0 + k, i + u] = X[r + u, j0 + k] - centre[j0 + k] for u, k < 8 (without a centre
    when it is None): X C-contiguous float32 or float64, XT C-contiguous float64. Nothing is
    checked: the caller keeps the tile inside both and the centre."""
    if not (_is_row_major(X, (types.float32, types.float64))
            and _is_row_major(XT, (types.float64,)) and _is_centre(centre)):
        return None
    sig = types.void(X, types.intp, types.intp, XT, types.intp, centre)

    def codegen(context, builder, signature, args):
        x_ty, _, _, xt_ty, _, c_ty = signature.args
        r, j0, i = args[1], args[2], args[4]
        columns = _tile_columns(context, builder, x_ty, args[0], r, j0)
        xt_base, xt_stride = array_bytes(context, builder, xt_ty, args[3])
        for k in range(TILE):
            j = builder.add(j0, ir.Constant(r.type, k))
            _store_row_vector(builder, xt_base, xt_stride, j, i,
                              _less_centre(context, builder, c_ty, args[5], j, columns[k]))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def diag_features_tile(typingctx, X, r, j0, centre, Phi, i):
    """The 'diag' features of the tile X[r:r+8, j0:j0+8], straight from the rows: with
    y = x - centre, Phi[1 + j, i + u] = y_j and Phi[1 + d + j, i + u] = y_j^2 for the
    tile's features j and rows u (d = X.shape[1]): the transposed rows never go through
    memory. X C-contiguous float32 or float64, centre 1-D float64, Phi C-contiguous float64;
    nothing is checked."""
    if not (_is_row_major(X, (types.float32, types.float64))
            and _is_row_major(Phi, (types.float64,))
            and isinstance(centre, types.Array) and centre.ndim == 1
            and centre.dtype == types.float64):
        return None
    sig = types.void(X, types.intp, types.intp, centre, Phi, types.intp)

    def codegen(context, builder, signature, args):
        x_ty, _, _, c_ty, phi_ty, _ = signature.args
        r, j0, i = args[1], args[2], args[5]
        intp = r.type
        columns = _tile_columns(context, builder, x_ty, args[0], r, j0)
        d = cgutils.unpack_tuple(
            builder, context.make_array(x_ty)(context, builder, args[0]).shape, 2)[1]
        c = context.make_array(c_ty)(context, builder, args[3])
        c_stride = cgutils.unpack_tuple(builder, c.strides, 1)[0]
        c_base = builder.bitcast(c.data, BYTE_PTR)
        phi_base, phi_stride = array_bytes(context, builder, phi_ty, args[4])
        for k in range(TILE):
            j = builder.add(j0, ir.Constant(intp, k))
            c_ptr = builder.bitcast(builder.gep(c_base, [builder.mul(j, c_stride)]),
                                    ir.DoubleType().as_pointer())
            y = builder.fsub(columns[k], splat(builder, builder.load(c_ptr)))
            row = builder.add(j, ir.Constant(intp, 1))
            _store_row_vector(builder, phi_base, phi_stride, row, i, y)
            _store_row_vector(builder, phi_base, phi_stride, builder.add(row, d), i,
                              builder.fmul(y, y))
        return context.get_dummy_value()

    return sig, codegen


# Fewer features than a tile: 8 rows are 8 d contiguous entries.
NARROW_MAX = TILE - 1


@intrinsic
def transpose_narrow(typingctx, X, r, XT, i, centre):
    """XT[j, i + u] = X[r + u, j] - centre[j] for u < 8 and every feature j of X (without a
    centre when it is None), which has 1 to NARROW_MAX of them (others: nothing is done). X
    C-contiguous float32 or float64, XT C-contiguous float64; nothing is checked: the caller
    keeps the 8 rows inside both and the centre.

    The 8 rows are one load of 8 d entries, and each feature one shuffle of it (LLVM picks the
    permutes): element by element, with Numba's index arithmetic, the copy took a ninth of a
    pass at d = 2, K = 8.
    """
    if not (_is_row_major(X, (types.float32, types.float64))
            and _is_row_major(XT, (types.float64,)) and _is_centre(centre)):
        return None
    sig = types.void(X, types.intp, XT, types.intp, centre)

    def codegen(context, builder, signature, args):
        x_ty, _, xt_ty, _, c_ty = signature.args
        x_base, x_stride = array_bytes(context, builder, x_ty, args[0])
        xt_base, xt_stride = array_bytes(context, builder, xt_ty, args[2])
        r, i = args[1], args[3]
        intp = r.type
        d = cgutils.unpack_tuple(
            builder, context.make_array(x_ty)(context, builder, args[0]).shape, 2)[1]
        elem = context.get_data_type(x_ty.dtype)
        first = builder.mul(r, x_stride)
        out_col = builder.mul(i, ir.Constant(intp, 8))
        done = builder.append_basic_block("narrow.done")
        switch = builder.switch(d, done)
        for width in range(1, NARROW_MAX + 1):
            case = builder.append_basic_block(f"narrow.d{width}")
            switch.add_case(ir.Constant(intp, width), case)
            builder.position_at_end(case)
            rows = load_vector(builder, x_base, first, ir.VectorType(elem, TILE * width),
                               align=x_ty.dtype.bitwidth // 8)
            undef = ir.Constant(rows.type, ir.Undefined)
            for j in range(width):
                column = builder.shuffle_vector(rows, undef, ir.Constant(
                    ir.VectorType(I32, TILE), [j + width * u for u in range(TILE)]))
                if x_ty.dtype != types.float64:
                    column = builder.fpext(column, VEC)
                column = _less_centre(context, builder, c_ty, args[4], ir.Constant(intp, j),
                                      column)
                offset = builder.add(builder.mul(ir.Constant(intp, j), xt_stride), out_col)
                ptr = builder.bitcast(builder.gep(xt_base, [offset]), VEC.as_pointer())
                builder.store(column, ptr, align=8)
            builder.branch(done)
        builder.position_at_end(done)
        return context.get_dummy_value()

    return sig, codegen


@njit(**JIT)
def load_columns(X, r0, r1, XT, centre):
    """Copy rows r0:r1 of X into float64 XT (d, nb), transposed, less `centre` (d,), or as they
    are if `centre` is None (the k-means kernel's).

    In the 8 x 8 vector tiles of :func:`transpose_tile` (below 8 features, 8 rows at a time
    by :func:`transpose_narrow`), the features past the last whole tile and the rows past the
    last whole tile element by element. One core, ns per row against an element-by-element
    copy: float64 0.67 vs 1.51 at d = 2, 6.8 vs 9.3 at d = 12, 38 vs 156 at d = 64; float32
    5.2 vs 13.2 at d = 16, 35 vs 157 at d = 64. Float64 with 16 to 23 features copied alone
    measured faster row by row (8.4 vs 10.5 ns at d = 16, the copy bound by memory either
    way), but within a pass the tiles' fewer instructions won: the pass took 6.8% less at
    d = 16, K = 16 'diag' (4% 'full'), 11.7% at d = 20, K = 8 'diag'.
    """
    prefer_wide_vectors()
    d = X.shape[1]
    nb = r1 - r0
    i_tiles = nb - nb % 8
    if d <= NARROW_MAX:
        for i0 in range(0, i_tiles, 8):
            transpose_narrow(X, r0 + i0, XT, i0, centre)
    else:
        j_tiles = d - d % 8
        for i0 in range(0, i_tiles, 8):
            for j0 in range(0, j_tiles, 8):
                transpose_tile(X, r0 + i0, j0, XT, i0, centre)
            for i in range(i0, i0 + 8):
                for j in range(j_tiles, d):
                    XT[j, i] = _less(X[r0 + i, j], centre, j)
    for i in range(i_tiles, nb):
        for j in range(d):
            XT[j, i] = _less(X[r0 + i, j], centre, j)


@njit(inline="always", **JIT)
def _less(x, centre, j):
    """x - centre[j] in float64, or x where `centre` is None (a constant: Numba keeps one
    branch)."""
    if centre is None:
        return np.float64(x)
    return np.float64(x) - centre[j]
