"""The split variant on a GPU: what only hardware shows (real concurrency, memory ordering,
co-residency), each compared with nn.RNN. Skipped without CUDA; perf/gpu_check.py runs them.

Every test also checks that no launch set the barrier's failure flag (kernels/failures.py)."""
import pytest
import torch
from torch import nn

import triton_rnn
from conftest import CUDA
from helpers import make_pair, rel_err
import triton_rnn.kernels.launch as launch
from triton_rnn.kernels import dispatch, failures

pytestmark = pytest.mark.gpu  # the split variant on hardware


def _no_barrier_failure():
    failures.check()  # raises SplitBarrierTimeout if any launch's flag was set


def _split_model(H, layers=1, bidirectional=True, dtype=torch.float32, I=16):
    assert dispatch.choose(H, 16, dtype).variant == "split"
    return make_pair(I, H, layers, bidirectional=bidirectional, dtype=dtype, device="cuda")


@pytest.mark.parametrize("H,N,T", [(512, 4, 4096), (1024, 64, 64), (2048, 16, 32)],
                         ids=["T4096", "many-groups", "H2048"])
def test_matches_nn_rnn_float64_reference(H, N, T):
    """IEEE float32 (the split product is fp32 whatever the TF32 setting) against float64."""
    ours, ref = _split_model(H)
    x = torch.randn(T, N, 16, dtype=torch.float64) * 0.5
    with torch.backends.cudnn.flags(allow_tf32=False), torch.no_grad():
        out, h_n = ours(x.cuda().float())
    ref_out, ref_h = ref(x)
    _no_barrier_failure()
    assert rel_err(out, ref_out) < 1e-4 and rel_err(h_n, ref_h) < 1e-4


@pytest.mark.parametrize("dtype,H", [(torch.float32, 768), (torch.bfloat16, 768),
                                     (torch.float16, 768), (torch.float32, 2048),
                                     (torch.bfloat16, 1100)],
                         ids=["tf32", "bf16", "fp16", "tf32-H2048-shared", "bf16-H1100-shared"])
def test_training_step_matches_cudnn(dtype, H):
    """Forward and backward of two bidirectional layers against nn.RNN (cuDNN) in the same
    dtype: our error against float64 within 1.5x cuDNN's own, or the dtype's bound. At H = 2048
    in TF32 and H = 1100 in bf16 the split holds W_hh in shared memory (dispatch)."""
    N, T = 24, 48
    ours, ref = _split_model(H, layers=2, dtype=dtype)
    cudnn = nn.RNN(16, H, 2, bidirectional=True).to("cuda", dtype)
    cudnn.load_state_dict(ours.state_dict())
    x = torch.randn(T, N, 16, dtype=torch.float64) * 0.5

    def run(model, x):
        x = x.detach().requires_grad_()
        out, h_n = model(x)
        (out.float().pow(2).sum() + h_n.float().sum()).backward()
        return [out, h_n, x.grad] + [p.grad for p in model.parameters()]

    got, base, expected = run(ours, x.cuda().to(dtype)), run(cudnn, x.cuda().to(dtype)), run(
        ref, x)
    _no_barrier_failure()
    for g, b, e in zip(got, base, expected):
        assert rel_err(g, e) < max(2e-3 if dtype == torch.float32 else 3e-2, 1.5 * rel_err(b, e))


def test_hundred_repeated_launches_are_identical():
    ours, _ = _split_model(1024)
    x = torch.randn(16, 8, 16, device="cuda")
    with torch.no_grad():
        first = ours(x)[0]
        for _ in range(100):
            assert torch.equal(ours(x)[0], first)
    _no_barrier_failure()


def test_concurrent_stream_busy_with_gemms():
    """Another stream keeps the SMs busy with matrix multiplies while the split kernels run:
    the cooperative launch waits for room (no hang), and the result is unchanged."""
    ours, _ = _split_model(2048, bidirectional=False)
    x = torch.randn(64, 16, 16, device="cuda")
    with torch.no_grad():
        expected = ours(x)[0]
        side = torch.cuda.Stream()
        a = torch.randn(4096, 4096, device="cuda")
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(20):
                a = (a @ a).tanh_()
        outs = [ours(x)[0] for _ in range(5)]
        torch.cuda.current_stream().wait_stream(side)
    _no_barrier_failure()
    assert all(torch.equal(o, expected) for o in outs)


def test_cuda_graph_capture_matches_eager():
    ours, _ = _split_model(1024)
    static_x = torch.randn(24, 8, 16, device="cuda")

    def step():
        return ours(static_x)[0]

    with torch.no_grad():
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            step()
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = step()
        for _ in range(3):
            static_x.copy_(torch.randn_like(static_x))
            graph.replay()
            assert torch.equal(static_out, step())
    _no_barrier_failure()


def test_module_drop_in():
    """The split path through triton_rnn.RNN with nothing but the class swapped."""
    torch.manual_seed(0)
    ref = nn.RNN(32, 600, batch_first=True).cuda()
    ours = triton_rnn.convert(nn.RNN(32, 600, batch_first=True)).cuda()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(4, 50, 32, device="cuda")
    with torch.backends.cudnn.flags(allow_tf32=False), torch.no_grad():
        assert rel_err(ours(x)[0], ref(x)[0]) < 1e-4
    _no_barrier_failure()


def test_waits_that_run_out_give_nan_and_an_error_never_a_wrong_value(monkeypatch):
    """With a bound of 2 polls most waits run out on real hardware: every element is then
    either nn.RNN's value or NaN, and NaN comes with SplitBarrierTimeout from check()."""
    monkeypatch.setattr(launch, "MAX_POLLS", 2)
    ours, ref = _split_model(1024)
    x = torch.randn(32, 8, 16, dtype=torch.float64)
    with torch.backends.cudnn.flags(allow_tf32=False), torch.no_grad():
        out = ours(x.cuda().float())[0].cpu()
    ref_out = ref(x)[0]
    computed = ~out.isnan()
    assert rel_err(out[computed], ref_out[computed]) < 1e-4
    if computed.all():
        failures.check()
    else:
        with pytest.raises(failures.SplitBarrierTimeout):
            failures.check()


def _whole_step(model, optimizer, x):
    """One training step: forward, backward, optimizer step; returns the loss."""
    optimizer.zero_grad(set_to_none=False)
    loss = model(x)[0].float().pow(2).mean()
    loss.backward()
    optimizer.step()
    return loss


@pytest.mark.parametrize("H", [256, 1024])
def test_cuda_graph_of_a_training_step_matches_eager(H):
    """Forward, backward and an optimizer step at split sizes, both directions, captured as
    one CUDA graph: each replay equals the same step run eagerly on a twin. The optimizer
    writes the parameters in place, and every replay must read them (nothing derived from
    them is kept)."""
    import copy
    torch.manual_seed(0)
    model = triton_rnn.RNN(16, H, bidirectional=True).cuda()
    assert dispatch.choose(H, 8, torch.float32).variant == "split"
    twin = copy.deepcopy(model)
    opt, twin_opt = (torch.optim.SGD(m.parameters(), lr=0.5) for m in (model, twin))
    static_x = torch.randn(12, 8, 16, device="cuda")
    with triton_rnn.backend("kernels"), torch.backends.cudnn.flags(allow_tf32=False):
        side = torch.cuda.Stream()  # warm-up on a side stream, as PyTorch's capture recipe
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for m, o in ((model, opt), (twin, twin_opt)):
                for _ in range(2):
                    _whole_step(m, o, static_x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_loss = _whole_step(model, opt, static_x)
        for _ in range(3):
            static_x.copy_(torch.randn_like(static_x))
            graph.replay()
            loss = _whole_step(twin, twin_opt, static_x)
            assert torch.allclose(static_loss, loss, rtol=1e-6, atol=0), (static_loss, loss)
            for (name, p), q in zip(model.named_parameters(), twin.parameters()):
                assert torch.allclose(p, q, rtol=1e-6, atol=1e-7), name
    failures.check_captured()  # no captured split launch failed in its last replay
    _no_barrier_failure()
    failures.forget_captured()


def test_captured_failure_flag_is_readable_after_replay(monkeypatch):
    """Waits bounded at 2 polls, captured: after a replay, check_captured() raises exactly
    when the replay wrote NaN."""
    monkeypatch.setattr(launch, "MAX_POLLS", 2)
    ours, _ = _split_model(1024)
    static_x = torch.randn(32, 8, 16, device="cuda")
    with torch.no_grad(), triton_rnn.backend("kernels"):
        ours(static_x)  # compiles before capture
        try:
            failures.check()
        except failures.SplitBarrierTimeout:
            pass
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = ours(static_x)[0]
        graph.replay()
        torch.cuda.synchronize()
        if static_out.isnan().any():
            with pytest.raises(failures.SplitBarrierTimeout):
                failures.check_captured()
        else:
            failures.check_captured()
    failures.forget_captured()
