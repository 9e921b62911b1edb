"""LSTM layers on the split variant (kernels/split_dot.py on tensor cores, kernels/split.py one
batch row at a time in IEEE fp32 and fp64, both with CELL = LSTM): every gate's rows of a
feature in the program that owns it, c kept there in fp32, only h exchanged (forward) and
every gate's dz (backward, K = 4H).

Through the concurrent interpreter at H = 40 (the dispatcher's resident limit lowered:
small_variant), whose tensor-core split rounds its operands exactly as the resident kernels'
tl.dot does: TF32 results equal the resident kernels' up to the order of fp32 sums. The
natural limits (H 65-512 in 16-bit and TF32) are asserted below; the compile gate compiles the
largest (kernels/report.py, LSTM_SHAPES)."""
import time
from dataclasses import replace

import pytest
import torch
from torch import nn

import triton_rnn
from conftest import DEVICE
from helpers import rel_err
# the references themselves, bound before conftest's guard wraps them (a guarded call with
# tensors the kernels handle fails the test: here they are the comparison, on purpose)
from triton_rnn.reference import lstm_backward as reference_backward
from triton_rnn.reference import lstm_forward as reference_forward
from triton_rnn.kernels import concurrent_interpreter as ci
from triton_rnn.kernels import dispatch, launch, split, split_2d, split_dot
from triton_rnn.kernels.dispatch import Config, choose, choose_split, choose_split_dot
from triton_rnn.kernels.failures import SplitBarrierTimeout

from test_concurrent_interpreter import SENTINEL, _arrive_unless_first_program

H = 40


def _layer(T, N, D, dtype, packed, hidden=H, seed=0):
    """One LSTM layer's kernel inputs: projections, h0, c0, W_hh, b_hh, lengths (unsorted)."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, dtype=torch.float64, generator=g) * scale).to(dtype)

    projs = [randn(T, N, 4 * hidden) for _ in range(D)]
    weights = [randn(4 * hidden, hidden, scale=hidden ** -0.5) for _ in range(D)]
    biases = [randn(4 * hidden) for _ in range(D)]
    h0, c0 = randn(D, N, hidden), randn(D, N, hidden)
    lengths = torch.randint(1, T + 1, (N,), generator=g, dtype=torch.int32) if packed else None
    return projs, h0, c0, weights, biases, lengths


def _gradients(out, seed=1):
    """dL/dout and dL/dcells: random, in the layer's dtype."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)
            for _ in range(2)]


def _run(layer, allow_tf32=True):
    """(out, cells, gates, dz, dh0, dc0) of the launchers."""
    projs, h0, c0, weights, biases, lengths = layer
    out, cells, gates = launch.lstm_forward(projs, h0, c0, weights, lengths, allow_tf32,
                                            b_hh=biases)
    return (out, cells, gates, *launch.lstm_backward(*_gradients(out), out, cells, gates, c0,
                                                     weights, lengths, allow_tf32))


def _reference(layer, result):
    """The float64 reference of _run on the same inputs and gradients (its backward from the
    kernels' own saved states and gates, as the backward kernel reads them)."""
    projs, h0, c0, weights, biases, lengths = layer
    wide = lambda ts: [t.double() for t in ts]  # noqa: E731
    forward = reference_forward(wide(projs), h0.double(), c0.double(), wide(weights),
                                     lengths, b_hh=wide(biases))
    out, cells, gates = (t.double() for t in result[:3])
    return (*forward, *reference_backward(*wide(_gradients(result[0])), out, cells, gates,
                                          c0.double(), wide(weights), lengths))


NAMES = ("out", "cells", "gates", "dz", "dh0", "dc0")


def _split_ran(launches, passes=("forward", "backward")):
    return [p for p in passes if launches[p] and launches[p][-1] == "split"]


@pytest.fixture
def variants(monkeypatch):
    """The variant each launcher ran, by pass (through _plan)."""
    ran = {"forward": [], "backward": []}
    plan = launch._plan

    def recording_plan(pass_, *args, **kwargs):
        planned = plan(pass_, *args, **kwargs)
        ran[pass_].append(planned[0].variant)
        return planned

    monkeypatch.setattr(launch, "_plan", recording_plan)
    return ran


def test_split_lstm_equals_the_resident_kernels_in_tf32(small_variant, variants):
    """Two directions, a packed (unsorted) batch, biases: the split's h, c, gates and every
    gradient are the resident kernels' (the same TF32-rounded products, summed in another
    order)."""
    layer = _layer(T=3, N=5, D=2, dtype=torch.float32, packed=True)
    resident = _run(layer)
    assert variants["forward"] == ["resident"] and variants["backward"] == ["resident"]
    small_variant("split")
    split = _run(layer)
    assert _split_ran(variants) == ["forward", "backward"]
    errors = {name: rel_err(a, b) for name, a, b in zip(NAMES, split, resident)}
    # accumulation-order noise, which now and then moves a value across a TF32 rounding
    # boundary of an operand (test_numerics.py's AGREE); unrounded operands differ by 3e-4
    assert all(e < 1e-4 for e in errors.values()), errors


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 2e-2), (torch.float16, 4e-3)],
                         ids=["bf16", "fp16"])
def test_split_lstm_row_tiles_match_float64(dtype, tol, small_variant, variants):
    """33 rows, two batch groups of 17: two row tiles in each, the second of one row; 16-bit
    values against the float64 reference on the same inputs, to the dtype's rounding."""
    small_variant("split")
    layer = _layer(T=2, N=33, D=1, dtype=dtype, packed=False)
    result = _run(layer, allow_tf32=False)
    assert _split_ran(variants) == ["forward", "backward"]
    for name, a, b in zip(NAMES, result, _reference(layer, result)):
        assert rel_err(a, b) < tol, name


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)],
                         ids=["fp64", "fp32"])
def test_split_lstm_on_cuda_cores_matches_float64(dtype, tol, small_variant, variants):
    """split.py's LSTM (IEEE fp32 and fp64, one batch row at a time), a packed unsorted batch:
    values and gradients as the float64 reference's, to the dtype's noise."""
    small_variant("split")
    layer = _layer(T=3, N=3, D=1, dtype=dtype, packed=True)
    result = _run(layer, allow_tf32=False)
    assert _split_ran(variants) == ["forward", "backward"]
    assert not choose(H, 3, dtype, False, gates=4).use_dot
    for name, a, b in zip(NAMES, result, _reference(layer, result)):
        assert rel_err(a, b) < tol, name


def test_split_lstm_forward_with_b_in_shared_memory(small_variant, variants):
    """The TF32 forward's form for BH = 1024 (B in shared memory, R = 32 rows: 8 features a
    program), here at H = 40: the same h, c and gates as the form in registers (R = 16), to
    TF32's accumulation-order noise."""
    small_variant("split")
    layer = _layer(T=3, N=17, D=1, dtype=torch.float32, packed=True)
    projs, h0, c0, weights, biases, lengths = layer
    registers = launch.lstm_forward(projs, h0, c0, weights, lengths, True, b_hh=biases)
    shared = replace(dispatch._split_dot_shared(64, 32, 90, 4, 1), gate_rows=4)
    result = launch.lstm_forward(projs, h0, c0, weights, lengths, True, shared, biases)
    assert variants["forward"][-1] == "split"
    for name, a, b in zip(NAMES, result, registers):
        assert rel_err(a, b) < 1e-4, name


def test_split_lstm_backward_with_b_in_shared_memory(small_variant, variants):
    """The backward's form for K = 4096 (B in shared memory, re-read each step, in KC = 4
    state chunks: its row-tile loop is a `for`), here at H = 40 in bf16: the same dz, dh0 and
    dc0 as the float64 reference to bf16's rounding."""
    small_variant("split")
    layer = _layer(T=3, N=5, D=1, dtype=torch.bfloat16, packed=True)
    projs, h0, c0, weights, biases, lengths = layer
    out, cells, gates = launch.lstm_forward(projs, h0, c0, weights, lengths, False,
                                            b_hh=biases)
    shared = replace(choose(H, 5, torch.bfloat16, False, gates=4, pass_="backward"),
                     b_shared=True, k_chunks=4, num_warps=16)
    result = (out, cells, gates, *launch.lstm_backward(*_gradients(out), out, cells, gates, c0,
                                                       weights, lengths, False, shared))
    for name, a, b in list(zip(NAMES, result, _reference(layer, result)))[3:]:
        assert rel_err(a, b) < 2e-2, name


def test_split_lstm_backward_in_two_dimensions(small_variant, variants, monkeypatch):
    """The TF32 backward's form past K = 1024 (split_2d.py: row blocks of W_hh's columns times
    parts of K, two barriers a visit), here at H = 40 (K = 256: 3 blocks of 16 features x 2
    parts), two directions, a packed (unsorted) batch in two groups: every saved value and
    gradient as the resident kernels', to TF32's accumulation-order noise."""
    layer = _layer(T=3, N=17, D=2, dtype=torch.float32, packed=True)
    resident = _run(layer)
    small_variant("split")
    monkeypatch.setattr(dispatch, "SPLIT_2D_GATED_BACKWARD", {(4, 256): (16, 2, 2, 4)})
    assert choose(H, 17, torch.float32, True, gates=4,
                  pass_="backward").k_parts == 2
    result = _run(layer)
    assert _split_ran(variants) == ["forward", "backward"]
    errors = {name: rel_err(a, b) for name, a, b in zip(NAMES, result, resident)}
    assert all(e < 1e-4 for e in errors.values()), errors


def test_split_lstm_16_bit_backward_in_two_dimensions(small_variant):
    """The 16-bit backward's form at K = 4096 on an A100 (split_2d.py), here at H = 40 in bf16
    (K = 256 in 4 parts of 64, 3 row blocks of 16 features): dz, dh0 and dc0 as the float64
    reference's to bf16's rounding, a packed batch."""
    small_variant("split")
    layer = _layer(T=3, N=5, D=1, dtype=torch.bfloat16, packed=True)
    projs, h0, c0, weights, biases, lengths = layer
    out, cells, gates = launch.lstm_forward(projs, h0, c0, weights, lengths, False,
                                            b_hh=biases)
    parts = Config("split", True, 16, 256, 4, num_stages=1, R=16, k_chunks=1, k_parts=4)
    result = (out, cells, gates, *launch.lstm_backward(*_gradients(out), out, cells, gates, c0,
                                                       weights, lengths, False, parts))
    for name, a, b in list(zip(NAMES, result, _reference(layer, result)))[3:]:
        assert rel_err(a, b) < 2e-2, name


def test_split_lstm_in_ieee_fp32_with_fma_products(small_variant, variants):
    """IEEE fp32 past split.py's K = 2048 (H 513-1024): the tensor-core kernels' code with IEEE
    products (tl.dot on CUDA cores), here at a ragged H = 100 (BH = 128): the forward's
    B-in-shared form in KC = 8 state chunks of 16 (13 programs of 8 features), the backward
    in two dimensions (K = 512: 4 row blocks of 32 features x 2 parts, chunks of 32); a
    packed (unsorted) batch of two row tiles. Every saved value and gradient
    is the float64 reference's to fp32's rounding, which TF32 products (~1e-3) would miss."""
    small_variant("split")
    layer = _layer(T=3, N=17, D=1, dtype=torch.float32, packed=True, hidden=100)
    projs, h0, c0, weights, biases, lengths = layer
    forward = Config("split", True, 16, 128, 1, num_stages=1, R=32, k_chunks=8, b_shared=True,
                     gate_rows=4)
    backward = Config("split", True, 16, 512, 8, num_stages=1, R=32, k_chunks=8, k_parts=2)
    out, cells, gates = launch.lstm_forward(projs, h0, c0, weights, lengths, False, forward,
                                            biases)
    result = (out, cells, gates, *launch.lstm_backward(*_gradients(out), out, cells, gates, c0,
                                                       weights, lengths, False, backward))
    assert _split_ran(variants) == ["forward", "backward"]
    errors = {name: rel_err(a, b) for name, a, b in zip(NAMES, result, _reference(layer, result))}
    assert all(e < 1e-5 for e in errors.values()), errors


def _record_plans(monkeypatch):
    """The configurations the launchers plan, in order (the variants fixture records only
    their variant names)."""
    ran, plan = [], launch._plan

    def recording_plan(*args, **kwargs):
        planned = plan(*args, **kwargs)
        ran.append(planned[0])
        return planned

    monkeypatch.setattr(launch, "_plan", recording_plan)
    return ran


def test_ieee_fp32_forward_takes_fma_products_from_a_few_batch_rows(small_variant,
                                                                    monkeypatch):
    """The IEEE fp32 forward of H 257-512 at batch IEEE_FMA_FORWARD_MIN_BATCH and more (here
    its lower BH lowered to 128: H = 100) runs the FMA form chosen by the dispatcher, the
    backward split.py, one row at a time, from what that forward saved: a packed (unsorted)
    batch of 3, every saved value and gradient the float64 reference's to fp32's rounding."""
    small_variant("split")
    monkeypatch.setattr(dispatch, "IEEE_FMA_FORWARD_MIN_BH", 128)
    ran = _record_plans(monkeypatch)
    layer = _layer(T=2, N=dispatch.IEEE_FMA_FORWARD_MIN_BATCH, D=1, dtype=torch.float32,
                   packed=True, hidden=100)
    result = _run(layer, allow_tf32=False)
    forward, backward = ran
    assert forward.variant == "split" and forward.use_dot and forward.b_shared, forward
    assert backward.variant == "split" and not backward.use_dot, backward
    errors = {name: rel_err(a, b) for name, a, b in zip(NAMES, result, _reference(layer, result))}
    assert all(e < 1e-5 for e in errors.values()), errors


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_a_gated_forward_in_two_dimensions_is_refused(cell):
    """split_2d.py has no gated forward: a configuration in two dimensions given to one is a
    ValueError before any launch, not a launch with missing arguments."""
    projs, h0, c0, weights, biases, _ = _layer(T=2, N=2, D=1, dtype=torch.float32,
                                               packed=False)
    parts = Config("split", True, 16, 64, 4, num_stages=1, R=16, k_parts=4)
    with pytest.raises(ValueError, match="not a gated forward"):
        if cell == "lstm":
            launch.lstm_forward(projs, h0, c0, weights, None, True, parts, biases)
        else:
            launch.gru_forward([p[..., :3 * H] for p in projs], h0,
                               [w[:3 * H] for w in weights], None, True, parts,
                               [b[:3 * H] for b in biases])


def test_a_device_that_cannot_hold_split_py_forward_takes_fma_products(small_variant,
                                                                       monkeypatch):
    """Where a device cannot hold one group of split.py's IEEE fp32 forward at BH = 512 (H
    433-512 on an A100; here BH lowered to 128: H = 100, 25 programs, on a device holding 13),
    the launcher runs the FMA form (13 programs of 8 features) below
    IEEE_FMA_FORWARD_MIN_BATCH too, not the streaming variant; the backward, split.py's 13
    programs, from what it saved: a packed (unsorted) batch of 2, every saved value and
    gradient the float64 reference's to fp32's rounding."""
    small_variant("split")
    monkeypatch.setattr(dispatch, "IEEE_FMA_FORWARD_MIN_BH", 128)
    monkeypatch.setattr(launch, "INTERPRETER_CAPACITY", 13)
    ran = _record_plans(monkeypatch)
    layer = _layer(T=2, N=2, D=1, dtype=torch.float32, packed=True, hidden=100)
    result = _run(layer, allow_tf32=False)
    rows, fma, backward = ran
    assert rows.variant == "split" and not rows.use_dot and rows.slices(100) > 13, rows
    assert fma.variant == "split" and fma.use_dot and fma.b_shared, fma
    assert fma.slices(100) <= 13 and backward.variant == "split" and not backward.use_dot
    errors = {name: rel_err(a, b) for name, a, b in zip(NAMES, result, _reference(layer, result))}
    assert all(e < 1e-5 for e in errors.values()), errors


@pytest.mark.parametrize("arch", [90, 80])
def test_split_with_fewer_programs_is_the_fma_forward_only(arch):
    """split_with_fewer_programs gives the IEEE fp32 gated forward of BH = 512 at batch 1 the
    FMA form with half split.py's programs; nothing for TF32, the backward, another BH, or a
    batch that already takes the FMA form."""
    def fewer(hidden, batch, tf32=False, pass_="forward", gates=4):
        cfg = choose(hidden, batch, torch.float32, tf32, arch=arch, gates=gates, pass_=pass_)
        return cfg, dispatch.split_with_fewer_programs(cfg, hidden, torch.float32, tf32, arch)

    for hidden in (433, 500, 512):
        rows, fma = fewer(hidden, 1)
        assert not rows.use_dot and fma.use_dot and fma.b_shared and fma.gate_rows == 4
        assert fma.slices(hidden) == triton_cdiv(hidden, 8) < rows.slices(hidden) == \
            triton_cdiv(hidden, 4)
        assert fma == fewer(hidden, dispatch.IEEE_FMA_FORWARD_MIN_BATCH)[0]
    assert fewer(500, 1, gates=3)[1] is not None  # the GRU's forward too
    for args in ((500, 1, True), (500, 1, False, "backward"), (200, 1), (700, 1),
                 (500, dispatch.IEEE_FMA_FORWARD_MIN_BATCH), (500, 1, False, "forward", 1)):
        assert fewer(*args)[1] is None, args


@pytest.mark.parametrize("proj", [0, 9], ids=["", "proj_size"])
def test_split_lstm_module_matches_nn_lstm(proj, small_variant, variants):
    """triton_rnn.LSTM on the split in TF32: outputs, (h_n, c_n) and every gradient as
    nn.LSTM's in float64, to TF32's rounding; with proj_size too (W_hh W_hr on the split)."""
    small_variant("split")
    torch.manual_seed(0)
    ref = nn.LSTM(3, H, bidirectional=True, proj_size=proj).double()
    ours = triton_rnn.LSTM(3, H, bidirectional=True, proj_size=proj).to(DEVICE)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, 2, 3, dtype=torch.float64)
    outputs = []
    for model, inp in ((ours, x.float().to(DEVICE)), (ref, x)):
        out, (h_n, c_n) = model(inp)
        (out.sin().sum() + h_n.pow(2).sum() + c_n.pow(2).sum()).backward()
        outputs.append([out, h_n, c_n] + [p.grad for p in model.parameters()])
    assert _split_ran(variants) == ["forward", "backward"]
    for a, b in zip(*outputs):
        assert rel_err(a.double().cpu(), b) < 2e-2


@pytest.mark.parametrize("arch", [90, 80, None], ids=["sm90", "sm80", "interpreter"])
def test_dispatch_takes_lstm_layers_to_1024_on_tensor_cores_and_256_on_cuda_cores(arch,
                                                                                   monkeypatch):
    """On tensor cores to H = 1024: 16-bit in one dimension (B in shared memory at K = 4096
    where the device has sm_90's shared memory per block; the interpreter is taken as sm_90),
    else its backward past 512 in two dimensions; TF32's backward in one dimension to 256, in
    two past it. One batch row at a time (split.py), IEEE fp32 to 512 and fp64 to 256, the
    backward with 8 features per program (fp32 in 8 warps); IEEE fp32 H 513-1024 with FMA
    products (tl.dot in IEEE): the forward with B in shared memory in 8 state chunks, the
    backward in two dimensions; the IEEE fp32 forward of H 257-512 with those FMA products
    from batch IEEE_FMA_FORWARD_MIN_BATCH on, split.py's below. Past those the backward
    streams, and the forward does past 1024 or off tensor cores."""
    monkeypatch.setattr(launch, "device_arch", lambda: arch)
    wide = 512 if arch == 80 else 1024  # 16-bit in one dimension
    for dtype, tf32, largest, one_dimension in (
            (torch.bfloat16, False, 1024, wide), (torch.float16, False, 1024, wide),
            (torch.float32, True, 1024, 256), (torch.float32, False, 1024, 512),
            (torch.float64, False, 256, 256)):
        on_tensor_cores = dtype != torch.float64 and (dtype != torch.float32 or tf32)
        for hidden in (65, 200, 500, 700, 1024):
            if hidden > largest:
                continue
            forward = choose(hidden, 16, dtype, tf32, arch=arch, gates=4)
            backward = choose(hidden, 16, dtype, tf32, arch=arch, gates=4, pass_="backward")
            assert forward.variant == backward.variant == "split"
            ieee = dtype == torch.float32 and not tf32
            fma = ieee and forward.BH > 512
            assert backward.use_dot == (on_tensor_cores or fma)
            assert forward.use_dot == (on_tensor_cores or ieee and forward.BH >= 512)
            if ieee and forward.BH >= 512:
                assert forward.b_shared and forward.k_chunks == 8, forward
                few = choose(hidden, dispatch.IEEE_FMA_FORWARD_MIN_BATCH - 1, dtype, tf32,
                             arch=arch, gates=4)
                assert few.variant == "split" and few.use_dot == (few.BH > 512), few
            assert forward.gate_rows == 4 and backward.gate_rows == 1
            assert forward.BH == triton_next_pow2(hidden) and backward.BH == 4 * forward.BH
            if forward.BH > one_dimension:
                assert backward.k_parts > 1 and backward.BN == 16, backward
                continue
            assert backward.k_parts == 1
            assert backward.R == (16 if on_tensor_cores else 8)
            assert backward.b_shared == (backward.BH == 4096), backward
            if dtype == torch.float32 and not tf32:
                assert backward.num_warps <= 8, backward
        # past those the backward streams; the forward keeps the split on tensor cores to
        # H = 1024 (in registers: K = H), which the launcher streams where S does not fit
        forward, backward = (choose(largest + 1, 16, dtype, tf32, arch=arch, gates=4,
                                    pass_=p) for p in ("forward", "backward"))
        assert backward.variant == forward.variant == "streaming", (forward, backward)


def triton_cdiv(a, b):
    return -(-a // b)


def triton_next_pow2(n):
    return 1 << (n - 1).bit_length()


# ----- a faulty barrier: the split LSTM raises and poisons, never a silent wrong result ----

FAULT_H = 20
# (dtype, batch, forward config, backward config): on tensor cores, TF32, two groups of 9 and
# 8 rows (forward 5 slices of 4 features, backward 2 of 16); split.py, fp64, two groups of one
# row (forward 5 slices of 4 features, backward 3 of 8)
FAULT_FORMS = {
    "tiles": (torch.float32, 17, replace(choose_split_dot(32, torch.float32), gate_rows=4),
              choose_split_dot(128, torch.float32)),
    "rows": (torch.float64, 2, replace(choose_split(32, torch.float64), gate_rows=4),
             choose_split(128, torch.float64, rows=8)),
    # the backward in two dimensions (split_2d.py): 2 row blocks of 16 features x 2 parts of K
    "parts": (torch.float32, 17, replace(choose_split_dot(32, torch.float32), gate_rows=4),
              Config("split", True, 16, 128, 4, num_stages=1, R=16, k_chunks=2, k_parts=2))}
# (pass, form): the "parts" form's forward is the "tiles" one
FAULT_CASES = [(p, f) for f in FAULT_FORMS for p in ("forward", "backward")
               if (p, f) != ("forward", "parts")]


@pytest.fixture
def sentinel_launches(monkeypatch):
    """Small bound on the waits; each concurrent launch's named arguments recorded and its
    outputs set to SENTINEL first, so that NaN afterwards is the kernel's."""
    monkeypatch.setattr(launch, "MAX_POLLS_INTERPRETED", 300)
    launches, original = [], ci.launch

    def recording_launch(kernel, grid, *args, **kwargs):
        named = dict(zip(kernel.arg_names, args))
        outputs = ("p_dz", "p_dh0", "p_dc0") if "p_dz" in named else ("p_out", "p_cell")
        for name in outputs:
            named[name].fill_(SENTINEL)
        launches.append((grid, named))
        return original(kernel, grid, *args, **kwargs)

    monkeypatch.setattr(ci, "launch", recording_launch)
    return launches


@pytest.mark.parametrize("pass_,form", FAULT_CASES)
def test_split_lstm_missing_arrival_raises_and_poisons(pass_, form, monkeypatch,
                                                       sentinel_launches):
    """Program (0, 0, 0) never arrives: the launcher raises SplitBarrierTimeout within
    seconds; group 0's results after the first step it could not compute are NaN (backward:
    dh0 and dc0 too), its first step and the other group are the reference's."""
    dtype, batch, forward, backward = FAULT_FORMS[form]
    layer = _layer(T=3, N=batch, D=1, dtype=dtype, packed=False, hidden=FAULT_H)
    projs, h0, c0, weights, biases, _ = layer
    out, cells, gates = launch.lstm_forward(projs, h0, c0, weights, None, True, forward,
                                            biases)
    dout, dcells = _gradients(out)
    expected = (out.double(), cells.double()) if pass_ == "forward" else [
        t.double() for t in launch.lstm_backward(dout, dcells, out, cells, gates, c0, weights,
                                                 None, True, backward)]
    sentinel_launches.clear()
    monkeypatch.setattr(split_dot, "arrive_and_wait", _arrive_unless_first_program)
    monkeypatch.setattr(split, "arrive_and_wait", _arrive_unless_first_program)
    monkeypatch.setattr(split_2d, "arrive_and_wait", _arrive_unless_first_program)
    start = time.monotonic()
    with pytest.raises(SplitBarrierTimeout):
        if pass_ == "forward":
            launch.lstm_forward(projs, h0, c0, weights, None, True, forward, biases)
        else:
            launch.lstm_backward(dout, dcells, out, cells, gates, c0, weights, None, True,
                                 backward)
    assert time.monotonic() - start < 30.0
    (grid, named), = sentinel_launches
    rows = named["ROWS"]
    assert grid[1] == 2 and named["p_sync"][0] == 1
    names = ("p_out", "p_cell") if pass_ == "forward" else ("p_dz", "p_dh0", "p_dc0")
    first = 0 if pass_ == "forward" else 2  # the step computed before the first wait
    for name, exp in zip(names, expected):
        got = named[name].double()
        if name in ("p_dh0", "p_dc0"):
            assert torch.isnan(got[:, :rows]).all(), name
            assert rel_err(got[:, rows:], exp[:, rows:]) < 1e-6, name
            continue
        assert rel_err(got[first, :rows], exp[first, :rows]) < 1e-6, name
        later = [t for t in range(3) if t != first]
        assert torch.isnan(got[later, :rows]).all(), name
        assert rel_err(got[:, rows:], exp[:, rows:]) < 1e-6, name
