"""Fetching the next block's rows into L2 while the current block computes.

A task reads a block's rows (``_transpose.load_columns``), then computes on them from L1 and L2.
One core reads from memory at only 8.5-14 GB/s (two at 17-19): its misses in flight, not the
memory, set the rate, and the core computes nothing while it waits. So the read of X and the
arithmetic added up: at d = 16, K = 4 'diag' the read was 45% of a pass.

Here the block's own loops ask for the next block's rows a few cache lines at a time, spread
over its work, so that they arrive in L2 while the arithmetic runs. The spreading is what
works: in a test loop on this machine (a 32 KiB block read, then as much arithmetic as the
read took), 8 lines asked for every 65 ns hid most of the read (110 ms against 133 ms with
no prefetch, 64 and 67 ms for the read and the arithmetic alone), but 32 or more at once
gained nothing or lost, as a core has only about 16 misses in flight and the rest of a burst
waits for them. Earlier attempts that asked for a whole block at once, or touched one line per
page for the L2 streamer to follow, gained nothing for that reason.

The per-component kernel (``gaussian._prefetch_calls``) asks after each component's
log-density sweep, each tile of its moments and each panel of its (d, d) products: with 4
components, about 22 lines a call, a sweep or a tile apart. Its passes took 0.84-0.90 of the
time for 'diag' and 'spherical' at d = 8 to 64, 0.89-0.94 for 'tied' and 'full' at d = 16
and 0.92-0.96 at d = 64. The expanded kernel (``gaussian_expanded._prefetch_calls``) asks
after each panel and tile of its two products, for the next sub-block's rows: passes took
0.86-0.96 of the time at d = 5 to 16 with 8 to 64 components ('full' at d = 16, K = 64: 1.0),
0.91-0.98 at d = 2 with 16 and 64, 0.93-0.99 at d = 64 ('full' there, whose read is a small
part, 1.0).
The lines go to L2 (LLVM's locality 2, ``prefetcht1``): the block's working set fills L1.
A prefetch is a hint: it never faults and changes no result.
"""

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from ._config import JIT
from ._llvm import BYTE_PTR, I32

LINE = 64  # bytes per cache line
UNLIMITED = 1 << 62  # lines a call, for aim's `most`: as many as the calls' spread gives

# Fields of a task's prefetch state (an int64 array of STATE_SIZE): the address of the next
# byte to ask for, the end of the rows, and the lines to ask for at each call of
# prefetch_lines.
NEXT, END, PER_CALL = 0, 1, 2
STATE_SIZE = 3


def idle_state():
    """A prefetch state aimed nowhere, for calling a block's functions alone (tests)."""
    return np.zeros(STATE_SIZE, dtype=np.int64)


@intrinsic
def _prefetch_at(typingctx, address):
    """Ask for the cache line at `address` (an int64) to be brought into L2."""
    if not isinstance(address, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        ptr = builder.inttoptr(args[0], BYTE_PTR)
        prefetch = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [BYTE_PTR, I32, I32, I32]),
            "llvm.prefetch.p0i8")
        # read, locality 2 (into L2), data cache
        builder.call(prefetch, [ptr, ir.Constant(I32, 0), ir.Constant(I32, 2),
                                ir.Constant(I32, 1)])
        return context.get_dummy_value()

    return types.void(address), codegen


@intrinsic
def _address(typingctx, X):
    """The address of X's first byte, as an int64."""
    if not isinstance(X, types.Array):
        return None

    def codegen(context, builder, signature, args):
        array = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.ptrtoint(array.data, ir.IntType(64))

    return types.int64(X), codegen


@njit(inline="always", **JIT)
def aim(state, X, r0, rows, calls, most):
    """Set `state` to fetch rows r0:r0 + rows of X (C-contiguous; those inside X) over `calls`
    calls of :func:`prefetch_lines`, at most `most` lines a call (the rest left to the read).
    r0 < 0 (no next block) or `calls` 0 fetches nothing. The last line of rows that do not end
    on a line's boundary may be left to the read. X must outlive the calls."""
    if r0 < 0:
        state[NEXT] = state[END] = 0
        return
    row_bytes = X.strides[0]
    base = _address(X)
    state[NEXT] = base + r0 * row_bytes
    state[END] = base + min(r0 + rows, X.shape[0]) * row_bytes
    lines = (state[END] - state[NEXT] + LINE - 1) // LINE
    state[PER_CALL] = min(most, (lines + calls - 1) // calls) if calls > 0 else 0


@njit(inline="always", **JIT)
def prefetch_lines(p, end, n):
    """Ask for up to n lines from address p, short of `end`; returns the address after them.

    A caller reads its state into these scalars once (``state[NEXT]``, ``state[END]``,
    ``state[PER_CALL]``), calls this between its loops, and stores the address back once, so
    that its loops see no stores but their own."""
    stop = min(end, p + n * LINE)
    while p < stop:
        _prefetch_at(p)
        p += LINE
    return p
