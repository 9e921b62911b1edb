"""Weights prepared once per weight version (triton_rnn/weights.py): a second call copies no
parameter, in-place updates are seen, autocast casts once, gradients still reach every
parameter as nn.RNN's do."""
import copy
import io
import pickle

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import triton_rnn
from conftest import DEVICE
from helpers import TOLERANCE, make_pair, rel_err
from triton_rnn import weights

aten = torch.ops.aten
# Ops that make a new tensor from what they read: a parameter among their inputs is a copy of
# (part of) it. Views and the GEMMs that merely use a weight are not copies.
COPY_OPS = {aten.cat.default, aten.stack.default, aten.add.Tensor, aten.sub.Tensor,
            aten.mul.Tensor, aten._to_copy.default, aten.clone.default, aten.copy_.default,
            aten.index_select.default, aten.contiguous.default if hasattr(aten, "contiguous")
            else aten.clone.default}


class ParameterCopies(TorchDispatchMode):
    """Records every copy-making op that reads the storage of one of `params`."""

    def __init__(self, params):
        super().__init__()
        self.storages = {p.untyped_storage().data_ptr() for p in params}
        self.copies = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in {op.overloadpacket for op in COPY_OPS}:
            flat = [a for arg in (*args, *(kwargs or {}).values())
                    for a in (arg if isinstance(arg, (list, tuple)) else [arg])]
            if any(isinstance(t, torch.Tensor) and
                   t.untyped_storage().data_ptr() in self.storages for t in flat):
                self.copies.append(str(func))
        return func(*args, **(kwargs or {}))


def _copies(module, call):
    with ParameterCopies(list(module.parameters())) as mode:
        result = call()
    return mode.copies, result


def _grads(model, x, h0):
    model.zero_grad()
    x = x.detach().requires_grad_()
    out, h_n = model(x, h0)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(3),
                    dtype=torch.float64).to(out)
    ((out * w).sum() + h_n.pow(2).sum()).backward()
    return out.detach(), {"input": x.grad, **{n: p.grad.clone()
                                             for n, p in model.named_parameters()}}


def _bidir_pair(**kwargs):
    return make_pair(4, 6, 2, bidirectional=True, dtype=torch.float64, **kwargs)


def _inputs(N=3, T=5):
    torch.manual_seed(1)
    return torch.randn(T, N, 4, dtype=torch.float64), torch.randn(4, N, 6, dtype=torch.float64)


@pytest.mark.parametrize("grad", [False, True], ids=["no-grad", "grad"])
def test_second_call_of_bidirectional_layer_copies_no_parameter(grad):
    ours, ref = _bidir_pair()
    x, h0 = _inputs()
    with torch.set_grad_enabled(grad):
        first, _ = _copies(ours, lambda: ours(x.to(DEVICE), h0.to(DEVICE)))
        second, (out, h_n) = _copies(ours, lambda: ours(x.to(DEVICE), h0.to(DEVICE)))
    # The counter sees the preparation's copies (cat of W_ih, stack of W_hh, bias sums) ...
    assert any("cat" in c for c in first) and any("stack" in c for c in first), first
    assert any("add" in c for c in first), first
    assert second == []  # ... and the second call makes none of them
    ref_out, ref_h = ref(x, h0)
    assert rel_err(out, ref_out) < 1e-12 and rel_err(h_n, ref_h) < 1e-12


def test_optimizer_step_between_calls_gives_new_weights_results():
    ours, _ = _bidir_pair()
    x, h0 = _inputs()
    optimizer = torch.optim.SGD(ours.parameters(), lr=0.5)
    for _ in range(3):
        _grads(ours, x.to(DEVICE), h0.to(DEVICE))
        optimizer.step()  # in-place update of every parameter
        ref = nn.RNN(4, 6, 2, bidirectional=True).double()
        ref.load_state_dict({k: v.cpu() for k, v in ours.state_dict().items()})
        with torch.no_grad():
            out, h_n = ours(x.to(DEVICE), h0.to(DEVICE))
            ref_out, ref_h = ref(x, h0)
        assert rel_err(out, ref_out) < 1e-12 and rel_err(h_n, ref_h) < 1e-12


@pytest.mark.parametrize("update", ["mul_", "load_state_dict", "one-bias"])
def test_in_place_update_after_warm_call_is_seen(update):
    """Would fail if the prepared weights were reused after the parameters changed."""
    ours, ref = _bidir_pair()
    x, h0 = _inputs()
    with torch.no_grad():
        ours(x.to(DEVICE), h0.to(DEVICE))  # warm
        if update == "mul_":
            for p, q in zip(ours.parameters(), ref.parameters()):
                p.mul_(-0.7)
                q.mul_(-0.7)
        elif update == "load_state_dict":
            torch.manual_seed(5)
            other = nn.RNN(4, 6, 2, bidirectional=True).double()
            ours.load_state_dict({k: v.to(DEVICE) for k, v in other.state_dict().items()})
            ref.load_state_dict(other.state_dict())
        else:  # only the sum b_ih + b_hh of the reverse direction of layer 1 changes
            ours.bias_hh_l1_reverse.add_(1.0)
            ref.bias_hh_l1_reverse.add_(1.0)
        out, h_n = ours(x.to(DEVICE), h0.to(DEVICE))
        ref_out, ref_h = ref(x, h0)
    assert rel_err(out, ref_out) < 1e-12 and rel_err(h_n, ref_h) < 1e-12


OPTIONS = [(layers, bidir, bias) for layers in (1, 2) for bidir in (False, True)
           for bias in (True, False)]


@pytest.mark.parametrize("layers,bidir,bias", OPTIONS,
                         ids=[f"L{o[0]}-{'bi' if o[1] else 'uni'}-{'bias' if o[2] else 'nobias'}"
                              for o in OPTIONS])
@pytest.mark.parametrize("warm", ["cold", "warm-no-grad", "warm-grad"])
def test_gradients_match_nn_rnn_with_cache_cold_and_warm(layers, bidir, bias, warm):
    ours, ref = make_pair(4, 6, layers, bias=bias, bidirectional=bidir, dtype=torch.float64)
    torch.manual_seed(1)
    x = torch.randn(5, 3, 4, dtype=torch.float64)
    h0 = torch.randn(layers * (2 if bidir else 1), 3, 6, dtype=torch.float64)
    if warm == "warm-no-grad":
        with torch.no_grad():
            ours(x.to(DEVICE), h0.to(DEVICE))
    elif warm == "warm-grad":
        _grads(ours, x.to(DEVICE), h0.to(DEVICE))
    out, got = _grads(ours, x.to(DEVICE), h0.to(DEVICE))
    ref_out, expected = _grads(ref, x, h0)
    assert rel_err(out, ref_out) < 1e-12
    assert got.keys() == expected.keys()
    for name, g in expected.items():
        assert rel_err(got[name], g) < 1e-9, name
    for entry in weights._entries.get(ours, {}).values():  # the cache holds no graph
        assert all(t is None or (not t.requires_grad and t.grad_fn is None)
                   for t in entry.tensors)


def _autocast_case():
    """(ours, nn.RNN with the same weights, input): two bidirectional layers in float32."""
    torch.manual_seed(0)
    ours = triton_rnn.RNN(4, 6, 2, bidirectional=True).to(DEVICE)
    ref = nn.RNN(4, 6, 2, bidirectional=True).to(DEVICE)
    ref.load_state_dict(ours.state_dict())
    return ours, ref, torch.randn(5, 3, 4, device=DEVICE)


def test_autocast_casts_weights_once():
    ours, ref, x = _autocast_case()
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        first, _ = _copies(ours, lambda: ours(x))
        second, (out, h_n) = _copies(ours, lambda: ours(x))
        ref_out, ref_h = ref(x)
    assert sum("_to_copy" in c for c in first) == 8 * 2  # every parameter, both layers
    assert second == []
    assert out.dtype == ref_out.dtype == torch.bfloat16
    assert rel_err(out, ref_out) < 3e-2 and rel_err(h_n, ref_h) < 3e-2


def test_autocast_gradients_match_nn_rnn_with_cache_warm():
    ours, ref, x = _autocast_case()
    grads = []
    for model in (ours, ours, ref):  # ours twice: cold, then warm
        model.zero_grad()
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            out, h_n = model(x)
        (out.float().sum() + h_n.float().pow(2).sum()).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[2]:
        assert grads[0][name].dtype == grads[1][name].dtype == torch.float32
        assert torch.equal(grads[0][name], grads[1][name]), name
        assert rel_err(grads[1][name], grads[2][name]) < 6e-2, name


def test_first_call_under_inference_mode_then_training():
    ours, ref = _bidir_pair()
    x, h0 = _inputs()
    with torch.inference_mode():
        ours(x.to(DEVICE), h0.to(DEVICE))
    out, got = _grads(ours, x.to(DEVICE), h0.to(DEVICE))
    _, expected = _grads(ref, x, h0)
    for name, g in expected.items():
        assert rel_err(got[name], g) < 1e-9, name


def test_evenly_spaced_parameters_give_w_hh_without_a_copy():
    """nn.RNN's flattened cuDNN buffer puts each direction's weights at equal distances in one
    storage: W_hh of both directions is then one strided view, even on the first call."""
    ours, ref = make_pair(4, 6, 1, bidirectional=True, dtype=torch.float64)
    params = list(ours.parameters())
    flat = torch.empty(sum(p.numel() for p in params), dtype=torch.float64, device=DEVICE)
    with torch.no_grad():
        offset = 0
        for p in params:  # this direction's W_ih, W_hh, b_ih, b_hh, then the reverse's
            view = flat[offset:offset + p.numel()].view_as(p)
            view.copy_(p)
            p.set_(flat.untyped_storage(), offset, p.shape, p.stride())
            offset += p.numel()
    ours._init_flat_weights()
    x, h0 = _inputs()
    h0 = h0[:2]
    first, _ = _copies(ours, lambda: ours(x.to(DEVICE), h0.to(DEVICE)))
    assert not any("stack" in c for c in first), first
    assert any("cat" in c for c in first), first  # W_ih of the two directions is not adjacent
    _, got = _grads(ours, x.to(DEVICE), h0.to(DEVICE))
    _, expected = _grads(ref, x, h0)
    for name, g in expected.items():
        assert rel_err(got[name], g) < 1e-9, name


def test_module_with_warm_cache_copies_pickles_and_saves():
    ours, ref = _bidir_pair()
    x, h0 = _inputs()
    with torch.no_grad():
        ours(x.to(DEVICE), h0.to(DEVICE))
        twin = copy.deepcopy(ours)
        for p in twin.parameters():
            p.mul_(0.5)  # the copy's parameters are its own; the original's cache is untouched
        buffer = io.BytesIO()
        torch.save(ours, buffer)
        loaded = pickle.loads(pickle.dumps(ours))
        assert ours.state_dict().keys() == ref.state_dict().keys()
        expected = ref(x, h0)[0]
        for model in (ours, loaded, torch.load(io.BytesIO(buffer.getvalue()),
                                               weights_only=False)):
            assert rel_err(model(x.to(DEVICE), h0.to(DEVICE))[0], expected) < 1e-12
        for p in ref.parameters():
            p.mul_(0.5)
        assert rel_err(twin(x.to(DEVICE), h0.to(DEVICE))[0], ref(x, h0)[0]) < 1e-12


def test_dtype_conversion_drops_prepared_weights():
    ours, ref = _bidir_pair()
    x, h0 = _inputs()
    with torch.no_grad():
        ours(x.to(DEVICE), h0.to(DEVICE))
        assert ours in weights._entries
        ours.float()
        assert ours not in weights._entries
        out = ours(x.to(DEVICE, torch.float32), h0.to(DEVICE, torch.float32))[0]
    assert out.dtype == torch.float32
    assert rel_err(out, ref(x, h0)[0]) < TOLERANCE[torch.float32]


def test_writes_through_data_need_drop(monkeypatch):
    """`param.data` writes bypass the version counter (documented): `drop` makes them seen,
    and with the cache disabled every call prepares the weights afresh."""
    ours, ref = _bidir_pair()
    x, h0 = _inputs()
    with torch.no_grad():
        ours(x.to(DEVICE), h0.to(DEVICE))
        for p, q in zip(ours.parameters(), ref.parameters()):
            p.data.mul_(0.5)
            q.mul_(0.5)
        weights.drop(ours)
        assert rel_err(ours(x.to(DEVICE), h0.to(DEVICE))[0], ref(x, h0)[0]) < 1e-12
        monkeypatch.setattr(weights, "enabled", False)
        for p, q in zip(ours.parameters(), ref.parameters()):
            p.data.mul_(0.5)
            q.mul_(0.5)
        assert rel_err(ours(x.to(DEVICE), h0.to(DEVICE))[0], ref(x, h0)[0]) < 1e-12
        second, _ = _copies(ours, lambda: ours(x.to(DEVICE), h0.to(DEVICE)))
    assert any("stack" in c for c in second)


def test_compile_after_eager_calls_and_an_update():
    """torch.compile traces the preparation (no cache inside a graph): after eager calls warmed
    the cache and an in-place update, the compiled module gives nn.RNN's results."""
    torch._dynamo.reset()
    ours, ref = _bidir_pair()
    x, h0 = _inputs()
    _grads(ours, x.to(DEVICE), h0.to(DEVICE))  # warm
    with torch.no_grad():
        for p, q in zip(ours.parameters(), ref.parameters()):
            p.add_(0.1)
            q.add_(0.1)
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    out, got = _grads(compiled, x.to(DEVICE), h0.to(DEVICE))
    got = {name.replace("_orig_mod.", ""): g for name, g in got.items()}
    ref_out, expected = _grads(ref, x, h0)
    assert rel_err(out, ref_out) < 1e-12
    for name, g in expected.items():
        assert rel_err(got[name], g) < 1e-9, name


def test_cell_under_autocast_casts_weights_once_and_gradients_match():
    torch.manual_seed(0)
    ours = triton_rnn.RNNCell(4, 6).to(DEVICE)
    ref = nn.RNNCell(4, 6).to(DEVICE)
    ref.load_state_dict(ours.state_dict())
    x, h = torch.randn(3, 4, device=DEVICE), torch.randn(3, 6, device=DEVICE)
    results = []
    for model in (ours, ours, ref):
        model.zero_grad()
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            copies, out = _copies(model, lambda: model(x, h))
        out.float().sum().backward()
        results.append((copies, out, {n: p.grad.clone() for n, p in model.named_parameters()}))
    assert sum("_to_copy" in c for c in results[0][0]) == 4
    assert results[1][0] == []
    assert rel_err(results[1][1], results[2][1]) < 3e-2
    for name, g in results[2][2].items():
        assert torch.equal(results[0][2][name], results[1][2][name]), name
        assert rel_err(results[1][2][name], g) < 6e-2, name
