"""Forward parity of triton_rnn.RNN with torch.nn.RNN, kernels under test."""
import pytest
import torch
from torch import nn

import triton_rnn
from conftest import DEVICE
from triton_rnn.kernels.dispatch import choose
from helpers import (OPTIONS, TOLERANCE, cpu_training_pair, make_pair, option_grid_case,
                     option_id, rel_err)


def _run(ours, ref, x, h0=None, dtype=torch.float32):
    out, h_n = ours(x.to(DEVICE, dtype), None if h0 is None else h0.to(DEVICE, dtype))
    ref_out, ref_h = ref(x, h0)
    return out, h_n, ref_out, ref_h


# float64 with W_hh resident (H = 17 here) runs the elementwise product at every batch size
# (kernels/dispatch.py, rule 1): the resident tl.dot paths are checked at the float32 and 16-bit
# bounds in test_sizes_and_dtypes (N = 17).
@pytest.mark.parametrize("opt", OPTIONS, ids=[option_id(o) for o in OPTIONS])
def test_option_grid_float64(opt):
    ours, ref, x, h0 = option_grid_case(opt, 6, 17, N=5, T=4)
    out, h_n, ref_out, ref_h = _run(ours, ref, x, h0, torch.float64)
    assert rel_err(out, ref_out) < 1e-9
    assert rel_err(h_n, ref_h) < 1e-9


# test_backward.py::test_sizes_and_dtypes checks the outputs of its sizes in every dtype and
# variant (resident at H = 1, 3, 17, 100, 128; split and streaming forced at H = 40, batch 5 and
# 17): here the sizes it lacks. "dispatched": the dispatcher's choice; H = 33 pads to a 64-wide
# tile (BH = 64, float64's largest resident one). H = 130: the split variant at its natural
# boundary (9 slices), and streaming where split is off (its fallback, 5 chunks).
SIZES = [(2, 5, 33, "dispatched"), (3, 17, 33, "dispatched")]
# tanh in every dtype, relu in float64 and float32: the activation is a constexpr branch
# whose code does not depend on the dtype (16-bit relu runs in test_cell.py and
# test_w_first.py).
ACT_DTYPES = [("tanh", d) for d in (torch.float64, torch.float32, torch.float16, torch.bfloat16)] \
    + [("relu", torch.float64), ("relu", torch.float32)]
CASES = [(*size, *act_dtype) for size in SIZES for act_dtype in ACT_DTYPES] \
    + [(2, 5, 130, "split", "tanh", torch.float32), (2, 17, 130, "streaming", "tanh", torch.bfloat16)]


@pytest.mark.parametrize("T,N,H,variant,act,dtype", CASES,
                         ids=[f"{a}-T{t}-N{n}-H{h}-{v}-{str(d).split('.')[1]}"
                              for t, n, h, v, a, d in CASES])
def test_sizes_and_dtypes(T, N, H, variant, dtype, act, request):
    """Awkward sizes reach every kernel variant: elementwise (N < 16) and tl.dot (N >= 16),
    resident W_hh (small H), W_hh split across programs and streamed W_hh."""
    if variant != "dispatched" and H < 129:  # forced at a small size (conftest.py)
        request.getfixturevalue("small_variant")(variant)
    elif variant == "streaming":
        request.getfixturevalue("no_split")
    if variant != "dispatched":
        assert choose(H, N, dtype).variant == variant
    ours, ref = make_pair(7, H, 1, act, bidirectional=True, dtype=dtype)
    x = torch.randn(T, N, 7, dtype=torch.float64)
    h0 = torch.randn(2, N, H, dtype=torch.float64) * 0.5
    out, h_n, ref_out, ref_h = _run(ours, ref, x, h0, dtype)
    assert out.dtype == dtype and h_n.dtype == dtype
    assert rel_err(out, ref_out) < TOLERANCE[dtype]
    assert rel_err(h_n, ref_h) < TOLERANCE[dtype]


@pytest.mark.parametrize("batch_first", [False, True], ids=["seqfirst", "batchfirst"])
def test_unbatched_input(batch_first):
    ours, ref = make_pair(4, 9, 2, bidirectional=True, batch_first=batch_first,
                          dtype=torch.float64)
    x = torch.randn(6, 4, dtype=torch.float64)
    h0 = torch.randn(4, 9, dtype=torch.float64)
    for hx in (None, h0):
        out, h_n, ref_out, ref_h = _run(ours, ref, x, hx, torch.float64)
        assert out.shape == ref_out.shape == (6, 18) and h_n.shape == ref_h.shape == (4, 9)
        assert rel_err(out, ref_out) < 1e-9 and rel_err(h_n, ref_h) < 1e-9


def test_default_h0_is_zeros():
    ours, ref = make_pair(3, 5, 2, dtype=torch.float64)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    out, h_n, ref_out, ref_h = _run(ours, ref, x, None, torch.float64)
    assert rel_err(out, ref_out) < 1e-9 and rel_err(h_n, ref_h) < 1e-9


@pytest.mark.parametrize("batch_first", [False, True], ids=["seqfirst", "batchfirst"])
def test_batch_size_zero(batch_first):
    ours, ref = make_pair(3, 5, 2, bidirectional=True, batch_first=batch_first,
                          dtype=torch.float64)
    x = torch.randn((0, 4, 3) if batch_first else (4, 0, 3), dtype=torch.float64)
    out, h_n, ref_out, ref_h = _run(ours, ref, x, None, torch.float64)
    assert out.shape == ref_out.shape and h_n.shape == ref_h.shape


def test_non_contiguous_input_and_h0():
    ours, ref = make_pair(5, 17, 2, bidirectional=True, dtype=torch.float64)
    x = torch.randn(10, 3, 5, dtype=torch.float64)[::2]                      # stride 2 in time
    h0 = torch.randn(3, 4, 17, dtype=torch.float64).transpose(0, 1)          # (4, 3, 17)
    assert not x.is_contiguous() and not h0.is_contiguous()
    out, h_n, ref_out, ref_h = _run(ours, ref, x, h0, torch.float64)
    assert rel_err(out, ref_out) < 1e-9 and rel_err(h_n, ref_h) < 1e-9


def test_dropout_matches_single_layers_with_same_masks():
    """In training mode dropout is applied to every layer's output except the last, with
    F.dropout's masks: rebuilding the stack from single-layer nn.RNNs and F.dropout under the
    same seed must give the same result, on any device."""
    ours = triton_rnn.RNN(4, 6, 3, dropout=0.5, bidirectional=True).double().to(DEVICE).train()
    x = torch.randn(5, 3, 4, dtype=torch.float64, device=DEVICE)
    singles = []  # built before seeding: initialising parameters draws random numbers
    for layer in range(3):
        single = nn.RNN(4 if layer == 0 else 12, 6, bidirectional=True).double().to(DEVICE)
        single.load_state_dict({k.replace(f"_l{layer}", "_l0"): v for k, v in
                                ours.state_dict().items() if f"_l{layer}" in k})
        singles.append(single)
    torch.manual_seed(123)
    out, h_n = ours(x)
    torch.manual_seed(123)
    layer_in, expected_h = x, []
    for layer, single in enumerate(singles):
        layer_out, h = single(layer_in)
        expected_h.append(h)
        layer_in = torch.nn.functional.dropout(layer_out, 0.5, True) if layer < 2 else layer_out
    assert rel_err(out, layer_in) < 1e-9
    assert rel_err(h_n, torch.cat(expected_h)) < 1e-9
    # The masks really changed something: eval mode (no dropout) gives another result.
    assert rel_err(ours.eval()(x)[0], out) > 1e-3


def test_dropout_identical_to_nn_rnn_on_cpu():
    """On CPU, nn.RNN draws its dropout masks with the same generator calls in the same order."""
    ours, ref = cpu_training_pair(4, 6, 2, dropout=0.3)
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    torch.manual_seed(7)
    out, h_n = ours(x)
    torch.manual_seed(7)
    ref_out, ref_h = ref(x)
    assert rel_err(out, ref_out) < 1e-9 and rel_err(h_n, ref_h) < 1e-9


def test_reassigned_weights_are_used():
    ours, ref = make_pair(3, 5, 1, dtype=torch.float64)
    new_w = torch.randn(5, 5, dtype=torch.float64)
    ours.weight_hh_l0 = nn.Parameter(new_w.clone().to(DEVICE))
    ref.weight_hh_l0 = nn.Parameter(new_w.clone())
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    out, _, ref_out, _ = _run(ours, ref, x, None, torch.float64)
    assert rel_err(out, ref_out) < 1e-9


def test_functional_call_uses_given_parameters():
    ours, ref = make_pair(3, 5, 2, dtype=torch.float64)
    params = {k: torch.randn_like(v) for k, v in ours.named_parameters()}
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    out, h_n = torch.func.functional_call(ours, params, (x.to(DEVICE),))
    ref_out, ref_h = torch.func.functional_call(
        ref, {k: v.cpu() for k, v in params.items()}, (x,))
    assert rel_err(out, ref_out) < 1e-9 and rel_err(h_n, ref_h) < 1e-9


@pytest.mark.parametrize("enforce_sorted", [True, False], ids=["sorted", "unsorted"])
def test_packed_sequence_gives_nn_rnn_result(enforce_sorted):
    from torch.nn.utils.rnn import pack_padded_sequence
    ours, ref = make_pair(3, 5, 2, bidirectional=True, dtype=torch.float64)
    x = torch.randn(6, 3, 3, dtype=torch.float64)
    lengths = [6, 4, 2] if enforce_sorted else [2, 6, 4]
    packed = pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
    out, h_n = ours(packed.to(DEVICE))
    ref_out, ref_h = ref(packed)
    assert torch.equal(out.batch_sizes, ref_out.batch_sizes)
    assert rel_err(out.data, ref_out.data) < 1e-9 and rel_err(h_n, ref_h) < 1e-9


@pytest.mark.parametrize("H,variant", [(33, "resident"), (40, "split")])
def test_float32_with_tf32_disabled(H, variant, monkeypatch, small_variant):
    """cudnn.allow_tf32 = False selects IEEE products (and the elementwise kernels for batches
    of 16 and more); results must then be IEEE-fp32 accurate on any device. Split forced at
    H = 40 (conftest.py's small_variant)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    if variant == "split":
        small_variant(variant)
    ours, ref = make_pair(5, H, 1, bidirectional=True, dtype=torch.float32)
    x = torch.randn(3, 17, 5, dtype=torch.float64)
    out, h_n, ref_out, ref_h = _run(ours, ref, x, None, torch.float32)
    assert rel_err(out, ref_out) < 1e-5 and rel_err(h_n, ref_h) < 1e-5
    out.sum().backward()
    ref_out.sum().backward()
    for (name, p), q in zip(ours.named_parameters(), ref.parameters()):
        assert rel_err(p.grad, q.grad) < 2e-5, name


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_small_pre_activations_keep_full_precision(dtype, monkeypatch):
    """tanh near 0 (weights scaled by 1e-3): a cancelling formula would lose digits here.
    IEEE float32 (TF32 off), so the bound is the same on a GPU."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    ours, ref = make_pair(4, 9, 2, dtype=dtype)
    with torch.no_grad():
        for m in (ours, ref):
            for p in m.parameters():
                p.mul_(1e-3)
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    out, h_n, ref_out, ref_h = _run(ours, ref, x, None, dtype)
    tol = 1e-9 if dtype == torch.float64 else 1e-5
    assert rel_err(out, ref_out) < tol and rel_err(h_n, ref_h) < tol


@pytest.mark.parametrize("T,N,H,dtype", [(64, 3, 17, torch.float64), (64, 3, 17, torch.float32),
                                         (24, 17, 33, torch.float32)],
                         ids=["T64-N3-H17-float64", "T64-N3-H17-float32",
                              "T24-N17-H33-float32"])
def test_long_sequences(T, N, H, dtype, monkeypatch):
    """Rounding must not build up over many steps (IEEE float32 here, on any device)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    ours, ref = make_pair(4, H, 1, bidirectional=True, dtype=dtype)
    x = torch.randn(T, N, 4, dtype=torch.float64)
    out, h_n, ref_out, ref_h = _run(ours, ref, x, None, dtype)
    tol = 1e-9 if dtype == torch.float64 else 1e-5
    assert rel_err(out, ref_out) < tol and rel_err(h_n, ref_h) < tol


@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_nan_propagates_like_nn_rnn(act):
    ours, ref = make_pair(3, 5, 2, act, bidirectional=True, dtype=torch.float64)
    x = torch.randn(6, 4, 3, dtype=torch.float64)
    x[2, 1, 0] = float("nan")
    out, h_n, ref_out, ref_h = _run(ours, ref, x, None, torch.float64)
    assert ref_out.isnan().any()
    assert torch.equal(out.isnan().cpu(), ref_out.isnan()) and \
        torch.equal(h_n.isnan().cpu(), ref_h.isnan())
    finite = ~ref_out.isnan()
    assert rel_err(out.cpu()[finite], ref_out[finite]) < 1e-9
