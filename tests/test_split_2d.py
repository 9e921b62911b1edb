"""The split in two dimensions (kernels/split_2d.py) under the concurrent interpreter: against
the float64 reference (launcher) and torch.nn.RNN (module, routed there by the dispatcher), and
with a faulty barrier (a missing arrival; a wait that does not wait).

Small sizes reach every part of the form: H = 40 (BH = 64) in row blocks of 16 and 2-4 parts of
the reduction, ragged hidden sizes (rows and parts past H), 1-8 state chunks, several row tiles
per group and several groups. The configurations that ship are compiled by the compile gate."""
import time

import pytest
import torch
import triton
import triton.language as tl

import triton_rnn.kernels.concurrent_interpreter as ci
import triton_rnn.kernels.launch as launch
from conftest import DEVICE
from helpers import make_pair, rel_err
from triton_rnn.kernels import dispatch, split_2d
from triton_rnn.kernels.barrier import wait_for
from triton_rnn.kernels.dispatch import Config
from triton_rnn.kernels.failures import SplitBarrierTimeout

from test_concurrent_interpreter import _arrive_unless_first_program
from test_concurrent_interpreter import split_launches  # noqa: F401
from test_split import _check_against_reference, _grads
# the plain-PyTorch statement, imported before conftest guards the module's names
from triton_rnn.reference import recurrence_forward as reference_forward


def _config(H, R, KP, KC, BN=16):
    BH = max(16, triton.next_power_of_2(H))
    return Config("split", True, BN, BH, 4, num_stages=1, R=R, k_chunks=KC, k_parts=KP)


def _layer(T, N, H, D, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    proj = torch.randn(T, N, D * H, generator=g).to(dtype)
    h0 = torch.randn(D, N, H, generator=g).to(dtype)
    w_hh = (torch.randn(D, H, H, generator=g) / H ** 0.5).to(dtype)
    return proj, h0, w_hh


# (dtype, tolerance, H, N, R, KP, KC, BN): rows and parts past H (37, 70), chunks of 1-8, two
# groups of one tile each (N = 20: 10 rows a group), and one group of three tiles (N = 33)
CASES = {
    "tf32-2-parts-2-chunks": (torch.float32, 3e-3, 40, 20, 16, 2, 2, 16),
    "bf16-ragged-4-parts": (torch.bfloat16, 3e-2, 37, 5, 16, 4, 1, 16),
    "fp16-8-chunks-ragged-blocks": (torch.float16, 4e-3, 70, 3, 32, 2, 8, 16),
    "tf32-two-tiles-per-group": (torch.float32, 3e-3, 24, 33, 16, 2, 1, 16),
}


@pytest.mark.parametrize("case", CASES)
def test_launcher_matches_reference(case, monkeypatch):
    """Forward and backward, both directions, packed lengths (unsorted), against the float64
    reference on the same rounded inputs (TF32 or 16-bit products)."""
    dtype, tol, H, N, R, KP, KC, BN = CASES[case]
    if case == "tf32-two-tiles-per-group":  # 33 rows in one group: tiles of 16, 16 and 1
        monkeypatch.setattr(launch, "INTERPRETER_MAX_GROUPS", 1)
    proj, h0, w_hh = _layer(4, N, H, 2, dtype)
    lengths = torch.randint(1, 5, (N,), dtype=torch.int32,
                            generator=torch.Generator().manual_seed(3))
    _check_against_reference(proj, h0, w_hh, lengths, _config(H, R, KP, KC, BN), True, tol)


@pytest.fixture
def two_dimensional_routing(monkeypatch):
    """The dispatcher sends tensor-core split layers of BH = 64 whose one-dimensional
    groups would hold more than one row to the split in two dimensions (row blocks of 16, two
    parts of the reduction), as it sends TF32 at H = 2048 past 16 rows; the resident limit is
    lowered to 32 so that H = 40 splits. Returns the kernel names launched."""
    monkeypatch.setattr(dispatch, "RESIDENT_MAX_BH", dict.fromkeys(dispatch.RESIDENT_MAX_BH, 32))
    monkeypatch.setattr(dispatch, "SPLIT_2D", {(4, 64): (16, 2, 2, 4), (2, 64): (16, 2, 1, 4)})
    monkeypatch.setattr(dispatch, "SPLIT_2D_MIN_ROWS", {(4, 64): 1, (2, 64): 1})
    monkeypatch.setattr(dispatch, "SPLIT_2D_BN", 16)
    launched, original = [], ci.launch

    def recording(kernel, grid, *args, **kwargs):
        launched.append(kernel.fn.__name__)
        return original(kernel, grid, *args, **kwargs)

    monkeypatch.setattr(ci, "launch", recording)
    return launched


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_module_matches_nn_rnn(packed, two_dimensional_routing):
    """triton_rnn.RNN (float32 with TF32, bidirectional, relu, h0 given) where the dispatcher
    picks the split in two dimensions: output, h_n and every gradient equal float64 nn.RNN's
    to TF32's rounding, and both passes ran split_2d.py's kernels."""
    H, N, T = 40, 3, 4
    ours, ref = make_pair(5, H, 1, "relu", bidirectional=True)
    x = torch.randn(T, N, 5)
    h0 = torch.randn(2, N, H) * 0.5
    lengths = [4, 1, 3] if packed else None
    got = _grads(ours, x.to(DEVICE), h0.to(DEVICE), lengths)
    expected = _grads(ref, x.double(), h0.double(), lengths)
    for name in expected:
        assert rel_err(got[name], expected[name]) < 5e-3, name
    assert set(two_dimensional_routing) == {"rnn_forward_split_2d_kernel",
                                            "rnn_backward_split_2d_kernel"}


def test_a_device_that_cannot_hold_it_runs_the_one_dimensional_form(two_dimensional_routing,
                                                                      monkeypatch):
    """Where the device holds fewer programs than the split in two dimensions has (here 5:
    its 6 at H = 40, row blocks of 16 times 2 parts) and more than its one-dimensional form's,
    both passes run the one-dimensional form (split_dot.py), not streaming, and match float64
    nn.RNN to TF32's rounding (packed, unsorted)."""
    H, N, T = 40, 3, 4
    two_d = dispatch.choose(H, N, torch.float32, True)
    one_d = dispatch.split_with_fewer_programs(two_d, H, torch.float32, True, None)
    assert two_d.k_parts == 2 and one_d.k_parts == 1 and one_d.use_dot
    assert one_d.slices(H) < 5 < two_d.slices(H)
    monkeypatch.setattr(launch, "INTERPRETER_CAPACITY", 5)
    ours, ref = make_pair(5, H, 1, "tanh")
    x = torch.randn(T, N, 5)
    h0 = torch.randn(1, N, H) * 0.5
    got = _grads(ours, x.to(DEVICE), h0.to(DEVICE), [2, 4, 3])
    expected = _grads(ref, x.double(), h0.double(), [2, 4, 3])
    for name in expected:
        assert rel_err(got[name], expected[name]) < 5e-3, name
    assert set(two_dimensional_routing) == {"rnn_forward_split_dot_kernel",
                                            "rnn_backward_split_dot_kernel"}


@pytest.mark.parametrize("pass_", ["forward", "backward"])
def test_missing_arrival_raises_and_poisons(pass_, monkeypatch, split_launches):  # noqa: F811
    """Program (0, 0, 0) never arrives: its group's first wait runs out, the launcher raises
    SplitBarrierTimeout within seconds, and that group's results are NaN from the first step
    it could not compute (forward: the first step, whose partial sums are not all there;
    backward: the second visited, dh0 too; the first visited, into which nothing flows, is
    exact), while the other group's are the reference's."""
    proj, h0, w_hh = _layer(3, 20, 40, 1, torch.float32)  # two groups of 10 rows
    cfg = _config(40, 16, 2, 1)
    out = launch.recurrence_forward(proj, h0, w_hh, None, False, True, config=cfg)
    dout = torch.randn(out.shape)
    expected = [out] if pass_ == "forward" else list(
        launch.recurrence_backward(dout, out, w_hh, None, False, True, config=cfg))
    split_launches.clear()
    monkeypatch.setattr(split_2d, "arrive_and_wait", _arrive_unless_first_program)
    start = time.monotonic()
    with pytest.raises(SplitBarrierTimeout):
        if pass_ == "forward":
            launch.recurrence_forward(proj, h0, w_hh, None, False, True, config=cfg)
        else:
            launch.recurrence_backward(dout, out, w_hh, None, False, True, config=cfg)
    assert time.monotonic() - start < 30.0
    (grid, named), = split_launches
    rows = named["ROWS"]
    assert grid[1] == 2 and named["p_sync"][0] == 1
    names = ("p_out",) if pass_ == "forward" else ("p_dz", "p_dh0")
    for name, exp in zip(names, expected):
        got = named[name]
        if name == "p_dz":  # the backward's first visit is the last step
            assert rel_err(got[2, :rows], exp[2, :rows]) < 1e-6
            got, exp = got[:2], exp[:2]
        assert torch.isnan(got[:, :rows]).all(), name
        assert rel_err(got[:, rows:], exp[:, rows:]) < 1e-6, name


@triton.jit
def _arrive_without_waiting(p_cnt, target, MAX_POLLS: tl.constexpr):
    """A faulty barrier: arrives, and goes on at once."""
    tl.debug_barrier()
    tl.atomic_add(p_cnt, 1, sem="release", scope="gpu")
    return wait_for(p_cnt, 0, MAX_POLLS)


def test_a_barrier_that_does_not_wait_is_caught(monkeypatch):
    """The control and the fault under the same jitter: with the real barrier every seed gives
    the reference's forward; with one that does not wait, some program reads partial sums or
    a state not yet written (NaN, where the outputs were poisoned, or stale values) and the
    comparison fails for some seed."""
    proj, h0, w_hh = _layer(3, 4, 40, 1, torch.float32)
    cfg = _config(40, 16, 2, 1)
    expected = reference_forward(proj.double(), h0.double(), w_hh.double(), None, False)
    original, barrier = ci.launch, split_2d.arrive_and_wait
    wrong = []
    for seed in range(3):
        monkeypatch.setattr(ci, "launch", lambda *a, **k: original(*a, jitter=2e-3, seed=seed,
                                                                   **k))
        for arrive in (barrier, _arrive_without_waiting):
            monkeypatch.setattr(split_2d, "arrive_and_wait", arrive)
            out = launch.recurrence_forward(proj, h0, w_hh, None, False, True, config=cfg)
            off = torch.isnan(out).any() or (out.double() - expected).abs().max() > 1e-2
            if arrive is barrier:
                assert not off, f"the real barrier, seed {seed}"
            elif off:
                wrong.append(seed)
    assert wrong, "no seed showed the barrier that does not wait"


@pytest.mark.parametrize("dtype,allow_tf32,H,N,arch,k_parts", [
    (torch.float32, True, 2048, 64, 90, 8), (torch.float32, True, 2048, 17, 90, 8),
    (torch.float32, True, 2048, 16, 90, 1), (torch.float32, True, 1040, 32, 90, 1),
    (torch.float32, True, 1040, 33, 90, 8), (torch.float32, True, 1024, 256, 80, 4),
    (torch.float32, True, 1024, 48, 90, 1), (torch.float32, True, 1024, 49, 90, 4),
    (torch.float32, True, 768, 49, 90, 4), (torch.float32, True, 528, 64, 90, 1),
    (torch.bfloat16, False, 2048, 64, 80, 4), (torch.bfloat16, False, 2048, 32, 90, 1),
    (torch.bfloat16, False, 2048, 33, 90, 4), (torch.bfloat16, False, 1040, 64, 90, 1),
    (torch.float16, False, 1504, 64, 90, 4), (torch.float16, False, 1500, 64, 90, 1),
    (torch.float32, True, 600, 96, 90, 4), (torch.float32, True, 600, 64, 90, 1),
    (torch.bfloat16, False, 1024, 64, 90, 1), (torch.float32, False, 2048, 64, 90, 1),
    (torch.float32, True, 2048, 64, 86, 1)])
def test_dispatch_rule(dtype, allow_tf32, H, N, arch, k_parts):
    """The tensor-core split of TF32 H 1024-2048 and 16-bit H 2048 runs in two dimensions
    where each group of the one-dimensional form would hold more than 16 rows (TF32 at
    BH = 1024: 24), its groups sized for one program an SM of an H100 (A100: 108 SMs): tf32
    H = 2048 from batch 17 (128 slices: one group), H = 1040 from 33 (65: two groups), 1024
    from 49, bf16 H = 2048 from 33, bf16 H = 1040 not at 64 (33 slices: four groups of 16).
    Below that, in IEEE fp32, at 16-bit H = 1024, at a hidden size past 1024 that is not a
    multiple of 16 and where shared memory per block is sm_86's 99 KB, the one-dimensional
    form runs."""
    cfg = dispatch.choose(H, N, dtype, allow_tf32, arch=arch)
    assert cfg.variant == "split" and cfg.k_parts == k_parts
    if k_parts > 1:
        assert cfg.slices(H) == -(-H // cfg.R) * k_parts and cfg.features == cfg.R // k_parts
        assert cfg.BH // k_parts * cfg.R * (2 if dtype.itemsize == 2 else 4) <= 128 * 1024


@pytest.mark.parametrize("dtype,allow_tf32,H,N,one_direction,two_directions", [
    (torch.float32, True, 1024, 25, 1, 4), (torch.float32, True, 1024, 24, 1, 1),
    (torch.float32, True, 1024, 49, 4, 4), (torch.bfloat16, False, 2048, 17, 1, 4),
    (torch.bfloat16, False, 2048, 16, 1, 1), (torch.float32, True, 2048, 17, 8, 8),
    (torch.float32, True, 2048, 16, 1, 1)])
def test_dispatch_rule_counts_the_directions_of_a_launch(dtype, allow_tf32, H, N,
                                                         one_direction, two_directions):
    """Two directions that share a launch (the one-dimensional form's slices of both fit:
    tf32 H = 1024 and bf16 H = 2048, 64 a direction) leave each direction half the batch
    groups, so the rows a group holds pass the threshold at half the batch (tf32 H = 1024:
    one group of 25 rows, not two of 13); at tf32 H = 2048 (128 slices: a launch a direction)
    the directions change nothing."""
    parts = [dispatch.choose(H, N, dtype, allow_tf32, arch=90, directions=D).k_parts
             for D in (1, 2)]
    assert parts == [one_direction, two_directions]
