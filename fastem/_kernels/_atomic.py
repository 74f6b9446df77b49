"""An atomic counter, for handing out a wave's blocks to the tasks that process them.

A kernel's parallel tasks each own scratch buffers made once per task. Taking blocks in a fixed
stride (task t: blocks t, t + T, ...) left a wave's end waiting on the task with the most work:
with 16 blocks of a millisecond per wave (d = 128, K = 8, 'full') a pass took 7% longer than
with one block per parallel iteration. Taking the next block from a shared counter gives each
task the next block as soon as it is free, and keeps its scratch; in the expanded kernel (which
had four strided tasks per thread) passes took 2-12% less at 'tied' and at d = 64, K = 64
'diag', the same elsewhere. Which task computes a block changes no bit: blocks own their
slots, merged in block order.
"""

from numba import types
from numba.extending import intrinsic


@intrinsic
def take_next(typingctx, counter):
    """counter[0] += 1, atomically; returns the value it had (the index taken)."""
    if not (isinstance(counter, types.Array) and counter.dtype == types.int64
            and counter.ndim == 1):
        return None

    def codegen(context, builder, signature, args):
        array = context.make_array(counter)(context, builder, args[0])
        one = context.get_constant(types.int64, 1)
        return builder.atomic_rmw("add", array.data, one, "monotonic")

    return types.int64(counter), codegen
