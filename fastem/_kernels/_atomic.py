"""An atomic counter, for handing out a wave's blocks to the tasks that process them.

A kernel's parallel tasks each own scratch buffers made once per task. Taking blocks in a fixed
stride (task t: blocks t, t + T, ...) left a wave's end waiting on the task with the most work:
with 16 blocks of a millisecond per wave (d = 128, K = 8, 'full') a pass took 7% longer than
with one block per parallel iteration. Taking the next block from a shared counter gives each
task the next block as soon as it is free, and keeps its scratch; in the expanded kernel (which
had four strided tasks per thread) passes took 2-12% less at 'tied' and at d = 64, K = 64
'diag', the same elsewhere. Which task computes a block changes no bit: blocks own their
slots, merged in block order.

In a wave of many blocks the tasks take several at once (:func:`blocks_per_take`). Against
one at a time, the per-component kernel's passes on 2 threads took 0.92-0.97 of the time at
d = 3, K = 2, 0.95-0.99 at d = 2, K = 4 and 0.98-1.0 at d = 16, K = 4 ('tied' gaining most);
the expanded kernel's 0.95 at 'full' d = 2, K = 4 and 0.98-1.0 at d = 2 and 5, K = 16, for
0-0.3 s more of its cold compile. The counter alone on a cache line of its own gained nothing;
neighbouring blocks, whose slots share lines, now mostly go to the same task.
"""

from numba import njit, types
from numba.extending import intrinsic

from ._config import JIT


# Waves of at least TAKE_MIN_WAVE blocks are handed out TAKE_BLOCKS at a time: a task then
# waits at the wave's end for at most TAKE_BLOCKS - 1 blocks of another's, against the wave's
# hundreds. Smaller waves are of large blocks (their slots are large), taken one at a time.
TAKE_BLOCKS = 4
TAKE_MIN_WAVE = 512


def blocks_per_take(wave_blocks):
    """Blocks a task takes at once from a wave of `wave_blocks`."""
    return TAKE_BLOCKS if wave_blocks >= TAKE_MIN_WAVE else 1


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


@njit(inline="always", **JIT)
def following_block(w, last, then, nw):
    """The block a task runs after block w of its take, which ends before `last`: w + 1, or the
    first of its next take (`then`, claimed before this one ran); -1 if that is past the
    wave's `nw` blocks. The kernels prefetch its rows while block w computes."""
    following = w + 1 if w + 1 < last else then
    return following if following < nw else -1
