"""triton_rnn.LSTM against nn.LSTM: the module (proj_size included), its kernels (the resident
variant), its routing by measurement against nn.LSTM, and PyTorch's own samples and error
inputs for nn.LSTM."""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_sequence

import triton_rnn
from conftest import DEVICE
from helpers import (GRAD_TOLERANCE, TOLERANCE, all_pairs, check_drop_in_module,
                     check_module_info, compare_with_torch, leaf, module_pair,
                     pytorch_module_info, rel_err)
from triton_rnn import measure, routing
from triton_rnn.kernels import launch

pytestmark = pytest.mark.resident


def lstm_pair(*args, **kwargs):
    """(ours on DEVICE in dtype, nn.LSTM in float64 on the CPU) holding the same weights."""
    return module_pair(triton_rnn.LSTM, nn.LSTM, *args, **kwargs)


@pytest.fixture
def kernel_launches(monkeypatch):
    """The LSTM kernel launches a test makes, counted by pass."""
    count = {"forward": 0, "backward": 0}
    for name, pass_ in (("lstm_forward", "forward"), ("lstm_backward", "backward")):
        original = getattr(launch, name)

        def counted(*args, _original=original, _pass=pass_, **kwargs):
            count[_pass] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(launch, name, counted)
    import triton_rnn.lstm_ops as lstm_ops
    monkeypatch.setattr(lstm_ops, "kernel_forward", launch.lstm_forward)
    monkeypatch.setattr(lstm_ops, "kernel_backward", launch.lstm_backward)
    return count


def _flatten(value):
    """The tensors of a forward's result: output (or its packed data), h_n, c_n."""
    out, (h_n, c_n) = value
    return [out.data if isinstance(out, nn.utils.rnn.PackedSequence) else out, h_n, c_n]


# Options of the module as an all-pairs cover: bias, layers, bidirectional, batch_first, the
# input (padded, packed sorted or not, unbatched), initial states given or not, proj_size.
OPTIONS = all_pairs((True, False), (1, 2), (False, True), (False, True),
                    ("padded", "packed", "packed-unsorted", "unbatched"), (True, False), (0, 7))


@pytest.mark.parametrize("bias,layers,bidirectional,batch_first,kind,with_states,proj", OPTIONS,
                         ids=["-".join(str(v) for v in c) for c in OPTIONS])
def test_matches_nn_lstm_in_float64(bias, layers, bidirectional, batch_first, kind,
                                    with_states, proj, kernel_launches):
    """Every option, at a ragged hidden size (20 of a 32-wide tile), values and gradients."""
    H, I, T, N = 20, 5, 4, 3
    ours, ref = lstm_pair(I, H, layers, bias, batch_first, 0.0, bidirectional, proj)
    torch.manual_seed(1)
    D = 2 if bidirectional else 1
    states = [torch.randn(layers * D, N, size, dtype=torch.float64) for size in (proj or H, H)]
    if kind.startswith("packed"):
        lengths = [T, T - 1, 2] if kind == "packed" else [2, T, T - 1]
        seqs = [torch.randn(n, I, dtype=torch.float64) for n in lengths]
        leaves, ref_leaves = [leaf(s) for s in seqs], [s.clone().requires_grad_() for s in seqs]
        x = pack_sequence(leaves, enforce_sorted=kind == "packed")
        x_ref = pack_sequence(ref_leaves, enforce_sorted=kind == "packed")
    else:
        shape = (T, I) if kind == "unbatched" else (N, T, I) if batch_first else (T, N, I)
        x = torch.randn(shape, dtype=torch.float64)
        leaves, ref_leaves = [leaf(x)], [x.clone().requires_grad_()]
        x, x_ref = leaves[0], ref_leaves[0]
        if kind == "unbatched":
            states = [s[:, 0] for s in states]
    inputs, ref_inputs = [x], [x_ref]
    if with_states:
        h = [leaf(s) for s in states]
        h_ref = [s.clone().requires_grad_() for s in states]
        inputs.append(tuple(h))
        ref_inputs.append(tuple(h_ref))
        leaves, ref_leaves = leaves + h, ref_leaves + h_ref
    compare_with_torch(ours, ref, inputs, ref_inputs, 1e-9, 1e-9, leaves, ref_leaves, _flatten)
    assert kernel_launches == {"forward": layers, "backward": layers}


@pytest.mark.parametrize("kind", ["padded", "packed-unsorted"])
def test_proj_size_both_directions_from_given_states(kind, kernel_launches):
    """proj_size with h_0 given in both directions: each sequence's first step (the last one
    of its own in reverse) takes W_hh h_0; values and every gradient as nn.LSTM's."""
    H, P, I, T = 20, 7, 5, 4
    ours, ref = lstm_pair(I, H, 2, bidirectional=True, proj_size=P)
    torch.manual_seed(3)
    states = [torch.randn(4, 3, size, dtype=torch.float64) for size in (P, H)]
    if kind == "padded":
        x = torch.randn(T, 3, I, dtype=torch.float64)
        leaves, ref_leaves = [leaf(x)], [x.clone().requires_grad_()]
        x, x_ref = leaves[0], ref_leaves[0]
    else:
        seqs = [torch.randn(n, I, dtype=torch.float64) for n in (2, T, 1)]
        leaves, ref_leaves = [leaf(q) for q in seqs], [q.clone().requires_grad_() for q in seqs]
        x = pack_sequence(leaves, enforce_sorted=False)
        x_ref = pack_sequence(ref_leaves, enforce_sorted=False)
    h, h_ref = [leaf(q) for q in states], [q.clone().requires_grad_() for q in states]
    compare_with_torch(ours, ref, [x, tuple(h)], [x_ref, tuple(h_ref)], 1e-9, 1e-9,
                       leaves + h, ref_leaves + h_ref, _flatten)
    assert kernel_launches == {"forward": 2, "backward": 2}


# (dtype, TF32, batch, target): the elementwise product (batch 2) and tl.dot in one or two
# batch tiles (16, 17), at H = 64 (the largest resident LSTM tile in 16 and 32 bits: four
# 64 x 64 gate tiles), in both tl.dot layouts: h @ B, and sm_90's W-first (the launcher made to
# plan for sm_90: W_hh the first operand, transposed state tiles; test_w_first.py).
DTYPES = [(torch.float32, False, 2, None), (torch.float32, True, 17, 90),  # TF32: h @ B
          (torch.bfloat16, False, 17, None), (torch.float16, False, 16, 90),
          (torch.float16, False, 2, None)]


@pytest.mark.parametrize("dtype,tf32,N,arch", DTYPES,
                         ids=[f"{str(d)[6:]}{'-tf32' if t else ''}-N{n}{'-sm90' if a else ''}"
                              for d, t, n, a in DTYPES])
def test_dtypes_match_float64(dtype, tf32, N, arch, kernel_launches, monkeypatch):
    H, I, T = 64, 8, 5
    monkeypatch.setattr(launch, "device_arch", lambda: arch)
    cfg = launch.choose(H, N, dtype, tf32, arch=arch, gates=4)
    w_first = arch == 90 and dtype != torch.float32  # (dispatch: TF32 LSTM tiles stay h @ B)
    assert (cfg.variant, cfg.use_dot, cfg.w_first) == ("resident", N >= 16, w_first), cfg
    ours, ref = lstm_pair(I, H, 1, True, False, 0.0, True, dtype=dtype)
    torch.manual_seed(2)
    x = torch.randn(T, N, I)
    leaves, ref_leaves = [leaf(x, dtype)], [x.double().requires_grad_()]
    ieee = dtype == torch.float32 and not tf32
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=tf32):
        compare_with_torch(ours, ref, leaves, ref_leaves, 1e-5 if ieee else TOLERANCE[dtype],
                           1e-5 if ieee else GRAD_TOLERANCE[dtype], leaves, ref_leaves,
                           _flatten)
    assert kernel_launches == {"forward": 1, "backward": 1}


def test_training_with_dropout_matches_nn_lstm():
    """Between layers, with the same dropout masks: on the CPU both draw them with the same
    generator calls in the same order."""
    torch.manual_seed(0)
    ours = triton_rnn.LSTM(3, 6, 3, dropout=0.5).double().train()
    ref = nn.LSTM(3, 6, 3, dropout=0.5).double().train()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    torch.manual_seed(5)
    got = _flatten(ours(x))
    torch.manual_seed(5)
    expected = _flatten(ref(x))
    for a, b in zip(got, expected):
        assert rel_err(a, b) < 1e-9


def test_parameters_are_read_in_place_every_call():
    """A write through .data (which moves no version counter) is seen by the next call."""
    ours, ref = lstm_pair(4, 8, 2, bidirectional=True)
    x = torch.randn(5, 2, 4, dtype=torch.float64)
    ours(x.to(DEVICE))
    with torch.no_grad():
        for (_, p), (_, q) in zip(ours.named_parameters(), ref.named_parameters()):
            p.data.mul_(-0.7).add_(0.05)
            q.data.mul_(-0.7).add_(0.05)
    for a, b in zip(_flatten(ours(x.to(DEVICE))), _flatten(ref(x))):
        assert rel_err(a, b) < 1e-9


def test_backward_is_bitwise_deterministic():
    ours, _ = lstm_pair(4, 24, 1, bidirectional=True)
    x = torch.randn(4, 3, 4, dtype=torch.float64, device=DEVICE)

    def grads():
        ours.zero_grad()
        out, (h, c) = ours(x)
        (out.sum() + h.sum() + c.sum()).backward()
        return [p.grad.clone() for p in ours.parameters()]

    assert all(torch.equal(a, b) for a, b in zip(grads(), grads()))


# ----- routing: measured against nn.LSTM ------------------------------------------------------

@pytest.fixture
def measured_on_cpu(monkeypatch, tmp_path, kernel_launches):
    """auto measures on the CPU too, into a fresh cache, with a stand-in clock that says
    clock["kernels"] ms for a run in which our LSTM kernels ran and clock["torch"] else."""
    monkeypatch.setenv("TRITON_RNN_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("TRITON_RNN_BACKEND", raising=False)
    monkeypatch.setattr(routing, "MEASURED_DEVICES", ("cuda", "cpu"))
    clock = {"kernels": 1.0, "torch": 2.0, "timed": 0}

    def timer(run):
        clock["timed"] += 1
        before = sum(kernel_launches.values())
        run()
        return clock["kernels" if sum(kernel_launches.values()) > before else "torch"]

    monkeypatch.setattr(measure, "timer", timer)
    routing.forget_loaded_caches()
    yield clock
    routing.forget_loaded_caches()


@pytest.mark.parametrize("winner", ["kernels", "torch"])
def test_auto_measures_each_lstm_class_once_and_runs_the_faster(winner, measured_on_cpu,
                                                                kernel_launches):
    """An LSTM class is measured on first use (our kernels and nn.LSTM on a stand-in,
    forward and gradients, after the first-use check), recorded under its own name and
    followed by later calls."""
    measured_on_cpu.update(kernels=1.0, torch=3.0) if winner == "kernels" else \
        measured_on_cpu.update(kernels=3.0, torch=1.0)
    ours, ref = lstm_pair(4, 8, 1, bidirectional=True)
    x = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    got = _flatten(ours(x.to(DEVICE)))
    assert measured_on_cpu["timed"] >= 2
    assert list(routing._cache("cpu").classes()) == ["lstm/fp64/H8/N2/training/padded/D2/L1"]
    assert routing._cache("cpu").get("lstm/fp64/H8/N2/training/padded/D2/L1")["backend"] \
        == winner
    launched, timed = kernel_launches["forward"], measured_on_cpu["timed"]
    again = _flatten(ours(x.to(DEVICE)))
    assert measured_on_cpu["timed"] == timed  # read from the cache
    assert (kernel_launches["forward"] > launched) == (winner == "kernels")
    for a, b, c in zip(got, again, _flatten(ref(x))):
        assert rel_err(a, c) < 1e-9 and rel_err(b, c) < 1e-9


def test_layers_with_a_projection_are_measured_as_a_class_of_their_own(measured_on_cpu):
    measured_on_cpu.update(kernels=1.0, torch=3.0)
    ours, ref = lstm_pair(4, 8, 1, proj_size=3)
    x = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    for a, b in zip(_flatten(ours(x.to(DEVICE))), _flatten(ref(x))):
        assert rel_err(a, b) < 1e-9
    assert list(routing._cache("cpu").classes()) == ["lstm-proj/fp64/H8/N2/training/padded/D1/L1"]


def test_first_use_check_routes_a_wrong_lstm_kernel_to_nn_lstm(measured_on_cpu, monkeypatch):
    """Our forward made 1% wrong: the first-use check compares it with nn.LSTM's on the same
    inputs, warns, records the class for nn.LSTM, and the call gets nn.LSTM's values."""
    import triton_rnn.lstm_ops as lstm_ops
    forward = lstm_ops.kernel_forward
    monkeypatch.setattr(lstm_ops, "kernel_forward", lambda *a, **k: tuple(
        t * 1.01 if i == 0 else t for i, t in enumerate(forward(*a, **k))))
    ours, ref = lstm_pair(4, 8)
    x = torch.randn(3, 2, 4, dtype=torch.float64)
    with torch.no_grad(), pytest.warns(UserWarning, match="differ from nn.LSTM's on this "
                                                          "shape; nn.LSTM runs it"):
        got = _flatten(ours(x.to(DEVICE)))
    entry = routing._cache("cpu").get("lstm/fp64/H8/N2/inference/padded/D1/L1")
    assert entry["backend"] == "torch" and "first-use check" in entry["reason"]
    with torch.no_grad():
        for a, b in zip(got, _flatten(ref(x))):
            assert rel_err(a, b) < 1e-12


# ----- the module: nn.LSTM's constructor, parameters, state_dict, errors --------------------

def test_is_an_nn_lstm_that_saves_loads_and_converts():
    """nn.LSTM's parameters, initialisation and repr (its positional order, proj_size
    included); saving, loading and convert() (helpers.check_drop_in_module)."""
    check_drop_in_module(triton_rnn.LSTM, nn.LSTM, (10, 20, 2, False, True, 0.1, True, 5),
                         (3, 4))


# (description, module kwargs, input shape, (h0, c0) shapes or None, input dtype, state dtype)
BAD_INPUTS = [
    ("input-rank-4", {}, (5, 2, 4, 1), None, torch.float32, None),
    ("input-size", {}, (5, 2, 3), None, torch.float32, None),
    ("h0-shape", {}, (5, 2, 4), ((2, 2, 5), (2, 2, 6)), torch.float32, torch.float32),
    ("c0-shape", {}, (5, 2, 4), ((2, 2, 6), (2, 3, 6)), torch.float32, torch.float32),
    ("h0-rank-batched", {}, (5, 2, 4), ((2, 6), (2, 2, 6)), torch.float32, torch.float32),
    ("c0-rank-unbatched", {}, (5, 4), ((2, 6), (2, 1, 6)), torch.float32, torch.float32),
    ("input-dtype", {}, (5, 2, 4), None, torch.float64, None),
    ("input-int", {}, (5, 2, 4), None, torch.int64, None),
    ("seq-len-0", {}, (0, 2, 4), None, torch.float32, None),
    ("seq-len-0-batch-first", dict(batch_first=True), (2, 0, 4), None, torch.float32, None),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_raises_what_nn_lstm_raises(case):
    _, kwargs, shape, states, dtype, state_dtype = case
    x = torch.zeros(shape, dtype=dtype)
    hx = None if states is None else tuple(torch.zeros(s, dtype=state_dtype) for s in states)
    with pytest.raises(Exception) as expected:
        nn.LSTM(4, 6, 2, **kwargs)(x, hx)
    ours = triton_rnn.LSTM(4, 6, 2, **kwargs).to(DEVICE)
    with pytest.raises(type(expected.value)) as got:
        ours(x.to(DEVICE), None if hx is None else tuple(h.to(DEVICE) for h in hx))
    assert str(got.value) == str(expected.value)


@pytest.mark.xdist_group("torch-module-db")  # one worker reads PyTorch's test utilities
def test_pytorch_module_info_samples_and_error_inputs():
    """PyTorch's own ModuleInfo for nn.LSTM (torch.testing._internal.common_modules): every
    sample's output and states as nn.LSTM's, and every error input raising its error."""
    check_module_info(pytorch_module_info("LSTM", "LSTMCell")["LSTM"], lstm_pair, _flatten,
                      triton_rnn.LSTM)


@pytest.mark.parametrize("proj", [0, 4], ids=["", "proj_size"])
def test_compile_fullgraph_forward_and_backward(proj, kernel_launches):
    """No graph break at the LSTM (its recurrence is a custom op with a fake implementation):
    the compiled loss and gradients are eager's, through our kernels."""
    torch._dynamo.reset()
    ours, _ = lstm_pair(3, 6, 1, batch_first=True, proj_size=proj)
    x = torch.randn(2, 4, 3, dtype=torch.float64, device=DEVICE)

    def loss(x):
        out, (h, c) = ours(x)
        return out.sum() + h.pow(2).sum() + c.pow(3).sum()

    results = []
    for fn in (loss, torch.compile(loss, fullgraph=True, backend="aot_eager")):
        ours.zero_grad()
        value = fn(x)
        value.backward()
        results.append((value.detach(), [p.grad.clone() for p in ours.parameters()]))
    assert rel_err(results[1][0], results[0][0]) < 1e-12
    for a, b in zip(results[1][1], results[0][1]):
        assert rel_err(a, b) < 1e-12
    assert kernel_launches["forward"] >= 2  # eager and compiled


def test_autocast_runs_in_the_autocast_dtype(kernel_launches, dtype=torch.bfloat16):
    """As nn.LSTM under CUDA's autocast (its LSTM is on autocast's lower-precision list): the
    input, states and weights cast to the autocast dtype at the call, the results in it, the
    parameters' gradients in theirs. The reference is nn.LSTM run on those casts (CPU autocast
    sends nn.LSTM to oneDNN, which rejects them)."""
    torch.manual_seed(0)
    ours = triton_rnn.LSTM(4, 6).to(DEVICE)
    ref = nn.LSTM(4, 6).to(dtype)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(5, 3, 4)
    with torch.autocast(DEVICE, dtype=dtype):
        got = _flatten(ours(x.to(DEVICE)))
    with torch.backends.mkldnn.flags(enabled=False):
        expected = _flatten(ref(x.to(dtype)))
    for a, b in zip(got, expected):
        assert a.dtype == dtype and rel_err(a, b) < 3e-2
    got[0].float().sum().backward()
    assert ours.weight_hh_l0.grad.dtype == torch.float32  # master weights keep their dtype
    assert kernel_launches == {"forward": 1, "backward": 1}


# ----- GPU only: CUDA graphs -----------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("H,dtype", [(64, torch.float32), (256, torch.bfloat16)],
                         ids=["resident-tf32", "split-bf16"])
def test_cuda_graph_training_step_matches_eager(H, dtype, kernel_launches):
    """A captured forward + backward of a two-layer, two-direction LSTM on our kernels (the
    resident variant; the tensor-core split) gives eager's loss and gradients on new data."""
    from test_toolchain import _capture, replays_match_eager
    torch.manual_seed(0)
    model = triton_rnn.LSTM(8, H, 2, bidirectional=True).to("cuda", dtype)
    static_x = torch.randn(10, 16, 8, device="cuda", dtype=dtype)

    def step():
        model.zero_grad(set_to_none=False)
        out, (h_n, c_n) = model(static_x)
        loss = out.float().pow(2).sum() + h_n.float().sum() + c_n.float().pow(2).sum()
        loss.backward()
        return loss

    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    graph, static_loss = _capture(step)
    assert kernel_launches["forward"] > 0 and kernel_launches["backward"] > 0
    replays_match_eager(graph, static_loss, static_x, step, list(model.parameters()))
