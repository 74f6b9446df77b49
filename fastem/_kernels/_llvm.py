"""LLVM building blocks shared by the kernels' intrinsics: the register panels (``_panels.py``),
the lane sums (``_tiles.py``) and the tiled transpose (``_transpose.py``).

Those are written as LLVM vector code because the kernels' fast-math excludes reassociation
and LLVM's own tuning keeps its vectorizer to 256 bits here; what they share is how to reach a
Numba array's bytes, how to build 8-lane float64 vectors, and which instructions the target
CPU has (the exp of ``_math.py`` picks by it).
"""

from llvmlite import ir
from numba.core import cgutils, config
from numba.core.codegen import get_host_cpu_features

LANES = 8  # float64 per vector
F64 = ir.DoubleType()
I32 = ir.IntType(32)
VEC = ir.VectorType(F64, LANES)
BYTE_PTR = ir.IntType(8).as_pointer()


def array_bytes(context, builder, ty, value):
    """(pointer to the first byte, bytes from one row to the next) of a 2-D array argument."""
    array = context.make_array(ty)(context, builder, value)
    row_stride = cgutils.unpack_tuple(builder, array.strides, 2)[0]
    return builder.bitcast(array.data, BYTE_PTR), row_stride


def load_vector(builder, base, offset, vector_type=VEC, align=8):
    """The vector at byte ``offset`` of ``base``."""
    ptr = builder.bitcast(builder.gep(base, [offset]), vector_type.as_pointer())
    return builder.load(ptr, align=align)


def splat(builder, value, vector_type=VEC):
    """A vector with ``value`` in every lane."""
    undef = ir.Constant(vector_type, ir.Undefined)
    lane0 = builder.insert_element(undef, value, ir.Constant(I32, 0))
    return builder.shuffle_vector(
        lane0, undef, ir.Constant(ir.VectorType(I32, vector_type.count), [0] * vector_type.count))


def vector_fma(builder):
    """LLVM's fused multiply-add on 8-lane float64 vectors (a * b + c, one rounding)."""
    return cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(VEC, [VEC] * 3), "llvm.fma.v8f64")


def target_has(feature):
    """Whether the CPU Numba compiles for has ``feature`` (LLVM's name, such as 'avx512f'):
    the features in NUMBA_CPU_FEATURES where that is set, as Numba itself reads them, else the
    host's."""
    features = config.CPU_FEATURES if config.CPU_FEATURES is not None else get_host_cpu_features()
    return "+" + feature in features.split(",")


def _accumulator_budget():
    """How many 8-lane float64 accumulators a sweep keeps in registers, leaving room for its
    operands: 16 of AVX-512's 32 vector registers; 4 where there are 16 registers of 256 bits
    (AVX2: an accumulator is a pair of them); 2 with 128-bit registers."""
    if target_has("avx512f"):
        return 16
    return 4 if target_has("avx") else 2


# A sweep with more accumulators than this runs as several sweeps over the same operands, each
# on a group of them (``accumulator_groups``). Each accumulator's sum keeps its order, so the
# results are the same bits whichever the grouping: only the time changes. With the panels'
# 16 accumulators on an AVX2 CPU (AMD EPYC, Zen), LLVM spilled most of them to the stack at
# every step of the sweep.
ACCUMULATORS = _accumulator_budget()


def accumulator_groups(n_rows, n_columns, column_cost=1, limit=None):
    """Split an ``n_rows`` x ``n_columns`` grid of accumulators into groups of at most
    ``limit`` (``ACCUMULATORS``) for sweeps of their own: a list of (rows, columns) ranges.

    Each step of a sweep loads one operand per row and one per column of its group for
    rows * columns multiply-adds; ``column_cost`` is what a column's operand costs against a
    row's (the panels broadcast one float64 per row and load a vector per column). The
    groups take the shape with the least load cost per multiply-add. One group, the whole
    grid, when it fits."""
    limit = ACCUMULATORS if limit is None else limit
    if n_rows * n_columns <= limit:
        return [(range(n_rows), range(n_columns))]
    best = None
    for group_rows in range(1, min(n_rows, limit) + 1):
        group_columns = min(n_columns, limit // group_rows)
        cost = (group_rows + column_cost * group_columns) / (group_rows * group_columns)
        if best is None or cost < best[0]:
            best = (cost, group_rows, group_columns)
    _, group_rows, group_columns = best
    return [(range(u0, min(u0 + group_rows, n_rows)),
             range(v0, min(v0 + group_columns, n_columns)))
            for v0 in range(0, n_columns, group_columns)
            for u0 in range(0, n_rows, group_rows)]
