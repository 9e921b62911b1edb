"""PackedSequence through triton_rnn.RNN against torch.nn.RNN: forward and backward, in our
kernels (per-sequence lengths), over the option grid."""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pack_sequence

import triton_rnn
from conftest import DEVICE
from triton_rnn.kernels.dispatch import choose
from helpers import (GRAD_TOLERANCE, TOLERANCE, all_pairs, cpu_training_pair, make_pair,
                     rel_err)

LENGTHS = {"all-equal": [5, 5, 5], "all-different": [5, 3, 1, 4],
           "length-1": [1, 1], "one-sequence": [4],
           "unsorted-17": [(7 * i) % 5 + 1 for i in range(17)]}  # 17 sequences, lengths 1-5


def _packed_grads(model, x, lengths, h0, enforce_sorted, seed=1):
    """Packed output, h_n, and gradients of a random functional of both."""
    x = x.detach().requires_grad_()
    h0 = h0.detach().requires_grad_()
    packed = pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
    out, h_n = model(packed, h0)
    g = torch.Generator().manual_seed(seed)
    w_out = torch.randn(out.data.shape, generator=g, dtype=torch.float64).to(out.data)
    w_h = torch.randn(h_n.shape, generator=g, dtype=torch.float64).to(h_n)
    ((out.data * w_out).sum() + (h_n * w_h).sum()).backward()
    grads = {"input": x.grad, "h0": h0.grad, **{n: p.grad for n, p in model.named_parameters()}}
    return out, h_n, grads


def _compare(ours, ref, lengths, dtype, tol, grad_tol, enforce_sorted=False, I=3):
    D = 2 if ours.bidirectional else 1
    N, T = len(lengths), max(lengths)
    x = torch.randn(T, N, I, dtype=torch.float64) * 0.5
    h0 = torch.randn(ours.num_layers * D, N, ours.hidden_size, dtype=torch.float64) * 0.5
    if enforce_sorted:
        lengths = sorted(lengths, reverse=True)
    out, h_n, grads = _packed_grads(ours, x.to(DEVICE, dtype), lengths, h0.to(DEVICE, dtype),
                                    enforce_sorted)
    ref_out, ref_h, ref_grads = _packed_grads(ref, x, lengths, h0, enforce_sorted)
    for field in ("batch_sizes", "sorted_indices", "unsorted_indices"):
        a, b = getattr(out, field), getattr(ref_out, field)
        assert (a is None and b is None) or torch.equal(a.cpu(), b), field
    assert out.data.dtype == dtype
    assert rel_err(out.data, ref_out.data) < tol
    assert rel_err(h_n, ref_h) < tol
    for name in ref_grads:
        assert rel_err(grads[name], ref_grads[name]) < grad_tol, name


# Every pair of values of the options and the lengths patterns meets in some case (all pairs,
# tests/helpers.py): 10 cases instead of the full product's 80.
GRID = all_pairs(("tanh", "relu"), (1, 2), (False, True), (True, False), list(LENGTHS))


@pytest.mark.parametrize("act,layers,bidir,enforce_sorted,pattern", GRID, ids=[
    f"{a}-L{nl}-{'bi' if bi else 'uni'}-{'sorted' if s else 'unsorted'}-{p}"
    for a, nl, bi, s, p in GRID])
def test_packed_float64_option_grid(act, layers, bidir, enforce_sorted, pattern):
    lengths = LENGTHS[pattern]
    ours, ref = make_pair(3, 6, layers, act, bidirectional=bidir, dtype=torch.float64)
    _compare(ours, ref, lengths, torch.float64, 1e-9, 1e-9, enforce_sorted)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16],
                         ids=lambda d: str(d).split(".")[1])
@pytest.mark.parametrize("variant,H", [("resident", 17), ("split", 40), ("streaming", 40)])
def test_packed_dtypes_and_variants(dtype, variant, H, request):
    """Every kernel variant (resident, split and streamed W_hh), elementwise and tl.dot batch
    tiles; split and streaming forced at H = 40 (conftest.py's small_variant). The split
    variant takes 5 sequences, not 17: its programs repeat the per-row work of their slice,
    and its product is the same at every batch size (one batch of lengths does)."""
    if variant != "resident":
        request.getfixturevalue("small_variant")(variant)
    assert choose(H, 17, dtype).variant == variant
    batches = [[5, 1, 4, 2, 3]] if variant == "split" else [[4, 2, 3], LENGTHS["unsorted-17"]]
    for lengths in batches:  # one layer: the kernels see what a second one sees
        ours, ref = make_pair(3, H, 1, bidirectional=True, dtype=dtype)
        _compare(ours, ref, lengths, dtype, TOLERANCE[dtype], 2 * GRAD_TOLERANCE[dtype])


def test_pack_sequence_of_a_list_and_no_h0():
    ours, ref = make_pair(2, 5, 2, bidirectional=True, dtype=torch.float64)
    seqs = [torch.randn(n, 2, dtype=torch.float64) for n in (2, 5, 3)]
    out, h_n = ours(pack_sequence([s.to(DEVICE) for s in seqs], enforce_sorted=False))
    ref_out, ref_h = ref(pack_sequence(seqs, enforce_sorted=False))
    assert torch.equal(out.unsorted_indices.cpu(), ref_out.unsorted_indices)
    assert rel_err(out.data, ref_out.data) < 1e-9 and rel_err(h_n, ref_h) < 1e-9


def test_packed_dropout_matches_nn_rnn_on_cpu():
    """Dropout acts on the packed rows, with the same generator calls as nn.RNN."""
    ours, ref = cpu_training_pair(3, 4, 3, dropout=0.4, bidirectional=True)
    x, h0 = torch.randn(5, 3, 3, dtype=torch.float64), torch.randn(6, 3, 4, dtype=torch.float64)
    torch.manual_seed(5)
    out, h_n, grads = _packed_grads(ours, x, [2, 5, 4], h0, False)
    torch.manual_seed(5)
    ref_out, ref_h, ref_grads = _packed_grads(ref, x, [2, 5, 4], h0, False)
    assert rel_err(out.data, ref_out.data) < 1e-9 and rel_err(h_n, ref_h) < 1e-9
    for name in ref_grads:
        assert rel_err(grads[name], ref_grads[name]) < 1e-9, name


def test_packed_errors_are_nn_rnns():
    ours, ref = triton_rnn.RNN(3, 4).to(DEVICE), nn.RNN(3, 4)
    bad = pack_padded_sequence(torch.randn(4, 2, 5), [4, 2])
    with pytest.raises(RuntimeError) as expected:
        ref(bad)
    with pytest.raises(RuntimeError) as got:
        ours(bad.to(DEVICE))
    assert str(got.value) == str(expected.value)
    good = pack_padded_sequence(torch.randn(4, 2, 3), [4, 2])
    with pytest.raises(RuntimeError) as expected:
        ref(good, torch.randn(1, 3, 4))
    with pytest.raises(RuntimeError) as got:
        ours(good.to(DEVICE), torch.randn(1, 3, 4, device=DEVICE))
    assert str(got.value) == str(expected.value)
