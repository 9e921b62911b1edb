"""Run an interpreted Triton launch with one thread per program, so that programs which wait
for each other (a barrier between programs) can run under TRITON_INTERPRET=1.

Triton's interpreter runs the programs of a launch one after another: a program that waits
for another one waits for ever. `launch(kernel, grid, *args, **kwargs)` does what a launch
does under the interpreter (`GridExecutor.__call__` in triton/runtime/interpreter.py: copy the
arguments to the host, patch triton.language, run the programs, copy back), except that every
program runs in its own thread:
- the builder's program id (`grid_idx`) is made thread-local for the launch;
- jit functions the kernel calls are rewritten (parsed, compiled) by one thread at a time;
- a program spinning on a counter (atomics and no loads) sleeps until another program writes
  with an atomic, so that it leaves the interpreter lock to the programs it waits for;
- `jitter` (seconds, with `seed`) sleeps a random time before loads and atomics to vary the
  interleaving of programs;
- `deadline_s` bounds a stall: once no program has written with an atomic (an arrival) or
  finished for that long, every thread is stopped at its next load or atomic and
  ProgramsTimedOut names the programs still running. A long but progressing launch goes on;
  nothing waits for ever.

It reaches into private interpreter classes (the same in Triton 3.6 and 3.9); `self_test()`
checks them and runs a launch that only finishes when programs really run concurrently, and
raises InterpreterChanged naming what is missing.
What threads on a CPU cannot show: memory ordering on a GPU and whether a GPU can hold every
program at once. The compile gate and the launcher check those (kernels/report.py, launch.py).
"""
import inspect
import random
import threading
import time

import triton.runtime.interpreter as _interp

# A program that has made more than SPINS_BEFORE_WAITING atomics in a row (no load between) is
# spinning on a counter: before its next atomic it sleeps until every other running program
# sleeps too (or ends), or WAKE_S passes. Spinners then leave the interpreter lock to the
# programs they wait for, and poll once per round instead of once per arrival (S programs
# meeting at a barrier poll about S times per step, not S²).
SPINS_BEFORE_WAITING = 3
WAKE_S = 10e-3
_launch_lock = threading.Lock()  # one concurrent launch at a time: the builder is global
_state = threading.local()


class InterpreterChanged(RuntimeError):
    """Triton's interpreter no longer has the private pieces this module relies on."""


class ProgramsTimedOut(RuntimeError):
    """A concurrent launch made no progress for its deadline (a program waited for one that
    never came, with a wait longer than the deadline)."""


class _Stopped(BaseException):
    """Raised inside a program's thread to stop it at the deadline (not an Exception, so that
    the interpreter's own handlers do not wrap it)."""


def _pause(spin: bool) -> None:
    control = _state.control
    if control.stop.is_set():
        raise _Stopped()
    if control.jitter:
        time.sleep(_state.rng.uniform(0.0, control.jitter))
    _state.spins = _state.spins + 1 if spin else 0
    if _state.spins > SPINS_BEFORE_WAITING:
        with control.changed:
            control.running -= 1
            if control.running > 0:  # someone may still arrive: wait for them to sleep too
                control.changed.wait(WAKE_S)
            else:  # every program waits: let them all poll again
                control.changed.notify_all()
            control.running += 1
    elif spin:
        time.sleep(0)  # let the other threads run


def _note_progress(rmw_op, val) -> None:
    """After an atomic: a write is progress (for the deadline) unless it changed nothing (an
    add of 0 is how Triton code reads a counter atomically)."""
    if rmw_op == _interp._ir.ATOMIC_OP.ADD and not val.data.any():
        return
    _state.control.progress = time.monotonic()


def _threaded_builder_class(base):
    """The interpreter's builder class with a thread-local program id and yielding memory
    operations."""

    class ThreadedBuilder(base):
        grid_idx = property(lambda self: _state.grid_idx,
                            lambda self, value: setattr(_state, "grid_idx", value))

        def create_masked_load(self, *args, **kwargs):
            _pause(spin=False)
            return super().create_masked_load(*args, **kwargs)

        def create_atomic_rmw(self, rmw_op, ptr, val, *args, **kwargs):
            _pause(spin=True)
            result = super().create_atomic_rmw(rmw_op, ptr, val, *args, **kwargs)
            _note_progress(rmw_op, val)
            return result

        def create_atomic_cas(self, *args, **kwargs):
            _pause(spin=True)
            result = super().create_atomic_cas(*args, **kwargs)
            _note_progress(None, None)
            return result

    return ThreadedBuilder


class _Control:
    def __init__(self, jitter: float):
        self.jitter = jitter
        self.stop = threading.Event()
        self.changed = threading.Condition()  # notified when every running program sleeps
        self.running = 0  # programs started, not ended and not asleep in _pause
        self.progress = time.monotonic()  # when a program last wrote with an atomic or ended


def launch(kernel, grid, *args, jitter: float = 0.0, seed: int = 0, deadline_s: float = 300.0,
           late=(), **kwargs) -> None:
    """kernel[grid](*args, **kwargs) under the interpreter, one thread per program.
    late: program ids (x, y, z) that start only once every other program has ended, as a
    program that a GPU did not make resident with the others would."""
    self_check()
    if not isinstance(kernel, _interp.InterpretedFunction):
        raise RuntimeError("concurrent_interpreter.launch needs TRITON_INTERPRET=1 set before "
                           "triton is imported")
    # What InterpretedFunction.run builds for a launch.
    executor = _interp.GridExecutor(kernel.rewrite(), kernel.arg_names, grid,
                                    kernel.pre_run_hooks)
    fn = executor.fn
    argspec = inspect.getfullargspec(fn)
    kwargs = {k: v for k, v in kwargs.items() if k in argspec.args or k in argspec.kwonlyargs}
    args_hst, kwargs_hst = executor._init_args_hst(args, kwargs)
    for hook in executor.pre_run_hooks:
        hook(*args_hst, **kwargs_hst)
    with _launch_lock:
        builder = _interp.interpreter_builder
        original_class = builder.__class__
        patch_scope = _interp._patch_lang(fn)
        builder.__class__ = _threaded_builder_class(original_class)
        # A jit function called from a kernel is rewritten (parsed and compiled) at its first
        # call; CPython's AST compiler is not safe to run from several threads at once.
        rewrite = _interp.InterpretedFunction.rewrite
        _interp.InterpretedFunction.rewrite = _one_at_a_time(rewrite)
        try:
            call_args = inspect.getcallargs(fn, *args_hst, **kwargs_hst)
            call_args = {name: arg if name in executor.constexprs else _interp._implicit_cvt(arg)
                         for name, arg in call_args.items()}
            grid = executor.grid(call_args) if callable(executor.grid) else executor.grid
            grid = tuple(grid) + (1,) * (3 - len(grid))
            builder.set_grid_dim(*grid)
            _run_programs(builder, fn, call_args, grid, _Control(jitter), seed, deadline_s,
                          set(late))
        finally:
            _interp.InterpretedFunction.rewrite = rewrite
            builder.__class__ = original_class
            patch_scope.restore()
    executor._restore_args_dev(args, args_hst, kwargs, kwargs_hst)


def _one_at_a_time(method):
    lock = threading.Lock()

    def locked(self, *args, **kwargs):
        with lock:
            return method(self, *args, **kwargs)

    return locked


def _run_programs(builder, fn, call_args, grid, control, seed, deadline_s, late) -> None:
    errors, threads, started = {}, {}, threading.Event()

    def program(pid):
        if pid in late:
            started.wait()
            for other, thread in threads.items():
                if other not in late:
                    thread.join()
        _state.control, _state.spins = control, 0
        _state.rng = random.Random(hash((seed, pid)))
        with control.changed:
            control.running += 1
        try:
            builder.set_grid_idx(*pid)
            fn(**call_args)
        except _Stopped:
            pass
        except BaseException as exc:  # reported by the launching thread
            errors[pid] = exc
            control.stop.set()  # one failed program: stop the others rather than wait on it
        finally:
            with control.changed:
                control.running -= 1
                control.changed.notify_all()  # what the sleepers wait for may be this end
        control.progress = time.monotonic()

    for x in range(grid[0]):
        for y in range(grid[1]):
            for z in range(grid[2]):
                pid = (x, y, z)
                threads[pid] = threading.Thread(target=program, args=(pid,), daemon=True,
                                                name=f"triton program {pid}")
    for thread in threads.values():
        thread.start()
    started.set()
    running = list(threads)
    while running and time.monotonic() - control.progress < deadline_s:
        threads[running[0]].join(0.05)
        running = [pid for pid in running if threads[pid].is_alive()]
    if running:
        control.stop.set()
        for thread in threads.values():
            thread.join(5.0)
        raise ProgramsTimedOut(f"{fn.__name__}: programs {running[:8]}"
                               f"{' ...' if len(running) > 8 else ''} of grid {grid} still "
                               f"running with no progress for the {deadline_s:g} s deadline")
    if errors:
        pid, exc = next(iter(errors.items()))
        raise _interp.InterpreterError(f"program {pid}: {exc!r}") from exc


# ----- pinning the private interpreter pieces ------------------------------------------------

_REQUIRED = {
    "module": ("InterpretedFunction", "GridExecutor", "InterpreterBuilder", "interpreter_builder", "_patch_lang",
               "_implicit_cvt", "InterpreterError", "_ir"),
    "InterpretedFunction": ("rewrite", "arg_names", "pre_run_hooks"),
    "GridExecutor": ("_init_args_hst", "_restore_args_dev", "__call__"),
    "InterpreterBuilder": ("set_grid_idx", "set_grid_dim", "create_get_program_id",
                           "create_masked_load", "create_atomic_rmw", "create_atomic_cas"),
}
_checked = False


def self_check() -> None:
    """Raise InterpreterChanged if a private piece used here is missing (once per process)."""
    global _checked
    if _checked:
        return
    missing = [f"triton.runtime.interpreter.{name}" for name in _REQUIRED["module"]
               if not hasattr(_interp, name)]
    for cls in ("GridExecutor", "InterpreterBuilder"):
        if hasattr(_interp, cls):
            missing += [f"{cls}.{name}" for name in _REQUIRED[cls]
                        if not hasattr(getattr(_interp, cls), name)]
    if hasattr(_interp, "InterpretedFunction"):  # instance attributes: look at one
        probe = _interp.InterpretedFunction(self_check)
        missing += [f"InterpretedFunction.{name}" for name in _REQUIRED["InterpretedFunction"]
                    if not hasattr(probe, name)]
    if hasattr(_interp, "GridExecutor"):
        params = list(inspect.signature(_interp.GridExecutor.__init__).parameters)
        if params[:4] != ["self", "fn", "arg_names", "grid"]:
            missing.append(f"GridExecutor.__init__(self, fn, arg_names, grid, ...) (now {params})")
    if missing:
        raise InterpreterChanged("triton_rnn's concurrent interpreter relies on private pieces "
                                 "of triton/runtime/interpreter.py that this Triton lacks: "
                                 + ", ".join(missing))
    _checked = True


def self_test() -> None:
    """self_check(), then a launch in which program 0 waits for a value only the last program
    writes: it finishes only if the programs really run concurrently with their own ids."""
    import torch
    import triton
    import triton.language as tl

    @triton.jit
    def wait_for_last(p_flag, p_seen, MAX_POLLS: tl.constexpr):
        pid = tl.program_id(0)
        if pid == tl.num_programs(0) - 1:
            tl.atomic_xchg(p_flag, 1)
        seen = tl.atomic_add(p_flag, 0)
        polls = 1
        while (seen == 0) & (polls < MAX_POLLS):
            seen = tl.atomic_add(p_flag, 0)
            polls += 1
        tl.store(p_seen + pid, seen)

    self_check()
    flag, seen = torch.zeros(1, dtype=torch.int32), torch.full((4,), -1, dtype=torch.int32)
    launch(wait_for_last, (4,), flag, seen, MAX_POLLS=100_000, deadline_s=60.0)
    if seen.tolist() != [1, 1, 1, 1]:
        raise InterpreterChanged(f"a concurrent launch did not see every program: {seen.tolist()}")
