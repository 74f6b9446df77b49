"""Elementary functions the kernels need faster than libm gives them.

llvmlite is built without a vector math library, so ``np.exp`` in a loop is a scalar call per
element. In the E-step that is one call per row and component, the most expensive operation
when there are few features. :func:`exp_nonpositive` is plain arithmetic that LLVM vectorizes.
"""

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from ._config import CACHE, FASTMATH


@intrinsic
def _bits_as_float64(typingctx, bits):
    """Reinterpret the bits of an int64 as a float64."""
    if bits != types.int64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


# 1/k! for k = 13 .. 0: a Taylor polynomial of exp on |r| <= ln(2)/2, accurate to 2e-16.
_INV_FACTORIALS = tuple(1.0 / math.factorial(k) for k in range(13, -1, -1))
_LOG2E = 1.4426950408889634
_LN2_HI = 0.6931471803691238  # ln 2 split in two so that n * _LN2_HI is exact
_LN2_LO = 1.9082149292705877e-10


@njit(cache=CACHE, fastmath=FASTMATH, inline="always")
def exp_nonpositive(x):
    """exp(x) for x <= 0, within a few ulp; exactly 0 below -708 (and for -inf).

    exp(x) = 2^n exp(r) with n = round(x / ln 2) and |r| <= ln(2)/2. Below -708 the true
    value is subnormal; as a responsibility it is 0 to double precision anyway.
    """
    xc = max(x, -708.0)
    n = math.floor(xc * _LOG2E + 0.5)
    r = (xc - n * _LN2_HI) - n * _LN2_LO
    p = 0.0
    for c in _INV_FACTORIALS:
        p = p * r + c
    scale = _bits_as_float64((np.int64(n) + 1023) << 52)
    return p * scale if x >= -708.0 else 0.0
