"""Elementary functions the kernels need faster than libm gives them.

llvmlite is built without a vector math library, so ``np.exp`` or ``np.log`` in a loop is a
scalar call per element. In the E-step that is one exp per row and component (the most
expensive operation when there are few features) and one log per row (a quarter of the
log-sum-exp's time at d = 2, K = 8). These are plain arithmetic that LLVM vectorizes, valid
on the ranges the log-sum-exp feeds them, each in two forms: a scalar function, and the same
operations as LLVM vector code for the log-sum-exp's registers. On AVX-512 CPUs the vector exp
also uses two of their instructions, and its scalar form the same steps.
"""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._config import CACHE, FASTMATH
from ._llvm import target_has


@intrinsic
def _bits_as_float64(typingctx, bits):
    """Reinterpret the bits of an int64 as a float64."""
    if bits != types.int64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


@intrinsic
def _float64_bits(typingctx, value):
    """Reinterpret the bits of a float64 as an int64."""
    if value != types.float64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(types.float64), codegen


@intrinsic
def fused_multiply_add(typingctx, a, b, c):
    """a * b + c with one rounding, for float64 (LLVM's fma, which its vectorizer widens).

    For a sum whose bits must not depend on the compiler: contraction alone may fuse either
    product of (a * b) + (c * d).
    """
    if not (a == types.float64 and b == types.float64 and c == types.float64):
        return None

    def codegen(context, builder, signature, args):
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.DoubleType(), [ir.DoubleType()] * 3),
            "llvm.fma.f64")
        return builder.call(fma, args)

    return types.float64(types.float64, types.float64, types.float64), codegen


# Two exps, the same function to within 1 ulp; which one the kernels run depends on the CPU
# (EXP_BY_TABLE). Both write exp(x) = 2^m exp(r) for a power of two 2^m and a small r, r exact
# thanks to a step of ln 2 in two parts (n * hi exact), and take exp(r) from a polynomial.
#
# Without AVX-512: m = n = round(x / ln 2), |r| <= ln(2)/2, and a polynomial of degree 11: the
# one interpolating exp at the 12 Chebyshev nodes of that interval, solved in 50-digit
# arithmetic (mpmath) and rounded to float64, coefficients from r^11 down to r^0. Its error,
# 4e-18, is far below the float64 arithmetic's 1e-16; a Taylor polynomial needs degree 13, two
# more multiply-adds per exp (2% of a pass at d = 2, K = 8). c_0 = c_1 = 1 exactly, so
# exp(0) = 1.
_EXP_COEFFICIENTS = (
    2.5110037605963777e-08,
    2.763263963904103e-07,
    2.755724091857897e-06,
    2.4801485482328494e-05,
    0.00019841269890047113,
    0.0013888888952314775,
    0.008333333333319601,
    0.0416666666664881,
    0.1666666666666668,
    0.5000000000000019,
    1.0,
    1.0,
)
_EXP_LEADING, _EXP_REST = _EXP_COEFFICIENTS[0], _EXP_COEFFICIENTS[1:]
_LOG2E = 1.4426950408889634
_LN2_HI = 0.6931471803691238  # ln 2 split in two so that n * _LN2_HI is exact
_LN2_LO = 1.9082149292705877e-10
# exp's argument is clamped here, where n = round(x / ln 2) = -1023: the scale 2^n then has
# all-zero bits, +0.0, so the result is exactly 0 without a comparison per element.
_EXP_FLOOR = -709.0
# x / ln 2 + _ROUNDING, rounded to float64 once (a multiply-add), is the integer n nearest to
# x / ln 2 plus this: at 1.5 * 2^52 the spacing of float64 is 1. Its low bits then hold
# n + 1023, the biased exponent of 2^n, ready to be shifted into place. Against floor(x / ln 2
# + 0.5) and a conversion to an integer, an exp took 0.39 ns instead of 0.44 on one core.
_ROUNDING = 1.5 * 2.0**52 + 1023.0

# With AVX-512: steps of ln(2)/16, n = round(16 x / ln 2), exp(x) = 2^(n // 16) 2^(j/16) exp(r)
# with j = n mod 16 and |r| <= ln(2)/32. The 16 values 2^(j/16) fit two vector registers, from
# which one instruction (vpermi2pd) picks each lane's by the low 4 bits of n in the rounded
# float, and another (vscalefpd) multiplies by 2^floor(n / 16). On that interval exp(r) =
# 1 + r q(r) with q of degree 5, which interpolates (e^r - 1) / r at the 6 Chebyshev nodes of
# [-1.0001 ln(2)/32, 1.0001 ln(2)/32] (60-digit mpmath, rounded): error 1.4e-17. The result is
# the multiply-add 2^(j/16) (r q) + 2^(j/16), one rounding, scaled. That is 17 vector
# operations an element of the log-sum-exp instead of 20: on one core, over a block of 256 rows,
# it took 0.90 of the time with K = 4 and 0.81 with K = 64. Still within 1 ulp, though 20% of
# the results are not the nearest float64, against 10%.
_EXP_TABLE = tuple(2.0 ** (j / 16) for j in range(16))  # each the nearest float64 (mpmath)
_EXP_Q = (  # r^5 down to r^0
    0.001388906347556763,
    0.008333473002881155,
    0.04166666666359425,
    0.16666666664208724,
    0.5000000000000001,
    1.0000000000000007,
)
_EXP_Q_LEADING, _EXP_Q_REST = _EXP_Q[0], _EXP_Q[1:]
_SIXTEENTHS_PER_LN2 = 23.083120654223414  # 16 / ln 2
_LN2_16_HI = 0.04332169878489367  # ln(2)/16 in 38 bits: n * hi exact for |n| < 2^15
_LN2_16_LO = 1.0291218489310676e-13
_TABLE_ROUNDING = 1.5 * 2.0**52  # as _ROUNDING: n in the low bits, here without a bias
_TABLE_ROUNDING_BITS = 0x4338000000000000  # _TABLE_ROUNDING's bits

EXP_BY_TABLE = target_has("avx512f")


@njit(cache=CACHE, fastmath=FASTMATH, inline="always")
def _exp_by_polynomial(x):
    xc = max(x, _EXP_FLOOR)
    shifted = xc * _LOG2E + _ROUNDING  # n + 1023 in its low bits (see _ROUNDING)
    n = shifted - _ROUNDING
    r = (xc - n * _LN2_HI) - n * _LN2_LO
    p = _EXP_LEADING  # Horner from the leading coefficient: 0 * r + c is one more multiply-add
    for c in _EXP_REST:
        p = p * r + c
    return p * _bits_as_float64(_float64_bits(shifted) << 52)


@njit(cache=CACHE, fastmath=FASTMATH, inline="always")
def _exp_by_table(x):
    xc = max(x, _EXP_FLOOR)  # n // 16 = -1023 there: the scale below is +0.0
    shifted = fused_multiply_add(xc, _SIXTEENTHS_PER_LN2, _TABLE_ROUNDING)
    n = shifted - _TABLE_ROUNDING
    r = fused_multiply_add(n, -_LN2_16_HI, xc)
    r = fused_multiply_add(n, -_LN2_16_LO, r)
    q = _EXP_Q_LEADING
    for c in _EXP_Q_REST:
        q = fused_multiply_add(q, r, c)
    # shifted's bits are _TABLE_ROUNDING's plus n: j and n // 16 come from them, not from a
    # conversion of n, which would be undefined for a NaN.
    bits = _float64_bits(shifted)
    step = _EXP_TABLE[bits & 15]
    m = (bits - _TABLE_ROUNDING_BITS) >> 4  # floor(n / 16)
    return fused_multiply_add(step, q * r, step) * _bits_as_float64((m + 1023) << 52)


@njit(cache=CACHE, fastmath=FASTMATH, inline="always")
def exp_nonpositive(x):
    """exp(x) for x <= 0, within 1 ulp (measured) down to -708; exactly 0 below -708.75 (and
    for -inf), NaN for NaN: the scalar form of the kernels' exp (:func:`exps_nonpositive_ir`),
    bit for bit.

    The two-part step of ln 2 needs the kernels' fast-math to exclude reassociation, which
    would fold its parts back together (about |n| / 5 ulp) and the rounding constant out of n.
    Below -708.4 the true value is subnormal; as a responsibility it is 0 to double precision
    anyway.
    """
    if EXP_BY_TABLE:
        return _exp_by_table(x)
    return _exp_by_polynomial(x)


# 1/(2j + 1) for j = 9 .. 0: log(m) = 2 atanh(z) = 2 (z + z^3/3 + z^5/5 + ...), z = (m-1)/(m+1).
_INV_ODD = tuple(1.0 / (2 * j + 1) for j in range(9, -1, -1))
_INV_ODD_LEADING, _INV_ODD_REST = _INV_ODD[0], _INV_ODD[1:]
_SQRT2 = 1.4142135623730951
_MANTISSA = (1 << 52) - 1
_EXPONENT_ONE = 1023 << 52


@njit(cache=CACHE, fastmath=FASTMATH, inline="always")
def log_at_least_one(x):
    """log(x) for finite x >= 1 (a sum of exps whose largest term is 1), within 1 ulp (measured);
    NaN for anything else (a NaN stays NaN).

    x = 2^e m with m in [sqrt(1/2), sqrt(2)); log m = 2 atanh(z) with |z| <= 0.172, where
    ten terms of the series reach 2e-17.
    """
    bits = _float64_bits(x)
    e = (bits >> 52) - 1023
    m = _bits_as_float64((bits & _MANTISSA) | _EXPONENT_ONE)  # in [1, 2)
    if m > _SQRT2:
        m *= 0.5
        e += 1
    z = (m - 1.0) / (m + 1.0)
    z2 = z * z
    p = _INV_ODD_LEADING
    for c in _INV_ODD_REST:
        p = p * z2 + c
    log_m = 2.0 * z * p
    result = e * _LN2_HI + (log_m + e * _LN2_LO)
    return result if x >= 1.0 and x < np.inf else np.nan


# ---------------------------------------------------------------- the same, as LLVM vector code
# For intrinsics that keep a log-sum-exp's running values in registers (``_logsumexp.py``):
# exp_nonpositive and log_at_least_one operation for operation, each multiply-add fused where
# LLVM fuses the compiled functions' (their fast-math allows contraction), so that both give
# the same bits.


def _vector_fma(builder, vector_type):
    return cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(vector_type, [vector_type] * 3),
        f"llvm.fma.v{vector_type.count}f64")


def _splat_constant(vector_type, value):
    return ir.Constant(vector_type, [value] * vector_type.count)


def exps_nonpositive_ir(builder, xs, interleave):
    """:func:`exp_nonpositive` of each lane of each float64 vector of the list `xs`, for lanes
    that are at least -708 (others: any value; the caller selects them away).

    The polynomial exp is emitted `interleave` vectors at a time, operation by operation (each
    operation for all of them before the next), so that their chains of dependent multiply-adds
    overlap in the CPU (``_logsumexp``). Each lane's operations are the same whatever the
    interleave: so are its bits. The table exp (AVX-512, 32 registers) is emitted one vector at
    a time, as it was measured."""
    if EXP_BY_TABLE and xs[0].type.count == 8:
        return [_exp_by_table_ir(builder, x) for x in xs]
    out = []
    for first in range(0, len(xs), interleave):
        out += _exps_by_polynomial_ir(builder, xs[first : first + interleave])
    return out


def _reduced_ir(builder, xs, steps_per_ln2, rounding, step_hi, step_lo, coefficients):
    """For each vector x of `xs`: (x / step rounded to n plus `rounding`, n, r = x - n step,
    the polynomial of `coefficients` (leading first) at r), as the scalar exps compute them,
    each operation for every x before the next."""
    vt = xs[0].type
    fma = _vector_fma(builder, vt)
    rounding = _splat_constant(vt, rounding)
    shifted = [builder.call(fma, [x, _splat_constant(vt, steps_per_ln2), rounding]) for x in xs]
    n = [builder.fsub(s, rounding) for s in shifted]
    r = [builder.call(fma, [m, _splat_constant(vt, -step_hi), x]) for m, x in zip(n, xs)]
    r = [builder.call(fma, [m, _splat_constant(vt, -step_lo), q]) for m, q in zip(n, r)]
    p = [_splat_constant(vt, coefficients[0])] * len(xs)
    for c in coefficients[1:]:
        p = [builder.call(fma, [a, b, _splat_constant(vt, c)]) for a, b in zip(p, r)]
    return shifted, n, r, p


def _exp_by_polynomial_ir(builder, x):
    return _exps_by_polynomial_ir(builder, [x])[0]


def _exps_by_polynomial_ir(builder, xs):
    vt = xs[0].type
    it = ir.VectorType(ir.IntType(64), vt.count)
    shifted, _, _, p = _reduced_ir(builder, xs, _LOG2E, _ROUNDING, _LN2_HI, _LN2_LO,
                                   _EXP_COEFFICIENTS)
    bits = [builder.shl(builder.bitcast(s, it), _splat_constant(it, 52)) for s in shifted]
    return [builder.fmul(q, builder.bitcast(b, vt)) for q, b in zip(p, bits)]


def _exp_by_table_ir(builder, x):
    """For 8-lane vectors on AVX-512 CPUs."""
    vt = x.type
    it = ir.VectorType(ir.IntType(64), vt.count)
    fma = _vector_fma(builder, vt)
    (shifted,), (n,), (r,), (q,) = _reduced_ir(builder, [x], _SIXTEENTHS_PER_LN2,
                                               _TABLE_ROUNDING, _LN2_16_HI, _LN2_16_LO, _EXP_Q)
    pick = cgutils.get_or_insert_function(  # lane i: table[index[i] mod 16]
        builder.module, ir.FunctionType(vt, [vt, it, vt]), "llvm.x86.avx512.vpermi2var.pd.512")
    step = builder.call(pick, [ir.Constant(vt, _EXP_TABLE[:8]), builder.bitcast(shifted, it),
                               ir.Constant(vt, _EXP_TABLE[8:])])
    scaled = builder.call(fma, [step, builder.fmul(q, r), step])
    scale = cgutils.get_or_insert_function(  # a * 2^floor(b), lanes under an all-ones mask
        builder.module, ir.FunctionType(vt, [vt, vt, vt, ir.IntType(8), ir.IntType(32)]),
        "llvm.x86.avx512.mask.scalef.pd.512")
    return builder.call(scale, [scaled, builder.fmul(n, _splat_constant(vt, 1.0 / 16)),
                                ir.Constant(vt, ir.Undefined), ir.Constant(ir.IntType(8), 255),
                                ir.Constant(ir.IntType(32), 4)])  # 4: the current rounding


def log_at_least_one_ir(builder, x):
    """:func:`log_at_least_one` of each lane of the float64 vector x (NaN where it is not
    finite and at least 1)."""
    vt = x.type
    it = ir.VectorType(ir.IntType(64), vt.count)
    fma = _vector_fma(builder, vt)
    e, m = exponent_and_mantissa_ir(builder, x)
    high = builder.fcmp_ordered(">", m, _splat_constant(vt, _SQRT2))
    m = builder.select(high, builder.fmul(m, _splat_constant(vt, 0.5)), m)
    e = builder.select(high, builder.add(e, _splat_constant(it, 1)), e)
    one = _splat_constant(vt, 1.0)
    z = builder.fdiv(builder.fsub(m, one), builder.fadd(m, one))
    z2 = builder.fmul(z, z)
    p = _splat_constant(vt, _INV_ODD_LEADING)
    for c in _INV_ODD_REST:
        p = builder.call(fma, [p, z2, _splat_constant(vt, c)])
    log_m = builder.fmul(builder.fmul(_splat_constant(vt, 2.0), z), p)
    result = plus_ln2_multiple_ir(builder, builder.sitofp(e, vt), log_m)
    return builder.select(in_log_domain_ir(builder, x), result, _splat_constant(vt, np.nan))


def in_log_domain_ir(builder, x):
    """Whether each lane of the float64 vector x is finite and at least 1, the values
    :func:`log_at_least_one` takes (an i1 vector)."""
    vt = x.type
    return builder.and_(builder.fcmp_ordered(">=", x, _splat_constant(vt, 1.0)),
                        builder.fcmp_ordered("<", x, _splat_constant(vt, np.inf)))


def exponent_and_mantissa_ir(builder, x):
    """(e, m) with x = 2^e m, m in [1, 2), for each lane of the float64 vector x (finite, at
    least 1; other lanes get values that mean nothing): e an int64 vector, m float64."""
    it = ir.VectorType(ir.IntType(64), x.type.count)
    bits = builder.bitcast(x, it)
    e = builder.sub(builder.ashr(bits, _splat_constant(it, 52)), _splat_constant(it, 1023))
    m = builder.bitcast(builder.or_(builder.and_(bits, _splat_constant(it, _MANTISSA)),
                                    _splat_constant(it, _EXPONENT_ONE)), x.type)
    return e, m


def plus_ln2_multiple_ir(builder, e, x):
    """e ln 2 + x for each lane of the float64 vectors e (whole numbers) and x, with ln 2 in
    two parts, as :func:`log_at_least_one` adds its exponent's."""
    vt = x.type
    fma = _vector_fma(builder, vt)
    inner = builder.call(fma, [e, _splat_constant(vt, _LN2_LO), x])
    return builder.call(fma, [e, _splat_constant(vt, _LN2_HI), inner])
