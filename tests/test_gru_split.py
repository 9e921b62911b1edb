"""GRU layers on the split (kernels/split_dot.py on tensor cores, kernels/split.py one batch
row at a time in IEEE fp32 and fp64, both with CELL = GRU): the forward's programs hold the
three gates' rows of R/4 features (four slots, the fourth masked), the hidden products apart
from P; the backward's hold W_hh's columns of their features over the three gates' rows
(K = 3H) and carry dL/dh z of their own features.

Through the concurrent interpreter at H = 40 (small_variant("split")), as the LSTM's split
(tests/test_lstm_split.py); the natural limits are the LSTM's (dispatch rule 4), asserted
below; the compile gate compiles the largest (kernels/report.py, GRU_SHAPES)."""
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
from triton_rnn.reference import gru_backward as reference_backward
from triton_rnn.reference import gru_forward as reference_forward
from triton_rnn.kernels import dispatch, launch, split, split_2d, split_dot
from triton_rnn.kernels.dispatch import Config, choose, choose_split, choose_split_dot
from triton_rnn.kernels.failures import SplitBarrierTimeout

from test_concurrent_interpreter import _arrive_unless_first_program
# (the GRU's launches pass out for the LSTM's cell states and dh0 for its dc0: the fixture
# sets those outputs to SENTINEL too)
from test_lstm_split import sentinel_launches, variants  # noqa: F401

H = 40


def _layer(T, N, D, dtype, packed, hidden=H, seed=0):
    """One GRU layer's kernel inputs: projections, h0, W_hh, b_hh, lengths (unsorted)."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, dtype=torch.float64, generator=g) * scale).to(dtype)

    projs = [randn(T, N, 3 * hidden) for _ in range(D)]
    weights = [randn(3 * hidden, hidden, scale=hidden ** -0.5) for _ in range(D)]
    biases = [randn(3 * hidden) for _ in range(D)]
    h0 = randn(D, N, hidden)
    lengths = torch.randint(1, T + 1, (N,), generator=g, dtype=torch.int32) if packed else None
    return projs, h0, weights, biases, lengths


def _gradient(out, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.dtype)


def _run(layer, allow_tf32=True, forward=None, backward=None):
    """(out, gates, dz, dh0) of the launchers."""
    projs, h0, weights, biases, lengths = layer
    out, gates = launch.gru_forward(projs, h0, weights, lengths, allow_tf32, forward,
                                    b_hh=biases)
    return (out, gates, *launch.gru_backward(_gradient(out), out, gates, h0, weights, lengths,
                                             allow_tf32, backward))


def _reference(layer, result):
    """The float64 reference of _run (its backward from the kernels' own saved values)."""
    projs, h0, weights, biases, lengths = layer
    wide = lambda ts: [t.double() for t in ts]  # noqa: E731
    forward = reference_forward(wide(projs), h0.double(), wide(weights), lengths,
                                b_hh=wide(biases))
    out, gates = (t.double() for t in result[:2])
    return (*forward, *reference_backward(_gradient(result[0]).double(), out, gates,
                                          h0.double(), wide(weights), lengths))


NAMES = ("out", "gates", "dz", "dh0")


def _split_ran(variants):
    return [p for p in ("forward", "backward") if variants[p] and variants[p][-1] == "split"]


def test_split_gru_equals_the_resident_kernels_in_tf32(small_variant, variants):
    """Two directions, a packed (unsorted) batch, biases: the split's h, saved values and
    gradients are the resident kernels' (the same TF32-rounded products, summed in another
    order)."""
    layer = _layer(T=3, N=5, D=2, dtype=torch.float32, packed=True)
    resident = _run(layer)
    assert variants["forward"] == ["resident"] and variants["backward"] == ["resident"]
    small_variant("split")
    split = _run(layer)
    assert _split_ran(variants) == ["forward", "backward"]
    errors = {name: rel_err(a, b) for name, a, b in zip(NAMES, split, resident)}
    assert all(e < 1e-4 for e in errors.values()), errors


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 2e-2), (torch.float16, 4e-3)],
                         ids=["bf16", "fp16"])
def test_split_gru_row_tiles_match_float64(dtype, tol, small_variant, variants):
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
def test_split_gru_on_cuda_cores_matches_float64(dtype, tol, small_variant, variants):
    """split.py's GRU (IEEE fp32 and fp64, one batch row at a time), two directions, a packed
    unsorted batch: values and gradients as the float64 reference's, to the dtype's noise."""
    small_variant("split")
    layer = _layer(T=3, N=3, D=2, dtype=dtype, packed=True)
    result = _run(layer, allow_tf32=False)
    assert _split_ran(variants) == ["forward", "backward"]
    assert not choose(H, 3, dtype, False, gates=3).use_dot
    for name, a, b in zip(NAMES, result, _reference(layer, result)):
        assert rel_err(a, b) < tol, name


def test_split_gru_forward_with_b_in_shared_memory(small_variant, variants):
    """The TF32 forward's form for BH = 1024 (B in shared memory, R = 32 rows: 8 features a
    program), here at H = 40: the same h and saved values as the form in registers (R = 16),
    to TF32's accumulation-order noise."""
    small_variant("split")
    projs, h0, weights, biases, lengths = _layer(T=3, N=17, D=1, dtype=torch.float32,
                                                 packed=True)
    registers = launch.gru_forward(projs, h0, weights, lengths, True, b_hh=biases)
    shared = replace(dispatch._split_dot_shared(64, 32, 90, 4, 1), gate_rows=4)
    result = launch.gru_forward(projs, h0, weights, lengths, True, shared, biases)
    assert variants["forward"][-1] == "split"
    for name, a, b in zip(NAMES, result, registers):
        assert rel_err(a, b) < 1e-4, name


def test_split_gru_backward_with_b_in_shared_memory(small_variant, variants):
    """The backward's form for K = 4096 (B in shared memory, KC = 4 state chunks), here at
    H = 40 in bf16: the same dz and dh0 as the float64 reference to bf16's rounding."""
    small_variant("split")
    layer = _layer(T=3, N=5, D=1, dtype=torch.bfloat16, packed=True)
    shared = replace(choose(H, 5, torch.bfloat16, False, gates=3, pass_="backward"),
                     b_shared=True, k_chunks=4, num_warps=16)
    result = _run(layer, False, backward=shared)
    for name, a, b in list(zip(NAMES, result, _reference(layer, result)))[2:]:
        assert rel_err(a, b) < 2e-2, name


def test_split_gru_backward_in_two_dimensions(small_variant, variants, monkeypatch):
    """The TF32 backward's form past K = 1024 (split_2d.py: row blocks of W_hh's columns times
    parts of K, two barriers a visit), here at H = 40 (K = 256: 3 blocks of 16 features x 2
    parts), two directions, a packed (unsorted) batch in two groups: every saved value and
    gradient as the resident kernels', to TF32's accumulation-order noise."""
    layer = _layer(T=3, N=17, D=2, dtype=torch.float32, packed=True)
    resident = _run(layer)
    small_variant("split")
    monkeypatch.setattr(dispatch, "SPLIT_2D_GATED_BACKWARD", {(4, 256): (16, 2, 2, 4)})
    assert choose(H, 17, torch.float32, True, gates=3,
                  pass_="backward").k_parts == 2
    result = _run(layer)
    assert _split_ran(variants) == ["forward", "backward"]
    errors = {name: rel_err(a, b) for name, a, b in zip(NAMES, result, resident)}
    assert all(e < 1e-4 for e in errors.values()), errors


def test_split_gru_in_ieee_fp32_with_fma_products(small_variant, variants):
    """IEEE fp32 past split.py's K = 2048 (H 513-1024): the tensor-core kernels' code with IEEE
    products (tl.dot on CUDA cores), here at a ragged H = 100 (BH = 128): the forward's
    B-in-shared form in KC = 8 state chunks of 16, the backward in two dimensions (K = 512 of
    which 3H are used: 4 row blocks of 32 features x 2 parts); a packed (unsorted) batch of two
    row tiles. Every saved value and gradient is the float64 reference's to fp32's rounding,
    which TF32 products (~1e-3) would miss."""
    small_variant("split")
    layer = _layer(T=3, N=17, D=1, dtype=torch.float32, packed=True, hidden=100)
    forward = Config("split", True, 16, 128, 1, num_stages=1, R=32, k_chunks=8, b_shared=True,
                     gate_rows=4)
    backward = Config("split", True, 16, 512, 8, num_stages=1, R=32, k_chunks=8, k_parts=2)
    result = _run(layer, False, forward, backward)
    assert _split_ran(variants) == ["forward", "backward"]
    errors = {name: rel_err(a, b) for name, a, b in zip(NAMES, result, _reference(layer, result))}
    assert all(e < 1e-5 for e in errors.values()), errors


def test_split_gru_module_matches_nn_gru(small_variant, variants):
    """triton_rnn.GRU on the split in TF32, two directions: outputs, h_n and every gradient as
    nn.GRU's in float64, to TF32's rounding."""
    small_variant("split")
    torch.manual_seed(0)
    ref = nn.GRU(3, H, bidirectional=True).double()
    ours = triton_rnn.GRU(3, H, bidirectional=True).to(DEVICE)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, 2, 3, dtype=torch.float64)
    outputs = []
    for model, inp in ((ours, x.float().to(DEVICE)), (ref, x)):
        out, h_n = model(inp)
        (out.sin().sum() + h_n.pow(2).sum()).backward()
        outputs.append([out, h_n] + [p.grad for p in model.parameters()])
    assert _split_ran(variants) == ["forward", "backward"]
    for a, b in zip(*outputs):
        assert rel_err(a.double().cpu(), b) < 2e-2


@pytest.mark.parametrize("arch", [90, 80, None], ids=["sm90", "sm80", "interpreter"])
def test_dispatch_takes_gru_layers_as_the_lstm(arch, monkeypatch):
    """GRU layers past the resident variant take the LSTM's configurations (the forward's four
    slots a program, the backward's K = 4*BH), on tensor cores and one row at a time."""
    monkeypatch.setattr(launch, "device_arch", lambda: arch)
    for dtype, tf32 in ((torch.bfloat16, False), (torch.float32, True),
                        (torch.float32, False), (torch.float64, False)):
        for hidden in (65, 200, 500, 1000):
            for pass_ in ("forward", "backward"):
                gru = choose(hidden, 16, dtype, tf32, arch=arch, gates=3, pass_=pass_)
                lstm = choose(hidden, 16, dtype, tf32, arch=arch, gates=4, pass_=pass_)
                assert gru == lstm, (gru, lstm)


# ----- a faulty barrier: the split GRU raises and poisons, never a silent wrong result -----

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


@pytest.mark.parametrize("pass_,form", FAULT_CASES)
def test_split_gru_missing_arrival_raises_and_poisons(pass_, form, monkeypatch,
                                                      sentinel_launches):
    """Program (0, 0, 0) never arrives: the launcher raises SplitBarrierTimeout within
    seconds; group 0's results after the first step it could not compute are NaN (backward:
    dh0 too), its first step and the other group are the reference's."""
    dtype, batch, forward, backward = FAULT_FORMS[form]
    layer = _layer(T=3, N=batch, D=1, dtype=dtype, packed=False, hidden=FAULT_H)
    projs, h0, weights, biases, _ = layer
    out, gates = launch.gru_forward(projs, h0, weights, None, True, forward, biases)
    dout = _gradient(out)
    expected = (out.double(),) if pass_ == "forward" else [
        t.double() for t in launch.gru_backward(dout, out, gates, h0, weights, None, True,
                                                backward)]
    sentinel_launches.clear()
    monkeypatch.setattr(split_dot, "arrive_and_wait", _arrive_unless_first_program)
    monkeypatch.setattr(split, "arrive_and_wait", _arrive_unless_first_program)
    monkeypatch.setattr(split_2d, "arrive_and_wait", _arrive_unless_first_program)
    start = time.monotonic()
    with pytest.raises(SplitBarrierTimeout):
        if pass_ == "forward":
            launch.gru_forward(projs, h0, weights, None, True, forward, biases)
        else:
            launch.gru_backward(dout, out, gates, h0, weights, None, True, backward)
    assert time.monotonic() - start < 30.0
    (grid, named), = sentinel_launches
    rows = named["ROWS"]
    assert grid[1] == 2 and named["p_sync"][0] == 1
    names = ("p_out",) if pass_ == "forward" else ("p_dz", "p_dh0")
    first = 0 if pass_ == "forward" else 2  # the step computed before the first wait
    for name, exp in zip(names, expected):
        got = named[name].double()
        if name == "p_dh0":
            assert torch.isnan(got[:, :rows]).all(), name
            assert rel_err(got[:, rows:], exp[:, rows:]) < 1e-6, name
            continue
        assert rel_err(got[first, :rows], exp[first, :rows]) < 1e-6, name
        later = [t for t in range(3) if t != first]
        assert torch.isnan(got[later, :rows]).all(), name
        assert rel_err(got[:, rows:], exp[:, rows:]) < 1e-6, name
