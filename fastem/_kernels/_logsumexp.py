"""A block's responsibilities and log-likelihoods from its log-densities, 8 rows at a time in
registers.

Written as loops over the whole block, one component at a time, the log-sum-exp vectorizes
along the rows, but every component's step then reloads each row's largest log-density and
reloads and stores its running sum, and the final scaling reloads the reciprocal.
:func:`normalize_columns` takes 8 rows (one vector) through all the components instead, their
largest log-density, sum and reciprocal held in registers: 4 memory operations per component
and vector (read the log-density, store the exp, then read, scale and store it) instead of 8.
GROUPS such vectors go side by side, so that the exps and logs of one overlap those of the
others. The exp and log are ``_math``'s scalar functions written as LLVM vector code operation
for operation, and the sums run in the same order as those loops, so the results are the
same bits (``tests/test_logsumexp.py`` keeps the loops as its reference).

Measured against the whole-block loops on an AVX-512 Xeon, a pass of the expanded kernel at
d = 2, K = 8 took 5.8% less ('diag' 4.1%), at d = 16, K = 16 'diag' 1.1% less. With one group
at a time it took 11% more: the exp's chain of 13 dependent multiply-adds, then the log's, then
a division, every 8 rows. With 4 groups, 4.6% less. With half the registers (AVX2), fewer
groups go side by side and their exps are interleaved operation by operation (GROUPS,
EXP_INTERLEAVE). Both kernels run it.

A fit wants the sum of a block's log-likelihoods, not each row's, and a log per row (about 30
vector operations and a division) is as much work as two exps. Without `by_rows`, each lane
keeps the sum of its rows' largest log-densities, of the exponents of their sums s and the
product of the mantissas, and takes one log per block. On an AMD EPYC (Zen, AVX2; 1M rows,
2 threads, paired rounds in one process, ``benchmarks/compare_revisions.py``), passes took
0.89-0.91 of the time at d = 2 with 4 components, 0.94-0.99 with 16 and 64 ('tied', whose
expanded kernel keeps its rows' log-likelihoods for a term of its own, 0.96-1.0), and
0.96-0.99 at d = 16 with 4; cold compile the same (19.9-20.4 s against 19.8-21.0).
"""

import numpy as np
from llvmlite import ir
from numba.core import cgutils, types
from numba.extending import intrinsic

from ._llvm import ACCUMULATORS, F64, I32, VEC, array_bytes, load_vector, splat
from ._math import (exponent_and_mantissa_ir, exps_nonpositive_ir, in_log_domain_ir,
                    log_at_least_one_ir, plus_ln2_multiple_ir)

# A responsibility below e^-575 (1e-250) of its row's largest term is set to 0. The row's
# log-likelihood cannot notice (its sum of terms is at least 1), and a statistic changes by less
# than 1e-250 of a row's weight, far below the 10 eps the M-step adds to every component's mass.
# Left in, such a value times a feature can underflow to a subnormal number, on which every
# floating-point instruction takes a microcode assist of a hundred cycles or more: with exp's
# own underflow (-708) as the only limit, a pass at (1M, 64, 16) 'full' on the benchmarks'
# well-separated mixture took 1.51 s instead of 1.20-1.26.
LOG_RESPONSIBILITY_FLOOR = -575.0

# Groups of 8 rows taken through the components together, and how many of them have their exps
# emitted operation by operation together (``_math.exps_nonpositive_ir``): the chains of
# dependent multiply-adds of the polynomial exp then overlap. With AVX-512's 32 registers, 8
# groups, each exp in turn (measured there). With AVX2's 16 (AMD EPYC, Zen) a group's vector
# is a pair of registers, and 8 groups one exp at a time spilled: with 4 groups and their 4
# exps interleaved, passes over 1M rows took 0.78-0.84 of the time at d = 2 ('full' with 4 to
# 64 components, 'diag', 'tied', 'spherical') and 0.90-0.94 at d = 16 'diag' (2 threads), and
# 0.90-0.95 of the time of 8 groups with exps interleaved in pairs (1 thread).
GROUPS = 8 if ACCUMULATORS >= 16 else 4
EXP_INTERLEAVE = 1 if ACCUMULATORS >= 16 else GROUPS

LANE_INTS = ir.VectorType(ir.IntType(64), 8)  # an int64 per row of a vector


def _is_matrix(a):
    return (isinstance(a, types.Array) and a.ndim == 2 and a.layout == "C"
            and a.dtype == types.float64)


def _is_row(a, dtype=types.float64):
    return (isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C"
            and a.dtype == dtype)


@intrinsic
def normalize_columns(typingctx, logp, R, ll, mx, K, inverses, by_rows, n_valid):
    """For every row i < logp.shape[1] (a multiple of 8): R[k, i] = exp(logp[k, i] - mx[i]) / s
    for k < K (0 below LOG_RESPONSIBILITY_FLOOR), s the sum of those exps, and the row's
    log-likelihood mx[i] + log(s), given the rows' largest log-densities ``mx``
    (``gaussian._largest``, or the product that made them).

    With `by_rows`, ll[i] = that log-likelihood for every row, and the result is False.
    Without, the result is True and ll[0] = their sum over the rows i < `n_valid` (the rest are
    a block's padding), ll not otherwise written: a fit wants only the sum (see the module's
    docstring). The sum is taken lane by lane as sum(mx) + sum(e) ln 2 + log(prod(m)) with
    s = 2^e m, m in [1, 2): one log a lane per block rather than one a row, the product of a
    lane's m below 2^(logp.shape[1] / 8). It is the sum of the log-likelihoods of `by_rows` to
    within rounding (about 1e-16 of it), not their bits. Where it is not finite (a row with
    NaN, or one no component explains), the block is done again by rows, and the result is
    False: the caller then has every row's log-likelihood, to find the rows at fault.

    With a non-empty `inverses`, R keeps the exps unscaled and inverses[i] = 1 / s instead:
    R[k, i] * inverses[i] is then the responsibility above, to the bit, and a caller whose
    statistics are sums of R times features may scale its F features instead of R's K rows.
    R is the same, to the bit, with or without `by_rows`.

    Nothing is checked: logp has at least K rows and fewer than 8192 columns, R at least K rows
    and as many columns, ll and mx (and a non-empty `inverses`) at least logp.shape[1]
    entries.
    """
    if not (_is_matrix(logp) and _is_matrix(R) and _is_row(ll) and _is_row(mx)
            and isinstance(K, types.Integer) and _is_row(inverses)
            and isinstance(by_rows, types.Boolean) and isinstance(n_valid, types.Integer)):
        return None
    sig = types.boolean(logp, R, ll, mx, types.intp, inverses, types.boolean, types.intp)

    def codegen(context, builder, signature, args):
        logp_ty, r_ty, ll_ty, mx_ty = signature.args[:4]
        logp_base, logp_stride = array_bytes(context, builder, logp_ty, args[0])
        r_base, r_stride = array_bytes(context, builder, r_ty, args[1])
        ll_base = builder.bitcast(context.make_array(ll_ty)(context, builder, args[2]).data,
                                  logp_base.type)
        mx_base = builder.bitcast(context.make_array(mx_ty)(context, builder, args[3]).data,
                                  logp_base.type)
        n_components = args[4]
        intp = n_components.type
        inverses_array = context.make_array(signature.args[5])(context, builder, args[5])
        inverses_base = builder.bitcast(inverses_array.data, logp_base.type)
        hand_back = builder.icmp_signed(
            ">", cgutils.unpack_tuple(builder, inverses_array.shape, 1)[0], ir.Constant(intp, 0))
        n_rows = cgutils.unpack_tuple(
            builder, context.make_array(logp_ty)(context, builder, args[0]).shape, 2)[1]
        n_valid = args[7]
        zero = ir.Constant(VEC, [0.0] * 8)
        floor = ir.Constant(VEC, [LOG_RESPONSIBILITY_FLOOR] * 8)
        totals = [cgutils.alloca_once_value(builder, zero) for _ in range(GROUPS)]
        # The block's sum of log-likelihoods, lane by lane: sum of the largest log-densities,
        # sum of the exponents of the sums s and product of their mantissas (in [1, 2))
        block_largest = cgutils.alloca_once(builder, VEC)
        block_exponents = cgutils.alloca_once(builder, LANE_INTS)
        block_mantissas = cgutils.alloca_once(builder, VEC)
        # Whether this pass writes every row's log-likelihood: a pass without, whose sum is
        # not finite, is followed by one with.
        rows_wanted = cgutils.alloca_once_value(
            builder, context.cast(builder, args[6], signature.args[6], types.boolean))

        def vector_ptr(base, offset):
            return builder.bitcast(builder.gep(base, [offset]), VEC.as_pointer())

        def groups(first, count):
            """Rows 8 first .. 8 (first + count): `count` independent groups of 8 rows side
            by side."""
            cols = [builder.mul(builder.add(first, ir.Constant(intp, u)), ir.Constant(intp, 64))
                    for u in range(count)]  # bytes: 8 float64 a group
            largest = [load_vector(builder, mx_base, col) for col in cols]
            for u in range(count):
                builder.store(zero, totals[u])
            with cgutils.for_range(builder, n_components) as component:
                k = component.index
                for u0 in range(0, count, EXP_INTERLEAVE):
                    together = range(u0, min(u0 + EXP_INTERLEAVE, count))
                    ts = [builder.fsub(load_vector(builder, logp_base, builder.add(
                        builder.mul(k, logp_stride), cols[u])), largest[u]) for u in together]
                    exps = exps_nonpositive_ir(builder, ts, EXP_INTERLEAVE)
                    for u, t, e in zip(together, ts, exps):
                        e = builder.select(builder.fcmp_ordered(">=", t, floor), e, zero)
                        builder.store(e, vector_ptr(r_base, builder.add(
                            builder.mul(k, r_stride), cols[u])), align=8)
                        builder.store(builder.fadd(builder.load(totals[u]), e), totals[u])
            sums = [builder.load(totals[u]) for u in range(count)]
            with builder.if_else(by_rows) as (then, otherwise):
                with then:
                    for u, col in enumerate(cols):
                        builder.store(builder.fadd(largest[u], log_at_least_one_ir(builder,
                                                                                   sums[u])),
                                      vector_ptr(ll_base, col), align=8)
                with otherwise:
                    for u in range(count):
                        _add_to_block_sum(builder, sums[u], largest[u], builder.add(
                            first, ir.Constant(intp, u)), n_valid, block_largest,
                            block_exponents, block_mantissas)
            inverses = [builder.fdiv(ir.Constant(VEC, [1.0] * 8), s) for s in sums]
            with builder.if_else(hand_back) as (then, otherwise):
                with then:
                    for u, col in enumerate(cols):
                        builder.store(inverses[u], vector_ptr(inverses_base, col), align=8)
                with otherwise:
                    with cgutils.for_range(builder, n_components) as component:
                        row = builder.mul(component.index, r_stride)
                        for u, col in enumerate(cols):
                            ptr = vector_ptr(r_base, builder.add(row, col))
                            builder.store(builder.fmul(builder.load(ptr, align=8), inverses[u]),
                                          ptr, align=8)

        n_groups = builder.udiv(n_rows, ir.Constant(intp, 8))
        n_sets = builder.udiv(n_groups, ir.Constant(intp, GROUPS))
        one_pass = builder.append_basic_block("normalize_columns.pass")
        passes_done = builder.append_basic_block("normalize_columns.done")
        builder.branch(one_pass)
        builder.position_at_end(one_pass)
        by_rows = builder.load(rows_wanted)  # read by groups()
        builder.store(zero, block_largest)
        builder.store(ir.Constant(LANE_INTS, [0] * 8), block_exponents)
        builder.store(ir.Constant(VEC, [1.0] * 8), block_mantissas)
        with cgutils.for_range(builder, n_sets) as group_set:
            groups(builder.mul(group_set.index, ir.Constant(intp, GROUPS)), GROUPS)
        done = builder.mul(n_sets, ir.Constant(intp, GROUPS))
        with cgutils.for_range(builder, builder.sub(n_groups, done)) as rest:
            groups(builder.add(done, rest.index), 1)
        with builder.if_then(builder.not_(by_rows)):
            total = _block_sum(builder, block_largest, block_exponents, block_mantissas)
            finite = builder.and_(builder.fcmp_ordered("<", total, ir.Constant(F64, np.inf)),
                                  builder.fcmp_ordered(">", total, ir.Constant(F64, -np.inf)))
            with builder.if_else(finite) as (then, otherwise):
                with then:
                    builder.store(total, builder.bitcast(ll_base, F64.as_pointer()))
                with otherwise:
                    builder.store(ir.Constant(ir.IntType(1), 1), rows_wanted)
        again = builder.icmp_unsigned("!=", builder.load(rows_wanted), by_rows)
        builder.cbranch(again, one_pass, passes_done)
        builder.position_at_end(passes_done)
        return builder.not_(builder.load(rows_wanted))

    return sig, codegen


def _add_to_block_sum(builder, s, largest, group, n_valid, block_largest, block_exponents,
                      block_mantissas):
    """Add the log-likelihoods largest + log(s) of the 8 rows of `group` (rows 8 group to
    8 group + 7) that are below `n_valid` to the block's lane sums: `largest` to
    `block_largest` and, with s = 2^e m (m in [1, 2)), e to `block_exponents` and m into the
    product `block_mantissas`. An s that is not finite and at least 1 (a NaN, where a row's
    log-densities are NaN or all -inf) makes its lane's product NaN, as its log would be."""
    first_row = builder.mul(group, ir.Constant(group.type, 8))
    rows = builder.add(splat(builder, first_row, LANE_INTS),
                       ir.Constant(LANE_INTS, list(range(8))))
    counted = builder.icmp_signed("<", rows, splat(builder, n_valid, LANE_INTS))
    exponent, mantissa = exponent_and_mantissa_ir(builder, s)
    mantissa = builder.select(in_log_domain_ir(builder, s), mantissa,
                              ir.Constant(VEC, [float("nan")] * 8))
    builder.store(builder.fadd(builder.load(block_largest), builder.select(
        counted, largest, ir.Constant(VEC, [0.0] * 8))), block_largest)
    builder.store(builder.add(builder.load(block_exponents), builder.select(
        counted, exponent, ir.Constant(LANE_INTS, [0] * 8))), block_exponents)
    builder.store(builder.fmul(builder.load(block_mantissas), builder.select(
        counted, mantissa, ir.Constant(VEC, [1.0] * 8))), block_mantissas)


def _block_sum(builder, block_largest, block_exponents, block_mantissas):
    """The block's sum of log-likelihoods from its lane sums (:func:`_add_to_block_sum`):
    each lane's sum of largest log-densities + its exponents' ln 2 + the log of its product
    of mantissas, then the 8 lanes in order."""
    lanes = plus_ln2_multiple_ir(
        builder, builder.sitofp(builder.load(block_exponents), VEC),
        log_at_least_one_ir(builder, builder.load(block_mantissas)))
    lanes = builder.fadd(builder.load(block_largest), lanes)
    total = builder.extract_element(lanes, ir.Constant(I32, 0))
    for lane in range(1, 8):
        total = builder.fadd(total, builder.extract_element(lanes, ir.Constant(I32, lane)))
    return total


@intrinsic
def column_maxima(typingctx, logp, m, best):
    """For every row i < logp.shape[1] (a multiple of 8): m[i] = the largest of logp[:, i],
    as `if x > m: m = x` over the rows of logp from the first, and, unless `best` is empty,
    best[i] = the row it is in, the first of any ties. A NaN in the first row stays; one
    elsewhere is passed over, as in :func:`normalize_columns`.

    8 columns at a time, their maxima (and rows) held in registers through logp's rows and
    stored once. Written as loops over the block, each row's step stores only where its test
    holds, and LLVM makes those masked stores (vmaskmovpd), a dozen micro-ops each on AMD's
    Zen: a tenth of a pass at d = 2, K = 4 'diag' on an AMD EPYC.

    Nothing is checked: logp has at least one row, m (and a non-empty `best`) at least
    logp.shape[1] entries.
    """
    if not (_is_matrix(logp) and _is_row(m) and _is_row(best, types.int64)):
        return None
    sig = types.void(logp, m, best)

    def codegen(context, builder, signature, args):
        logp_ty, m_ty, best_ty = signature.args
        logp_array = context.make_array(logp_ty)(context, builder, args[0])
        logp_base, logp_stride = array_bytes(context, builder, logp_ty, args[0])
        n_rows, n_columns = cgutils.unpack_tuple(builder, logp_array.shape, 2)
        intp = n_rows.type
        m_base = builder.bitcast(context.make_array(m_ty)(context, builder, args[1]).data,
                                 logp_base.type)
        best_array = context.make_array(best_ty)(context, builder, args[2])
        best_base = builder.bitcast(best_array.data, logp_base.type)
        labels = builder.icmp_signed(
            ">", cgutils.unpack_tuple(builder, best_array.shape, 1)[0], ir.Constant(intp, 0))

        def sweep(with_rows):
            with cgutils.for_range(builder, builder.udiv(n_columns, ir.Constant(intp, 8))) as v:
                col = builder.mul(v.index, ir.Constant(intp, 64))  # bytes: 8 float64
                largest = cgutils.alloca_once_value(builder, load_vector(builder, logp_base, col))
                where = cgutils.alloca_once_value(builder, ir.Constant(LANE_INTS, [0] * 8))
                with cgutils.for_range_slice(builder, ir.Constant(intp, 1), n_rows,
                                              ir.Constant(intp, 1)) as (k, _):
                    x = load_vector(builder, logp_base, builder.add(builder.mul(k, logp_stride),
                                                                    col))
                    so_far = builder.load(largest)
                    larger = builder.fcmp_ordered(">", x, so_far)
                    builder.store(builder.select(larger, x, so_far), largest)
                    if with_rows:
                        k_vector = splat(builder, k, LANE_INTS)  # intp: 64 bits
                        builder.store(builder.select(larger, k_vector, builder.load(where)),
                                      where)
                builder.store(builder.load(largest), builder.bitcast(
                    builder.gep(m_base, [col]), VEC.as_pointer()), align=8)
                if with_rows:
                    builder.store(builder.load(where), builder.bitcast(
                        builder.gep(best_base, [col]), LANE_INTS.as_pointer()), align=8)

        with builder.if_else(labels) as (then, otherwise):
            with then:
                sweep(True)
            with otherwise:
                sweep(False)
        return context.get_dummy_value()

    return sig, codegen
