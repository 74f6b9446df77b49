"""Matrix products in register panels of explicit 8-lane vectors.

The expanded full-covariance kernel spends its time in two products per block whose shapes
are small in one dimension: (rows, F) by (F, K) for the log-densities and (F, rows) by
(rows, K) for the statistics, with K, the number of components, often 8 or 16. BLAS packs its
operands for every such call and reached a third of its large-matrix rate on them (33 of 83
GFLOP/s per core, OpenBLAS SkylakeX, d = 64, K = 16); Numba's own loops are held to 256-bit
vectors by LLVM's preferred vector width on this machine and reached 37.

:func:`panel_product` instead keeps a panel of 8 rows by 16 columns of the output in
registers, as 16 vectors of 8 float64, and sweeps the shared dimension once: each step
broadcasts 8 entries of A, loads 16 contiguous entries of B and issues 16 fused multiply-adds.
The vectors are written as LLVM vector types, which the backend lowers to AVX-512 registers
where the CPU has them (66 to 77 GFLOP/s per core here) and to pairs of narrower ones
elsewhere. Each output entry is a sum over the shared dimension in index order, so the result
does not depend on anything but the operands.
"""

from llvmlite import ir
from numba import njit
from numba.core import cgutils, types
from numba.extending import intrinsic

from ._config import JIT
from ._llvm import (
    BYTE_PTR,
    F64,
    LANES,
    VEC,
    array_bytes,
    load_vector,
    splat,
    vector_fma,
)

PANEL_ROWS = 8  # rows of A (and of the output) per panel


def _panel_intrinsic(n_vectors, add, n_rows=PANEL_ROWS):
    """An intrinsic adding (`add`) or writing A[m0:m0+n_rows, :n] @ B[:n, j0:j0+8*n_vectors]
    into the same panel of `out`. A may have any strides; B's and out's rows must be
    contiguous."""

    @intrinsic
    def panel(typingctx, A, B, out, m0, j0, n):
        sig = types.void(A, B, out, types.intp, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            a_ty, b_ty, out_ty = signature.args[:3]
            a = context.make_array(a_ty)(context, builder, args[0])
            a_base = builder.bitcast(a.data, BYTE_PTR)
            a_row_stride, a_col_stride = cgutils.unpack_tuple(builder, a.strides, 2)
            b_base, b_row_stride = array_bytes(context, builder, b_ty, args[1])
            out_base, out_row_stride = array_bytes(context, builder, out_ty, args[2])
            m0, j0, n = args[3:]
            intp = m0.type
            col_bytes = builder.mul(j0, ir.Constant(intp, 8))
            fma = vector_fma(builder)
            # Stack slots, promoted to registers by LLVM: n_rows * n_vectors accumulators.
            zero = ir.Constant(VEC, [0.0] * LANES)
            acc = [cgutils.alloca_once_value(builder, zero)
                   for _ in range(n_rows * n_vectors)]
            a_rows = [builder.mul(builder.add(m0, ir.Constant(intp, u)), a_row_stride)
                      for u in range(n_rows)]

            with cgutils.for_range(builder, n) as loop:
                i = loop.index
                b_row = builder.add(builder.mul(i, b_row_stride), col_bytes)
                b_vec = [load_vector(builder, b_base,
                                     builder.add(b_row, ir.Constant(intp, 8 * LANES * v)))
                         for v in range(n_vectors)]
                a_col = builder.mul(i, a_col_stride)
                for u in range(n_rows):
                    a_ptr = builder.gep(a_base, [builder.add(a_rows[u], a_col)])
                    a_val = builder.load(builder.bitcast(a_ptr, F64.as_pointer()), align=8)
                    a_vec = splat(builder, a_val)
                    for v in range(n_vectors):
                        slot = acc[u * n_vectors + v]
                        builder.store(builder.call(fma, [a_vec, b_vec[v], builder.load(slot)]),
                                      slot)
            for u in range(n_rows):
                out_row = builder.add(
                    builder.mul(builder.add(m0, ir.Constant(intp, u)), out_row_stride),
                    col_bytes)
                for v in range(n_vectors):
                    offset = builder.add(out_row, ir.Constant(intp, 8 * LANES * v))
                    ptr = builder.bitcast(builder.gep(out_base, [offset]), VEC.as_pointer())
                    total = builder.load(acc[u * n_vectors + v])
                    if add:
                        total = builder.fadd(builder.load(ptr, align=8), total)
                    builder.store(total, ptr, align=8)
            return context.get_dummy_value()

        return sig, codegen

    return panel


_add_8x16 = _panel_intrinsic(2, True)
_add_8x8 = _panel_intrinsic(1, True)
_set_8x16 = _panel_intrinsic(2, False)
_set_8x8 = _panel_intrinsic(1, False)
_add_1x16 = _panel_intrinsic(2, True, 1)
_add_1x8 = _panel_intrinsic(1, True, 1)
# Up to this many rows past the last whole panel are added as single rows (whose steps are
# bound by their loads, 1.5 times a panel's cost per row) rather than in a panel of 8, most of
# it padding.
MAX_SINGLE_ROWS = 4


@njit(**JIT)
def panel_product(A, B, out, m, n, add):
    """out[:m] (+)= A[:m, :n] @ B[:n]: added into `out` if `add`, else written over it; float64
    throughout. Writing saves zeroing `out` first: 3.5% of a pass at 'diag' d = 16, K = 16,
    where the log-densities are such a product.

    Rows run in panels of 8; when adding, up to MAX_SINGLE_ROWS rows past the last whole panel
    run one at a time (the statistics of 'diag' at d = 16, F = 33 features padded to 40, and
    of 'full' at d = 16 and 64 have one such row: 1-2% of a pass). Otherwise the last panel
    runs over A's rows past m, which must then be zero padding, and rows of `out` past m may
    be written.

    The caller guarantees the shapes, which are not checked here: A is (M, >= n) with M a
    multiple of PANEL_ROWS and any strides; B is (>= n, N) and out is (M, N), both with
    contiguous rows, N a multiple of LANES; m <= M.
    """
    M, N = out.shape
    m_panels = m - m % PANEL_ROWS
    if m > m_panels and (not add or m - m_panels > MAX_SINGLE_ROWS):
        m_panels = min(M, m_panels + PANEL_ROWS)
    m0 = 0
    while m0 < max(m, m_panels):
        single = m0 >= m_panels
        j0 = 0
        while j0 + 2 * LANES <= N:
            if single:
                _add_1x16(A, B, out, m0, j0, n)
            elif add:
                _add_8x16(A, B, out, m0, j0, n)
            else:
                _set_8x16(A, B, out, m0, j0, n)
            j0 += 2 * LANES
        if j0 < N:
            if single:
                _add_1x8(A, B, out, m0, j0, n)
            elif add:
                _add_8x8(A, B, out, m0, j0, n)
            else:
                _set_8x8(A, B, out, m0, j0, n)
        m0 += 1 if single else PANEL_ROWS
