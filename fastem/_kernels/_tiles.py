"""Sums over a block's rows of products, in 8-lane vectors: A B^T in 4 x 4 register tiles,
single dot products, the per-component kernel's centred moments, and plain sums.

The statistics of a block are sums over its rows, sum_i A[a, i] B[b, i]: the weighted scatter
of each component ('full', 'tied'), the expanded kernel's R Phi^T, and the first and second
moments of the per-component kernel. The shapes are small in one dimension (d or K rows
against nb = 256 columns), where BLAS spends as much time packing its operands as multiplying.

Each running sum here is a vector of 8 lanes, lane l summing the columns i = l mod 8, and the
lanes are added in a fixed tree at the end; a block whose row count is not a multiple of 8
ends with one masked step that reads nothing past its rows. Written as scalar sums, the
kernels' fast-math (which excludes reassociation, see ``_config.FASTMATH``) keeps LLVM from
splitting them into lanes itself, and a sum took one 4-cycle add per column: the tiles of the
expanded kernel's statistics ran at 84 ns a row at 'diag' d = 16, K = 16 against 26 ns here,
and 8.2 against 2.2 ns at d = 2, K = 8. Every sum's order is fixed by the operands' shapes
alone, so results do not depend on how, or in which process, the kernel was compiled. (The
masked last step instead of a scalar loop also took 0.6 s off the per-component kernel's cold
compile, where every helper is optimized again inside each function that calls it.)

A 4 x 4 tile keeps 16 such sums in registers, which AVX-512's 32 vector registers hold. On
AVX2 CPUs, with 16 registers of half the width, the tiles sweep their sums in groups that fit
(``_llvm.accumulator_groups``): each sum still runs over the same columns in the same lanes,
so the bits are those of one sweep. On an AMD EPYC (Zen) passes took 0.75 of the time at
(1M, 16, 16) 'tied' and 0.73 at (1M, 64, 16) 'diag'.
"""

from llvmlite import ir
from numba import njit
from numba.core import cgutils, types
from numba.extending import intrinsic

from ._config import JIT, prefer_wide_vectors
from ._llvm import (ACCUMULATORS, BYTE_PTR, I32, LANES, VEC, accumulator_groups, array_bytes,
                    load_vector, splat, vector_fma)
from ._prefetch import END, NEXT, PER_CALL, prefetch_lines

TILE = 4  # rows of A and of B per tile

# A tile with squares shares each load of B, and its square, between two accumulators of every
# row of A, so it keeps more of them: on an AVX2 CPU (AMD EPYC, Zen) groups of 3 rows of A (6
# accumulators) took 0.95-0.97 of the time of groups of 2 in passes at 'diag' and 'spherical',
# d = 16 and 64, K = 4 and 16, though LLVM spills some of them. On AVX-512 a tile is one group
# either way.
_SQUARES_ACCUMULATORS = ACCUMULATORS * 3 // 2


def _is_row_major(a):
    return (isinstance(a, types.Array) and a.ndim == 2 and a.layout == "C"
            and a.dtype == types.float64)


def _lane_total(builder, vec):
    """The sum of an 8-lane vector's lanes in a fixed tree: halves, quarters, then the pair."""

    def fold(vec, width):  # lanes [0, width) plus lanes [width, 2 width)
        undef = ir.Constant(vec.type, ir.Undefined)
        halves = [builder.shuffle_vector(vec, undef, ir.Constant(
            ir.VectorType(I32, width), list(range(h * width, (h + 1) * width))))
            for h in range(2)]
        return builder.fadd(*halves)

    pair = fold(fold(vec, 4), 2)
    return builder.fadd(builder.extract_element(pair, ir.Constant(I32, 0)),
                        builder.extract_element(pair, ir.Constant(I32, 1)))


def _sweep_columns(builder, n, step):
    """Emit ``step(load)`` for every 8 columns of [0, n), where ``load(base, row)`` is the
    vector of 8 float64 at byte ``row`` of ``base`` plus the step's columns. The last, partial
    step (n not a multiple of 8) loads through a mask: zeros past n, nothing read there."""
    intp = n.type
    n_full = builder.udiv(n, ir.Constant(intp, LANES))

    def loader(offset, mask):
        def load(base, row):
            if mask is None:
                return load_vector(builder, base, builder.add(row, offset))
            ptr = builder.bitcast(builder.gep(base, [builder.add(row, offset)]),
                                  VEC.as_pointer())
            masked_load = cgutils.get_or_insert_function(builder.module, ir.FunctionType(
                VEC, [VEC.as_pointer(), I32, ir.VectorType(ir.IntType(1), LANES), VEC]),
                "llvm.masked.load.v8f64.p0v8f64")
            return builder.call(masked_load, [ptr, ir.Constant(I32, 8), mask,
                                              ir.Constant(VEC, [0.0] * LANES)])
        return load

    with cgutils.for_range(builder, n_full) as loop:
        step(loader(builder.mul(loop.index, ir.Constant(intp, 8 * LANES)), None))
    done = builder.mul(n_full, ir.Constant(intp, LANES))
    with builder.if_then(builder.icmp_unsigned("<", done, n)):
        lanes = ir.Constant(ir.VectorType(intp, LANES), list(range(LANES)))
        remaining = splat(builder, builder.sub(n, done), ir.VectorType(intp, LANES))
        mask = builder.icmp_unsigned("<", lanes, remaining)
        step(loader(builder.mul(done, ir.Constant(intp, 8)), mask))


def _lane_sums_intrinsic(n_a, n_b, squares=False, limit=None):
    """An intrinsic returning the n_a * n_b sums sum_{i < n} A[a0 + u, i] B[b0 + v, i] as a
    tuple in the order (u, v) = (0, 0), (0, 1), ... . A and B are C-contiguous float64 holding
    those rows and at least n columns; nothing is checked. With `squares`, each u's sums with
    the squares of the n_b rows of B follow its n_b sums: n_a * 2 n_b sums.

    The sums are swept in groups of at most `limit` (by default ``ACCUMULATORS``, or
    ``_SQUARES_ACCUMULATORS`` with squares; ``_llvm.accumulator_groups``), the same bits
    whatever the groups."""
    if limit is None:
        limit = _SQUARES_ACCUMULATORS if squares else ACCUMULATORS

    @intrinsic
    def lane_sums(typingctx, A, B, a0, b0, n):
        if not (_is_row_major(A) and _is_row_major(B)):
            return None
        n_cols = 2 * n_b if squares else n_b
        sig = types.UniTuple(types.float64, n_a * n_cols)(A, B, types.intp, types.intp,
                                                           types.intp)

        def codegen(context, builder, signature, args):
            a_base, a_stride = array_bytes(context, builder, signature.args[0], args[0])
            b_base, b_stride = array_bytes(context, builder, signature.args[1], args[1])
            a0, b0, n = args[2:]
            intp = a0.type
            a_rows = [builder.mul(builder.add(a0, ir.Constant(intp, u)), a_stride)
                      for u in range(n_a)]
            b_rows = [builder.mul(builder.add(b0, ir.Constant(intp, v)), b_stride)
                      for v in range(n_b)]
            fma = vector_fma(builder)
            # Stack slots, promoted to registers by LLVM.
            zero = ir.Constant(VEC, [0.0] * LANES)
            acc = [cgutils.alloca_once_value(builder, zero) for _ in range(n_a * n_cols)]

            # With `squares`, B's row v gives two accumulators a row of A: v and n_b + v.
            groups = accumulator_groups(n_a, n_b, limit=max(1, limit // (2 if squares else 1)))

            def sweep(rows, b_rows_of_group):
                def step(load):
                    a_vec = {u: load(a_base, a_rows[u]) for u in rows}
                    for v in b_rows_of_group:
                        b = load(b_base, b_rows[v])
                        columns = [(v, b)]
                        if squares:
                            columns.append((n_b + v, builder.fmul(b, b)))
                        for u in rows:
                            for c, b_vec in columns:
                                slot = acc[u * n_cols + c]
                                builder.store(
                                    builder.call(fma, [a_vec[u], b_vec, builder.load(slot)]),
                                    slot)

                _sweep_columns(builder, n, step)

            for rows, b_rows_of_group in groups:
                sweep(rows, b_rows_of_group)
            sums = [_lane_total(builder, builder.load(slot)) for slot in acc]
            return context.make_tuple(builder, signature.return_type, sums)

        return sig, codegen

    return lane_sums


@intrinsic
def _plain_sum(typingctx, a, n):
    """sum_{i < n} a[i] for a C-contiguous float64 vector with at least n entries; nothing is
    checked."""
    if not (isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C"
            and a.dtype == types.float64):
        return None
    sig = types.float64(a, types.intp)

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        base = builder.bitcast(array.data, BYTE_PTR)
        start = ir.Constant(args[1].type, 0)
        acc = cgutils.alloca_once_value(builder, ir.Constant(VEC, [0.0] * LANES))

        def step(load):
            builder.store(builder.fadd(builder.load(acc), load(base, start)), acc)

        _sweep_columns(builder, args[1], step)
        return _lane_total(builder, builder.load(acc))

    return sig, codegen


@intrinsic
def _row_sums(typingctx, A, a0, n):
    """(sum_{i < n} A[a0 + u, i] for u < 4): one sweep, 4 independent vector sums. A row past
    A's last is its row a0 again, its sum to be discarded. A is C-contiguous float64 with
    a0 < A.shape[0]; nothing else is checked."""
    if not _is_row_major(A):
        return None
    sig = types.UniTuple(types.float64, TILE)(A, types.intp, types.intp)

    def codegen(context, builder, signature, args):
        base, stride = array_bytes(context, builder, signature.args[0], args[0])
        a0, n = args[1], args[2]
        intp = a0.type
        n_rows = cgutils.unpack_tuple(
            builder, context.make_array(signature.args[0])(context, builder, args[0]).shape, 2)[0]
        rows = []
        for u in range(TILE):
            a = builder.add(a0, ir.Constant(intp, u))
            rows.append(builder.mul(
                builder.select(builder.icmp_signed("<", a, n_rows), a, a0), stride))
        zero = ir.Constant(VEC, [0.0] * LANES)
        acc = [cgutils.alloca_once_value(builder, zero) for _ in range(TILE)]

        def step(load):
            for u in range(TILE):
                builder.store(builder.fadd(builder.load(acc[u]), load(base, rows[u])), acc[u])

        _sweep_columns(builder, n, step)
        sums = [_lane_total(builder, builder.load(slot)) for slot in acc]
        return context.make_tuple(builder, signature.return_type, sums)

    return sig, codegen


_tile_sums = _lane_sums_intrinsic(TILE, TILE)
_moment_tile_sums = _lane_sums_intrinsic(TILE, 2, squares=True)
_moment_one_sums = _lane_sums_intrinsic(1, 2, squares=True)
_pair_tile_sums = _lane_sums_intrinsic(2, TILE)
_row_tile_sums = _lane_sums_intrinsic(1, TILE)
_dot_sums = _lane_sums_intrinsic(1, 1)


def _moment_sums_intrinsic(n_rows, limit=None):
    """An intrinsic returning (sum r t_u for u < n_rows, then sum r t_u^2 for u < n_rows) over
    i < n, with t_u = XT[j0 + u, i] - mu[j0 + u] and r = R[k, i]: one sweep over R
    for n_rows features, 2 n_rows independent vector sums (one alone waits on its previous
    add every step: a sweep of one feature takes as long as one of two, whose operations
    fill the step). XT and R are C-contiguous float64, mu contiguous; nothing is checked.
    The features are swept in groups whose sums number at most `limit` (``ACCUMULATORS``),
    the same bits whatever the groups."""
    limit = ACCUMULATORS if limit is None else limit

    @intrinsic
    def moment_sums(typingctx, XT, j0, R, k, mu, n):
        if not (_is_row_major(XT) and _is_row_major(R) and isinstance(mu, types.Array)
                and mu.ndim == 1 and mu.layout == "C" and mu.dtype == types.float64):
            return None
        sig = types.UniTuple(types.float64, 2 * n_rows)(XT, types.intp, R, types.intp, mu,
                                                         types.intp)

        def codegen(context, builder, signature, args):
            x_base, xt_stride = array_bytes(context, builder, signature.args[0], args[0])
            r_base, r_stride = array_bytes(context, builder, signature.args[2], args[2])
            m = context.make_array(signature.args[4])(context, builder, args[4])
            j0, k, n = args[1], args[3], args[5]
            intp = j0.type
            x_rows = [builder.mul(builder.add(j0, ir.Constant(intp, u)), xt_stride)
                      for u in range(n_rows)]
            r_row = builder.mul(k, r_stride)
            mu_vecs = [splat(builder, builder.load(
                builder.gep(m.data, [builder.add(j0, ir.Constant(intp, u))])))
                for u in range(n_rows)]
            fma = vector_fma(builder)
            zero = ir.Constant(VEC, [0.0] * LANES)
            first = [cgutils.alloca_once_value(builder, zero) for _ in range(n_rows)]
            second = [cgutils.alloca_once_value(builder, zero) for _ in range(n_rows)]

            def sweep(features):
                def step(load):
                    # Past n, r and x load as 0: r t = 0 adds nothing to either sum.
                    r_vec = load(r_base, r_row)
                    for u in features:
                        t = builder.fsub(load(x_base, x_rows[u]), mu_vecs[u])
                        rt = builder.fmul(r_vec, t)
                        builder.store(builder.fadd(builder.load(first[u]), rt), first[u])
                        builder.store(builder.call(fma, [rt, t, builder.load(second[u])]),
                                      second[u])

                _sweep_columns(builder, n, step)

            # Two accumulators a feature.
            for features, _ in accumulator_groups(n_rows, 1, limit=max(1, limit // 2)):
                sweep(features)
            sums = [_lane_total(builder, builder.load(slot)) for slot in first + second]
            return context.make_tuple(builder, signature.return_type, sums)

        return sig, codegen

    return moment_sums


_moment_sums_4 = _moment_sums_intrinsic(4)
_moment_sums_2 = _moment_sums_intrinsic(2)
_moment_sums_1 = _moment_sums_intrinsic(1)


@njit(**JIT)
def centred_moments(XT, R, mu, nb, first, second):
    """first[k, j] = sum_{i < nb} r_ki t_kij and second[k, j] = sum_{i < nb} r_ki t_kij^2 for
    every component k and feature j, with t_kij = XT[j, i] - mu[k, j] and r_ki = R[k, i]
    (both with at least nb columns): the components' first and second moments around mu.
    Four features per sweep, and every component's sweep over them before the next four, so
    that their rows are read from L1 (at d = 64 XT is 128 KiB, and a component-first order
    read it from L2, which took twice as long); the last two or three features in a sweep of
    two (then one), which at d = 2, K = 4 took half the time of a sweep per feature."""
    d = XT.shape[0]
    K = mu.shape[0]  # R may have more rows, zero
    j = 0
    while j + 4 <= d:
        for k in range(K):
            _put_moments(_moment_sums_4(XT, j, R, k, mu[k], nb), k, j, first, second)
        j += 4
    if j + 2 <= d:
        for k in range(K):
            _put_moments(_moment_sums_2(XT, j, R, k, mu[k], nb), k, j, first, second)
        j += 2
    if j < d:
        for k in range(K):
            _put_moments(_moment_sums_1(XT, j, R, k, mu[k], nb), k, j, first, second)


@njit(**JIT)
def moments_about_zero(R, Z, nb, first, second, pf):
    """first[k, j] = sum_{i < nb} R[k, i] Z[j, i] and second[k, j] = sum_{i < nb} R[k, i]
    Z[j, i]^2 for k, j inside first's shape (second's is the same): each component's moments
    about zero, for rows Z already less the point they are wanted about. R and Z are
    C-contiguous float64 with at least nb columns, R's rows a multiple of 4 and Z's of 2, zero
    past the real ones.

    In tiles of 4 components by 2 features, the squares made in registers: two multiply-adds
    per row, component and feature, against the four of :func:`centred_moments`, and no
    squares stored (storing them, a block's rows and squares outgrew L1 at d = 16, and the
    products with them took as long as the centred sums). One or two components past the last
    whole tile go in tiles of 1 component by 2 features rather than in a tile padded with
    zero rows of R: with 1 or 5 components, passes of float32 rows took 0.87-0.91 of the time
    at d = 16 and 64 (float64, memory-bound, 0.90-0.99); with 6, 0.97-1.0. Three left stay
    in a padded tile: a tile of 2 and one of 1, each reading Z again, took 1.06. Every sum
    runs over the rows alone in its own vector lanes, so its bits do not depend on the tile
    it is in. After each tile, a few lines of the rows the prefetch state `pf` is aimed at
    (``_prefetch.prefetch_lines``)."""
    prefer_wide_vectors()
    K, d = first.shape
    p, end, per_call = pf[NEXT], pf[END], pf[PER_CALL]
    whole = K - K % TILE if K % TILE < TILE - 1 else K  # 3 left: a padded tile
    for k0 in range(0, whole, TILE):
        for j0 in range(0, d, 2):
            # each component's 4 sums: with its 2 features, then with their squares
            sums = _moment_tile_sums(R, Z, k0, j0, nb)
            p = prefetch_lines(p, end, per_call)
            for u in range(TILE):
                for v in range(2):
                    if k0 + u < K and j0 + v < d:
                        first[k0 + u, j0 + v] = sums[u * 4 + v]
                        second[k0 + u, j0 + v] = sums[u * 4 + 2 + v]
    for k0 in range(whole, K):
        for j0 in range(0, d, 2):
            sums = _moment_one_sums(R, Z, k0, j0, nb)
            p = prefetch_lines(p, end, per_call)
            for v in range(2):
                if j0 + v < d:
                    first[k0, j0 + v] = sums[v]
                    second[k0, j0 + v] = sums[2 + v]
    pf[NEXT] = p


@njit(inline="always", **JIT)
def _put_moments(sums, k, j, first, second):
    """A sweep's sums (first moments of its n features, then second) into component k's
    entries from feature j."""
    n = len(sums) // 2
    for u in range(n):
        first[k, j + u] = sums[u]
        second[k, j + u] = sums[n + u]


@njit(**JIT)
def lane_sum(a, n):
    """sum_{i < n} a[i] for a C-contiguous float64 vector a with at least n entries, in 8 lanes
    (a scalar sum waits 4 cycles on its previous add for every entry: 3% of a pass at d = 2,
    K = 8, for the sum of a block's log-likelihoods)."""
    return _plain_sum(a, n)


@njit(**JIT)
def row_sums(A, nb, out):
    """out[a] = sum_{i < nb} A[a, i] for every a < out.shape[0] (<= A.shape[0]), for a
    C-contiguous float64 A with at least nb columns: four rows per sweep, each the bits of its
    own :func:`lane_sum`. For the components' masses, sums of R's rows: one row per sweep
    (a dot product with ones) took 0.41 ns a row at K = 4 on one core, against 0.24 here."""
    for a in range(0, out.shape[0], TILE):
        s = _row_sums(A, a, nb)
        for u in range(min(TILE, out.shape[0] - a)):
            out[a + u] = s[u]


@njit(**JIT)
def row_dot(A, a, B, b, nb):
    """sum_{i < nb} A[a, i] * B[b, i] for C-contiguous float64 A and B with at least nb
    columns."""
    return _dot_sums(A, B, a, b, nb)[0]


@njit(**JIT)
def tile_products(A, B, nb, out, upper, add):
    """out[a, b] = (or += if `add`) sum_{i < nb} A[a, i] * B[b, i].

    A and B are C-contiguous float64 with a multiple of 4 rows (zero past the real ones) and
    at least nb columns; only entries inside `out`'s shape are written. With `upper`, only the
    tiles on or above the diagonal are computed (a symmetric product: the caller mirrors
    them), half the work of a full product.
    """
    prefer_wide_vectors()
    for a0 in range(0, A.shape[0], TILE):
        for b0 in range(a0 if upper else 0, B.shape[0], TILE):
            _put_tile(_tile_sums(A, B, a0, b0, nb), TILE, a0, b0, out, add)


@njit(**JIT)
def short_tile_products(A, B, nb, out, pf):
    """out[a, b] = sum_{i < nb} A[a, i] * B[b, i] as :func:`tile_products` does, but where out
    ends one or two rows into a group of 4 rows of A, that group in tiles of 1 x 4 or 2 x 4
    (each sum the bits of its 4 x 4 tile's). For the expanded kernel's whole blocks: their
    statistics at d = 2 have 5 ('diag') or 6 ('full') feature rows, whose last tiles were
    three quarters or half padding, and 'tied''s scatter d rows. Passes took 0.94-0.98 of the
    time at d = 2, K = 8 to 64 ('full', 'diag', 'tied') and at d = 5, K = 16 ('full',
    'tied'; 'diag' 1.0), for 0.3-0.5 s more of that kernel's cold compile. A function of its
    own: the short tiles in :func:`tile_products`, which the per-component kernel compiles
    for two sets of flags, cost that kernel 0.6-1 s. After each tile, a few lines of the rows
    the prefetch state `pf` is aimed at (``_prefetch``)."""
    prefer_wide_vectors()
    p, end, per_call = pf[NEXT], pf[END], pf[PER_CALL]
    for a0 in range(0, min(A.shape[0], out.shape[0]), TILE):
        rows = out.shape[0] - a0
        for b0 in range(0, B.shape[0], TILE):
            if rows == 1:
                _put_tile(_row_tile_sums(A, B, a0, b0, nb), 1, a0, b0, out, False)
            elif rows == 2:
                _put_tile(_pair_tile_sums(A, B, a0, b0, nb), 2, a0, b0, out, False)
            else:
                _put_tile(_tile_sums(A, B, a0, b0, nb), TILE, a0, b0, out, False)
            p = prefetch_lines(p, end, per_call)
    pf[NEXT] = p


@njit(inline="always", **JIT)
def _put_tile(tile, n_rows, a0, b0, out, add):
    """A tile's sums of `n_rows` rows of A by TILE of B into out from (a0, b0), inside out's
    shape."""
    for u in range(n_rows):
        for v in range(TILE):
            a, b = a0 + u, b0 + v
            if a < out.shape[0] and b < out.shape[1]:
                if add:
                    out[a, b] += tile[u * TILE + v]
                else:
                    out[a, b] = tile[u * TILE + v]
