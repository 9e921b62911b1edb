"""triton_rnn.RNN with PyTorch's toolchain: torch.compile, custom-op checks, autocast,
deterministic mode, DistributedDataParallel / FSDP, CUDA graphs."""

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import triton_rnn
from conftest import CUDA, DEVICE
from helpers import make_pair, rel_err
from triton_rnn.ops import recurrence, recurrence_backward, uses_kernels


class Model(nn.Module):
    """An RNN inside a model, as users have it."""

    def __init__(self, dropout=0.0, layers=2):
        super().__init__()
        self.embed = nn.Linear(3, 6)
        self.rnn = triton_rnn.RNN(6, 9, layers, batch_first=True, bidirectional=True,
                                  dropout=dropout)
        self.head = nn.Linear(18, 2)

    def forward(self, x):
        out, h_n = self.rnn(torch.tanh(self.embed(x)))
        return self.head(out).sum() + h_n.pow(2).sum()


def _loss_and_grads(model, x):
    model.zero_grad()
    loss = model(x)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("train_dropout", [False, True], ids=["eval", "train-dropout"])
def test_compile_fullgraph_forward_and_backward(train_dropout):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = Model(dropout=0.3).double().to(DEVICE).train(train_dropout)
    x = torch.randn(4, 5, 3, dtype=torch.float64, device=DEVICE)
    torch.manual_seed(1)
    eager = _loss_and_grads(model, x)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")  # fails on a break
    torch.manual_seed(1)
    got = _loss_and_grads(compiled, x)
    assert rel_err(got[0], eager[0]) < 1e-9
    for g, e in zip(got[1], eager[1]):
        assert rel_err(g, e) < 1e-9


def test_compile_fullgraph_default_inductor_backend():
    """Inductor lowers the graph around our custom ops (generated C++ on the CPU, generated
    Triton on a GPU) and calls the ops themselves: same loss and gradients as eager."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    dtype = torch.float32 if CUDA else torch.float64  # exact comparison where we can
    model = Model().to(DEVICE, dtype)
    x = torch.randn(4, 5, 3, device=DEVICE, dtype=dtype)
    eager = _loss_and_grads(model, x)
    from torch._inductor import config as inductor_config
    # On the CPU, Inductor's C++ without SIMD: the same lowering and calls of our ops, a
    # third less of the compiler's time (the vectorised headers)
    with inductor_config.patch({"cpp.simdlen": None if CUDA else 1}):
        got = _loss_and_grads(torch.compile(model, fullgraph=True), x)  # default backend
    bound = 1e-4 if CUDA else 1e-9  # Inductor's fused float32 kernels round differently
    assert rel_err(got[0], eager[0]) < bound
    for g, e in zip(got[1], eager[1]):
        assert rel_err(g, e) < bound


def test_compile_fullgraph_packed_input():
    """The packed layout is worked out on the host from batch_sizes; under torch.compile the
    graph still stays whole, forward and backward, and gives eager's results."""
    from torch.nn.utils.rnn import pack_sequence
    torch._dynamo.reset()
    torch.manual_seed(0)
    rnn = triton_rnn.RNN(3, 5, bidirectional=True).to(DEVICE, torch.float64)
    seqs = [torch.randn(n, 3, dtype=torch.float64, device=DEVICE) for n in (2, 4, 1)]
    packed = pack_sequence(seqs, enforce_sorted=False)

    def loss(rnn, packed):
        out, h_n = rnn(packed)
        return out.data.sin().sum() + h_n.pow(2).sum()

    results = []
    for fn in (loss, torch.compile(loss, fullgraph=True, backend="aot_eager")):
        rnn.zero_grad()
        value = fn(rnn, packed)
        value.backward()
        results.append([value.detach()] + [p.grad.clone() for p in rnn.parameters()])
    for got, expected in zip(results[1], results[0]):
        assert rel_err(got, expected) < 1e-12


def test_compile_does_not_unlock_plain_nn_rnn():
    """Our Dynamo adjustment is scoped to triton_rnn.RNN: nn.RNN still graph-breaks as before."""
    torch._dynamo.reset()
    compiled = torch.compile(nn.RNN(3, 4), fullgraph=True, backend="aot_eager")
    with pytest.raises(Exception, match="RNN"):
        compiled(torch.randn(2, 1, 3))


# Padded and packed (the op's optional lengths); the op is the same whatever kernel variant
# runs inside it (tests/test_split.py runs the split variant through the module).
OPCHECK_SHAPES = [(3, 2, 5, 2, torch.float64, False), (4, 3, 5, 2, torch.float64, True)]


@pytest.mark.parametrize("T,N,H,D,dtype,packed", OPCHECK_SHAPES,
                         ids=[f"T{s[0]}-N{s[1]}-H{s[2]}-D{s[3]}{'-lengths' if s[5] else ''}"
                              for s in OPCHECK_SHAPES])
def test_opcheck(T, N, H, D, dtype, packed):
    kw = dict(dtype=dtype, device=DEVICE)
    proj = torch.randn(T, N, D * H, **kw, requires_grad=True)
    h0 = torch.randn(D, N, H, **kw, requires_grad=True)
    # Each direction's own projection, W_hh and b_hh (the reverse ones None for one direction).
    projs = [torch.randn(T, N, H, **kw, requires_grad=True) for _ in range(D)]
    ws = [(torch.randn(H, H, **kw) / H ** 0.5).requires_grad_() for _ in range(D)]
    bs = [torch.randn(H, **kw, requires_grad=True) for _ in range(D)]
    reverse = (lambda parts: parts[1] if D == 2 else None)
    lengths = torch.tensor([T, 1, T - 1], dtype=torch.int32, device=DEVICE)[:N] if packed \
        else None
    args = (projs[0], reverse(projs), h0, ws[0], reverse(ws), bs[0], reverse(bs), lengths)
    torch.library.opcheck(recurrence, (*args, False, False))
    out = recurrence(*args, True, False).detach()
    torch.library.opcheck(recurrence_backward, (torch.randn_like(out), out, ws[0].detach(),
                                                None if D == 1 else ws[1].detach(), lengths,
                                                True, False))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_autocast_gives_nn_rnns_dtype(dtype):
    torch.manual_seed(0)
    ours = triton_rnn.RNN(4, 6, 2, bidirectional=True).to(DEVICE)
    ref = nn.RNN(4, 6, 2, bidirectional=True).to(DEVICE)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(5, 3, 4, device=DEVICE)
    with torch.autocast(DEVICE, dtype=dtype):
        out, h_n = ours(x)
        ref_out, ref_h = ref(x)
    assert (out.dtype, h_n.dtype) == (ref_out.dtype, ref_h.dtype) == (dtype, dtype)
    assert rel_err(out, ref_out) < 3e-2 and rel_err(h_n, ref_h) < 3e-2
    out.float().sum().backward()
    assert ours.weight_hh_l0.grad.dtype == torch.float32  # master weights keep their dtype


def test_deterministic_mode_bitwise_repeatable(monkeypatch):
    # cuBLAS (the projection GEMMs) refuses deterministic mode without this setting.
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    try:
        model = Model().to(DEVICE)
        x = torch.randn(17, 5, 3, device=DEVICE)
        first, second = _loss_and_grads(model, x), _loss_and_grads(model, x)
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.equal(first[0], second[0])
    assert all(torch.equal(a, b) for a, b in zip(first[1], second[1]))


def _distributed_worker(rank, world, store_path, x, result_path, kernels_expected):
    # The workers inherit TRITON_INTERPRET from conftest: without a GPU, the kernels run
    # through the interpreter; on a GPU machine, these CPU tensors take the reference path.
    assert uses_kernels(x) == kernels_expected
    # A file rendezvous: no port to race for with anything else on the machine.
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank,
                            world_size=world)
    try:
        torch.manual_seed(0)
        ddp = nn.parallel.DistributedDataParallel(Model(layers=1).double())
        ddp(x[rank::world]).backward()  # DDP averages gradients over ranks
        grads = {"ddp": [p.grad.clone() for p in ddp.module.parameters()]}

        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        mesh = init_device_mesh("cpu", (world,))  # without one, FSDP would pick the GPU
        torch.manual_seed(0)
        sharded = Model(layers=1).double()
        fully_shard(sharded.rnn, mesh=mesh)
        fully_shard(sharded, mesh=mesh)
        sharded(x[rank::world]).backward()  # so does FSDP
        grads["fsdp"] = [p.grad.full_tensor() for p in sharded.parameters()]
        if rank == 0:
            torch.save(grads, result_path)
    finally:
        dist.destroy_process_group()


def test_ddp_and_fsdp_gradients_equal_single_process(tmp_path):
    """Two gloo processes on localhost, each with half the batch: the averaged gradients must
    equal a single process's gradients of the average of the two half-batch losses."""
    x = torch.randn(6, 5, 3, dtype=torch.float64)
    torch.manual_seed(0)
    single = Model(layers=1).double()
    single(x[0::2]).div(2).backward()  # the same per-rank losses, averaged in one process
    single(x[1::2]).div(2).backward()
    expected = [p.grad for p in single.parameters()]
    path = tmp_path / "grads.pt"
    mp.spawn(_distributed_worker, args=(2, str(tmp_path / "store"), x, str(path),
                                        uses_kernels(x)), nprocs=2, join=True)
    grads = torch.load(path)
    for kind in ("ddp", "fsdp"):
        assert len(grads[kind]) == len(expected)
        for g, e in zip(grads[kind], expected):
            assert rel_err(g, e) < 1e-12, kind


# ----- GPU only: CUDA graphs ------------------------------------------------------------

def _capture(fn):
    """Warm fn up on a side stream (compiles kernels, allocates), then capture it."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        result = fn()
    return graph, result


@pytest.mark.gpu
def test_cuda_graph_inference_matches_eager():
    model, _ = make_pair(8, 33, 2, bidirectional=True, dtype=torch.float32)
    static_x = torch.randn(12, 5, 8, device="cuda")
    with torch.no_grad():
        graph, (static_out, static_h) = _capture(lambda: model(static_x))
        for _ in range(2):
            static_x.copy_(torch.randn_like(static_x))
            graph.replay()
            out, h_n = model(static_x)
            assert torch.equal(static_out, out) and torch.equal(static_h, h_n)


@pytest.mark.gpu
@pytest.mark.parametrize("dropout", [0.0, 1.0], ids=["no-dropout", "dropout-all"])
def test_cuda_graph_training_step_matches_eager(dropout):
    """A captured forward + backward gives eager's loss and gradients on new data. With
    dropout = 1 the dropped layer's output is exactly zero, so the dropout path is captured and
    the result is still deterministic."""
    torch.manual_seed(0)
    model = Model(dropout=dropout).cuda().train()
    static_x = torch.randn(16, 7, 3, device="cuda")

    def step():
        model.zero_grad(set_to_none=False)
        loss = model(static_x)
        loss.backward()
        return loss

    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    graph, static_loss = _capture(step)
    replays_match_eager(graph, static_loss, static_x, step, list(model.parameters()))


def replays_match_eager(graph, static_loss, static_x, step, parameters):
    """Two replays of a captured training step on new data in static_x: the captured loss and
    gradients are eager's (step() run again)."""
    for _ in range(2):
        static_x.copy_(torch.randn_like(static_x))
        graph.replay()
        captured = [p.grad.clone() for p in parameters]
        eager_loss = step()
        assert rel_err(static_loss, eager_loss) < 1e-6
        for g, p in zip(captured, parameters):
            assert rel_err(g.float(), p.grad.float()) < 1e-6


@pytest.mark.gpu
def test_cuda_graph_dropout_draws_new_masks_each_replay():
    torch.manual_seed(0)
    model = Model(dropout=0.5).cuda().train()
    static_x = torch.randn(16, 7, 3, device="cuda")
    with torch.no_grad():
        graph, static_loss = _capture(lambda: model(static_x))
        losses = []
        for _ in range(3):
            graph.replay()
            losses.append(static_loss.item())
    assert len(set(losses)) == 3 and all(torch.isfinite(torch.tensor(losses)))
