"""One numerics contract for every kernel path (kernels/blocks.py): the state stays in the
accumulator dtype, and the product's operands are rounded as the tensor cores take them, to
the weight dtype (16-bit) or to TF32 with round-to-nearest, ties away from zero (float32 with
TF32 allowed), whatever the batch tile, variant or pass. So:
- TF32 results match a float64 reference whose operands are rounded that way (written here in
  torch integer arithmetic) to fp32 accumulation noise, and do not match truncated operands;
- a batch of 15 (elementwise product) and of 16 (tl.dot) give the same rows, and the resident,
  split and streaming variants give the same results, to accumulation-order noise.
Launchers are called directly (as in test_split.py), their outputs poisoned by conftest.
"""
import pytest
import torch

import triton_rnn.kernels.launch as launch
from helpers import rel_err
from triton_rnn.kernels.dispatch import STREAM_CHUNK, Config, choose, choose_split

DTYPES = {"tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def rna_tf32(x: torch.Tensor) -> torch.Tensor:
    """float32 -> nearest TF32, ties away from zero (PTX cvt.rna.tf32.f32); NaN kept."""
    bits = x.float().contiguous().view(torch.int32)
    rounded = ((bits + 0x1000) & -0x2000).view(torch.float32)
    return torch.where(x.isnan(), x.float(), rounded)


def truncated_tf32(x: torch.Tensor) -> torch.Tensor:
    """float32 -> TF32 by dropping the low 13 mantissa bits (a tensor core fed raw fp32)."""
    return (x.float().contiguous().view(torch.int32) & -0x2000).view(torch.float32)


def _ieee(x):
    return x.float()


def reference_forward(proj, h0, w_hh, op, out):
    """h_t = tanh(P_t + op(h_{t-1}) op(W_hh)ᵀ) in float64, one direction, where op rounds an
    operand and h_{t-1} is the kernel's own previous state (`out`, float32 as the kernel holds
    it): each step is checked alone, so fp32 noise cannot move an operand across a rounding
    boundary and fail the comparison by a TF32 ulp."""
    w = op(w_hh[0]).double()
    prev = torch.cat([h0, out[:-1]])
    return torch.tanh(proj.double() + op(prev).double() @ w.T)


def reference_backward(dout, out, w_hh, op, dz):
    """dz_t = (dY_t + c_t)(1 - y_t²), c_{t-1} = op(dz_t) op(W_hh), in float64, the carried
    gradient computed from the kernel's own dz_t (as reference_forward): (dz, dh0)."""
    w = op(w_hh[0]).double()
    carried = op(dz).double() @ w  # c_{t-1} for every t; c_{-1} is dh0
    c = torch.cat([carried[1:], torch.zeros_like(carried[:1])])
    return (dout.double() + c) * (1 - out.double() ** 2), carried[:1]


def _inputs(T, N, H, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    proj = torch.randn(T, N, H, generator=g).to(dtype)
    h0 = (torch.randn(1, N, H, generator=g) * 0.5).to(dtype)
    w_hh = (torch.randn(1, H, H, generator=g) * 1.5 / H ** 0.5).to(dtype)
    dout = torch.randn(T, N, H, generator=g).to(dtype)
    return proj, h0, w_hh, dout


def _configs(H, N, dtype):
    """Every variant the launcher can be forced to run at this size: the dispatcher's resident
    choice, split (three slices and more; on tensor cores, and "split-rows": one row at a
    time, split.py, what TF32 runs at H = 2048 on GPUs with under 160 KB of shared
    memory per block) and streaming."""
    BH = max(16, 1 << (H - 1).bit_length())
    use_dot = N >= 16
    return {"resident": choose(H, N, dtype, True),
            "split": choose_split(BH, dtype, rows=16),
            "split-rows": Config("split", False, 1, BH, 4, num_stages=1, R=16),
            "streaming": Config("streaming", use_dot, 16 if use_dot else 1, STREAM_CHUNK, 4, 2)}


def _run(cfg, proj, h0, w_hh, dout, out=None):
    """(out, dz, dh0) of one variant; the backward uses `out` if given (the same y for all)."""
    fwd = launch.recurrence_forward(proj, h0, w_hh, None, False, True, config=cfg)
    dz, dh0 = launch.recurrence_backward(dout, fwd if out is None else out, w_hh, None, False,
                                         True, config=cfg)
    return fwd, dz, dh0


# ----- TF32: round to nearest, ties away, in every path -------------------------------------

# split.py ("split-rows") multiplies one row at a time whatever the batch: one batch size.
@pytest.mark.parametrize("variant,N", [(v, n) for v in ("resident", "split", "streaming")
                                       for n in (3, 16)] + [("split-rows", 3)],
                         ids=lambda x: {3: "elementwise", 16: "dot"}.get(x, x))
def test_tf32_operands_rounded_to_nearest(variant, N):
    """float32 with TF32 allowed: each path's forward output and backward dz, dh0 equal the
    float64 recurrence on rna-rounded W_hh and state to fp32 noise, and are measurably off
    the truncated-operand and the unrounded (IEEE) recurrences."""
    T, H = 5, 40
    cfg = _configs(H, N, torch.float32)[variant]
    assert cfg.variant == variant.split("-")[0]
    proj, h0, w_hh, dout = _inputs(T, N, H, torch.float32)
    out, dz, dh0 = _run(cfg, proj, h0, w_hh, dout)
    errors = {}
    for name, op in (("rna", rna_tf32), ("truncated", truncated_tf32), ("ieee", _ieee)):
        ref_out = reference_forward(proj, h0, w_hh, op, out)
        ref_dz, ref_dh0 = reference_backward(dout, out, w_hh, op, dz)
        errors[name] = (rel_err(out, ref_out), rel_err(dz, ref_dz), rel_err(dh0, ref_dh0))
    assert max(errors["rna"]) < 1e-6, errors
    for other in ("truncated", "ieee"):
        assert min(errors[other]) > 20 * max(errors["rna"]), errors


@pytest.mark.parametrize("N", [3, 16], ids=["elementwise", "dot"])
def test_tf32_cell_rounds_operands_to_nearest(N):
    """The RNNCell kernel rounds x, h and both weights to TF32 the same way."""
    I, H = 24, 40
    g = torch.Generator().manual_seed(1)
    x, h = torch.randn(N, I, generator=g), torch.randn(N, H, generator=g)
    w_ih = torch.randn(H, I, generator=g) / I ** 0.5
    w_hh = torch.randn(H, H, generator=g) / H ** 0.5
    b_ih, b_hh = torch.randn(H, generator=g), torch.randn(H, generator=g)
    got = launch.rnn_cell_forward(x, h, w_ih, w_hh, b_ih, b_hh, False, True)
    errors = {}
    for name, op in (("rna", rna_tf32), ("truncated", truncated_tf32), ("ieee", _ieee)):
        z = (op(x).double() @ op(w_ih).double().T + op(h).double() @ op(w_hh).double().T
             + b_ih.double() + b_hh.double())
        errors[name] = rel_err(got, torch.tanh(z))
    assert errors["rna"] < 1e-6, errors
    assert errors["truncated"] > 20 * errors["rna"] and errors["ieee"] > 20 * errors["rna"], \
        errors


def test_tf32_rounding_keeps_special_values():
    """Inf and NaN pass through the rounding (a NaN whose payload lies in the bits that are
    cleared stays NaN, not Inf): h0 feeds the first product."""
    T, N, H = 2, 16, 16
    proj, h0, w_hh, dout = _inputs(T, N, H, torch.float32)
    h0.view(torch.int32)[0, 0, 0] = 0x7F800001  # a NaN whose payload is all in the low bits
    h0[0, 1, 0] = float("inf")
    for cfg in (choose(H, N, torch.float32, True), choose(H, 1, torch.float32, True)):
        out = launch.recurrence_forward(proj, h0, w_hh, None, False, True, config=cfg)
        assert out[:, 0].isnan().all() and not out[:, 2:].isnan().any(), cfg
        assert not out[0, 1].isnan().all(), cfg  # Inf times a weight is ±Inf, tanh ±1 or NaN


# ----- the same products in every path ------------------------------------------------------

# Agreement between paths: accumulation-order noise, which now and then moves a value across
# a rounding boundary of an operand (one TF32 ulp, ~3e-5 relative here) or of a 16-bit output
# (one ulp, carried into the later steps): never systematically. A path that multiplied
# unrounded (or truncated) operands differs by 3e-4 (tf32) to 4e-3 (bf16) relative.
AGREE = {"tf32": 1e-4, "bf16": 1e-3, "fp16": 2e-4}


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("H,variant", [(40, "resident"), (40, "streaming")],
                         ids=["resident-H40", "streaming-H40"])
def test_batch_15_and_16_give_the_same_rows(dtype_name, H, variant, small_variant):
    """Batch 15 runs the elementwise product (BN = 1), batch 16 tl.dot (BN = 16): the first
    15 rows of the batch-16 run equal the batch-15 run, forward (out) and backward (dz, dh0)."""
    dtype = DTYPES[dtype_name]
    if variant == "streaming":
        small_variant(variant)
    T = 2  # h0 is not zero: both steps' products read a state
    proj, h0, w_hh, dout = _inputs(T, 16, H, dtype)
    cfgs = [choose(H, n, dtype, True) for n in (15, 16)]
    assert [c.variant for c in cfgs] == [variant] * 2 and [c.use_dot for c in cfgs] == [False,
                                                                                         True]
    out16, dz16, dh016 = _run(cfgs[1], proj, h0, w_hh, dout)
    # the backward of both on the same y, so that it compares the backward alone
    out15, dz15, dh015 = _run(cfgs[0], proj[:, :15], h0[:, :15], w_hh, dout[:, :15],
                              out16[:, :15])
    out15_own = launch.recurrence_forward(proj[:, :15], h0[:, :15], w_hh, None, False, True,
                                          config=cfgs[0])
    errors = (rel_err(out15_own, out16[:, :15]), rel_err(dz15, dz16[:, :15]),
              rel_err(dh015, dh016[:, :15]))
    assert max(errors) < AGREE[dtype_name], errors


@pytest.mark.resident
@pytest.mark.split
@pytest.mark.streaming
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("N", [3, 16], ids=["N3", "N16"])
def test_variants_give_the_same_results(dtype_name, N):
    """Resident, split and streaming on the same inputs: the same out, dz and dh0 (the
    backward of each on the resident forward's y). Split exchanges h and dz through its 16-bit
    outputs: the operand rounding every path applies anyway."""
    dtype = DTYPES[dtype_name]
    T, H = 4, 40
    proj, h0, w_hh, dout = _inputs(T, N, H, dtype, seed=2)
    cfgs = _configs(H, N, dtype)
    base = _run(cfgs["resident"], proj, h0, w_hh, dout)
    for name in ("split", "streaming"):
        got = _run(cfgs[name], proj, h0, w_hh, dout, base[0])
        errors = [rel_err(a, b) for a, b in zip(got, base)]
        assert max(errors) < AGREE[dtype_name], (name, errors)
