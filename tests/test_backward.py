"""Gradients of triton_rnn.RNN against torch.nn.RNN, from our backward kernel."""
import pytest
import torch
from torch import nn

import triton_rnn
from conftest import DEVICE
from triton_rnn.kernels.dispatch import choose
from helpers import (GRAD_TOLERANCE, OPTIONS, TOLERANCE, cpu_training_pair, make_pair,
                     option_grid_case, option_id, rel_err)


def _outputs_and_grads(model, x, h0, seed=1):
    """Output, h_n and the gradients of a random linear functional of both."""
    x = x.detach().requires_grad_()
    h0 = h0.detach().requires_grad_()
    out, h_n = model(x, h0)
    g = torch.Generator().manual_seed(seed)
    w_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out)
    w_h = torch.randn(h_n.shape, generator=g, dtype=torch.float64).to(h_n)
    ((out * w_out).sum() + (h_n * w_h).sum()).backward()
    return out.detach(), h_n.detach(), {
        "input": x.grad, "h0": h0.grad, **{n: p.grad for n, p in model.named_parameters()}}


def _grads(model, x, h0, seed=1):
    return _outputs_and_grads(model, x, h0, seed)[2]


def _compare(ours, ref, x, h0, dtype, tol):
    got = _grads(ours, x.to(DEVICE, dtype), h0.to(DEVICE, dtype))
    expected = _grads(ref, x, h0)
    assert got.keys() == expected.keys()
    for name in expected:
        assert got[name] is not None, name
        assert got[name].dtype == dtype, name
        assert rel_err(got[name], expected[name]) < tol, name


@pytest.mark.parametrize("opt", OPTIONS, ids=[option_id(o) for o in OPTIONS])
def test_option_grid_float64(opt):
    ours, ref, x, h0 = option_grid_case(opt, 5, 9, N=3, T=4)
    _compare(ours, ref, x, h0, torch.float64, 1e-9)


# "dispatched": the dispatcher's choice (float64 splits W_hh from H = 65). "split" and
# "streaming": forced at H = 40 (conftest.py's small_variant; 3 slices, or 2 chunks one of them
# ragged), where the natural H = 130 costs several times the interpreter's time for the same
# code; the natural H = 130 runs forward in test_forward.py.
SIZES = [(1, 1, 1, "dispatched"), (3, 5, 3, "dispatched"), (3, 17, 17, "dispatched"),
         (2, 5, 100, "dispatched"), (2, 17, 128, "dispatched"), (2, 5, 40, "split"),
         (2, 17, 40, "split"), (2, 5, 40, "streaming"), (2, 17, 40, "streaming")]


# ReLU in 16-bit is left out of the gradient comparison: whether a unit whose pre-activation
# is within rounding of 0 passes gradient is decided by rounding, so one flipped unit moves a
# gradient by several percent whoever computes it (nn.RNN in 16-bit included). The relu'
# branch of the kernels is dtype-independent and is checked in float64 and float32.
ACT_DTYPES = [(act, dtype) for act in ("tanh", "relu")
              for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16)
              if act == "tanh" or dtype.itemsize >= 4]


# Every size with every (act, dtype), except float64 at the dispatched H = 100 and 128: there
# float64 is the split variant (W_hh split from H = 65), which the forced H = 40 cases run at
# batch 5 and 17 for a fraction of the interpreter's time.
# The split variant's relu at batch 5 only: relu' does not depend on the batch size.
CASES = [(size, act_dtype) for size in SIZES for act_dtype in ACT_DTYPES
         if not (act_dtype[1] == torch.float64 and size[3] == "dispatched" and size[2] > 64)
         and not (act_dtype[0] == "relu" and size[3] == "split" and size[1] > 16)]


@pytest.mark.parametrize("T,N,H,variant,act,dtype", [(*s, *a) for s, a in CASES],
                         ids=[f"T{t}-N{n}-H{h}-{v}-{a}-{str(d).split('.')[1]}"
                              for (t, n, h, v), (a, d) in CASES])
def test_sizes_and_dtypes(T, N, H, variant, act, dtype, request):
    """Outputs within the forward's tolerance of float64 nn.RNN; gradients within the dtype's
    tolerance, or no worse than 1.5x nn.RNN's own error in the same dtype. act' comes from the saved outputs (as in cuDNN), so in 16-bit a
    saturated tanh (1 - y² with y rounded near ±1) costs precision whoever computes it; inputs
    are scaled to keep tanh mostly out of saturation."""
    if variant != "dispatched":
        request.getfixturevalue("small_variant")(variant)
    if variant != "dispatched":
        assert choose(H, N, dtype).variant == variant
    if act == "relu" and dtype == torch.float32:
        # As in 16-bit, TF32 rounding decides whether a unit within rounding of 0 passes
        # gradient (one flipped unit moved a gradient by 8e-3): relu' is checked in IEEE fp32.
        request.getfixturevalue("monkeypatch").setattr(torch.backends.cudnn, "allow_tf32",
                                                       False)
    # One layer, both directions: a second layer's kernels see what the first one's see (its
    # input is the first one's output); stacks are the option grid's business.
    ours, ref = make_pair(4, H, 1, act, bidirectional=True, dtype=dtype)
    x = torch.randn(T, N, 4, dtype=torch.float64) * 0.5
    h0 = torch.randn(2, N, H, dtype=torch.float64) * 0.5
    out, h_n, got = _outputs_and_grads(ours, x.to(DEVICE, dtype), h0.to(DEVICE, dtype))
    ref_out, ref_h, expected = _outputs_and_grads(ref, x, h0)
    # The forward of every case too: test_forward.py's sizes are the ones this test lacks.
    assert out.dtype == dtype and h_n.dtype == dtype
    assert rel_err(out, ref_out) < TOLERANCE[dtype] and rel_err(h_n, ref_h) < TOLERANCE[dtype]
    same_dtype = nn.RNN(4, H, 1, act, bidirectional=True).to(DEVICE, dtype)
    same_dtype.load_state_dict(ours.state_dict())
    baseline = _grads(same_dtype, x.to(DEVICE, dtype), h0.to(DEVICE, dtype))
    for name in expected:
        assert got[name].dtype == dtype, name
        tol = max(GRAD_TOLERANCE[dtype], 1.5 * rel_err(baseline[name], expected[name]))
        assert rel_err(got[name], expected[name]) < tol, name


def test_unbatched_and_batch_first():
    for kwargs, x_shape, h_shape in ((dict(batch_first=True), (3, 4, 2), (2, 3, 5)),
                                     ({}, (4, 2), (2, 5))):
        ours, ref = make_pair(2, 5, 1, bidirectional=True, dtype=torch.float64, **kwargs)
        x = torch.randn(x_shape, dtype=torch.float64)
        h0 = torch.randn(h_shape, dtype=torch.float64)
        _compare(ours, ref, x, h0, torch.float64, 1e-9)


def test_dropout_gradients_match_nn_rnn_on_cpu():
    ours, ref = cpu_training_pair(3, 4, 3, dropout=0.4, bidirectional=True)
    x, h0 = torch.randn(5, 2, 3, dtype=torch.float64), torch.randn(6, 2, 4, dtype=torch.float64)
    torch.manual_seed(3)
    got = _grads(ours, x, h0)
    torch.manual_seed(3)
    expected = _grads(ref, x, h0)
    for name in expected:
        assert rel_err(got[name], expected[name]) < 1e-9, name


def test_gradcheck_float64(T=2, N=1, H=2):
    """The full Jacobian of a small two-layer, two-direction stack (the option grids compare
    every gradient with nn.RNN's at larger sizes)."""
    model = triton_rnn.RNN(3, H, 2, bidirectional=True).double().to(DEVICE)
    x = torch.randn(T, N, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    h0 = torch.randn(4, N, H, dtype=torch.float64, device=DEVICE, requires_grad=True)
    w = model.weight_hh_l1_reverse

    def f(x, h0, w):
        return torch.func.functional_call(model, {"weight_hh_l1_reverse": w}, (x, h0))

    assert torch.autograd.gradcheck(f, (x, h0, w.detach().clone().requires_grad_()))


def test_backward_is_deterministic_and_retain_graph_repeats():
    model = triton_rnn.RNN(4, 17, 2, bidirectional=True).to(DEVICE)
    x = torch.randn(6, 17, 4, device=DEVICE)
    runs = []
    for _ in range(2):
        model.zero_grad()
        model(x)[0].pow(2).sum().backward()
        runs.append([p.grad.clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))
    model.zero_grad()
    loss = model(x)[0].pow(2).sum()
    loss.backward(retain_graph=True)
    first = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    loss.backward()
    assert all(torch.equal(a, p.grad) for a, p in zip(first, model.parameters()))


def test_gradients_only_for_what_requires_them():
    model = triton_rnn.RNN(3, 5, 2).to(DEVICE)
    model.weight_hh_l0.requires_grad_(False)
    model.bias_ih_l1.requires_grad_(False)
    x = torch.randn(4, 2, 3, device=DEVICE)           # no grad
    h0 = torch.randn(2, 2, 5, device=DEVICE, requires_grad=True)
    model(x, h0)[0].sum().backward()
    assert x.grad is None and model.weight_hh_l0.grad is None and model.bias_ih_l1.grad is None
    assert h0.grad is not None and model.weight_hh_l1.grad is not None


def test_no_grad_saves_nothing():
    model = triton_rnn.RNN(3, 5, 2).to(DEVICE)
    with torch.no_grad():
        out, h_n = model(torch.randn(4, 2, 3, device=DEVICE))
    assert out.grad_fn is None and h_n.grad_fn is None


def test_saves_only_layer_inputs_outputs_and_h0():
    """Per layer: the layer input (by the projection GEMM), the weights, the output, h0."""
    T, N, I, H = 5, 3, 4, 6
    model = triton_rnn.RNN(I, H, 1).double().to(DEVICE)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        model(torch.randn(T, N, I, dtype=torch.float64, device=DEVICE, requires_grad=True))
    activations = sum(t.numel() for t in saved if not isinstance(t, nn.Parameter)
                      and t.numel() not in (H * I, H * H, H))
    assert activations == T * N * I + T * N * H + N * H  # x, out, h0


def test_double_backward_raises_clear_error():
    model = triton_rnn.RNN(2, 3).double().to(DEVICE)
    x = torch.randn(3, 2, 2, dtype=torch.float64, device=DEVICE, requires_grad=True)
    (gx,) = torch.autograd.grad(model(x)[0].sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        gx.sum().backward()


def test_training_curve_matches_nn_rnn_step_by_step():
    torch.manual_seed(0)
    ref = nn.Sequential(nn.RNN(3, 8, 2, bidirectional=True)).double()
    ours = triton_rnn.convert(nn.Sequential(nn.RNN(3, 8, 2, bidirectional=True)).double())
    ours.load_state_dict(ref.state_dict())
    ours.to(DEVICE)
    head = nn.Linear(16, 1).double()
    heads = {"ref": head, "ours": nn.Linear(16, 1).double().to(DEVICE)}
    heads["ours"].load_state_dict(head.state_dict())
    x, y = torch.randn(6, 4, 3, dtype=torch.float64), torch.randn(4, 1, dtype=torch.float64)
    curves = {}
    for name, rnn, dev in (("ref", ref, "cpu"), ("ours", ours, DEVICE)):
        params = list(rnn.parameters()) + list(heads[name].parameters())
        opt = torch.optim.SGD(params, lr=0.1, momentum=0.9)
        curves[name] = []
        for _ in range(5):
            opt.zero_grad()
            pred = heads[name](rnn(x.to(dev))[0][-1])
            loss = ((pred - y.to(dev)) ** 2).mean()
            loss.backward()
            opt.step()
            curves[name].append(loss.item())
    assert curves["ref"][-1] < curves["ref"][0]  # it trains
    for a, b in zip(curves["ours"], curves["ref"]):
        assert abs(a - b) <= 1e-9 * abs(b)


def test_long_sequence_gradients_float64():
    ours, ref = make_pair(4, 17, 1, bidirectional=True, dtype=torch.float64)
    x = torch.randn(64, 3, 4, dtype=torch.float64)
    h0 = torch.randn(2, 3, 17, dtype=torch.float64)
    _compare(ours, ref, x, h0, torch.float64, 1e-9)
