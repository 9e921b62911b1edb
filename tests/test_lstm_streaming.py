"""LSTM layers on the streaming variant (kernels/streaming.py with CELL = LSTM), which takes
every layer past the split's limits: W_hh's four gate blocks streamed from L2 each step, h and
c in ping-pong buffers, the backward's phase 1 every gate's dz of its features, phase 2 the sum
of the four gates' products.

Under the interpreter at H = 40 (two chunks of 32, one ragged: small_variant("streaming")),
against the float64 reference on the same inputs; the compile gate compiles the natural sizes
(kernels/report.py, LSTM_SHAPES)."""
import pytest
import torch
from torch import nn

import triton_rnn
from conftest import DEVICE
from helpers import rel_err
from triton_rnn.kernels.dispatch import choose

from test_lstm_split import NAMES, H, _layer, _reference, _run, variants  # noqa: F401


def _streamed(variants):
    return all(ran == ["streaming"] for ran in variants.values())


def test_streaming_lstm_matches_float64(small_variant, variants):
    """Two directions, a packed (unsorted) batch, biases, fp64: h, c, the gates and every
    gradient as the float64 reference's, to fp64's noise."""
    small_variant("streaming")
    layer = _layer(T=3, N=3, D=2, dtype=torch.float64, packed=True)
    result = _run(layer, allow_tf32=False)
    assert _streamed(variants), variants
    for name, a, b in zip(NAMES, result, _reference(layer, result)):
        assert rel_err(a, b) < 1e-12, name


@pytest.mark.parametrize("dtype,tf32,tol", [(torch.bfloat16, False, 2e-2),
                                            (torch.float32, True, 2e-3)], ids=["bf16", "tf32"])
def test_streaming_lstm_on_tensor_cores_matches_float64(dtype, tf32, tol, small_variant,
                                                        variants):
    """17 rows: two batch tiles of 16 for tl.dot, the second of one row; values and gradients
    as the float64 reference's to the dtype's rounding."""
    small_variant("streaming")
    assert choose(H, 17, dtype, tf32, gates=4).use_dot
    layer = _layer(T=2, N=17, D=1, dtype=dtype, packed=True)
    result = _run(layer, allow_tf32=tf32)
    assert _streamed(variants), variants
    for name, a, b in zip(NAMES, result, _reference(layer, result)):
        assert rel_err(a, b) < tol, name


@pytest.mark.parametrize("proj", [0, 70], ids=["", "proj_size"])
def test_lstm_past_the_split_runs_streaming_and_matches_nn_lstm(proj, variants):
    """H = 300 in fp64, past split.py's 256 at its natural limits: triton_rnn.LSTM (two layers)
    streams, and its outputs, (h_n, c_n) and every gradient are nn.LSTM's; with proj_size
    too (W_hh W_hr, 4H x H, streamed)."""
    torch.manual_seed(0)
    ref = nn.LSTM(2, 300, num_layers=2, proj_size=proj).double()
    ours = triton_rnn.LSTM(2, 300, num_layers=2, proj_size=proj).double().to(DEVICE)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, 2, 2, dtype=torch.float64)
    grads = []
    for model, inp in ((ours, x.to(DEVICE)), (ref, x)):
        out, (h_n, c_n) = model(inp)
        (out.sin().sum() + h_n.pow(2).sum() + c_n.pow(2).sum()).backward()
        grads.append([out, h_n, c_n] + [p.grad for p in model.parameters()])
    assert variants == {"forward": ["streaming"] * 2, "backward": ["streaming"] * 2}
    for a, b in zip(*grads):
        assert rel_err(a.cpu(), b) < 1e-10


@pytest.mark.split
def test_split_lstm_the_device_cannot_hold_streams_instead(small_variant, variants,
                                                           monkeypatch):
    """A device that holds 2 programs at once, fewer than one group of the split's slices: both
    passes plan the split, then stream (as an RNN layer does), with the reference's values."""
    from triton_rnn.kernels import launch
    small_variant("split")
    monkeypatch.setattr(launch, "INTERPRETER_CAPACITY", 2)
    layer = _layer(T=2, N=2, D=1, dtype=torch.float64, packed=False)
    result = _run(layer, allow_tf32=False)
    assert variants == {"forward": ["split", "streaming"], "backward": ["split", "streaming"]}
    for name, a, b in zip(NAMES, result, _reference(layer, result)):
        assert rel_err(a, b) < 1e-12, name


@pytest.mark.split
def test_split_forward_with_a_streaming_backward(small_variant, variants, monkeypatch):
    """Past the backward's limit (K = 4H), a tensor-core forward keeps the split: the backward
    streams from what the split forward saved (h, c, the gates), with the float64 reference's
    gradients to TF32's rounding."""
    from triton_rnn.kernels import dispatch
    small_variant("split")
    monkeypatch.setattr(dispatch, "LSTM_SPLIT_MAX_K", dict.fromkeys(dispatch.LSTM_SPLIT_MAX_K, 0))
    layer = _layer(T=2, N=17, D=1, dtype=torch.float32, packed=True)
    result = _run(layer, allow_tf32=True)
    assert variants == {"forward": ["split"], "backward": ["streaming"]}
    for name, a, b in zip(NAMES, result, _reference(layer, result)):
        assert rel_err(a, b) < 2e-3, name
