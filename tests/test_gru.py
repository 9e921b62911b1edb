"""triton_rnn.GRU against nn.GRU: the module, its kernels (the resident variant, and streaming
beyond it: H = 40 at small_variant's limits), its routing by measurement against nn.GRU, and
PyTorch's own samples and error inputs for nn.GRU."""
import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_sequence

import triton_rnn
from conftest import DEVICE
from helpers import (GRAD_TOLERANCE, TOLERANCE, all_pairs, check_drop_in_module,
                     check_module_info, compare_with_torch, leaf, module_pair,
                     pytorch_module_info, rel_err)
from triton_rnn import measure, reference, routing
from triton_rnn.kernels import launch

pytestmark = pytest.mark.resident


def gru_pair(*args, **kwargs):
    """(ours on DEVICE in dtype, nn.GRU in float64 on the CPU) holding the same weights."""
    return module_pair(triton_rnn.GRU, nn.GRU, *args, **kwargs)


@pytest.fixture
def kernel_launches(monkeypatch):
    """The GRU kernel launches a test makes, counted by pass."""
    count = {"forward": 0, "backward": 0}
    import triton_rnn.gru_ops as gru_ops
    for name, pass_ in (("gru_forward", "forward"), ("gru_backward", "backward")):
        original = getattr(launch, name)

        def counted(*args, _original=original, _pass=pass_, **kwargs):
            count[_pass] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(gru_ops, f"kernel_{pass_}", counted)
    return count


def _flatten(value):
    """The tensors of a forward's result: output (or its packed data), h_n."""
    out, h_n = value
    return [out.data if isinstance(out, nn.utils.rnn.PackedSequence) else out, h_n]


# Options as an all-pairs cover: bias, layers, bidirectional, batch_first, the input (padded,
# packed sorted or not, unbatched), h_0 given or not, and the variant at small_variant's
# limits (resident at H = 12 of a 16-wide tile; streaming at H = 40, two chunks, one ragged).
OPTIONS = all_pairs((True, False), (1, 2), (False, True), (False, True),
                    ("padded", "packed", "packed-unsorted", "unbatched"), (True, False),
                    ("resident", "streaming"))


@pytest.mark.parametrize("bias,layers,bidirectional,batch_first,kind,with_h0,variant", OPTIONS,
                         ids=["-".join(str(v) for v in c) for c in OPTIONS])
def test_matches_nn_gru_in_float64(bias, layers, bidirectional, batch_first, kind, with_h0,
                                   variant, kernel_launches, small_variant):
    """Every option, at a ragged hidden size, values and gradients."""
    H = 12 if variant == "resident" else 40
    small_variant("streaming")
    assert launch.choose(H, 3, torch.float64, gates=3).variant == variant
    I, T, N = 5, 4, 3
    ours, ref = gru_pair(I, H, layers, bias, batch_first, 0.0, bidirectional)
    torch.manual_seed(1)
    D = 2 if bidirectional else 1
    h0 = torch.randn(layers * D, N, H, dtype=torch.float64)
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
            h0 = h0[:, 0]
    inputs, ref_inputs = [x], [x_ref]
    if with_h0:
        h, h_ref = leaf(h0), h0.clone().requires_grad_()
        inputs.append(h)
        ref_inputs.append(h_ref)
        leaves, ref_leaves = leaves + [h], ref_leaves + [h_ref]
    compare_with_torch(ours, ref, inputs, ref_inputs, 1e-9, 1e-9, leaves, ref_leaves, _flatten)
    assert kernel_launches == {"forward": layers, "backward": layers}


# (dtype, TF32, batch, target): the elementwise product (batch 2) and tl.dot (17: two batch
# tiles), at H = 64 (the largest resident GRU tile in 16 and 32 bits), in sm_90's W-first
# layout too in 16-bit
DTYPES = [(torch.float32, False, 2, None), (torch.float32, True, 17, 90),
          (torch.bfloat16, False, 17, 90), (torch.float16, False, 16, None)]


@pytest.mark.parametrize("dtype,tf32,N,arch", DTYPES,
                         ids=[f"{str(d)[6:]}{'-tf32' if t else ''}-N{n}{'-sm90' if a else ''}"
                              for d, t, n, a in DTYPES])
def test_dtypes_match_float64(dtype, tf32, N, arch, kernel_launches, monkeypatch):
    H, I, T = 64, 8, 5
    monkeypatch.setattr(launch, "device_arch", lambda: arch)
    cfg = launch.choose(H, N, dtype, tf32, arch=arch, gates=3)
    w_first = arch == 90 and dtype != torch.float32  # (TF32 gate tiles stay h @ B)
    assert (cfg.variant, cfg.use_dot, cfg.w_first) == ("resident", N >= 16, w_first), cfg
    ours, ref = gru_pair(I, H, 1, True, False, 0.0, True, dtype=dtype)
    torch.manual_seed(2)
    x = torch.randn(T, N, I)
    leaves, ref_leaves = [leaf(x, dtype)], [x.double().requires_grad_()]
    ieee = dtype == torch.float32 and not tf32
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=tf32):
        compare_with_torch(ours, ref, leaves, ref_leaves, 1e-5 if ieee else TOLERANCE[dtype],
                           1e-5 if ieee else GRAD_TOLERANCE[dtype], leaves, ref_leaves,
                           _flatten)
    assert kernel_launches == {"forward": 1, "backward": 1}


def test_streaming_gru_on_tensor_cores_matches_float64(small_variant, kernel_launches):
    """The streaming GRU with tl.dot (17 rows: two batch tiles) in bf16, packed, both
    directions: values and gradients as the float64 reference's to bf16's rounding."""
    small_variant("streaming")
    g = torch.Generator().manual_seed(0)
    H, T, N, D = 40, 3, 17, 2
    randn = lambda *s, scale=1.0: (torch.randn(*s, dtype=torch.float64, generator=g)  # noqa
                                   * scale).to(torch.bfloat16)
    projs = [randn(T, N, 3 * H) for _ in range(D)]
    weights = [randn(3 * H, H, scale=H ** -0.5) for _ in range(D)]
    biases, h0 = [randn(3 * H) for _ in range(D)], randn(D, N, H)
    lengths = torch.randint(1, T + 1, (N,), generator=g, dtype=torch.int32)
    assert launch.choose(H, N, torch.bfloat16, gates=3).use_dot
    out, gates = launch.gru_forward(projs, h0, weights, lengths, False, b_hh=biases)
    dout = randn(*out.shape)
    dz, dh0 = launch.gru_backward(dout, out, gates, h0, weights, lengths, False)
    wide = lambda ts: [t.double() for t in ts]  # noqa: E731
    ref_out, ref_gates = reference.gru_forward(wide(projs), h0.double(), wide(weights), lengths,
                                               b_hh=wide(biases))
    ref_dz, ref_dh0 = reference.gru_backward(dout.double(), out.double(), gates.double(),
                                             h0.double(), wide(weights), lengths)
    for a, b in ((out, ref_out), (gates, ref_gates), (dz, ref_dz), (dh0, ref_dh0)):
        assert rel_err(a, b) < 2e-2


def test_training_with_dropout_matches_nn_gru():
    """Between layers, with the same dropout masks (the same generator calls on the CPU)."""
    torch.manual_seed(0)
    ours = triton_rnn.GRU(3, 6, 3, dropout=0.5).double().train()
    ref = nn.GRU(3, 6, 3, dropout=0.5).double().train()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    torch.manual_seed(5)
    got = _flatten(ours(x))
    torch.manual_seed(5)
    for a, b in zip(got, _flatten(ref(x))):
        assert rel_err(a, b) < 1e-9


def test_parameters_are_read_in_place_every_call():
    """A write through .data (which moves no version counter) is seen by the next call."""
    ours, ref = gru_pair(4, 8, 2, bidirectional=True)
    x = torch.randn(5, 2, 4, dtype=torch.float64)
    ours(x.to(DEVICE))
    with torch.no_grad():
        for (_, p), (_, q) in zip(ours.named_parameters(), ref.named_parameters()):
            p.data.mul_(-0.7).add_(0.05)
            q.data.mul_(-0.7).add_(0.05)
    for a, b in zip(_flatten(ours(x.to(DEVICE))), _flatten(ref(x))):
        assert rel_err(a, b) < 1e-9


def test_backward_is_bitwise_deterministic():
    ours, _ = gru_pair(4, 24, 1, bidirectional=True)
    x = torch.randn(4, 3, 4, dtype=torch.float64, device=DEVICE)

    def grads():
        ours.zero_grad()
        out, h = ours(x)
        (out.sum() + h.sum()).backward()
        return [p.grad.clone() for p in ours.parameters()]

    assert all(torch.equal(a, b) for a, b in zip(grads(), grads()))


# ----- routing: measured against nn.GRU -------------------------------------------------------

@pytest.fixture
def measured_on_cpu(monkeypatch, tmp_path, kernel_launches):
    """auto measures on the CPU too, into a fresh cache, with a stand-in clock: 1 ms for a run
    in which our GRU kernels ran, 3 ms else."""
    monkeypatch.setenv("TRITON_RNN_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("TRITON_RNN_BACKEND", raising=False)
    monkeypatch.setattr(routing, "MEASURED_DEVICES", ("cuda", "cpu"))

    def timer(run):
        before = sum(kernel_launches.values())
        run()
        return 1.0 if sum(kernel_launches.values()) > before else 3.0

    monkeypatch.setattr(measure, "timer", timer)
    routing.forget_loaded_caches()
    yield
    routing.forget_loaded_caches()


def test_auto_measures_a_gru_class_of_its_own(measured_on_cpu, kernel_launches):
    ours, ref = gru_pair(4, 8, 1, bidirectional=True)
    x = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    for a, b in zip(_flatten(ours(x.to(DEVICE))), _flatten(ref(x))):
        assert rel_err(a, b) < 1e-9
    name = "gru/fp64/H8/N2/training/padded/D2/L1"
    assert list(routing._cache("cpu").classes()) == [name]
    assert routing._cache("cpu").get(name)["backend"] == "kernels"


def test_first_use_check_routes_a_wrong_gru_kernel_to_nn_gru(measured_on_cpu, monkeypatch):
    """Our forward made 1% wrong: the first-use check compares it with nn.GRU's on the same
    inputs, warns, records the class for nn.GRU, and the call gets nn.GRU's values."""
    import triton_rnn.gru_ops as gru_ops
    forward = gru_ops.kernel_forward
    monkeypatch.setattr(gru_ops, "kernel_forward", lambda *a, **k: tuple(
        t * 1.01 if i == 0 else t for i, t in enumerate(forward(*a, **k))))
    ours, ref = gru_pair(4, 8)
    x = torch.randn(3, 2, 4, dtype=torch.float64)
    with torch.no_grad(), pytest.warns(UserWarning, match="differ from nn.GRU's on this "
                                                          "shape; nn.GRU runs it"):
        got = _flatten(ours(x.to(DEVICE)))
    entry = routing._cache("cpu").get("gru/fp64/H8/N2/inference/padded/D1/L1")
    assert entry["backend"] == "torch" and "first-use check" in entry["reason"]
    with torch.no_grad():
        for a, b in zip(got, _flatten(ref(x))):
            assert rel_err(a, b) < 1e-12


# ----- the module: nn.GRU's constructor, parameters, state_dict, errors ---------------------

def test_is_an_nn_gru_that_saves_loads_and_converts():
    """nn.GRU's parameters, initialisation and repr (its positional order); saving, loading
    and convert() (helpers.check_drop_in_module)."""
    check_drop_in_module(triton_rnn.GRU, nn.GRU, (10, 20, 2, False, True, 0.1, True), (3, 4))


# (description, module kwargs, input shape, h0 shape or None, input dtype, h0 dtype)
BAD_INPUTS = [
    ("input-rank-4", {}, (5, 2, 4, 1), None, torch.float32, None),
    ("input-size", {}, (5, 2, 3), None, torch.float32, None),
    ("h0-shape", {}, (5, 2, 4), (2, 2, 5), torch.float32, torch.float32),
    ("h0-rank-batched", {}, (5, 2, 4), (2, 6), torch.float32, torch.float32),
    ("h0-rank-unbatched", {}, (5, 4), (2, 1, 6), torch.float32, torch.float32),
    ("h0-dtype", {}, (5, 2, 4), (2, 2, 6), torch.float32, torch.float64),
    ("input-dtype", {}, (5, 2, 4), None, torch.float64, None),
    ("seq-len-0", {}, (0, 2, 4), None, torch.float32, None),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_raises_what_nn_gru_raises(case):
    _, kwargs, shape, h0_shape, dtype, h0_dtype = case
    x = torch.zeros(shape, dtype=dtype)
    h0 = None if h0_shape is None else torch.zeros(h0_shape, dtype=h0_dtype)
    with pytest.raises(Exception) as expected:
        nn.GRU(4, 6, 2, **kwargs)(x, h0)
    ours = triton_rnn.GRU(4, 6, 2, **kwargs).to(DEVICE)
    with pytest.raises(type(expected.value)) as got:
        ours(x.to(DEVICE), None if h0 is None else h0.to(DEVICE))
    assert str(got.value) == str(expected.value)


@pytest.mark.xdist_group("torch-module-db")  # one worker reads PyTorch's test utilities
def test_pytorch_module_info_samples_and_error_inputs():
    """PyTorch's own ModuleInfo for nn.GRU (torch.testing._internal.common_modules): every
    sample's output and h_n as nn.GRU's, and every error input raising its error."""
    check_module_info(pytorch_module_info("GRU")["GRU"], gru_pair, _flatten, triton_rnn.GRU)


def test_compile_fullgraph_forward_and_backward(kernel_launches):
    """No graph break at the GRU (its recurrence is a custom op with a fake implementation):
    the compiled loss and gradients are eager's, through our kernels."""
    torch._dynamo.reset()
    ours, _ = gru_pair(3, 6, 1, batch_first=True)
    x = torch.randn(2, 4, 3, dtype=torch.float64, device=DEVICE)

    def loss(x):
        out, h = ours(x)
        return out.sum() + h.pow(2).sum()

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
    """As nn.GRU under autocast: the input, h_0 and weights cast to the autocast dtype at the
    call, the results in it, the parameters' gradients in theirs."""
    torch.manual_seed(0)
    ours = triton_rnn.GRU(4, 6).to(DEVICE)
    ref = nn.GRU(4, 6).to(dtype)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(5, 3, 4)
    with torch.autocast(DEVICE, dtype=dtype):
        got = _flatten(ours(x.to(DEVICE)))
    with torch.backends.mkldnn.flags(enabled=False):
        expected = _flatten(ref(x.to(dtype)))
    for a, b in zip(got, expected):
        assert a.dtype == dtype and rel_err(a, b) < 3e-2
    got[0].float().sum().backward()
    assert ours.weight_hh_l0.grad.dtype == torch.float32
    assert kernel_launches == {"forward": 1, "backward": 1}


# ----- GPU only: CUDA graphs -----------------------------------------------------------------

@pytest.mark.gpu
@pytest.mark.parametrize("H,dtype", [(64, torch.float32), (256, torch.bfloat16)],
                         ids=["resident-tf32", "streaming-bf16"])
def test_cuda_graph_training_step_matches_eager(H, dtype, kernel_launches):
    """A captured forward + backward of a two-layer, two-direction GRU on our kernels (the
    resident variant; streaming) gives eager's loss and gradients on new data."""
    from test_toolchain import _capture, replays_match_eager
    torch.manual_seed(0)
    model = triton_rnn.GRU(8, H, 2, bidirectional=True).to("cuda", dtype)
    static_x = torch.randn(10, 16, 8, device="cuda", dtype=dtype)

    def step():
        model.zero_grad(set_to_none=False)
        out, h_n = model(static_x)
        loss = out.float().pow(2).sum() + h_n.float().sum()
        loss.backward()
        return loss

    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    graph, static_loss = _capture(step)
    assert kernel_launches["forward"] > 0 and kernel_launches["backward"] > 0
    replays_match_eager(graph, static_loss, static_x, step, list(model.parameters()))
