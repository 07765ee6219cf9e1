"""Every program of a Triton launch in its own thread, under TRITON_INTERPRET=1.

Triton's interpreter runs a launch's programs one after another, so a kernel whose programs
wait for each other (the recurrent kernels' grid barrier, the exchange of h_t or of the
gate gradients through global memory) either deadlocks there or is only ever run with one
program along the hidden size. Inside `concurrent_programs()` a launch instead starts one
thread per program and waits for all of them:

- `tl.program_id` is thread-local, `tl.num_programs` the launch's grid;
- atomics are serialized (one lock), so a read-modify-write of a barrier counter is atomic
  as on a GPU; an atomic that adds zero (a poll) then yields the interpreter lock briefly,
  so spinning programs leave the CPU to the ones still computing;
- loads and stores act on the same CPU tensors in every thread.

What it models: the partition of the work over programs (offsets, masks, which program
owns which slice), the exchange through global memory, and the counting of the grid
barrier (targets, arrivals, the abort): a wrong slice, a wrong arrival count or a read of
another program's data before the barrier gives wrong numbers or a hang here. What it does
not model: the GPU's memory model (each numpy operation is atomic and sequentially
consistent under Python's interpreter lock, so missing fences, caching in L1 or the
non-coherent load path cannot show), warps and timing. The static GPU check reads those
from the compiled code instead.

Programs listed in `absent` never start: a launch where some program never arrives at
the barrier, as when a GPU cannot make every program resident.
"""
from __future__ import annotations

import contextlib
import inspect
import threading
import time
from typing import Iterable, Tuple

import numpy as np
import triton.language as tl
from triton.runtime import interpreter
from triton.runtime.errors import InterpreterError

# How long a poll of an atomic (an add of zero) gives up the interpreter lock: long enough
# that 100 spinning threads leave most of the CPU to the programs still computing, short
# against a step's work.
POLL_YIELD_S = 2e-4
# A launch that has not finished after this long is reported as hung (a barrier that
# counts wrong without aborting would otherwise stop the test run).
LAUNCH_TIMEOUT_S = 600.0

_program = threading.local()
_atomic_lock = threading.Lock()


def _get_program_id(axis):
    return interpreter.TensorHandle(np.array([_program.index[axis]], dtype=np.int32), tl.int32)


def _serialized_rmw(create_atomic_rmw):
    def atomic_rmw(rmw_op, ptr, val, mask, sem, scope):
        with _atomic_lock:
            result = create_atomic_rmw(rmw_op, ptr, val, mask, sem, scope)
        if not np.any(val.data):   # a poll: let the other programs run
            time.sleep(POLL_YIELD_S)
        return result
    return atomic_rmw


def _serialized_cas(create_atomic_cas):
    def atomic_cas(ptr, cmp, val, sem, scope):
        with _atomic_lock:
            return create_atomic_cas(ptr, cmp, val, sem, scope)
    return atomic_cas


def _run_concurrently(executor, absent: frozenset, *args_dev, **kwargs):
    """GridExecutor.__call__ with one thread per program."""
    argspec = inspect.getfullargspec(executor.fn)
    kwargs = {k: v for k, v in kwargs.items() if k in argspec.args or k in argspec.kwonlyargs}
    args_hst, kwargs_hst = executor._init_args_hst(args_dev, kwargs)
    for hook in getattr(executor, "pre_run_hooks", []):
        hook(*args_hst, **kwargs_hst)
    patch_scope = interpreter._patch_lang(executor.fn)
    try:
        args = inspect.getcallargs(executor.fn, *args_hst, **kwargs_hst)
        args = {name: arg if name in executor.constexprs else interpreter._implicit_cvt(arg)
                for name, arg in args.items()}
        grid = executor.grid(args) if callable(executor.grid) else executor.grid
        grid = tuple(grid) + (1, ) * (3 - len(grid))
        interpreter.interpreter_builder.set_grid_dim(*grid)
        failures = []

        def program(index):
            _program.index = index
            try:
                executor.fn(**args)
            except BaseException as err:   # reported after every thread has ended
                failures.append((index, err))

        threads = [threading.Thread(target=program, args=((x, y, z), ), daemon=True)
                   for x in range(grid[0]) for y in range(grid[1]) for z in range(grid[2])
                   if (x, y, z) not in absent]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + LAUNCH_TIMEOUT_S
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        hung = sum(thread.is_alive() for thread in threads)
        if hung:
            raise InterpreterError(f"{hung} of {len(threads)} programs still running after "
                                   f"{LAUNCH_TIMEOUT_S:.0f} s (grid {grid})")
        if failures:
            index, err = failures[0]
            raise InterpreterError(f"program {index}: {err!r}") from err
    finally:
        patch_scope.restore()
    executor._restore_args_dev(args_dev, args_hst, kwargs, kwargs_hst)


@contextlib.contextmanager
def concurrent_programs(absent: Iterable[Tuple[int, int, int]] = ()):
    """Inside the block, every Triton launch under the interpreter runs each program of its
    grid in its own thread (see the module docstring); programs in `absent` (grid indices
    (x, y, z)) never start."""
    builder = interpreter.interpreter_builder
    absent = frozenset(tuple(index) + (0, ) * (3 - len(index)) for index in absent)
    original_call = interpreter.GridExecutor.__call__
    interpreter.GridExecutor.__call__ = (
        lambda self, *args, **kwargs: _run_concurrently(self, absent, *args, **kwargs))
    builder.create_get_program_id = _get_program_id
    builder.create_atomic_rmw = _serialized_rmw(type(builder).create_atomic_rmw.__get__(builder))
    builder.create_atomic_cas = _serialized_cas(type(builder).create_atomic_cas.__get__(builder))
    try:
        yield
    finally:
        interpreter.GridExecutor.__call__ = original_call
        for name in ("create_get_program_id", "create_atomic_rmw", "create_atomic_cas"):
            del builder.__dict__[name]
