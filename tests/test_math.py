"""fastem's vectorizable exp and log against NumPy's, over the ranges the log-sum-exp uses."""

import numpy as np
import pytest
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from fastem._kernels._config import FASTMATH
from fastem._kernels._llvm import VEC, target_has
from fastem._kernels._math import (
    EXP_BY_TABLE,
    _exp_by_polynomial,
    _exp_by_polynomial_ir,
    _exp_by_table,
    _exp_by_table_ir,
    exp_nonpositive,
    exps_nonpositive_ir,
    log_at_least_one,
)

# Both exps, whichever this CPU's kernels run (EXP_BY_TABLE): the table's vector form needs
# AVX-512, its scalar form does not.
EXPS = {"polynomial": (_exp_by_polynomial, _exp_by_polynomial_ir),
        "table": (_exp_by_table, _exp_by_table_ir)}


@njit(fastmath=FASTMATH, error_model="numpy")
def _apply(function, x):
    """One of the scalar functions over x in a loop, as the kernels compile them."""
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = function(x[i])
    return out


def _vector_exp(exp_ir):
    """A compiled function applying `exp_ir` to x (a multiple of 8 long), one 8-lane vector
    at a time."""
    return _vectors_applied(lambda builder, values: [exp_ir(builder, v) for v in values], 1)


def _vectors_applied(exps_ir, count):
    """A compiled function applying `exps_ir` (a list of 8-lane vectors to as many) to x, a
    multiple of 8 `count` long, `count` vectors at a time."""

    @intrinsic
    def apply_ir(typingctx, x, out):
        def codegen(context, builder, signature, args):
            arrays = [context.make_array(ty)(context, builder, a)
                      for ty, a in zip(signature.args, args)]
            n = cgutils.unpack_tuple(builder, arrays[0].shape, 1)[0]
            x_ptr, out_ptr = (builder.bitcast(a.data, VEC.as_pointer()) for a in arrays)
            steps = builder.udiv(n, ir.Constant(n.type, 8 * count))
            with cgutils.for_range(builder, steps) as loop:
                first = builder.mul(loop.index, ir.Constant(n.type, count))
                where = [builder.add(first, ir.Constant(n.type, u)) for u in range(count)]
                values = [builder.load(builder.gep(x_ptr, [w]), align=8) for w in where]
                for w, e in zip(where, exps_ir(builder, values)):
                    builder.store(e, builder.gep(out_ptr, [w]), align=8)
            return context.get_dummy_value()

        return types.void(x, out), codegen

    @njit
    def apply(x):
        out = np.empty_like(x)
        apply_ir(x, out)
        return out

    return apply


def _apply_exp(x):
    return _apply(exp_nonpositive, x)


def _apply_log(x):
    return _apply(log_at_least_one, x)


def ulps(actual, desired):
    return np.abs(actual - desired) / np.spacing(np.abs(desired))


def test_exp_accuracy_down_to_underflow():
    """Within 2 ulp (1 measured) down to underflow: the kernels' fast-math flags keep the
    two-part range reduction exact."""
    rng = np.random.default_rng(0)
    x = np.r_[0.0, -np.logspace(-12, np.log10(700.0), 20_000), -rng.uniform(0, 40, 20_000),
              -0.5 * np.log(2), 0.5 * np.log(2) - 1.0]
    error = ulps(_apply_exp(x), np.exp(x))
    assert error.max() <= 2
    assert _apply_exp(np.array([0.0]))[0] == 1.0  # the row's largest term is exactly 1


@pytest.mark.parametrize("variant", sorted(EXPS))
def test_each_exp_within_1_ulp(variant):
    """Both exps, whichever the kernels run here: within 1 ulp measured (the kernels' exp,
    above, is one of them), exactly 1 at 0, 0 below -708.75, NaN for NaN."""
    rng = np.random.default_rng(2)
    x = np.r_[0.0, -np.logspace(-12, np.log10(708.0), 100_000), -rng.uniform(0, 40, 100_000),
              -np.log(2) * np.arange(1, 33) / 32]
    exp = _apply(EXPS[variant][0], x)
    assert ulps(exp, np.exp(x)).max() <= 1
    assert exp[0] == 1.0
    below = _apply(EXPS[variant][0], np.array([-708.75, -709.0, -1e300, -np.inf]))
    assert np.all(below == 0.0)
    assert np.isnan(_apply(EXPS[variant][0], np.array([np.nan]))[0])


@pytest.mark.parametrize("variant", sorted(EXPS))
def test_vector_exp_is_its_scalar_form_to_the_bit(variant):
    """The log-sum-exp's vector exp against the scalar function the reference loops use, over
    the range it serves (down to the responsibility floor and past it)."""
    if variant == "table" and not target_has("avx512f"):
        pytest.skip("the table exp's vector form needs AVX-512")
    scalar, vector_ir = EXPS[variant]
    rng = np.random.default_rng(3)
    x = np.r_[0.0, -np.logspace(-14, np.log10(700.0), 40_000), -rng.uniform(0, 1, 40_000),
              -rng.uniform(0, 600, 40_000), -np.log(2) * np.arange(1, 1601) / 32]
    x = x[: x.size // 8 * 8]
    np.testing.assert_array_equal(_vector_exp(vector_ir)(x), _apply(scalar, x))


@pytest.mark.parametrize("count, interleave", [(1, 1), (2, 2), (3, 2), (4, 4), (5, 3)])
def test_interleaved_exps_are_each_the_scalar_exp_to_the_bit(count, interleave):
    """The log-sum-exp emits several vectors' exps operation by operation together
    (``_logsumexp.EXP_INTERLEAVE``); whatever the vectors and the interleave, each lane must be
    the kernels' scalar exp, bit for bit, and no lane may take another's value."""
    rng = np.random.default_rng(4)
    x = np.r_[0.0, -np.logspace(-14, np.log10(700.0), 4_000), -rng.uniform(0, 600, 4_000)]
    x = rng.permutation(x)[: x.size // (8 * count) * (8 * count)]
    interleaved = _vectors_applied(
        lambda builder, values: exps_nonpositive_ir(builder, values, interleave), count)
    np.testing.assert_array_equal(interleaved(x), _apply_exp(x))


def test_kernels_exp_is_the_table_where_the_cpu_has_avx512():
    x = -np.linspace(0.0, 700.0, 4001)
    table, polynomial = _apply(_exp_by_table, x), _apply(_exp_by_polynomial, x)
    np.testing.assert_array_equal(_apply_exp(x), table if EXP_BY_TABLE else polynomial)
    assert (table != polynomial).any()  # two different functions, within 1 ulp of each other


def test_exp_is_zero_below_minus_708_75_and_for_minus_inf():
    assert np.all(_apply_exp(np.array([-708.75, -709.0, -745.2, -1e300, -np.inf])) == 0.0)
    # Between -708.75 and -708, where exp underflows, it is tiny and not negative.
    tail = _apply_exp(np.linspace(-708.74, -708.0, 1000))
    assert np.all((tail >= 0.0) & (tail <= 2 * np.exp(-708.0)))


def test_log_within_a_few_ulp_from_one_to_many_components():
    rng = np.random.default_rng(1)
    x = np.r_[1.0, np.nextafter(1.0, 2.0), 1.0 + rng.random(20_000) * 1023.0, np.sqrt(2.0),
              np.nextafter(np.sqrt(2.0), 0.0), 2.0, 3.0, 1e300]
    actual, desired = _apply_log(x), np.log(x)
    assert ulps(actual[1:], desired[1:]).max() <= 2
    assert actual[0] == 0.0
    assert np.abs(actual - desired).max() <= 2 * np.spacing(np.log(1024.0))


@pytest.mark.parametrize("value", [np.nan, np.inf, 0.5, 0.0, -1.0])
def test_log_outside_its_range_is_nan(value):
    assert np.isnan(_apply_log(np.array([value]))[0])
