"""The resident tl.dot layout planned for sm_90 (dispatch.choose(..., arch=90)): W_hh as the
first tl.dot operand and transposed (BH, BN) state tiles, so that the warpgroup MMA keeps
W_hh in registers. Under the interpreter the launcher is made to plan for sm_90; the results
must be those of the (BN, BH) layout, forward and backward, padded and packed, both
directions, and of nn.RNN."""
import dataclasses

import pytest
import torch

from conftest import DEVICE
from helpers import TOLERANCE, make_pair, rel_err
from triton_rnn.kernels import launch
from triton_rnn.kernels.dispatch import choose

DTYPES = [(torch.float32, True), (torch.float16, False), (torch.bfloat16, False)]
# BH = 64 and 128 (the layout's range), H padded (100) and not, batch tiles full and not.
SIZES = [(3, 16, 64), (2, 19, 100), (2, 17, 128)]


@pytest.mark.parametrize("dtype,allow_tf32", DTYPES, ids=["tf32", "fp16", "bf16"])
@pytest.mark.parametrize("T,N,H", SIZES, ids=[f"T{t}-N{n}-H{h}" for t, n, h in SIZES])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("relu", [False, True], ids=["tanh", "relu"])
def test_w_first_layout_computes_what_the_other_does(T, N, H, dtype, allow_tf32, packed, relu):
    cfg = choose(H, N, dtype, allow_tf32, arch=90)
    assert cfg.variant == "resident" and cfg.use_dot and cfg.w_first, cfg
    other = dataclasses.replace(cfg, w_first=False)
    assert not choose(H, N, dtype, allow_tf32, arch=80).w_first
    g = torch.Generator().manual_seed(T * N * H)
    D = 2
    proj = torch.randn(T, N, D * H, generator=g).to(DEVICE, dtype)
    h0 = (torch.randn(D, N, H, generator=g) * 0.5).to(DEVICE, dtype)
    w = (torch.randn(D, H, H, generator=g) / H ** 0.5).to(DEVICE, dtype)
    lengths = (torch.randint(1, T + 1, (N,), generator=g, dtype=torch.int32).to(DEVICE)
               if packed else None)
    out = launch.recurrence_forward(proj, h0, w, lengths, relu, allow_tf32, cfg)
    expected = launch.recurrence_forward(proj, h0, w, lengths, relu, allow_tf32, other)
    assert rel_err(out, expected) < TOLERANCE[dtype] / 10
    dout = torch.randn(out.shape, generator=g).to(DEVICE, dtype)
    got = launch.recurrence_backward(dout, expected, w, lengths, relu, allow_tf32, cfg)
    want = launch.recurrence_backward(dout, expected, w, lengths, relu, allow_tf32, other)
    for a, b in zip(got, want):
        assert rel_err(a, b) < TOLERANCE[dtype] / 10


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["tf32", "bf16"])
def test_w_first_matches_nn_rnn(dtype, monkeypatch):
    """The module end to end with the launcher planning for sm_90."""
    monkeypatch.setattr(launch, "device_arch", lambda: 90)
    ours, ref = make_pair(7, 100, 1, "tanh", bidirectional=True, dtype=dtype)
    x = torch.randn(3, 17, 7, dtype=torch.float64)
    h0 = torch.randn(2, 17, 100, dtype=torch.float64) * 0.5
    out, h_n = ours(x.to(DEVICE, dtype), h0.to(DEVICE, dtype))
    ref_out, ref_h = ref(x, h0)
    assert rel_err(out, ref_out) < TOLERANCE[dtype]
    assert rel_err(h_n, ref_h) < TOLERANCE[dtype]
