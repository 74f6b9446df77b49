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
