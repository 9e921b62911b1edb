"""The concurrent interpreter (kernels/concurrent_interpreter.py) and the bounded barrier
(kernels/barrier.py) that the split kernels rely on.

A toy kernel whose programs exchange one row per step through global memory shows that a
correct barrier gives exact results under random interleavings, and that each kind of barrier
fault is caught: a missing arrival by the bounded wait (flag set, launch ends), a read before
the barrier or a wrong wait target by comparison under jitter. Then the real split kernels with
a faulty barrier: SplitBarrierTimeout, and NaN exactly where the programs stopped.
"""
import threading
import time

import pytest
import torch
import triton
import triton.language as tl
import triton.runtime.interpreter as interp

import triton_rnn.kernels.concurrent_interpreter as ci
import triton_rnn.kernels.launch as launch
import triton_rnn.kernels.split as split
import triton_rnn.kernels.split_dot as split_dot
from triton_rnn.kernels.barrier import arrive_and_wait, wait_for
from triton_rnn.kernels.dispatch import choose_split
from triton_rnn.kernels.failures import SplitBarrierTimeout

pytestmark = pytest.mark.skipif(not launch.interpreting(),
                                reason="one thread per program: Triton's interpreter only")

# Toy geometry: with 8 programs and 8 steps, each barrier fault below gives a wrong row for
# ~99% of jitter seeds (4 programs and 6 steps: for ~40%), so 4 seeds never miss it in practice.
S, T = 8, 8
JITTER = 2e-3       # seconds of random sleep before each load and atomic
SEEDS = range(4)
MAX_POLLS = 1000    # never spent by a correct run (it needs ~10 polls per wait)
# The waits that must run out, ~2.4 s under the interpreter; the bound is every wait's, and the
# waits of the steps before the skipped arrival must not run out while a program starved of
# CPU (the suite's other worker) reaches the barrier: at 100 they did, now and then.
SKIP_MAX_POLLS = 400


# ----- 1. the private interpreter pieces -----------------------------------------------------

def test_self_test_passes():
    """This Triton's interpreter has every piece the module uses, and its programs really run
    concurrently (self_test's launch only finishes if they do)."""
    ci.self_test()


def _reorder_grid_executor_init(monkeypatch):
    def __init__(self, fn, grid, arg_names, pre_run_hooks=()):  # grid and arg_names swapped
        raise AssertionError("never constructed")

    monkeypatch.setattr(interp.GridExecutor, "__init__", __init__)


# What self_check must name when a piece goes missing, and how to take it away.
MISSING_PIECES = {
    "GridExecutor._init_args_hst":
        lambda mp: mp.delattr(interp.GridExecutor, "_init_args_hst"),
    "InterpreterBuilder.create_atomic_rmw":
        lambda mp: mp.delattr(interp.InterpreterBuilder, "create_atomic_rmw"),
    "triton.runtime.interpreter._patch_lang":
        lambda mp: mp.delattr(interp, "_patch_lang"),
    "GridExecutor.__init__(self, fn, arg_names, grid, ...)": _reorder_grid_executor_init,
}


@pytest.mark.parametrize("piece", list(MISSING_PIECES))
def test_self_check_names_missing_piece(monkeypatch, piece):
    """A Triton upgrade that drops a private piece fails with a message naming it, before any
    launch, instead of a confusing error (or a hang) inside one."""
    MISSING_PIECES[piece](monkeypatch)
    monkeypatch.setattr(ci, "_checked", False)  # the check is cached once passed
    with pytest.raises(ci.InterpreterChanged) as info:
        ci.self_check()
    assert piece in str(info.value)
    with pytest.raises(ci.InterpreterChanged):  # launch checks first
        ci.launch(_stuck_kernel, (1,), torch.zeros(1, dtype=torch.int32),
                  torch.zeros(1, dtype=torch.int32), MAX_POLLS=1)


# ----- 2-3. a toy barrier kernel, correct and with faults ------------------------------------

@triton.jit
def _exchange_kernel(p_init, p_buf, p_cnt, p_flag, T, BS: tl.constexpr,
                     MAX_POLLS: tl.constexpr, FAULT: tl.constexpr, SKIP_STEP: tl.constexpr):
    """Every step t, program s writes buf[t, s] = sum(buf[t-1, :]) + s + 1 (init for t = 0),
    then meets the others at the barrier before anyone reads row t. FAULT breaks the barrier:
    "skip_arrival" (program 0 does not arrive at step SKIP_STEP), "read_before_barrier" (row t
    read before the wait), "wait_target_off_by_one" (waits for S*t arrivals, not S*(t+1))."""
    s = tl.program_id(0)
    S = tl.num_programs(0)
    o = tl.arange(0, BS)
    row = tl.load(p_init + o, mask=o < S, other=0.0)
    t = T * 0
    ok = t == 0
    while (t < T) & ok:
        tl.store(p_buf + t * S + s, tl.sum(row) + s + 1)
        if FAULT == "read_before_barrier":
            row = tl.load(p_buf + t * S + o, mask=o < S, other=0.0)
        target = S * (t + 1)
        if FAULT == "wait_target_off_by_one":
            target = S * t
        if FAULT == "skip_arrival":
            if (s == 0) & (t == SKIP_STEP):
                ok = wait_for(p_cnt, target, MAX_POLLS)
            else:
                ok = arrive_and_wait(p_cnt, target, MAX_POLLS)
        else:
            ok = arrive_and_wait(p_cnt, target, MAX_POLLS)
        if FAULT != "read_before_barrier":
            row = tl.load(p_buf + t * S + o, mask=o < S, other=0.0)
        t += 1
    if ok == 0:  # as split.py: a wait ran out
        tl.store(p_flag, 1)


def _exchange_reference(init: torch.Tensor) -> torch.Tensor:
    """The toy kernel's rows in float64 (every value is a small dyadic number: exact)."""
    rows, row = [], init.tolist()
    for _ in range(T):
        row = [sum(row) + s + 1 for s in range(S)]
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float64)


def _run_exchange(fault="none", seed=0, jitter=JITTER, max_polls=MAX_POLLS, skip_step=0):
    """(rows written, barrier counter, failure flag) of one concurrent toy launch. Rows start
    as NaN: a row nobody wrote stays NaN."""
    init = torch.arange(S, dtype=torch.float64) * 0.5
    buf = torch.full((T, S), float("nan"), dtype=torch.float64)
    cnt, flag = torch.zeros(1, dtype=torch.int32), torch.zeros(1, dtype=torch.int32)
    ci.launch(_exchange_kernel, (S,), init, buf, cnt, flag, T,
              BS=triton.next_power_of_2(S), MAX_POLLS=max_polls, FAULT=fault,
              SKIP_STEP=skip_step, jitter=jitter, seed=seed, deadline_s=20.0)
    return buf, int(cnt), int(flag)


EXPECTED = _exchange_reference(torch.arange(S, dtype=torch.float64) * 0.5)


@pytest.mark.parametrize("seed", SEEDS, ids=lambda s: f"seed{s}")
def test_correct_barrier_is_exact_under_jitter(seed):
    """With the barrier right, every interleaving gives the reference rows exactly, every
    program arrives at every step and no wait runs out."""
    buf, cnt, flag = _run_exchange(seed=seed)
    assert torch.equal(buf, EXPECTED), (buf, EXPECTED)
    assert (cnt, flag) == (S * T, 0)


@pytest.mark.parametrize("skip_step", [0, T // 2, T - 1], ids=["first", "middle", "last"])
def test_missing_arrival_sets_flag_and_ends(skip_step):
    """A program that skips its arrival makes every wait of that step run out: the flag is
    set, nobody goes past that step, and the launch ends instead of hanging."""
    start = time.monotonic()
    buf, cnt, flag = _run_exchange("skip_arrival", jitter=0.0, max_polls=SKIP_MAX_POLLS,
                                   skip_step=skip_step)
    assert time.monotonic() - start < 15.0
    assert flag == 1
    assert cnt == S * (skip_step + 1) - 1  # every arrival but the skipped one
    assert torch.equal(buf[:skip_step + 1], EXPECTED[:skip_step + 1])
    assert torch.isnan(buf[skip_step + 1:]).all(), buf


@pytest.mark.parametrize("fault", ["read_before_barrier", "wait_target_off_by_one"])
def test_ordering_fault_gives_wrong_rows_under_jitter(fault):
    """A read that is not ordered after every program's write passes the bounded wait (the flag
    cannot see it), but jitter makes some interleaving read a row that is not all written yet:
    the comparison catches it, while the correct kernel under the same seeds never differs."""
    wrong = []
    for seed in SEEDS:
        buf, _, flag = _run_exchange(seed=seed)
        assert torch.equal(buf, EXPECTED) and flag == 0, f"correct kernel, seed {seed}"
        buf, _, flag = _run_exchange(fault, seed=seed)
        assert flag == 0  # every program still arrives in time
        if not torch.equal(buf, EXPECTED):
            wrong.append(seed)
    assert wrong, f"{fault}: no seed of {list(SEEDS)} gave a wrong row"


# ----- 4. the deadline -----------------------------------------------------------------------

@triton.jit
def _stuck_kernel(p_cnt, p_done, MAX_POLLS: tl.constexpr):
    """Program 0 waits for an arrival that never comes; the others finish at once."""
    pid = tl.program_id(0)
    if pid == 0:
        wait_for(p_cnt, 1, MAX_POLLS)
    tl.store(p_done + pid, 1)


def _program_threads():
    return [t for t in threading.enumerate() if t.name.startswith("triton program")]


def test_deadline_stops_stuck_program():
    """A wait that would outlast any test (2^30 polls) is stopped at the launch's deadline:
    ProgramsTimedOut names the stuck program only, its thread is gone, and the next launch
    runs normally."""
    cnt, done = torch.zeros(1, dtype=torch.int32), torch.zeros(3, dtype=torch.int32)
    start = time.monotonic()
    with pytest.raises(ci.ProgramsTimedOut) as info:
        ci.launch(_stuck_kernel, (3,), cnt, done, MAX_POLLS=1 << 30, deadline_s=2)
    elapsed = time.monotonic() - start
    assert 2.0 <= elapsed < 6.0, elapsed
    message = str(info.value)
    assert "(0, 0, 0)" in message and "(1, 0, 0)" not in message, message
    assert "_stuck_kernel" in message, message
    assert done.tolist() == [0, 1, 1]
    assert not _program_threads()
    buf, cnt, flag = _run_exchange(jitter=0.0)
    assert torch.equal(buf, EXPECTED) and (cnt, flag) == (S * T, 0)


# ----- 5. the real split kernels with a faulty barrier ---------------------------------------

@triton.jit
def _arrive_unless_first_program(p_cnt, target, MAX_POLLS: tl.constexpr):
    """arrive_and_wait, except that program (0, 0, 0) never arrives."""
    if (tl.program_id(0) != 0) | (tl.program_id(1) != 0) | (tl.program_id(2) != 0):
        tl.debug_barrier()
        tl.atomic_add(p_cnt, 1, sem="release", scope="gpu")
    return wait_for(p_cnt, target, MAX_POLLS)


SPLIT_T, SPLIT_H = 4, 20  # R = 8: 3 slices
SENTINEL = -7.0  # what the outputs hold before the launch: neither NaN nor a result
# The two split kernels: one batch row at a time (split.py, fp64, 2 rows: one per group) and
# on tensor cores (split_dot.py, TF32, 17 rows: groups of 9 and 8 rows, one tile of 16 each).
FORMS = {"rows": (torch.float64, 2), "tiles": (torch.float32, 17)}


def _split_case(form):
    """(proj, h0, w_hh, out, dout), out from the float64 reference."""
    dtype, N = FORMS[form]
    g = torch.Generator().manual_seed(0)
    proj = torch.randn(SPLIT_T, N, SPLIT_H, dtype=torch.float64, generator=g)
    h0 = torch.randn(1, N, SPLIT_H, dtype=torch.float64, generator=g)
    w_hh = torch.randn(1, SPLIT_H, SPLIT_H, dtype=torch.float64, generator=g) / SPLIT_H ** 0.5
    dout = torch.randn(SPLIT_T, N, SPLIT_H, dtype=torch.float64, generator=g)
    case = [x.to(dtype) for x in (proj, h0, w_hh)]
    return (*case, _reference_forward(*[x.double() for x in case]).to(dtype), dout.to(dtype))


def _reference_forward(proj, h0, w_hh):
    """out_t = tanh(proj_t + out_{t-1} W_hhᵀ), one direction, float64."""
    h, outs = h0[0], []
    for t in range(proj.shape[0]):
        h = torch.tanh(proj[t] + h @ w_hh[0].T)
        outs.append(h)
    return torch.stack(outs)


def _reference_backward(proj, h0, w_hh, dout):
    """(dz, dh0) by autograd through the float64 reference."""
    proj, h0 = proj.double().requires_grad_(), h0.double().requires_grad_()
    return torch.autograd.grad(_reference_forward(proj, h0, w_hh.double()), (proj, h0),
                               dout.double())


@pytest.fixture
def split_launches(monkeypatch):
    """Small bound on the split kernels' waits, and a record of each concurrent launch's named
    arguments; the outputs are set to SENTINEL first, so NaN afterwards is the kernel's."""
    monkeypatch.setattr(launch, "MAX_POLLS_INTERPRETED", 300)
    launches, original = [], ci.launch

    def recording_launch(kernel, grid, *args, **kwargs):
        named = dict(zip(kernel.arg_names, args))
        # The backward reads p_out (the forward's result): only its own outputs are set.
        for name in ("p_dz", "p_dh0") if "p_dz" in named else ("p_out",):
            named[name].fill_(SENTINEL)
        launches.append((grid, named))
        return original(kernel, grid, *args, **kwargs)

    monkeypatch.setattr(ci, "launch", recording_launch)
    return launches


def _run_split(pass_, case, form):
    proj, h0, w_hh, out, dout = case
    dtype, N = FORMS[form]
    config = choose_split(32, dtype, rows=8, allow_tf32=True)
    assert config.use_dot == (form == "tiles") and config.BN == (16 if config.use_dot else 1)
    if pass_ == "forward":
        return launch.recurrence_forward(proj, h0, w_hh, None, False, True, config=config)
    return launch.recurrence_backward(dout, out, w_hh, None, False, True, config=config)


# A correct barrier gives the reference's values: to fp64 noise one row at a time, to TF32's
# rounding on tensor cores (a stale or missing state is off by far more).
TOLERANCE = {"rows": 1e-12, "tiles": 5e-3}


def _expected(pass_, case, form):
    """The float64 reference: forward, out; backward, dz and dh0."""
    proj, h0, w_hh, out, dout = case
    reference = (out,) if pass_ == "forward" else _reference_backward(proj, h0, w_hh, dout)
    return [r.double() for r in reference]


def _close(actual, expected, form):
    tol = TOLERANCE[form]
    torch.testing.assert_close(actual.double(), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("pass_", ["forward", "backward"])
def test_split_kernel_with_small_bound_is_correct(split_launches, pass_, form):
    """The control for the next test: 300 polls are plenty for a correct barrier, so a
    timeout there comes from the fault."""
    case = _split_case(form)
    expected = _expected(pass_, case, form)
    result = _run_split(pass_, case, form)
    assert len(split_launches) == 1 and split_launches[0][0][0] == 3  # 3 slices ran
    for actual, exp in zip([result] if pass_ == "forward" else result, expected):
        _close(actual, exp, form)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("pass_", ["forward", "backward"])
def test_split_kernel_missing_arrival_raises_and_poisons(monkeypatch, split_launches, pass_,
                                                         form):
    """Program (0, 0, 0) never arrives: its group's waits run out at the first step, the
    launcher raises SplitBarrierTimeout, and that group's results are NaN from the first step
    it could not compute on (nothing silently wrong), while its first step and the other
    groups are exact."""
    case = _split_case(form)
    expected = _expected(pass_, case, form)
    monkeypatch.setattr(split, "arrive_and_wait", _arrive_unless_first_program)
    monkeypatch.setattr(split_dot, "arrive_and_wait", _arrive_unless_first_program)
    start = time.monotonic()
    with pytest.raises(SplitBarrierTimeout):
        _run_split(pass_, case, form)
    assert time.monotonic() - start < 20.0
    (grid, named), = split_launches
    assert named["p_sync"][0] == 1
    rows = named["ROWS"]  # group 0 (the faulty one) holds batch rows 0 .. rows-1
    assert grid[1] > 1, "one group only: nothing to show the other groups are unaffected"
    if pass_ == "forward":
        got = named["p_out"]
        first = 0  # the step computed before the first wait
    else:
        got = named["p_dz"]
        first = SPLIT_T - 1  # the backward visits time backwards
        dh0 = named["p_dh0"]
        assert torch.isnan(dh0[:, :rows]).all(), dh0
        _close(dh0[:, rows:], expected[1][:, rows:], form)
    later = [t for t in range(SPLIT_T) if t != first]
    _close(got[first, :rows], expected[0][first, :rows], form)
    assert torch.isnan(got[later, :rows]).all(), got
    _close(got[:, rows:], expected[0][:, rows:], form)


@pytest.mark.parametrize("form", FORMS)
def test_split_kernel_program_that_starts_after_the_others_gave_up(monkeypatch, split_launches,
                                                                    form):
    """A program the GPU did not make resident with the others: program (0, 0, 0) starts only
    after the rest of its group gave up waiting for it at the first step. It still computes
    the first two steps from complete states (its first wait is met by the others' early
    arrivals), then gives up itself. Every element is exact or NaN, the first step is exact,
    and the launcher raises SplitBarrierTimeout."""
    case = _split_case(form)
    (expected,) = _expected("forward", case, form)
    recording_launch = ci.launch
    monkeypatch.setattr(ci, "launch", lambda *a, **k: recording_launch(*a, late={(0, 0, 0)},
                                                                        **k))
    with pytest.raises(SplitBarrierTimeout):
        _run_split("forward", case, form)
    (grid, named), = split_launches
    got = named["p_out"].double()
    exact = (got - expected).abs() <= TOLERANCE[form] * (1 + expected.abs())
    assert (exact | torch.isnan(got)).all(), got
    assert exact[0].all()  # the first step, every slice
    rows = named["ROWS"]
    assert exact[1, :rows, :8].all()  # the late program's own features of the second step
    assert torch.isnan(got[1, :rows, 8:]).all() and torch.isnan(got[2:, :rows]).all()
    assert exact[:, rows:].all()  # the other group never waited for it
