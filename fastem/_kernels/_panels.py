"""Matrix products in register panels of explicit 8-lane vectors.

The expanded full-covariance kernel spends its time in two products per block whose shapes
are small in one dimension: (rows, F) by (F, K) for the log-densities and (F, rows) by
(rows, K) for the statistics, with K, the number of components, often 8 or 16. BLAS packs its
operands for every such call and reached a third of its large-matrix rate on them (33 of 83
GFLOP/s per core, OpenBLAS SkylakeX, d = 64, K = 16); Numba's own loops are held to 256-bit
vectors by LLVM's preferred vector width on this machine and reached 37.

:func:`panel_product` (the statistics, added into their slot) and
:func:`log_density_product` (the log-densities, written, with each row's largest) instead keep
a panel of 8 rows by 16 columns of the output in registers, as 16 vectors of 8 float64, and
sweeps the shared dimension once: each step broadcasts 8 entries of A, loads 16 contiguous
entries of B and issues 16 fused multiply-adds. The vectors are written as LLVM vector types,
which the backend lowers to AVX-512 registers where the CPU has them (66 to 77 GFLOP/s per
core on an Intel Emerald Rapids) and to pairs of 256-bit ones on AVX2 CPUs. Those have 16
vector registers, not 32: there the panel's accumulators are swept in groups of 4 rows by one
vector (``_llvm.accumulator_groups``), each group over the whole shared dimension, since with
all 16 in one sweep LLVM spilled them to the stack at every step. On an AMD EPYC (Zen) passes
of the expanded kernel then took 0.62 of the time at (1M, 16, 16) 'full', 0.65 at (250k, 64,
16) 'full' and 0.71 at (1M, 16, 16) 'diag'. Each output entry is a sum over the shared
dimension in index order, whatever the grouping, so the result does not depend on anything
but the operands. The per-component kernel's (d, d) products of 'full' and 'tied' run here
too (``gaussian._logp_dense``).
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
    accumulator_groups,
    array_bytes,
    load_vector,
    splat,
    vector_fma,
)
from ._prefetch import END, NEXT, PER_CALL, prefetch_lines

PANEL_ROWS = 8  # rows of A (and of the output) per panel


def _panel_codegen(n_vectors, add, n_rows, with_max, sweep="plain", limit=None):
    """Code adding (`add`) or writing A[m0:m0+n_rows, :n] @ B'[:n, j0:j0+8*n_vectors] into
    the same panel of `out`; `with_max` also folds the panel's rows below K into a running
    column-wise maximum (see :func:`log_density_product`).

    B' is B itself for the 'plain' sweep. For 'quadratic', n is d and B' is the 'full'
    features (``gaussian_expanded``) of the y in B's rows 1..d: B'[f] = B[f] for f <= d,
    then B[1 + a] * B[1 + b] for a <= b in row order, each product formed in registers as
    its row is needed, so that B' is never stored.

    The accumulators are swept in groups of at most `limit` (``_llvm.accumulator_groups``),
    the same bits whatever the groups."""

    def codegen(context, builder, signature, args):
        a_ty, b_ty, out_ty = signature.args[:3]
        a = context.make_array(a_ty)(context, builder, args[0])
        a_base = builder.bitcast(a.data, BYTE_PTR)
        a_row_stride, a_col_stride = cgutils.unpack_tuple(builder, a.strides, 2)
        b_base, b_row_stride = array_bytes(context, builder, b_ty, args[1])
        out_base, out_row_stride = array_bytes(context, builder, out_ty, args[2])
        m0, j0, n = args[3:6]
        intp = m0.type
        one = ir.Constant(intp, 1)
        col_bytes = builder.mul(j0, ir.Constant(intp, 8))
        fma = vector_fma(builder)
        # Stack slots, promoted to registers by LLVM: n_rows * n_vectors accumulators.
        zero = ir.Constant(VEC, [0.0] * LANES)
        acc = [cgutils.alloca_once_value(builder, zero)
               for _ in range(n_rows * n_vectors)]
        a_rows = [builder.mul(builder.add(m0, ir.Constant(intp, u)), a_row_stride)
                  for u in range(n_rows)]

        # A row's operand is one float64, broadcast; a column's, a vector of LANES of them.
        groups = accumulator_groups(n_rows, n_vectors, column_cost=LANES, limit=limit)

        def b_row(i, vectors):
            """The vectors `vectors` of the panel's row i of B."""
            row = builder.add(builder.mul(i, b_row_stride), col_bytes)
            return {v: load_vector(builder, b_base,
                                   builder.add(row, ir.Constant(intp, 8 * LANES * v)))
                    for v in vectors}

        def step(i, b_vec, rows):
            """The group's accumulators += A[m0 + u, i] * their vector of row i of B'."""
            a_col = builder.mul(i, a_col_stride)
            for u in rows:
                a_ptr = builder.gep(a_base, [builder.add(a_rows[u], a_col)])
                a_val = builder.load(builder.bitcast(a_ptr, F64.as_pointer()), align=8)
                a_vec = splat(builder, a_val)
                for v, b in b_vec.items():
                    slot = acc[u * n_vectors + v]
                    builder.store(builder.call(fma, [a_vec, b, builder.load(slot)]), slot)

        for rows, vectors in groups:
            if sweep == "plain":
                with cgutils.for_range(builder, n) as loop:
                    step(loop.index, b_row(loop.index, vectors), rows)
                continue
            # quadratic: the constant and linear rows as they are, then the products
            with cgutils.for_range(builder, builder.add(n, one)) as loop:
                step(loop.index, b_row(loop.index, vectors), rows)
            f = cgutils.alloca_once_value(builder, builder.add(n, one))
            with cgutils.for_range(builder, n) as outer:
                y_a = b_row(builder.add(outer.index, one), vectors)
                with cgutils.for_range_slice(builder, outer.index, n, one,
                                             inc=True) as (b, _):
                    y_b = b_row(builder.add(b, one), vectors)
                    i = builder.load(f)
                    step(i, {v: builder.fmul(y_a[v], y_b[v]) for v in vectors}, rows)
                    builder.store(builder.add(i, one), f)
        totals = []
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
                totals.append(total)
        if with_max:
            mx = context.make_array(signature.args[6])(context, builder, args[6])
            mx_base = builder.bitcast(mx.data, BYTE_PTR)
            k = args[7]
            first = builder.icmp_signed("==", m0, ir.Constant(intp, 0))
            # A panel wholly past row k folds nothing: its operation per row and vector is
            # skipped (a fifth of the product's time at n = 16 with k = 1, one panel in 8).
            with builder.if_then(builder.icmp_signed("<", m0, k)):
                for v in range(n_vectors):
                    offset = builder.add(col_bytes, ir.Constant(intp, 8 * LANES * v))
                    ptr = builder.bitcast(builder.gep(mx_base, [offset]), VEC.as_pointer())
                    # As `if x > m: m = x` over the components in order, from component 0:
                    # one max instruction each (x86's max keeps its second operand unless
                    # the first is greater, NaN or not).
                    best = builder.select(first, totals[v], builder.load(ptr, align=8))
                    for u in range(n_rows):
                        x = totals[u * n_vectors + v]
                        best = builder.select(builder.fcmp_ordered(">", x, best), x, best)
                    builder.store(best, ptr, align=8)
        return context.get_dummy_value()

    return codegen


def _panel_intrinsic(n_vectors, add, n_rows=PANEL_ROWS, limit=None):
    """An intrinsic adding (`add`) or writing A[m0:m0+n_rows, :n] @ B[:n, j0:j0+8*n_vectors]
    into the same panel of `out`. A may have any strides; B's and out's rows must be
    contiguous. `limit`: as :func:`_panel_codegen`'s (tests)."""

    @intrinsic
    def panel(typingctx, A, B, out, m0, j0, n):
        sig = types.void(A, B, out, types.intp, types.intp, types.intp)
        return sig, _panel_codegen(n_vectors, add, n_rows, False, limit=limit)

    return panel


def _panel_max_intrinsic(n_vectors, sweep="plain", n_rows=PANEL_ROWS, limit=None):
    """:func:`_panel_intrinsic`, writing `n_rows` rows, that also folds them into the
    column-wise maximum mx[j0:j0+8*n_vectors] (started from row 0 when m0 is 0) if m0 < `k`;
    with the 'quadratic' sweep of :func:`_panel_codegen`."""

    @intrinsic
    def panel(typingctx, A, B, out, m0, j0, n, mx, k):
        sig = types.void(A, B, out, types.intp, types.intp, types.intp, mx, types.intp)
        return sig, _panel_codegen(n_vectors, False, n_rows, True, sweep, limit)

    return panel


_add_8x16 = _panel_intrinsic(2, True)
_add_8x8 = _panel_intrinsic(1, True)
_set_max_8x16 = _panel_max_intrinsic(2)
_set_max_8x8 = _panel_max_intrinsic(1)
_quadratic_max_8x16 = _panel_max_intrinsic(2, "quadratic")
_quadratic_max_8x8 = _panel_max_intrinsic(1, "quadratic")
# Rows of the one panel of :func:`few_log_density_product`.
FEW_ROWS = PANEL_ROWS // 2
_set_max_4x16 = _panel_max_intrinsic(2, n_rows=FEW_ROWS)
_set_max_4x8 = _panel_max_intrinsic(1, n_rows=FEW_ROWS)
_add_1x16 = _panel_intrinsic(2, True, 1)
_add_1x8 = _panel_intrinsic(1, True, 1)
# Up to this many rows past the last whole panel are added as single rows (whose steps are
# bound by their loads, 1.5 times a panel's cost per row) rather than in a panel of 8, most of
# it padding.
MAX_SINGLE_ROWS = 4


@njit(**JIT)
def panel_product(A, B, out, m, n, pf):
    """out[:m] += A[:m, :n] @ B[:n], float64 throughout; after each panel, a few lines of the
    rows the prefetch state `pf` is aimed at (``_prefetch``).

    Rows run in panels of 8; up to MAX_SINGLE_ROWS rows past the last whole panel run one at
    a time (the statistics of 'diag' at d = 16, F = 33 features padded to 40, and of 'full'
    at d = 16 and 64 have one such row: 1-2% of a pass). Beyond that the last panel runs over
    A's rows past m, which must then be zero padding, and adds zeros to out's rows there.

    The caller guarantees the shapes, which are not checked here: A is (M, >= n) with M a
    multiple of PANEL_ROWS and any strides; B is (>= n, N) and out is (M, N), both with
    contiguous rows, N a multiple of LANES; m <= M.
    """
    M, N = out.shape
    m_panels = m - m % PANEL_ROWS
    if m - m_panels > MAX_SINGLE_ROWS:
        m_panels = min(M, m_panels + PANEL_ROWS)
    p, end, per_call = pf[NEXT], pf[END], pf[PER_CALL]
    m0 = 0
    while m0 < max(m, m_panels):
        single = m0 >= m_panels
        j0 = 0
        while j0 + 2 * LANES <= N:
            if single:
                _add_1x16(A, B, out, m0, j0, n)
            else:
                _add_8x16(A, B, out, m0, j0, n)
            p = prefetch_lines(p, end, per_call)
            j0 += 2 * LANES
        if j0 < N:
            if single:
                _add_1x8(A, B, out, m0, j0, n)
            else:
                _add_8x8(A, B, out, m0, j0, n)
            p = prefetch_lines(p, end, per_call)
        m0 += 1 if single else PANEL_ROWS
    pf[NEXT] = p


@njit(**JIT)
def log_density_product(A, B, out, n, mx, k, triangles, pf):
    """out = A[:, :n] @ B[:n] (written, all M rows) and mx[j] = the maximum of out[:k, j]:
    the log-densities of a block and each row's largest.

    Rows past k in a panel that starts before k are folded too, unmasked: A's rows there must
    give entries that no row's maximum can be (``fastem._params.PADDED_LOG_DENSITY`` in the
    constant feature B[0] = 1), or the maximum must go unused. Masking them took two more
    operations per row and vector: without, the product is 12% fewer instructions, and passes
    of the expanded kernel took 0.96-0.99 of the time at d = 2, K = 16 and 64, 'full' and
    'diag', and 0.99 at 'diag' d = 16, K = 16.

    With `triangles` > 0, A is lower-triangular (triangles, triangles) matrices stacked
    (``gaussian._precision_rows``, 'tied''s U^T): a panel's steps stop after its last row's
    diagonal, past which A holds only zeros that would add exactly nothing. At d = 16 that
    halves the first panel of every matrix; at d = 64 it skips 44% of the steps. 0: A is
    general.

    Writing `out` spares zeroing it first (3.5% of a pass at 'diag' d = 16, K = 16). The
    maximum is taken from the registers, as ``if x > m: m = x`` over the rows in order from
    row 0, so that a NaN in row 0 stays and a NaN elsewhere is passed over, as in the
    log-sum-exp's own sweep, which it spares (6% of a pass at d = 2, K = 8).

    Shapes as for :func:`panel_product`, with every row of out written; mx is C-contiguous
    with at least N entries, and 1 <= k <= M. Prefetches as :func:`panel_product` does."""
    M, N = out.shape
    p, end, per_call = pf[NEXT], pf[END], pf[PER_CALL]
    for m0 in range(0, M, PANEL_ROWS):
        steps = n if triangles <= 0 else min(n, m0 % triangles + PANEL_ROWS)
        j0 = 0
        while j0 + 2 * LANES <= N:
            _set_max_8x16(A, B, out, m0, j0, steps, mx, k)
            p = prefetch_lines(p, end, per_call)
            j0 += 2 * LANES
        if j0 < N:
            _set_max_8x8(A, B, out, m0, j0, steps, mx, k)
            p = prefetch_lines(p, end, per_call)
    pf[NEXT] = p


@njit(**JIT)
def few_log_density_product(A, B, out, n, mx, k, pf):
    """:func:`log_density_product` (`triangles` 0) for k <= FEW_ROWS: one panel of FEW_ROWS
    rows rather than of 8, half of whose rows would be padding. Writes out's first FEW_ROWS
    rows only, and the maximum of its first k. Each entry is the same sum, in the same order,
    as in a panel of 8, and so is each maximum. Passes of the expanded kernel ('full' with 2
    to 4 components, whole blocks) took 0.82-0.88 of the time at d = 2, 0.92 at d = 5 and
    0.88 at d = 8, K = 4; its cold compile took 0.3-0.6 s longer. Shapes as there, out with
    at least FEW_ROWS rows and A with as many."""
    N = out.shape[1]
    p, end, per_call = pf[NEXT], pf[END], pf[PER_CALL]
    j0 = 0
    while j0 + 2 * LANES <= N:
        _set_max_4x16(A, B, out, 0, j0, n, mx, k)
        p = prefetch_lines(p, end, per_call)
        j0 += 2 * LANES
    if j0 < N:
        _set_max_4x8(A, B, out, 0, j0, n, mx, k)
        p = prefetch_lines(p, end, per_call)
    pf[NEXT] = p


@njit(**JIT)
def quadratic_log_density_product(A, B, out, d, mx, k, pf):
    """:func:`log_density_product` of A and the 'full' features of the rows y of B: out =
    A[:, :F] @ Phi with Phi[f] = B[f] for f <= d (the constant row and y) and then
    Phi[f] = B[1 + a] * B[1 + b] for a <= b, in that order, F = 1 + d + d (d + 1) / 2.

    The same bits as writing Phi out and calling :func:`log_density_product` (the products
    rounded alike, the terms summed in the same order), without Phi's F rows going through
    memory: B's d + 1 rows stay in the core's first cache. Shapes as there, B with at least
    d + 1 rows; prefetches as there."""
    M, N = out.shape
    p, end, per_call = pf[NEXT], pf[END], pf[PER_CALL]
    for m0 in range(0, M, PANEL_ROWS):
        j0 = 0
        while j0 + 2 * LANES <= N:
            _quadratic_max_8x16(A, B, out, m0, j0, d, mx, k)
            p = prefetch_lines(p, end, per_call)
            j0 += 2 * LANES
        if j0 < N:
            _quadratic_max_8x8(A, B, out, m0, j0, d, mx, k)
            p = prefetch_lines(p, end, per_call)
    pf[NEXT] = p


@njit(inline="always", **JIT)
def panel_calls(M, N):
    """How many panels :func:`log_density_product` (and its quadratic form) run for an
    (M, N) output: the calls it makes to ``_prefetch.prefetch_lines``."""
    return (M + PANEL_ROWS - 1) // PANEL_ROWS * ((N + 2 * LANES - 1) // (2 * LANES))


@intrinsic
def scale_rows(typingctx, B, s, out, n):
    """out[i] = s[i] * B[i] for i < n: B and out C-contiguous float64 of the same row length,
    a multiple of LANES, s 1-D with at least n entries; nothing is checked. As a Numba loop
    (a check for overlap before every row of 16) a pass at 'full' d = 64, K = 16 took 3%
    longer."""
    sig = types.void(B, s, out, types.intp)

    def codegen(context, builder, signature, args):
        b_base, b_stride = array_bytes(context, builder, signature.args[0], args[0])
        scale = context.make_array(signature.args[1])(context, builder, args[1])
        out_base, out_stride = array_bytes(context, builder, signature.args[2], args[2])
        n = args[3]
        intp = n.type
        row_length = cgutils.unpack_tuple(builder, context.make_array(signature.args[0])(
            context, builder, args[0]).shape, 2)[1]
        n_vectors = builder.udiv(row_length, ir.Constant(intp, LANES))
        with cgutils.for_range(builder, n) as row:
            factor = splat(builder, builder.load(builder.gep(scale.data, [row.index])))
            b_row = builder.mul(row.index, b_stride)
            out_row = builder.mul(row.index, out_stride)
            with cgutils.for_range(builder, n_vectors) as vector:
                col = builder.mul(vector.index, ir.Constant(intp, 8 * LANES))
                value = builder.fmul(factor,
                                     load_vector(builder, b_base, builder.add(b_row, col)))
                ptr = builder.bitcast(builder.gep(out_base, [builder.add(out_row, col)]),
                                      VEC.as_pointer())
                builder.store(value, ptr, align=8)
        return context.get_dummy_value()

    return sig, codegen
