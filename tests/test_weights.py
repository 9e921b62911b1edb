"""Parameters are read in place at every call: whatever writes them between calls (through
`.data`, raw pointers, optimizers, load_state_dict, set_) the next call equals nn.RNN's with
the same parameters, forward and gradients; no call copies a parameter without autocast; a
training loop that updates through `.data` prints nn.RNN's losses; saved models load."""
import io
import itertools

import pytest
import torch
import triton
import triton.language as tl
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import triton_rnn
from conftest import DEVICE
from helpers import make_pair, rel_err

aten = torch.ops.aten
# Ops that make a new tensor from what they read: a parameter among their inputs is a copy of
# (part of) it. Views and the GEMMs that merely use a weight are not copies.
COPY_OPS = {aten.cat, aten.stack, aten.add, aten.sub, aten.mul, aten._to_copy, aten.clone,
            aten.copy_, aten.index_select}


class ParameterCopies(TorchDispatchMode):
    """Records every copy-making op that reads the storage of one of `params`."""

    def __init__(self, params):
        super().__init__()
        self.storages = {p.untyped_storage().data_ptr() for p in params}
        self.copies = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in COPY_OPS:
            flat = [a for arg in (*args, *(kwargs or {}).values())
                    for a in (arg if isinstance(arg, (list, tuple)) else [arg])]
            if any(isinstance(t, torch.Tensor) and
                   t.untyped_storage().data_ptr() in self.storages for t in flat):
                self.copies.append(str(func))
        return func(*args, **(kwargs or {}))


@triton.jit
def _copy_kernel(p_src, p_dst, n, BLOCK: tl.constexpr):
    o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(p_dst + o, tl.load(p_src + o, mask=o < n), mask=o < n)


def _new_values(module, seed: int) -> dict:
    """Fresh values for every parameter, far from the current ones."""
    g = torch.Generator().manual_seed(seed)
    return {n: (torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5).to(p)
            for n, p in module.named_parameters()}


def _write_data_add(module, new):
    for n, p in module.named_parameters():
        p.data.add_(new[n] - p.data)


def _write_data_assign(module, new):
    for i, (n, p) in enumerate(module.named_parameters()):
        # every other one a column-major tensor: directions then lie with different strides
        p.data = new[n].clone() if i % 2 or p.dim() < 2 else new[n].t().contiguous().t()


def _write_data_copy(module, new):
    for n, p in module.named_parameters():
        p.data.copy_(new[n])


def _write_vector_to_parameters(module, new):
    vector = torch.cat([new[n].reshape(-1) for n, _ in module.named_parameters()])
    torch.nn.utils.vector_to_parameters(vector, module.parameters())


def _write_raw_pointer(module, new):
    """A kernel writing the parameters' storage: nothing in PyTorch sees it."""
    for n, p in module.named_parameters():
        src = new[n].contiguous()
        _copy_kernel[(triton.cdiv(p.numel(), 64),)](src, p.detach(), p.numel(), BLOCK=64)


def _write_load_state_dict(module, new):
    module.load_state_dict(new)


def _write_set(module, new):
    with torch.no_grad():
        for n, p in module.named_parameters():
            p.set_(new[n].clone())


def _write_optimizer_step(module, new):
    """SGD steps whose gradients are set so that the parameters land on `new`."""
    opt = torch.optim.SGD(module.parameters(), lr=1.0)
    for n, p in module.named_parameters():
        p.grad = p.detach() - new[n]
    opt.step()


WRITES = {"data.add_": _write_data_add, "data=other": _write_data_assign,
          "data.copy_": _write_data_copy, "vector_to_parameters": _write_vector_to_parameters,
          "raw-pointer": _write_raw_pointer, "load_state_dict": _write_load_state_dict,
          "set_": _write_set, "optimizer-step": _write_optimizer_step}
# Each write meets one (directions, bias, packed) combination; together they cover all 8.
CASES = [(name, *combo) for name, combo in
         zip(WRITES, itertools.product((1, 2), (True, False), (False, True)))]


def _packed_or_padded(x, packed: bool):
    if not packed:
        return x
    lengths = torch.tensor([5, 2, 4][:x.shape[1]])
    return nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)


def _step(model, x, h0, packed: bool):
    """(output, h_n, gradients of the input, h0 and every parameter) of one call."""
    x, h0 = x.detach().requires_grad_(), h0.detach().requires_grad_()
    out, h_n = model(_packed_or_padded(x, packed), h0)
    out = out.data if packed else out
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(3),
                    dtype=torch.float64).to(out)
    loss = (out.float() * w.float()).sum() + h_n.float().pow(2).sum()
    params = list(model.parameters())
    grads = torch.autograd.grad(loss, [x, h0, *params])
    return out.detach(), h_n.detach(), grads


def _assert_same_step(ours, ref, x, h0, packed, tol, grad_tol):
    got, want = _step(ours, x, h0, packed), _step(ref, x, h0, packed)
    assert rel_err(got[0], want[0]) < tol and rel_err(got[1], want[1]) < tol
    names = ["input", "h0"] + [n for n, _ in ours.named_parameters()]
    for name, g, r in zip(names, got[2], want[2]):
        assert rel_err(g, r) < grad_tol, name


@pytest.mark.parametrize("write,D,bias,packed", CASES,
                         ids=[f"{c[0]}-D{c[1]}-{'bias' if c[2] else 'nobias'}-"
                              f"{'packed' if c[3] else 'padded'}" for c in CASES])
def test_every_write_is_seen_by_the_next_call(write, D, bias, packed):
    ours, ref = make_pair(3, 5, 2, bias=bias, bidirectional=D == 2, dtype=torch.float64)
    ref = ref.to(DEVICE)
    torch.manual_seed(1)
    x = torch.randn(5, 3, 3, dtype=torch.float64, device=DEVICE)
    h0 = torch.randn(2 * D, 3, 5, dtype=torch.float64, device=DEVICE)
    _assert_same_step(ours, ref, x, h0, packed, 1e-12, 1e-9)  # a warm call first
    WRITES[write](ours, _new_values(ours, seed=7))
    ref.load_state_dict(ours.state_dict())
    assert rel_err(ref.weight_hh_l0, _new_values(ours, seed=7)["weight_hh_l0"]) < 1e-12
    _assert_same_step(ours, ref, x, h0, packed, 1e-12, 1e-9)


@pytest.mark.parametrize("write", ["data.add_", "raw-pointer", "optimizer-step"])
def test_every_write_is_seen_under_autocast(write):
    """CPU autocast (bfloat16): the weights' casts are made per call, from the values then."""
    torch.manual_seed(0)
    ours = triton_rnn.RNN(3, 6, 2, bidirectional=True).to(DEVICE)
    ref = nn.RNN(3, 6, 2, bidirectional=True).to(DEVICE)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(4, 2, 3, device=DEVICE)
    h0 = torch.randn(4, 2, 6, device=DEVICE)
    for model in (ours, ref):
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            model(x, h0)  # warm
    WRITES[write](ours, _new_values(ours, seed=11))
    ref.load_state_dict(ours.state_dict())
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        _assert_same_step(ours, ref, x, h0, False, 3e-2, 6e-2)


def test_cell_reads_every_write_with_and_without_autocast():
    torch.manual_seed(0)
    ours = triton_rnn.RNNCell(4, 6).to(DEVICE)
    ref = nn.RNNCell(4, 6).to(DEVICE)
    ref.load_state_dict(ours.state_dict())
    x, h = torch.randn(3, 4, device=DEVICE), torch.randn(3, 6, device=DEVICE)
    for autocast, tol in ((False, 1e-5), (True, 3e-2)):
        for write in ("data.add_", "raw-pointer"):
            with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=autocast):
                ours(x, h)  # warm
            WRITES[write](ours, _new_values(ours, seed=5 + autocast))
            ref.load_state_dict(ours.state_dict())
            with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=autocast), \
                    torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
                got, want = ours(x, h), ref(x, h)
            assert got.dtype == want.dtype
            assert rel_err(got, want) < tol, (autocast, write)


@pytest.mark.parametrize("grad", [False, True], ids=["no-grad", "grad"])
def test_no_call_copies_a_parameter(grad):
    """Each direction's W_hh and b_hh are read by their own pointers and each direction's
    projection is its own GEMM: nothing is stacked, concatenated, summed or cast."""
    ours, _ = make_pair(4, 6, 2, bidirectional=True, dtype=torch.float64)
    x = torch.randn(5, 3, 4, dtype=torch.float64, device=DEVICE)
    with torch.set_grad_enabled(grad):
        for _ in range(2):
            with ParameterCopies(list(ours.parameters())) as mode:
                out = ours(x)[0]
            assert mode.copies == []
    if grad:
        out.sum().backward()
        assert all(p.grad is not None for p in ours.parameters())


def test_training_loop_through_data_prints_nn_rnns_losses():
    """PyTorch's word_language_model loop: clip_grad_norm_, then p.data.add_(p.grad, -lr)."""
    losses = {}
    for cls in (triton_rnn.RNN, nn.RNN):
        torch.manual_seed(0)
        rnn = cls(6, 8, 2, dropout=0.0).double().to(DEVICE)
        decoder = nn.Linear(8, 6).double().to(DEVICE)
        if cls is nn.RNN:  # the same initial weights as ours
            rnn.load_state_dict(ours_initial)
        else:
            ours_initial = {k: v.clone() for k, v in rnn.state_dict().items()}
        params = list(rnn.parameters()) + list(decoder.parameters())
        data = torch.randn(8, 4, 3, 6, generator=torch.Generator().manual_seed(1),
                           dtype=torch.float64).to(DEVICE)
        hidden, losses[cls] = None, []
        for batch in range(8):
            x, target = data[batch], data[(batch + 1) % 8]
            hidden = None if hidden is None else hidden.detach()
            out, hidden = rnn(x, hidden)
            loss = (decoder(out) - target).pow(2).mean()
            for p in params:
                p.grad = None
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 0.25)
            for p in params:
                p.data.add_(p.grad, alpha=-2.0)
            losses[cls].append(loss.item())
    assert losses[nn.RNN][0] != losses[nn.RNN][-1]
    assert [f"{v:.12f}" for v in losses[triton_rnn.RNN]] == \
        [f"{v:.12f}" for v in losses[nn.RNN]]


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = triton_rnn.RNN(3, 5, 2, bidirectional=True)
        self.cell = triton_rnn.RNNCell(10, 4)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.cell(out[-1])


@pytest.mark.parametrize("model", ["RNN", "RNNCell", "holding-both"])
def test_saved_model_loads_with_torch_defaults(model, tmp_path):
    """torch.save(model), then torch.load with weights_only=True (PyTorch's default), with and
    without the loader's own safe_globals list of torch classes."""
    torch.manual_seed(0)
    module = {"RNN": lambda: triton_rnn.RNN(3, 5, 2, bidirectional=True),
              "RNNCell": lambda: triton_rnn.RNNCell(3, 4),
              "holding-both": _Model}[model]().double().to(DEVICE)
    x = torch.randn(4, 2, 3, dtype=torch.float64, device=DEVICE)
    x = x[0] if model == "RNNCell" else x
    call = (lambda m: m(x)[0]) if model == "RNN" else (lambda m: m(x))
    expected = call(module)
    path = tmp_path / "model.pt"
    torch.save(module, path)

    def plain():
        return torch.load(path)

    def listing_torch_classes():  # as a loader of a model made of torch modules does
        with torch.serialization.safe_globals([_Model, nn.RNN, nn.RNNCell, nn.Linear]):
            return torch.load(path)

    # A model class of the user's own (_Model) is theirs to list.
    loaders = [listing_torch_classes] + ([plain] if model != "holding-both" else [])
    for load in loaders:
        loaded = load()
        assert type(loaded) is type(module)
        assert rel_err(call(loaded), expected) < 1e-12
    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)  # state_dict interop with nn.RNN is unchanged
    if model == "RNN":
        ref = nn.RNN(3, 5, 2, bidirectional=True).double()
        ref.load_state_dict(torch.load(io.BytesIO(buffer.getvalue())))
        assert rel_err(ref(x.cpu())[0], expected) < 1e-12
