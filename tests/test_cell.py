"""triton_rnn.RNNCell, LSTMCell and GRUCell against torch.nn.RNNCell, nn.LSTMCell and
nn.GRUCell: values, gradients, errors; one fused kernel per call."""
import pytest
import torch
from torch import nn

import triton_rnn
import triton_rnn.gru_ops as gru_ops
import triton_rnn.lstm_ops as lstm_ops
from conftest import DEVICE
from triton_rnn.kernels import launch
from helpers import (GRAD_TOLERANCE, TOLERANCE, all_pairs, check_module_info, module_pair,
                     pytorch_module_info, rel_err)


def _pair(*args, **kwargs):
    return module_pair(triton_rnn.RNNCell, nn.RNNCell, *args, **kwargs)


def _out_and_grads(cell, x, h):
    x = x.detach().requires_grad_()
    h = None if h is None else h.detach().requires_grad_()
    out = cell(x, h)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(2),
                    dtype=torch.float64).to(out)
    (out * w).sum().backward()
    grads = {"input": x.grad, "hx": None if h is None else h.grad}
    grads.update({n: p.grad for n, p in cell.named_parameters()})
    return out, grads


CASES = [(n, i, h) for n in (1, 5, 17) for i, h in ((3, 1), (4, 17), (7, 130))]


# Every shape in every dtype; each activation and bias option with every shape and every
# dtype (all pairs, tests/helpers.py: 36 cases instead of the full product's 108).
CELL_GRID = all_pairs(CASES, [torch.float64, torch.float32, torch.float16, torch.bfloat16],
                      [("tanh", True), ("relu", True), ("tanh", False)])


@pytest.mark.parametrize("shape,dtype,act_bias", CELL_GRID, ids=[
    f"N{n}-I{i}-H{h}-{str(d).split('.')[1]}-{a}{'' if b else '-nobias'}"
    for (n, i, h), d, (a, b) in CELL_GRID])
def test_matches_nn_rnn_cell(shape, dtype, act_bias):
    (N, I, H), (act, bias) = shape, act_bias
    ours, ref = _pair(I, H, bias, act, dtype=dtype)
    x = torch.randn(N, I, dtype=torch.float64)
    h = torch.randn(N, H, dtype=torch.float64) * 0.5
    out, grads = _out_and_grads(ours, x.to(DEVICE, dtype), h.to(DEVICE, dtype))
    ref_out, ref_grads = _out_and_grads(ref, x, h)
    assert out.dtype == dtype
    assert rel_err(out, ref_out) < TOLERANCE[dtype]
    if act == "relu" and dtype.itemsize < 4:
        return  # a ReLU kink at 16-bit rounding decides gradients either way (test_backward)
    for name, g in ref_grads.items():
        assert rel_err(grads[name], g) < GRAD_TOLERANCE[dtype], name


def test_unbatched_and_without_hx():
    ours, ref = _pair(4, 6)
    x = torch.randn(4, dtype=torch.float64)
    h = torch.randn(6, dtype=torch.float64)
    for hx in (None, h):
        out, grads = _out_and_grads(ours, x.to(DEVICE), None if hx is None else hx.to(DEVICE))
        ref_out, ref_grads = _out_and_grads(ref, x, hx)
        assert out.shape == ref_out.shape == (6,)
        assert rel_err(out, ref_out) < 1e-9
        for name, g in ref_grads.items():
            if g is None:
                assert grads[name] is None, name
            else:
                assert rel_err(grads[name], g) < 1e-9, name


def test_batch_zero():
    ours, ref = _pair(3, 5)
    assert ours(torch.zeros(0, 3, dtype=torch.float64, device=DEVICE)).shape == (0, 5)


def test_gradcheck():
    cell = triton_rnn.RNNCell(3, 4, nonlinearity="tanh").double().to(DEVICE)
    x = torch.randn(2, 3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    h = torch.randn(2, 4, dtype=torch.float64, device=DEVICE, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, h: cell(x, h), (x, h))


BAD = [("input-3d", (2, 2, 4), (2, 3)), ("hidden-3d", (2, 4), (1, 2, 3)),
       ("batch-mismatch", (2, 4), (3, 3)), ("no-broadcast", (2, 4), (1, 3)),
       ("input-size", (2, 5), None), ("hidden-size", (2, 4), (2, 5)),
       ("1d-input-2d-hidden", (4,), (1, 3)), ("2d-input-1d-hidden", (2, 4), (3,))]


@pytest.mark.parametrize("name,x_shape,h_shape", BAD, ids=[b[0] for b in BAD])
def test_errors_are_nn_rnn_cells(name, x_shape, h_shape):
    x = torch.randn(x_shape)
    h = None if h_shape is None else torch.randn(h_shape)
    with pytest.raises(Exception) as expected:
        nn.RNNCell(4, 3)(x, h)
    with pytest.raises(type(expected.value)) as got:
        triton_rnn.RNNCell(4, 3).to(DEVICE)(x.to(DEVICE), None if h is None else h.to(DEVICE))
    assert str(got.value) == str(expected.value)


@pytest.mark.parametrize("x_dtype,h_dtype", [(torch.float64, None), (torch.int64, None),
                                             (torch.float32, torch.float64)],
                         ids=["input-double", "input-long", "hidden-double"])
def test_dtype_errors_are_nn_rnn_cells(x_dtype, h_dtype):
    x = torch.ones(2, 4, dtype=x_dtype)
    h = None if h_dtype is None else torch.ones(2, 3, dtype=h_dtype)
    with pytest.raises(RuntimeError) as expected:
        nn.RNNCell(4, 3)(x, h)
    with pytest.raises(RuntimeError) as got:
        triton_rnn.RNNCell(4, 3).to(DEVICE)(x.to(DEVICE), None if h is None else h.to(DEVICE))
    assert str(got.value) == str(expected.value)


def test_is_an_nn_rnn_cell_and_convert_replaces_cells():
    torch.manual_seed(0)
    ref = nn.RNNCell(3, 4, False, "relu")
    torch.manual_seed(0)
    ours = triton_rnn.RNNCell(3, 4, False, "relu")
    assert isinstance(ours, nn.RNNCell)
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), ref.parameters()))
    model = nn.Sequential(nn.RNNCell(3, 4))
    assert type(triton_rnn.convert(model)[0]) is triton_rnn.RNNCell


def test_cell_op_opcheck():
    from triton_rnn.ops import rnn_cell
    kw = dict(dtype=torch.float64, device=DEVICE)
    args = (torch.randn(3, 4, **kw, requires_grad=True), torch.randn(3, 5, **kw),
            torch.randn(5, 4, **kw, requires_grad=True), torch.randn(5, 5, **kw),
            torch.randn(5, **kw), torch.randn(5, **kw), False, False)
    torch.library.opcheck(rnn_cell, args)


def test_non_contiguous_weights_and_biases():
    ours, ref = _pair(4, 6)
    strided = {"weight_ih": torch.randn(6, 8, dtype=torch.float64)[:, ::2],
               "weight_hh": torch.randn(6, 6, dtype=torch.float64).T,
               "bias_ih": torch.randn(12, dtype=torch.float64)[::2],
               "bias_hh": torch.randn(12, dtype=torch.float64)[1::2]}
    assert not any(t.is_contiguous() for t in strided.values())
    x, h = torch.randn(17, 4, dtype=torch.float64), torch.randn(17, 6, dtype=torch.float64)
    out = torch.func.functional_call(
        ours, {k: v.to(DEVICE) for k, v in strided.items()}, (x.to(DEVICE), h.to(DEVICE)))
    assert rel_err(out, torch.func.functional_call(ref, strided, (x, h))) < 1e-9


@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_nan_propagates_like_nn_rnn_cell(act):
    ours, ref = _pair(3, 5, nonlinearity=act)
    x = torch.randn(4, 3, dtype=torch.float64)
    x[1, 2] = float("nan")
    out, expected = ours(x.to(DEVICE)), ref(x)
    assert torch.equal(out.isnan().cpu(), expected.isnan()) and expected.isnan().any()


# ----- LSTMCell ------------------------------------------------------------------------------

def _lstm_pair(*args, **kwargs):
    return module_pair(triton_rnn.LSTMCell, nn.LSTMCell, *args, **kwargs)


def _lstm_out_and_grads(cell, x, hx):
    """(h', c') and the gradients of a functional weighing both (each its own weights) with
    respect to the input, h, c and every parameter."""
    x = x.detach().requires_grad_()
    hx = None if hx is None else tuple(t.detach().requires_grad_() for t in hx)
    out = cell(x, hx)
    g = torch.Generator().manual_seed(2)
    sum((t * torch.randn(t.shape, generator=g, dtype=torch.float64).to(t)).sum()
        for t in out).backward()
    grads = {"input": x.grad, "h": None if hx is None else hx[0].grad,
             "c": None if hx is None else hx[1].grad}
    grads.update({n: p.grad for n, p in cell.named_parameters()})
    return out, grads


# Each shape (one column tile and several, ragged) in every dtype, bias or not, states or not.
LSTM_CELL_GRID = all_pairs([(1, 3, 5), (17, 4, 40), (5, 7, 33)],
                           [torch.float64, torch.float32, torch.float16, torch.bfloat16],
                           [True, False], [True, False])


@pytest.mark.parametrize("shape,dtype,bias,states", LSTM_CELL_GRID, ids=[
    f"N{n}-I{i}-H{h}-{str(d).split('.')[1]}{'' if b else '-nobias'}{'' if s else '-nohx'}"
    for (n, i, h), d, b, s in LSTM_CELL_GRID])
def test_lstm_cell_matches_nn_lstm_cell(shape, dtype, bias, states, monkeypatch):
    (N, I, H) = shape
    calls = []
    original = launch.lstm_cell_forward
    monkeypatch.setattr(lstm_ops, "kernel_cell",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    ours, ref = _lstm_pair(I, H, bias, dtype=dtype)
    x = torch.randn(N, I, dtype=torch.float64)
    hx = (torch.randn(N, H, dtype=torch.float64) * 0.5,
          torch.randn(N, H, dtype=torch.float64)) if states else None
    out, grads = _lstm_out_and_grads(
        ours, x.to(DEVICE, dtype), None if hx is None else tuple(t.to(DEVICE, dtype) for t in hx))
    ref_out, ref_grads = _lstm_out_and_grads(ref, x, hx)
    assert calls == [1]  # one fused launch per call
    for a, b in zip(out, ref_out):
        assert a.dtype == dtype and rel_err(a, b) < TOLERANCE[dtype]
    for name, g in ref_grads.items():
        if g is None:
            assert grads[name] is None, name
        else:
            assert rel_err(grads[name], g) < GRAD_TOLERANCE[dtype], name


def test_lstm_cell_unbatched_and_convert():
    ours, ref = _lstm_pair(3, 4)
    x, h, c = (torch.randn(n, dtype=torch.float64) for n in (3, 4, 4))
    for a, b in zip(ours(x.to(DEVICE), (h.to(DEVICE), c.to(DEVICE))), ref(x, (h, c))):
        assert a.shape == (4,) and rel_err(a, b) < 1e-9
    model = nn.Sequential(nn.LSTMCell(3, 4))
    assert type(triton_rnn.convert(model)[0]) is triton_rnn.LSTMCell
    assert isinstance(ours, nn.LSTMCell) and "LSTMCell" in triton_rnn.__all__


LSTM_BAD = [("input-3d", (2, 2, 4), ((2, 3), (2, 3))), ("h-3d", (2, 4), ((1, 2, 3), (2, 3))),
            ("c-3d", (2, 4), ((2, 3), (1, 2, 3))), ("h-batch", (2, 4), ((3, 3), (2, 3))),
            ("c-batch", (2, 4), ((2, 3), (3, 3))), ("input-size", (2, 5), None),
            ("h-size", (2, 4), ((2, 5), (2, 3))), ("c-size", (2, 4), ((2, 3), (2, 5))),
            ("1d-input-2d-states", (4,), ((1, 3), (1, 3)))]


@pytest.mark.parametrize("name,x_shape,hx_shapes", LSTM_BAD, ids=[b[0] for b in LSTM_BAD])
def test_lstm_cell_errors_are_nn_lstm_cells(name, x_shape, hx_shapes):
    x = torch.randn(x_shape)
    hx = None if hx_shapes is None else tuple(torch.randn(s) for s in hx_shapes)
    with pytest.raises(Exception) as expected:
        nn.LSTMCell(4, 3)(x, hx)
    with pytest.raises(type(expected.value)) as got:
        triton_rnn.LSTMCell(4, 3).to(DEVICE)(
            x.to(DEVICE), None if hx is None else tuple(t.to(DEVICE) for t in hx))
    assert str(got.value) == str(expected.value)


@pytest.mark.xdist_group("torch-module-db")  # one worker reads PyTorch's test utilities
def test_lstm_cell_module_info_samples_and_error_inputs():
    """PyTorch's own ModuleInfo for nn.LSTMCell: every sample's (h', c') as nn.LSTMCell's,
    and every error input raising its error."""
    check_module_info(pytorch_module_info("LSTM", "LSTMCell")["LSTMCell"], _lstm_pair, list,
                      triton_rnn.LSTMCell)


# ----- GRUCell -------------------------------------------------------------------------------

def _gru_pair(*args, **kwargs):
    return module_pair(triton_rnn.GRUCell, nn.GRUCell, *args, **kwargs)


def _gru_out_and_grads(cell, x, h):
    """h' and the gradients of a weighted sum of it with respect to the input, h and every
    parameter."""
    x = x.detach().requires_grad_()
    h = None if h is None else h.detach().requires_grad_()
    out = cell(x, h)
    g = torch.Generator().manual_seed(2)
    (out * torch.randn(out.shape, generator=g, dtype=torch.float64).to(out)).sum().backward()
    grads = {"input": x.grad, "h": None if h is None else h.grad}
    grads.update({n: p.grad for n, p in cell.named_parameters()})
    return out, grads


@pytest.mark.parametrize("shape,dtype,bias,states", LSTM_CELL_GRID, ids=[
    f"N{n}-I{i}-H{h}-{str(d).split('.')[1]}{'' if b else '-nobias'}{'' if s else '-nohx'}"
    for (n, i, h), d, b, s in LSTM_CELL_GRID])
def test_gru_cell_matches_nn_gru_cell(shape, dtype, bias, states, monkeypatch):
    """Each shape in every dtype, bias or not, h or not: h' and every gradient, in one fused
    launch (b_hn inside the new gate's hidden product)."""
    (N, I, H) = shape
    calls = []
    original = launch.gru_cell_forward
    monkeypatch.setattr(gru_ops, "kernel_cell",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    ours, ref = _gru_pair(I, H, bias, dtype=dtype)
    x = torch.randn(N, I, dtype=torch.float64)
    h = torch.randn(N, H, dtype=torch.float64) if states else None
    out, grads = _gru_out_and_grads(ours, x.to(DEVICE, dtype),
                                    None if h is None else h.to(DEVICE, dtype))
    ref_out, ref_grads = _gru_out_and_grads(ref, x, h)
    assert calls == [1]
    assert out.dtype == dtype and rel_err(out, ref_out) < TOLERANCE[dtype]
    for name, g in ref_grads.items():
        if g is None:
            assert grads[name] is None, name
        else:
            assert rel_err(grads[name], g) < GRAD_TOLERANCE[dtype], name


def test_gru_cell_unbatched_and_convert():
    ours, ref = _gru_pair(3, 4)
    x, h = torch.randn(3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)
    out = ours(x.to(DEVICE), h.to(DEVICE))
    assert out.shape == (4,) and rel_err(out, ref(x, h)) < 1e-9
    model = nn.Sequential(nn.GRUCell(3, 4))
    assert type(triton_rnn.convert(model)[0]) is triton_rnn.GRUCell
    assert isinstance(ours, nn.GRUCell) and "GRUCell" in triton_rnn.__all__


GRU_BAD = [("input-3d", (2, 2, 4), (2, 3)), ("h-3d", (2, 4), (1, 2, 3)),
           ("h-batch", (2, 4), (3, 3)), ("input-size", (2, 5), None), ("h-size", (2, 4), (2, 5))]


@pytest.mark.parametrize("name,x_shape,h_shape", GRU_BAD, ids=[b[0] for b in GRU_BAD])
def test_gru_cell_errors_are_nn_gru_cells(name, x_shape, h_shape):
    x = torch.randn(x_shape)
    h = None if h_shape is None else torch.randn(h_shape)
    with pytest.raises(Exception) as expected:
        nn.GRUCell(4, 3)(x, h)
    with pytest.raises(type(expected.value)) as got:
        triton_rnn.GRUCell(4, 3).to(DEVICE)(x.to(DEVICE), None if h is None else h.to(DEVICE))
    assert str(got.value) == str(expected.value)


@pytest.mark.xdist_group("torch-module-db")  # one worker reads PyTorch's test utilities
def test_gru_cell_module_info_samples_and_error_inputs():
    """PyTorch's own ModuleInfo for nn.GRUCell: every sample's h' as nn.GRUCell's, and every
    error input raising its error."""
    check_module_info(pytorch_module_info("GRUCell")["GRUCell"], _gru_pair,
                      lambda out: [out], triton_rnn.GRUCell)
