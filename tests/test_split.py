"""The split variant (kernels/split.py) against torch.nn.RNN and the float64 reference, run
under the concurrent interpreter (one thread per program, kernels/concurrent_interpreter.py).

Slice counts S = ceil(H / R) are reached by forcing R, the rows of W_hh per program, through
the dispatcher; the launcher then sizes the batch groups from the (interpreter's) capacity."""
import dataclasses
import warnings

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import triton_rnn.kernels.launch as launch
from conftest import DEVICE
from helpers import make_pair, rel_err
from triton_rnn.kernels import dispatch
from triton_rnn.kernels.dispatch import choose, choose_split
# The plain-PyTorch statement of the recurrences, imported before conftest guards the module's
# names against CPU tensors reaching them instead of the kernels.
from triton_rnn.reference import recurrence_backward as reference_backward
from triton_rnn.reference import recurrence_forward as reference_forward

# (H, R) -> S: one slice, two, three ragged, four, eight ragged.
SLICES = {1: (20, 32), 2: (20, 16), 3: (20, 8), 4: (32, 8), 8: (30, 4)}


@pytest.fixture
def split_rows(monkeypatch):
    """force(R): every layer runs the split variant with R rows of W_hh per program."""
    def force(rows):
        monkeypatch.setattr(launch, "choose", lambda H, N, dtype, allow_tf32=True, split=True,
                            arch=None, gates=1, pass_="forward", directions=1:
                            choose_split(max(16, 1 << (H - 1).bit_length()), dtype, rows,
                                         allow_tf32)
                            if split else choose(H, N, dtype, allow_tf32, split, arch))
    return force


def _grads(model, x, h0, packed_lengths=None):
    """Output, h_n and the gradients of a random functional of both, for every input."""
    x, h0 = x.detach().requires_grad_(), h0.detach().requires_grad_()
    inp = x if packed_lengths is None else pack_padded_sequence(x, packed_lengths,
                                                                 enforce_sorted=False)
    out, h_n = model(inp, h0)
    out = out if packed_lengths is None else out.data
    g = torch.Generator().manual_seed(1)
    w_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out)
    w_h = torch.randn(h_n.shape, generator=g, dtype=torch.float64).to(h_n)
    ((out * w_out).sum() + (h_n * w_h).sum()).backward()
    return {"output": out, "h_n": h_n, "input": x.grad, "h0": h0.grad,
            **{n: p.grad for n, p in model.named_parameters()}}


# Every slice count; tanh and relu, padded and packed each at a ragged and an even count.
MODULE_CASES = [(1, "tanh", False), (2, "relu", True), (3, "tanh", True), (3, "relu", False),
                (4, "relu", False), (4, "tanh", True), (8, "tanh", False)]


@pytest.mark.parametrize("S,act,packed", MODULE_CASES,
                         ids=[f"S{s}-{a}-{'packed' if p else 'padded'}" for s, a, p in MODULE_CASES])
def test_module_matches_nn_rnn(S, act, packed, split_rows):
    """A bidirectional layer, h0 given, several batch groups: output, h_n and the gradient
    of every input and parameter equal float64 nn.RNN's (a second layer would hand the kernels
    nothing new: the option grids stack layers)."""
    H, R = SLICES[S]
    split_rows(R)
    assert -(-H // R) == S
    ours, ref = make_pair(3, H, 1, act, bidirectional=True, dtype=torch.float64)
    N, T = 3, 4
    x = torch.randn(T, N, 3, dtype=torch.float64)
    h0 = torch.randn(2, N, H, dtype=torch.float64) * 0.5
    lengths = [4, 1, 3] if packed else None
    got = _grads(ours, x.to(DEVICE), h0.to(DEVICE), lengths)
    expected = _grads(ref, x, h0, lengths)
    for name in expected:
        assert rel_err(got[name], expected[name]) < 1e-9, name


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2),
                                       (torch.float16, 4e-3)], ids=["fp32", "bf16", "fp16"])
def test_launcher_matches_reference_in_every_dtype(dtype, tol):
    """The launcher directly (forward and backward, both directions, packed lengths), against
    the reference in float64 on the same rounded inputs. 16-bit layers exchange h (and dz) in
    their own dtype, so their bound is the dtype's."""
    T, N, H, D = 5, 3, 40, 2
    torch.manual_seed(0)
    proj = torch.randn(T, N, D * H).to(dtype)
    h0 = torch.randn(D, N, H).to(dtype)
    w_hh = (torch.randn(D, H, H) / H ** 0.5).to(dtype)
    lengths = torch.tensor([5, 2, 4], dtype=torch.int32)
    cfg = choose_split(64, dtype, rows=16, allow_tf32=False)
    assert cfg.use_dot == (dtype != torch.float32)  # IEEE fp32: one row at a time
    _check_against_reference(proj, h0, w_hh, lengths, cfg, False, tol)


def _check_against_reference(proj, h0, w_hh, lengths, cfg, allow_tf32, tol):
    """The launcher's forward, then its backward of a random dout, against the float64
    reference on the same rounded inputs (tanh)."""
    out = launch.recurrence_forward(proj, h0, w_hh, lengths, False, allow_tf32, config=cfg)
    expected = reference_forward(proj.double(), h0.double(), w_hh.double(), lengths, False)
    assert rel_err(out, expected) < tol
    dout = torch.randn(out.shape).to(out.dtype)
    dz, dh0 = launch.recurrence_backward(dout, out, w_hh, lengths, False, allow_tf32,
                                         config=cfg)
    exp_dz, exp_dh0 = reference_backward(dout.double(), out.double(), w_hh.double(), lengths,
                                         False)
    assert rel_err(dz, exp_dz) < tol and rel_err(dh0, exp_dh0) < tol


@pytest.mark.parametrize("dtype,tol,N,b_shared",
                         [(torch.float32, 3e-3, 1, False), (torch.bfloat16, 3e-2, 20, False),
                          (torch.float32, 3e-3, 20, True)],
                         ids=["tf32-batch-1", "bf16-two-tiles-per-group",
                              "tf32-b-shared-two-tiles"])
def test_tensor_core_split_row_tiles(dtype, tol, N, b_shared, monkeypatch):
    """The tensor-core split (split_dot.py) with tiles of 16 rows: a batch of 1 (one tile, 15
    rows masked) and one of 20 in one group, taken as two tiles (16, then 4), with B held in
    registers (while loops) and in shared memory (for loops; what TF32 at BH = 2048 runs):
    forward and backward, both directions, packed lengths, against the float64
    reference on the same rounded inputs (TF32 products for float32)."""
    monkeypatch.setattr(launch, "INTERPRETER_MAX_GROUPS", 1)
    T, H, D = 4, 40, 2
    torch.manual_seed(2)
    proj = torch.randn(T, N, D * H).to(dtype)
    h0 = torch.randn(D, N, H).to(dtype)
    w_hh = (torch.randn(D, H, H) / H ** 0.5).to(dtype)
    lengths = torch.randint(1, T + 1, (N,), dtype=torch.int32)
    cfg = dataclasses.replace(choose_split(64, dtype, rows=16), b_shared=b_shared)
    assert cfg.use_dot
    _check_against_reference(proj, h0, w_hh, lengths, cfg, True, tol)


def test_tensor_core_split_backward_starts_from_zero_whatever_the_weights():
    """An Inf in W_hh: the first visited step's dz is act'(y) dY, finite as the reference's,
    in both directions (nothing flows into it: a zero, not the product of zeros with the
    weights, which would be NaN); every later element agrees with the reference, NaN or not."""
    cfg = choose_split(64, torch.bfloat16, rows=16)
    torch.manual_seed(3)
    T, N, H = 3, 2, 40
    out = torch.randn(T, N, 2 * H).tanh().bfloat16()
    dout = torch.randn(T, N, 2 * H).bfloat16()
    w_hh = (torch.randn(2, H, H) / H ** 0.5).bfloat16()
    w_hh[:, 5, 7] = float("inf")
    dz, dh0 = launch.recurrence_backward(dout, out, w_hh, None, False, False, config=cfg)
    exp_dz, exp_dh0 = reference_backward(dout.double(), out.double(), w_hh.double(), None,
                                         False)
    first = {0: T - 1, 1: 0}  # the step each direction's backward visits first
    for d, t in first.items():
        got = dz[t, :, d * H:(d + 1) * H]
        assert torch.isfinite(got).all() and rel_err(got, exp_dz[t, :, d * H:(d + 1) * H]) < 3e-2
    assert torch.equal(dz.double().isnan(), exp_dz.isnan())
    assert torch.equal(dh0.double().isnan(), exp_dh0.isnan())


def test_tensor_core_split_with_no_steps():
    """T = 0 through the launcher (the module refuses it; the kernels must not read a step
    before their loop): no output steps, and dh0 is the zero gradient carried into no step."""
    cfg = choose_split(64, torch.bfloat16, rows=16)
    proj, h0 = torch.zeros(0, 3, 40, dtype=torch.bfloat16), torch.ones(1, 3, 40).bfloat16()
    w_hh = torch.ones(1, 40, 40, dtype=torch.bfloat16)
    out = launch.recurrence_forward(proj, h0, w_hh, None, False, False, config=cfg)
    assert out.shape == (0, 3, 40)
    dz, dh0 = launch.recurrence_backward(torch.zeros_like(out), out, w_hh, None, False, False,
                                         config=cfg)
    assert dz.shape == (0, 3, 40) and torch.equal(dh0, torch.zeros_like(dh0))


def test_tensor_core_split_forced_on_ieee_float32_multiplies_in_ieee():
    """A tensor-core split configuration forced on IEEE float32 multiplies in IEEE (tl.dot with
    input_precision="ieee", FMA on CUDA cores: what the gated layers run at H 513-1024): the
    float64 reference's result to fp32's rounding, never a TF32 result (~1e-3 off) where IEEE
    was asked for. On float64 it is an error."""
    cfg = choose_split(64, torch.float32, rows=16, allow_tf32=True)
    g = torch.Generator().manual_seed(0)
    proj, h0 = torch.randn(3, 17, 40, generator=g), torch.randn(1, 17, 40, generator=g)
    w_hh = torch.randn(1, 40, 40, generator=g) * 40 ** -0.5
    out = launch.recurrence_forward(proj, h0, w_hh, None, False, False, config=cfg)
    expected = reference_forward(proj.double(), h0.double(), w_hh.double(), None, False)
    assert rel_err(out.double(), expected) < 1e-6
    with pytest.raises(ValueError, match="float64 runs split.py"):
        launch.recurrence_forward(proj.double(), h0.double(), w_hh.double(), None, False,
                                  False, config=cfg)


@pytest.mark.parametrize("capacity,launches", [(8, 1), (5, 2), (2, "fallback")],
                         ids=["one-launch", "launch-per-direction", "falls-back"])
def test_launch_plan_follows_capacity(capacity, launches, monkeypatch):
    """S = 3 slices, 2 directions: both directions in one launch while 6 programs fit, one
    launch per direction while 3 fit, and the dispatcher's choice without split (streaming for
    real split sizes; resident for this small H) when not even S fit at once.
    Every plan gives the reference's result."""
    monkeypatch.setattr(launch, "INTERPRETER_CAPACITY", capacity)
    grids = []
    real_launch = launch.concurrent_interpreter.launch
    monkeypatch.setattr(launch.concurrent_interpreter, "launch",
                        lambda kernel, grid, *a, **k: grids.append(grid) or
                        real_launch(kernel, grid, *a, **k))
    T, N, H, D = 3, 2, 20, 2
    torch.manual_seed(1)
    proj, h0 = torch.randn(T, N, D * H, dtype=torch.float64), torch.randn(D, N, H).double()
    w_hh = torch.randn(D, H, H, dtype=torch.float64) / H ** 0.5
    out = launch.recurrence_forward(proj, h0, w_hh, None, True, False,
                                    config=choose_split(32, torch.float64, rows=8))
    assert rel_err(out, reference_forward(proj, h0, w_hh, None, True)) < 1e-12
    if launches == "fallback":
        assert grids == []
    else:
        assert len(grids) == launches and all(s * g * d <= capacity for s, g, d in grids)


@pytest.mark.parametrize("driver_holds", [3, 2], ids=["plans-again", "falls-back"])
def test_a_refused_cooperative_launch_plans_again_or_falls_back(driver_holds, monkeypatch):
    """The occupancy says 132 programs fit, the driver refuses any grid of more than
    `driver_holds` (as under MPS): the launch is planned again with fewer programs (S = 3, one
    direction per launch) or, when not even S fit, runs without split; the result is the
    reference's, one warning says so, and the next call goes straight to what was granted."""
    monkeypatch.setattr(launch, "_refused", {})
    monkeypatch.setattr(launch, "_warned_refusal", set())
    asked, granted = [], []
    real_launch = launch.concurrent_interpreter.launch

    def driver(kernel, grid, *a, **k):
        asked.append(grid)
        if grid[0] * grid[1] * grid[2] > driver_holds:
            raise RuntimeError("Triton Error [CUDA]: too many blocks in cooperative launch")
        granted.append(grid)
        return real_launch(kernel, grid, *a, **k)
    monkeypatch.setattr(launch.concurrent_interpreter, "launch", driver)
    T, N, H, D = 3, 2, 20, 2
    torch.manual_seed(1)
    proj, h0 = torch.randn(T, N, D * H, dtype=torch.float64), torch.randn(D, N, H).double()
    w_hh = torch.randn(D, H, H, dtype=torch.float64) / H ** 0.5
    cfg = choose_split(32, torch.float64, rows=8)
    with pytest.warns(UserWarning, match="refused a cooperative launch of 12 programs"):
        out = launch.recurrence_forward(proj, h0, w_hh, None, True, False, config=cfg)
    assert rel_err(out, reference_forward(proj, h0, w_hh, None, True)) < 1e-12
    assert granted == ([(3, 1, 1), (3, 1, 1)] if driver_holds == 3 else [])
    asked.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once
        out = launch.recurrence_forward(proj, h0, w_hh, None, True, False, config=cfg)
    assert rel_err(out, reference_forward(proj, h0, w_hh, None, True)) < 1e-12
    assert asked == ([(3, 1, 1), (3, 1, 1)] if driver_holds == 3 else [])


def test_split_plan():
    """Groups as many as fit (rows spread evenly), both directions in one launch if they fit."""
    assert launch.split_plan(S=128, N=16, D=1, capacity=132) == (1, 16, 1)
    assert launch.split_plan(S=128, N=16, D=2, capacity=132) == (1, 16, 1)
    assert launch.split_plan(S=8, N=64, D=2, capacity=132) == (8, 8, 2)
    assert launch.split_plan(S=8, N=5, D=2, capacity=132) == (5, 1, 2)
    assert launch.split_plan(S=33, N=7, D=2, capacity=132) == (2, 4, 2)
    assert launch.split_plan(S=133, N=1, D=1, capacity=132) is None


@pytest.mark.parametrize("dtype,largest", [(torch.float32, 2048), (torch.bfloat16, 2048),
                                           (torch.float16, 2048), (torch.float64, 1024)],
                         ids=["fp32", "bf16", "fp16", "fp64"])
def test_dispatch_rule(dtype, largest):
    """resident while one program holds W_hh, split up to the largest on-chip H, streaming
    beyond; split tiles have at least 8 rows and every row slice count fits an H100."""
    resident_max = dispatch.RESIDENT_MAX_BH[dtype.itemsize]
    assert choose(resident_max, 16, dtype).variant == "resident"
    for H in (resident_max + 1, largest // 2 + 3, largest):
        cfg = choose(H, 16, dtype)
        assert cfg.variant == "split" and cfg.R >= 8 and -(-H // cfg.R) <= 132, (H, cfg)
    assert choose(largest + 1, 16, dtype).variant == "streaming"


@pytest.mark.parametrize("arch,k_chunks", [(90, 2), (80, 4), (None, 2), (89, None), (75, None)])
def test_tf32_at_2048_keeps_w_hh_in_shared_memory_where_it_fits(arch, k_chunks):
    """TF32 at BH = 2048: the tensor-core split with B in shared memory (128 KB) and the fewest
    state chunks whose staging fits beside it in the architecture's shared memory per block
    (the interpreter, arch None, as sm_90); split.py, one row at a time, where even 4 chunks
    do not fit (sm_89: 99 KB, sm_75: 64 KB). Other dtypes and sizes keep B in registers."""
    cfg = choose(2048, 16, torch.float32, True, arch=arch)
    if k_chunks is None:
        assert cfg.variant == "split" and not cfg.use_dot and not cfg.b_shared
    else:
        assert cfg.use_dot and cfg.b_shared and cfg.k_chunks == k_chunks
        staged = cfg.R * cfg.BH * 4 + cfg.BH * cfg.BN * 4 // cfg.k_chunks
        assert staged <= dispatch.SHARED_PER_BLOCK.get(arch or 90)
    assert not choose(1024, 16, torch.float32, True, arch=arch).b_shared
    assert not choose(2048, 16, torch.bfloat16, arch=arch).b_shared


def test_ragged_hidden_sizes_are_told_their_alignment():
    """A split launch tells the compiler the largest power of two (under 16) dividing its
    hidden size and row strides, and each stride of W_hh (blocks.aligned): 1 where the JIT's
    own mark of multiples of 16 holds. 16-bit at a ragged H with BH = 2048 keeps W_hh in shared
    memory where the device holds it (its registers spilled 40-80 B on Triton 3.6), in
    registers where not; TF32 as at H = 2048."""
    assert [launch._alignment(*v) for v in ((1100,), (1100, 2200), (1998,), (1999,), (2048,),
                                            (1104, 1100), (40, 80), (1,), (0,))] == \
        [4, 4, 2, 1, 1, 4, 8, 1, 1]
    for arch, shared in ((90, True), (80, True), (89, False)):
        cfg = choose(1100, 16, torch.bfloat16, arch=arch)
        assert cfg.use_dot and cfg.b_shared == shared and cfg.k_chunks >= 2 * shared
    assert not choose(2048, 16, torch.bfloat16, arch=90).b_shared
    assert choose(1100, 16, torch.float32, True, arch=90) == choose(2048, 16, torch.float32,
                                                                     True, arch=90)


def test_h_equal_to_slice_multiple_and_batch_one(split_rows):
    """H a multiple of R (no ragged slice) and a batch of one, float32 IEEE."""
    split_rows(8)
    ours, ref = make_pair(2, 24, 1, bidirectional=True, dtype=torch.float32)
    x = torch.randn(6, 1, 2, dtype=torch.float64)
    with torch.backends.cudnn.flags(allow_tf32=False):
        out, h_n = ours(x.to(DEVICE, torch.float32))
    ref_out, ref_h = ref(x)
    assert rel_err(out, ref_out) < 1e-5 and rel_err(h_n, ref_h) < 1e-5
