"""The parallel loop of every kernel: waves of blocks, run by tasks compiled apart.

A pass cuts its rows into blocks and the blocks into waves. In each wave, T parallel tasks take
blocks from a shared counter (``_atomic``) and write each block's partial statistics to its own
slot; after the wave, :func:`merge` adds the slots to the running totals in block order.

**Why the tasks are called by address.** Numba compiles a ``prange`` loop's body as a function
of its own, wraps it twice (a ufunc and a parallel wrapper) and links all three into the
calling function; each of the four compiled libraries runs LLVM's full optimization and emits
machine code again over everything linked into it (LLVM's pass timings: 1.1-1.4 s of
optimization and 0.5-0.6 s of machine code in each). With the block code in the loop's body
(the fused E-step and statistics, thousands of lines once inlined), that code was compiled
four times. Here a task is an ordinary compiled function, compiled once, and called through
its address (:func:`task_address`), a run-time value: nothing of the task is linked into the
loop. Cold compile of each kernel, the loop and every helper included, in a fresh process:
8.1-8.4 s against 12.3-13.0 ('full'/'tied'), 6.8-7.1 against 10.1-10.3 ('diag'/'spherical'),
7.0-8.4 against 11.4-11.9 (the expanded kernels), alternating runs on a machine that compiles
slowly; passes take the same time (0.96-1.02 of it, paired). Numba still runs the threads (its
threading layer starts a wave's tasks in 2-3 µs), and a cached loop holds no address, only the
call.

**One parallel loop for every kernel.** The loop, :func:`launch`, is itself called by address
(:func:`launcher_address`), and its arguments are integers: a C function made in the caller for
its task (:func:`task_entry`) and the address of the task's arguments. Each kernel's waves
(:func:`run_waves`) are then a plain compiled function. A ``prange`` loop of each kernel's own,
over its tasks' two dozen arguments, had cost 1.2-2.0 s of cold compile, three of them in a
default fit (the Gaussian passes, Lloyd's and the k-means++ seeding); the one loop takes 0.4 s.
With the block code written in the task rather than inlined into it (``gaussian``), a default
fit's cold compile took 21.0 s against 24.5 (medians of alternating runs, an AMD EPYC).

A wave of one task is called directly, not launched: on a call of one block (a prediction on a
few rows), the launch and the wait for it took 30-35 µs of a one-row ``predict``'s 91-95.
"""

import functools

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba._dispatcher import compute_fingerprint
from numba.core.typing.typeof import Purpose, typeof
from numba.extending import intrinsic

from ._config import CACHE, JIT, njit_internal
from ._views import flat

# What :func:`run_waves` returns when a task failed (a scratch allocation ran out of memory, or
# a task met a layout it was not compiled for); first bad rows are >= 0, and -1 is none.
TASK_FAILED = -2


@intrinsic
def call_at(typingctx, address, w0, nw, args):
    """task(w0, nw, *args) for the Numba-compiled function at `address`, compiled for exactly
    these argument types and returning an int64: its result, or TASK_FAILED if it raised.

    The call is the one Numba makes to a compiled function (its calling convention: a pointer
    for the result, one for exception details, then the arguments), through a pointer made from
    the integer instead of a symbol linked into the caller.
    """
    if not (isinstance(address, types.Integer) and isinstance(w0, types.Integer)
            and isinstance(nw, types.Integer) and isinstance(args, types.BaseTuple)):
        return None
    arg_types = (types.int64, types.int64, *args.types)

    def codegen(context, builder, signature, llargs):
        values = [context.cast(builder, llargs[1], w0, types.int64),
                  context.cast(builder, llargs[2], nw, types.int64)]
        values += [builder.extract_value(llargs[3], i) for i in range(len(args.types))]
        return _task_call(context, builder, llargs[0], arg_types, values)

    return types.int64(address, w0, nw, args), codegen


def _task_call(context, builder, address, arg_types, values):
    """IR of :func:`call_at`'s call: the int64 result of the Numba-compiled function at
    `address` (an i64) on `values`, of `arg_types`, or TASK_FAILED if it raised."""
    call_conv = context.call_conv
    fnty = call_conv.get_function_type(types.int64, arg_types)
    function = builder.inttoptr(address, fnty.as_pointer())
    status, result = call_conv.call_function(builder, function, types.int64, arg_types, values)
    return builder.select(status.is_error, ir.Constant(result.type, TASK_FAILED), result)


_ADDRESSES = {}


def task_address(task, args) -> int:
    """The address of `task` (a Numba dispatcher) compiled for (int64, int64, *types of args),
    compiling it or loading it from the cache the first time.

    Keyed on Numba's own fingerprints of the values (2 µs for two dozen arguments; Numba's
    ``typeof`` took 7 µs for each array), which fix each value's Numba type: dtype, dimensions,
    layout and whether it is writeable.
    """
    key = (task, *map(compute_fingerprint, args))
    address = _ADDRESSES.get(key)
    if address is None:
        signature = (types.int64, types.int64,
                     *(typeof(a, Purpose.argument) for a in args))
        task.compile(signature)
        result = task.overloads[signature]
        address = result.library.get_pointer_to_function(result.fndesc.llvm_func_name)
        _ADDRESSES[key] = address
    return address


@intrinsic
def task_entry(typingctx, task, args):
    """(entry, payload): the address of a C function ``entry(payload, w0, nw)`` that calls
    ``task(w0, nw, *args)`` as :func:`call_at` does and returns its result, and the address of
    `payload`, which holds `task` and `args` in the calling function's stack frame, valid until
    it returns.

    This is how a kernel hands its task to :func:`launch`, one compiled parallel loop whose
    arguments are plain integers whatever the task's: `entry` is compiled into the caller
    (one small function per call site), which holds `args` alive across the launch.
    """
    if not (isinstance(task, types.Integer) and isinstance(args, types.BaseTuple)):
        return None
    arg_types = (types.int64, types.int64, *args.types)
    payload_type = types.Tuple((types.int64, args))

    def codegen(context, builder, signature, llargs):
        i64 = ir.IntType(64)
        module = builder.module
        entry = ir.Function(module, _ENTRY_TYPE, module.get_unique_name("fastem_task_entry"))
        entry.linkage = "internal"
        payload_llty = context.get_value_type(payload_type)
        body = ir.IRBuilder(entry.append_basic_block("entry"))
        payload_ptr, w0, nw = entry.args
        payload = body.load(body.bitcast(payload_ptr, payload_llty.as_pointer()))
        values = [w0, nw] + [body.extract_value(body.extract_value(payload, 1), i)
                             for i in range(len(args.types))]
        body.ret(_task_call(context, body, body.extract_value(payload, 0), arg_types, values))

        task_value = context.cast(builder, llargs[0], task, types.int64)
        packed = context.make_tuple(builder, payload_type, [task_value, llargs[1]])
        slot = cgutils.alloca_once_value(builder, packed)
        return context.make_tuple(builder, signature.return_type,
                                  [builder.ptrtoint(entry, i64), builder.ptrtoint(slot, i64)])

    return types.UniTuple(types.int64, 2)(task, args), codegen


_ENTRY_TYPE = ir.FunctionType(ir.IntType(64), [ir.IntType(8).as_pointer(), ir.IntType(64),
                                                ir.IntType(64)])


@intrinsic
def _call_entry(typingctx, entry, payload, w0, nw):
    """entry(payload, w0, nw) for the C function at address `entry` (:func:`task_entry`)."""
    sig = types.int64(types.int64, types.int64, types.int64, types.int64)

    def codegen(context, builder, signature, args):
        function = builder.inttoptr(args[0], _ENTRY_TYPE.as_pointer())
        payload = builder.inttoptr(args[1], ir.IntType(8).as_pointer())
        return builder.call(function, [payload, args[2], args[3]])

    return sig, codegen


@njit(parallel=True, **JIT)
def launch(w0, nw, entry, payload, n_tasks, failed):
    """`n_tasks` parallel calls ``entry(payload, w0, nw)`` (:func:`task_entry`); failed[0] = 1
    if one returned other than 0. Returns 0.

    Every kernel's tasks are launched by this one loop, called by its address
    (:func:`launcher_address`). Numba compiles a parallel loop into four libraries, each
    optimized and compiled to machine code on its own, at a cost that grows with the
    arguments the loop's body uses; a loop in each kernel, over its tasks' two dozen
    arguments, took 1.2-2.0 s of cold compile, and a default fit compiled three of them.
    """
    for t in prange(n_tasks):
        if _call_entry(entry, payload, w0, nw) != 0:
            failed[0] = 1
    return 0


@functools.cache
def launcher_address() -> int:
    """The address of :func:`launch`, compiled (or loaded from the cache) the first time."""
    return task_address(launch, (0, 0, 1, np.zeros(1, dtype=np.int64)))


@njit(inline="always", **JIT)
def run_wave(launcher, task, w0, nw, n_tasks, next_block, failed, args):
    """One wave: `n_tasks` parallel calls ``task(w0, nw, *args)`` of the task at address
    `task`, which take the wave's `nw` blocks from `next_block` (reset here), launched by
    :func:`launch` at address `launcher`. With one task (one thread, or a pass of one block)
    the call is made on the calling thread, without a parallel launch: the same task on the
    same blocks, so the same bits. Returns whether every call succeeded; `failed` (1,), 0
    before, is 1 if one did not. Inlined into :func:`run_waves` and the k-means kernels."""
    next_block[0] = 0
    if n_tasks == 1:  # called on this thread: a launch took a third of a one-row predict
        if call_at(task, w0, nw, args) != 0:
            failed[0] = 1
    else:
        entry, payload = task_entry(task, args)
        if call_at(launcher, w0, nw, (entry, payload, np.int64(n_tasks), failed)) != 0:
            failed[0] = 1
    return failed[0] == 0


# Inlined (at Numba's level) into each kernel's own parallel function, which takes the tasks'
# arguments one by one and makes `args` of them: Numba's dispatcher (0.59 and 0.60 at least)
# fingerprints a tuple argument of more than about four arrays wrongly, and a float64 pass then
# ran the loop compiled for float32 arguments and failed ("can't unbox array").
@njit(inline="always", **JIT)
def run_waves(launcher, task, n_blocks, wave_blocks, n_tasks, next_block, failed, args,
              part_ll, part_bad, p0, p1, p2, compute_stats, loglik, s0, s1, s2):
    """Run the blocks of a pass in waves of `wave_blocks`: in each, `n_tasks` parallel calls of
    the task at address `task` (``task(w0, nw, *args)`` for the wave's first block `w0` and
    its `nw` blocks, taking them from `next_block`: :func:`run_wave`), then :func:`merge` of
    the wave's slots. `failed` (1,) is 0.

    Returns the first bad row (>= 0) as the merge found it, TASK_FAILED, or -1.
    """
    for w0 in range(0, n_blocks, wave_blocks):
        nw = min(wave_blocks, n_blocks - w0)
        if not run_wave(launcher, task, w0, nw, n_tasks, next_block, failed, args):
            return TASK_FAILED
        bad = merge(nw, part_ll, part_bad, p0, p1, p2, compute_stats, loglik, s0, s1, s2)
        if bad >= 0:
            return bad
    return -1


# fastmath=False explicitly: Numba otherwise inherits the calling kernel's fast-math flags, and
# the additions must happen exactly in this order.
@njit_internal(cache=CACHE, nogil=True, fastmath=False, no_cfunc_wrapper=True)
def merge(nw, part_ll, part_bad, p0, p1, p2, compute_stats, loglik, s0, s1, s2):
    """Add the slots of one wave into the running totals, in block order.

    The statistics are up to three arrays (s0, s1, s2), each with its slots (p0, p1, p2);
    a kernel with fewer passes empty ones.
    """
    for w in range(nw):
        if part_bad[w] >= 0:
            return part_bad[w]
        loglik[0] += part_ll[w]
        if compute_stats:  # as flat rows, so that one compiled _add_into serves them all
            _add_into(flat(s0), flat(p0[w]))
            _add_into(flat(s1), flat(p1[w]))
            _add_into(flat(s2), flat(p2[w]))
    return -1


@njit_internal(cache=CACHE, nogil=True, fastmath=False, no_cfunc_wrapper=True)
def _add_into(dst, src):
    """dst += src for two rows of one length, as a loop (array expressions cost seconds of
    cold compile). :func:`merge` passes every slot as a :func:`flat` view: with
    ``reshape``, two calls into Numba's helper per block made the merge of a wave 10 times
    slower at d = 2, K = 8 (0.49 ms a pass against 0.05: 7% of it, while the other threads
    wait), and one compiled copy serves the statistics of every shape (one per shape took
    0.15-0.17 s each of a kernel's cold compile)."""
    for i in range(dst.shape[0]):
        dst[i] += src[i]
