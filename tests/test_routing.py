"""Routing between our kernels and nn.RNN's own path: the policy switch, measured routing with a
stand-in clock, the persistent cache (concurrent writers, corrupt and foreign files), tune(),
torch.compile, deterministic mode, and the static rule from recorded GPU results."""
import json
import logging
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import triton_rnn
from conftest import CUDA, DEVICE
from helpers import one_percent_off
from triton_rnn import measure, ops, routing, step_models
from triton_rnn.kernels.dispatch import choose
from triton_rnn.route_cache import RouteCache

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "perf"))
import routing_table  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


# ----- the recorded table (perf/routing_table.py) -------------------------------------------

def _rows(dtype, batch, hidden, mode, ours_ms, ref_ms, seq=128, matches=True):
    base = dict(dtype=dtype, batch=batch, hidden=hidden, seq=seq, layers=1, directions=1,
                mode=mode, matches=matches)
    return [dict(base, impl="triton_rnn", ms=ours_ms), dict(base, impl="nn.RNN", ms=ref_ms)]


def test_table_lists_the_classes_where_nn_rnn_is_faster_or_we_are_wrong():
    rows = (_rows("bf16", 16, 512, "inference", 1.0, 3.0)          # we win
            + _rows("bf16", 16, 512, "training", 3.0, 1.0)        # we lose
            + _rows("tf32", 3, 2048, "inference", 2.0, 1.0, seq=16)   # lose at T=16 ...
            + _rows("tf32", 3, 2048, "inference", 1.0, 4.0, seq=1024)  # ... win more at 1024
            + _rows("fp16", 64, 128, "inference", 1.0, 9.0, matches=False))  # fast but wrong
    listed = {(c["dtype"], c["hidden"], c["batch"], c["mode"])
              for c in routing_table.slower_classes({"rows": rows})}
    assert listed == {("bf16", 512, 16, "training"), ("fp16", 128, 64, "inference")}


def test_lookup_buckets_shapes_like_the_table(tmp_path):
    table = {"cudnn_faster": {"sm_90": [
        {"dtype": "bf16", "hidden": 512, "batch": 16, "mode": "training"}]}}
    path = tmp_path / "t.json"
    path.write_text(json.dumps(table))
    classes = routing._classes(path)
    assert routing.shape_class(torch.bfloat16, False, 300, 9, True) in classes["sm_90"]
    assert routing.shape_class(torch.bfloat16, False, 300, 9, False) not in classes["sm_90"]
    assert routing.shape_class(torch.float32, False, 300, 9, True)[0] == "fp32"
    assert routing.shape_class(torch.float32, True, 300, 9, True)[0] == "tf32"


def test_static_rule_sends_the_streaming_variant_to_nn_rnn(monkeypatch):
    assert isinstance(routing._classes(), dict)  # the shipped table loads
    # whatever the models say: float64 streams beyond 1024, the rest beyond 2048
    monkeypatch.setattr(step_models, "kernels_win", lambda *a, **k: True)
    assert routing.static_choice("cpu", "fp64", 1000, 4, True) == "kernels"
    assert routing.static_choice("cpu", "fp64", 1100, 4, True) == "torch"
    assert routing.static_choice("cpu", "tf32", 2048, 64, False) == "kernels"
    assert routing.static_choice("cpu", "tf32", 2049, 64, False) == "torch"
    assert routing.static_choice("cpu", "bf16", 4096, 1, True) == "torch"


@pytest.mark.parametrize("faster,expected", [(5.0, "kernels"), (1.51, "kernels"),
                                             (1.49, "torch"), (None, "torch")],
                         ids=["5x", "1.51x", "1.49x", "no-model"])
def test_static_rule_follows_the_models_by_a_margin_of_1_5(monkeypatch, faster, expected):
    """tf32 H = 512, batch 16, inference: cuDNN's standard algorithm, modeled
    512² x 4 B / 5.5 TB/s + 5 µs = 5.19 µs per step. A stand-in table of our model decides: our
    kernels only where it says our step is at least 1.5x faster; nn.RNN without a model."""
    cudnn = step_models.cudnn_us("tf32", 512, 16, False)
    assert cudnn == pytest.approx(512 * 512 * 4 / 5.5e12 * 1e6 + 5.0)
    config = choose(512, 16, torch.float32, True, arch=90).describe()  # what the row models
    rows = {} if faster is None else {("tf32", 512, 16): {"forward": cudnn / faster,
                                                          "backward": 1.0,
                                                          "forward_config": config}}
    monkeypatch.setattr(step_models, "_table", lambda: rows)
    assert routing.static_choice("cpu", "tf32", 512, 16, False) == expected
    assert routing.static_choice("cpu", "tf32", 512, 9, False) == expected  # its bucket


def test_cudnn_model_follows_pytorchs_choice_of_algorithm():
    """get_algo's order (aten/src/ATen/native/cudnn/RNN.cpp): packed -> standard; small H
    (not float64) -> persistent small-H; fp16, one layer, one direction, H <= 1024 and a
    multiple of 128, batch % 8 == 0 and <= 128 (< 96 from H = 896) -> persistent-static."""
    algo = step_models.cudnn_algorithm
    assert algo("tf32", 384, 16) == "small-h" and algo("tf32", 385, 16) == "standard"
    assert algo("tf32", 256, 16, backward=True) == "small-h"
    assert algo("tf32", 300, 16, backward=True) == "standard"
    assert algo("fp64", 64, 16) == "standard" and algo("tf32", 64, 16, packed=True) == "standard"
    assert algo("fp16", 1024, 64) == "persistent-static"
    assert algo("fp16", 1024, 96) == "standard" and algo("fp16", 768, 96) == "persistent-static"
    assert algo("bf16", 1024, 64) == "standard" and algo("fp16", 1024, 60) == "standard"
    assert algo("fp16", 1024, 64, layers=2) == "standard"
    assert algo("fp16", 1024, 64, directions=2) == "standard"
    assert algo("fp16", 1024, 64, input_size=100) == "standard"
    assert step_models.cudnn_us("tf32", 128, 16, True) == pytest.approx(1.4)
    assert step_models.cudnn_us("fp16", 1024, 64, False) == pytest.approx(2.0)


def test_shipped_step_model_covers_what_the_kernels_run(monkeypatch):
    """The shipped table (perf/step_model_table.py) has a positive forward and backward model
    for every dtype, hidden size 16-2048 (1024 in float64) and batch 1-256, and a batch past
    it scales the largest batch's step. A row that models another configuration than this
    Triton's dispatcher picks is no model."""
    table = step_models._table()
    for dtype in ("tf32", "fp32", "bf16", "fp16", "fp64"):
        for hidden in [1 << i for i in range(4, 11 if dtype == "fp64" else 12)]:
            for batch in [1 << i for i in range(9)]:
                row = table[(dtype, hidden, batch)]
                assert row["forward"] > 0 and row["backward"] > 0, row
    assert step_models.ours_us("bf16", 1024, 512, False) == pytest.approx(
        2 * table[("bf16", 1024, 256)]["forward"])
    # another GPU's dispatcher: TF32 at H = 2048 runs split.py where shared memory is small
    assert step_models.ours_us("tf32", 2048, 16, False, arch=89) is None
    assert not step_models.kernels_win("tf32", 2048, 16, False, arch=89)
    assert step_models.ours_us("tf32", 2048, 16, False, arch=90) == table[("tf32", 2048, 16)][
        "forward"]
    # a call whose own size gets another configuration than its buckets' row models: the
    # split in two dimensions at H = 1024 past 24 rows a group (batch 40: two groups of 20; it
    # is in bucket 64, of 32) and not at a ragged hidden size past 1024 (2040 is in bucket 2048)
    assert step_models.ours_us("tf32", 1024, 64, False) == table[("tf32", 1024, 64)]["forward"]
    assert step_models.ours_us("tf32", 1024, 40, False) is None
    assert step_models.ours_us("tf32", 2040, 64, False) is None
    row = dict(table[("bf16", 1024, 16)], forward_config="split/elementwise BN=1 R=16")
    monkeypatch.setattr(step_models, "_table", lambda: {("bf16", 1024, 16): row})
    assert step_models.ours_us("bf16", 1024, 16, False) is None


# ----- the policy switch ----------------------------------------------------------------------

@pytest.fixture
def launches(monkeypatch):
    """Records every launch of our recurrence kernels (forward "f", backward "b")."""
    calls = []
    forward, backward = ops.kernel_forward, ops.kernel_backward
    monkeypatch.setattr(ops, "kernel_forward",
                        lambda *a, **k: calls.append("f") or forward(*a, **k))
    monkeypatch.setattr(ops, "kernel_backward",
                        lambda *a, **k: calls.append("b") or backward(*a, **k))
    return calls


def _pair(*args, **kwargs):
    torch.manual_seed(0)
    ours = triton_rnn.RNN(*args, **kwargs).double()
    ref = nn.RNN(*args, **kwargs).double()
    ref.load_state_dict(ours.state_dict())
    return ours, ref


@pytest.mark.parametrize("how", ["env", "set_backend", "context"])
def test_policy_switch_chooses_the_path(how, monkeypatch, launches):
    ours, ref = _pair(3, 8)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    monkeypatch.delenv("TRITON_RNN_BACKEND", raising=False)
    expected = ref(x)[0]

    def run(policy):
        if how == "env":
            monkeypatch.setenv("TRITON_RNN_BACKEND", policy)
            return ours(x)[0]
        if how == "set_backend":
            routing.set_backend(policy)
            try:
                return ours(x)[0]
            finally:
                routing.set_backend(None)
        with triton_rnn.backend(policy):
            return ours(x)[0]

    assert torch.equal(run("torch"), expected) and launches == []  # nn.RNN's own forward
    assert torch.allclose(run("kernels"), expected, atol=1e-12) and launches == ["f"]
    assert routing.get_backend() == ("kernels" if how == "env" else "auto")


def test_policy_values_are_checked(monkeypatch):
    monkeypatch.setenv("TRITON_RNN_BACKEND", "cudnn")
    with pytest.raises(ValueError, match="TRITON_RNN_BACKEND.*auto, kernels, torch.*'cudnn'"):
        triton_rnn.RNN(2, 4)(torch.randn(3, 1, 2))
    with pytest.raises(ValueError, match="auto, kernels, torch"):
        triton_rnn.set_backend("fast")
    monkeypatch.setenv("TRITON_RNN_BACKEND", " Torch ")
    assert triton_rnn.get_backend() == "torch"


# ----- measured routing, with a stand-in clock ---------------------------------------------

class Clock:
    """Stand-in for measure.timer: runs the candidate, and says `kernels_ms` when our kernels
    ran in it and `torch_ms` when they did not. `calls` counts the timings."""

    def __init__(self, launches, kernels_ms=1.0, torch_ms=2.0):
        self.launches, self.kernels_ms, self.torch_ms, self.calls = launches, kernels_ms, \
            torch_ms, 0

    def __call__(self, run):
        self.calls += 1
        before = len(self.launches)
        run()
        return self.kernels_ms if len(self.launches) > before else self.torch_ms


@pytest.fixture
def measured(monkeypatch, tmp_path, launches):
    """auto measures on the CPU too, into a fresh cache directory; returns the clock."""
    monkeypatch.setenv("TRITON_RNN_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("TRITON_RNN_BACKEND", raising=False)
    monkeypatch.setattr(routing, "MEASURED_DEVICES", ("cuda", "cpu"))
    clock = Clock(launches)
    monkeypatch.setattr(measure, "timer", clock)
    routing.forget_loaded_caches()
    yield clock
    routing.forget_loaded_caches()


@pytest.mark.parametrize("winner", ["kernels", "torch"])
@pytest.mark.parametrize("training", [False, True])
def test_the_fastest_wins_once_measured_and_later_calls_read_the_cache(
        winner, training, measured, launches, caplog, tmp_path):
    measured.kernels_ms, measured.torch_ms = (1.0, 3.0) if winner == "kernels" else (3.0, 1.0)
    ours, ref = _pair(3, 8, 2, bidirectional=True)
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    with caplog.at_level(logging.INFO, logger="triton_rnn"), torch.set_grad_enabled(training):
        out = ours(x)[0]
    assert measured.calls >= 2  # both candidates were timed
    lines = [r.getMessage() for r in caplog.records if r.name == "triton_rnn"]
    name = f"fp64/H8/N4/{'training' if training else 'inference'}/padded/D2/L2"
    assert len(lines) == 1 and name in lines[0], lines
    assert torch.allclose(out, ref(x)[0], atol=1e-12)
    # The cache file holds the decision; a process that has not read it yet follows it.
    entry = json.loads(next(tmp_path.glob("routing-*.json")).read_text())["classes"][name]
    assert entry["backend"] == winner and set(entry["ms"]) == {"kernels", "torch"}
    routing.forget_loaded_caches()
    calls, launched = measured.calls, len(launches)
    with torch.set_grad_enabled(training):
        out = ours(x)[0]
    assert measured.calls == calls  # not measured again
    assert (len(launches) > launched) == (winner == "kernels")
    assert torch.allclose(out, ref(x)[0], atol=1e-12)


@torch.no_grad()
def test_classes_are_kept_apart(measured):
    ours, _ = _pair(3, 8)
    ours(torch.randn(4, 2, 3, dtype=torch.float64))
    ours(torch.randn(4, 2, 3, dtype=torch.float64))    # same class
    ours(torch.randn(40, 2, 3, dtype=torch.float64))   # longer sequence: same class
    assert len(routing._cache("cpu").classes()) == 1
    ours(torch.randn(4, 3, 3, dtype=torch.float64))    # batch 3 -> bucket 4
    ours(torch.randn(4, 5, 3, dtype=torch.float64))    # batch 5 -> bucket 8
    x = torch.randn(4, 3, 3, dtype=torch.float64)
    ours(pack_padded_sequence(x, [4, 3, 1]))           # packed
    assert sorted(routing._cache("cpu").classes()) == [
        "fp64/H8/N2/inference/padded/D1/L1", "fp64/H8/N4/inference/packed/D1/L1",
        "fp64/H8/N4/inference/padded/D1/L1", "fp64/H8/N8/inference/padded/D1/L1"]


def test_measures_under_inference_mode_and_autocast(measured):
    ours, ref = _pair(3, 8)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    with torch.inference_mode():
        assert torch.allclose(ours(x)[0], ref(x)[0], atol=1e-12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ours.float()(x.float())[0]
    assert out.dtype == torch.bfloat16
    assert {name: entry["backend"] for name, entry in routing._cache("cpu").classes().items()} \
        == {"fp64/H8/N2/inference/padded/D1/L1": "kernels",
            "bf16/H8/N2/training/padded/D1/L1": "kernels"}


def test_a_trainable_h0_makes_it_a_training_call(measured):
    ours, _ = _pair(3, 8)
    ours.requires_grad_(False)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    ours(x, torch.zeros(1, 2, 8, dtype=torch.float64, requires_grad=True))
    ours(x)
    assert sorted(routing._cache("cpu").classes()) == [
        "fp64/H8/N2/inference/padded/D1/L1", "fp64/H8/N2/training/padded/D1/L1"]


def test_measures_inside_activation_checkpointing(measured):
    from torch.utils.checkpoint import checkpoint
    ours, ref = _pair(3, 8)
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    out = checkpoint(lambda v: ours(v)[0], x, use_reentrant=False)
    out.sum().backward()
    assert torch.allclose(out, ref(x)[0], atol=1e-12)
    assert list(routing._cache("cpu").classes()) == ["fp64/H8/N2/training/padded/D1/L1"]


def test_not_measured_under_a_dispatch_mode(measured):
    from torch.utils._python_dispatch import TorchDispatchMode

    class Passthrough(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    ours, _ = _pair(3, 8)
    with Passthrough(), torch.no_grad():
        ours(torch.randn(4, 2, 3, dtype=torch.float64))
    assert measured.calls == 0 and routing._cache("cpu").classes() == {}


def test_measuring_leaves_grads_rng_and_backends_flags_alone(measured):
    ours, _ = _pair(3, 8, 2, dropout=0.5)
    twin, _ = _pair(3, 8, 2, dropout=0.5)
    x = torch.randn(5, 3, 3, dtype=torch.float64, requires_grad=True)
    flags = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
             torch.backends.cudnn.benchmark, torch.backends.cudnn.enabled)
    with triton_rnn.backend("kernels"):
        torch.manual_seed(1)
        expected = twin(x)[0]  # the same module, never measured
        rng_after = torch.get_rng_state()
    torch.manual_seed(1)
    measured.kernels_ms, measured.torch_ms = 1.0, 2.0  # our kernels win: same path as the twin
    out = ours(x)[0]
    assert measured.calls >= 2
    assert torch.equal(out, expected)            # dropout drew the same numbers
    assert torch.equal(torch.get_rng_state(), rng_after)
    assert all(p.grad is None for p in ours.parameters()) and x.grad is None
    assert flags == (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32,
                     torch.backends.cudnn.benchmark, torch.backends.cudnn.enabled)


def test_deterministic_training_never_routes_to_nn_rnn(measured, launches):
    measured.kernels_ms, measured.torch_ms = 9.0, 1.0  # nn.RNN would win
    ours, ref = _pair(3, 8)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    torch.use_deterministic_algorithms(True)
    try:
        out = ours(x)[0]
        assert launches == ["f"] and measured.calls == 0
        with torch.no_grad():  # inference may still use nn.RNN's path
            ours(x)
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.allclose(out, ref(x)[0], atol=1e-12)
    assert list(routing._cache("cpu").classes()) == ["fp64/H8/N2/inference/padded/D1/L1"]


def test_a_failing_or_non_finite_candidate_is_left_out(measured, monkeypatch):
    ours, ref = _pair(3, 8)
    x = torch.randn(4, 2, 3, dtype=torch.float64)

    def broken(*args, **kwargs):
        raise RuntimeError("launch failed")
    monkeypatch.setattr(ops, "kernel_forward", broken)
    with pytest.warns(UserWarning, match="kernels failed on this shape.*launch failed"):
        out = ours(x)[0]
    assert torch.equal(out, ref(x)[0])  # routed to nn.RNN although "faster" on the clock
    # A raise may be passing (out of memory): decided for this process, not written down.
    assert routing._cache("cpu").get("fp64/H8/N2/training/padded/D1/L1")["backend"] == "torch"
    assert not list(Path(__import__("os").environ["TRITON_RNN_CACHE_DIR"]).glob("*.json"))
    monkeypatch.setattr(ops, "kernel_forward",  # one direction: its projection's shape
                        lambda projs, *a, **k: torch.full_like(projs[0], 1e308) * 10)
    with pytest.warns(UserWarning, match="kernels gave non-finite values"):
        out = ours(torch.randn(4, 7, 3, dtype=torch.float64))[0]
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("wrong_in", ["forward", "backward"])
def test_first_use_check_routes_a_wrong_kernel_to_nn_rnn(wrong_in, measured, monkeypatch,
                                                          tmp_path, capsys):
    """Our kernels "faster" on the clock but 1% off in the output (forward) or in dz
    (backward: the output is right, the gradients are not): the class goes to nn.RNN, the
    cache keeps the reason and the errors, one warning gives the numbers, --show prints it."""
    measured.kernels_ms, measured.torch_ms = 1.0, 3.0
    ours, ref = _pair(3, 8, 2, bidirectional=True)
    one_percent_off(monkeypatch, wrong_in)
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    with torch.set_grad_enabled(wrong_in == "backward"):
        with pytest.warns(UserWarning, match=r"differ from nn.RNN's on this shape; nn.RNN runs "
                                             r"it: .*0\.0\d+ \(relative error"):
            out = ours(x)[0]
        assert torch.equal(out, ref(x)[0])  # nn.RNN's own path ran
        name = f"fp64/H8/N4/{'training' if wrong_in == 'backward' else 'inference'}/padded/D2/L2"
        entry = json.loads(next(tmp_path.glob("routing-*.json")).read_text())["classes"][name]
        assert entry["backend"] == "torch" and "first-use check" in entry["reason"]
        assert ("output" in entry["errors"]) == (wrong_in == "forward")
        assert all(0.005 < e < 0.05 for e in entry["errors"].values()), entry["errors"]
        if wrong_in == "backward":
            assert {"grad weight_hh_l0", "grad weight_ih_l1_reverse"} <= set(entry["errors"])
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            calls = measured.calls
            assert torch.equal(ours(x)[0], ref(x)[0])  # the cache decides; no second warning
            assert measured.calls == calls
    routing._main(["--show", "--device", "cpu"])
    shown = capsys.readouterr().out
    assert name in shown and "first-use check" in shown and "relative error" in shown


def test_first_use_check_passes_right_kernels_with_dropout(measured):
    """With dropout the two paths draw different masks: the check compares without it."""
    measured.kernels_ms, measured.torch_ms = 1.0, 3.0
    ours, _ = _pair(3, 8, 3, dropout=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ours(torch.randn(5, 2, 3, dtype=torch.float64))
    entry = routing._cache("cpu").get("fp64/H8/N2/training/padded/D1/L3")
    assert entry["backend"] == "kernels" and "reason" not in entry


@torch.no_grad()
def test_nothing_is_measured_under_torch_compile(measured, launches):
    def no_measuring(run):
        raise AssertionError("measured while tracing")
    measured_clock = measure.timer
    ours, ref = _pair(3, 8)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    routing.measure.timer = no_measuring
    try:
        # Unknown class: the static rule (our kernels at H = 8).
        compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
        assert torch.allclose(compiled(x)[0], ref(x)[0], atol=1e-12) and launches == ["f"]
        # A class the cache sends to nn.RNN: the compiled graph follows it.
        routing._cache("cpu").put("fp64/H8/N8/inference/padded/D1/L1",
                                  {"backend": "torch", "ms": {}})
        y = torch.randn(4, 6, 3, dtype=torch.float64)
        torch._dynamo.reset()
        compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
        assert torch.allclose(compiled(y)[0], ref(y)[0], atol=1e-12) and launches == ["f"]
        # A symbolic batch follows its bucket's decision (the bucket bounds guard the graph);
        # sorted packed input, whose batch is data to the tracer, the static rule.
        torch._dynamo.reset()
        compiled = torch.compile(ours, fullgraph=True, backend="aot_eager", dynamic=True)
        assert torch.allclose(compiled(y)[0], ref(y)[0], atol=1e-12) and launches == ["f"]
        assert torch.allclose(compiled(x)[0], ref(x)[0], atol=1e-12) and launches == ["f"] * 2
        packed = pack_padded_sequence(y, [4, 3, 3, 2, 2, 1])
        assert torch.allclose(compiled(packed)[0].data, ref(packed)[0].data, atol=1e-12)
        assert launches == ["f"] * 3
    finally:
        routing.measure.timer = measured_clock
        torch._dynamo.reset()


class NormThenRNN(nn.Module):
    """A model with running statistics (which tune() must restore) around our RNN."""

    def __init__(self, rnn):
        super().__init__()
        self.norm, self.rnn = nn.BatchNorm1d(3).double(), rnn

    def forward(self, x):  # x (T, N, 3)
        return self.rnn(self.norm(x.permute(1, 2, 0)).permute(2, 0, 1))


def test_tune_fills_the_cache_for_both_modes_and_leaves_the_model_alone(measured):
    ours, _ = _pair(3, 8, bidirectional=True, dropout=0.0)
    model = NormThenRNN(ours).train()
    stats = model.norm.running_mean.clone()
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    torch.manual_seed(3)
    rng = torch.get_rng_state()
    decided = triton_rnn.tune(model, x)
    assert decided == {"fp64/H8/N2/inference/padded/D2/L1": "kernels",  # the clock's
                       "fp64/H8/N2/training/padded/D2/L1": "kernels"}   # favourite
    assert torch.equal(model.norm.running_mean, stats)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in model.parameters())
    calls = measured.calls
    assert triton_rnn.tune(model, (x,)) == decided and measured.calls == calls  # cached
    measured.kernels_ms, measured.torch_ms = 5.0, 1.0
    assert set(triton_rnn.tune(model, x, force=True).values()) == {"torch"}
    assert measured.calls > calls


# ----- the cache file ---------------------------------------------------------------------------

KEY = {"device": "cuda", "gpu": "Stand-in GPU", "torch": "x", "triton": "y", "triton_rnn": "z"}


@pytest.mark.parametrize("content", [
    b"\xff\xfe not utf-8", "[" * 100000, "{not json", '{"format": 1, "key": ', '{"format": 99, "key": {}, "classes": {}}', "[]",
    json.dumps({"format": 1, "key": dict(KEY, gpu="Another GPU"), "classes": {}}),
    json.dumps({"format": 1, "key": KEY, "classes": {"c": {"backend": "cudnn"}}}),
])
def test_corrupt_truncated_or_foreign_files_are_ignored_and_rewritten(tmp_path, content):
    cache = RouteCache(KEY, tmp_path)
    if isinstance(content, bytes):
        cache.path.write_bytes(content)
    else:
        cache.path.write_text(content)
    with pytest.warns(UserWarning, match="ignoring the routing cache"):
        assert cache.get("c") is None
    with pytest.warns(UserWarning, match="ignoring the routing cache"):  # read again to merge
        cache.put("c", {"backend": "torch", "ms": {"torch": 1.0}})
    assert RouteCache(KEY, tmp_path).get("c") == {"backend": "torch", "ms": {"torch": 1.0}}


def test_files_are_per_setup(tmp_path):
    RouteCache(KEY, tmp_path).put("c", {"backend": "torch", "ms": {}})
    assert RouteCache(dict(KEY, torch="other"), tmp_path).get("c") is None
    assert RouteCache(KEY, tmp_path).get("c")["backend"] == "torch"


def test_concurrent_writers_from_several_processes_keep_every_entry(tmp_path):
    """Eight processes each record 25 classes at once into one file (like DDP ranks)."""
    script = textwrap.dedent(f"""
        import importlib.util, sys
        spec = importlib.util.spec_from_file_location(
            "route_cache", {str(ROOT / "triton_rnn" / "route_cache.py")!r})
        route_cache = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(route_cache)
        writer = sys.argv[1]
        for i in range(25):
            route_cache.RouteCache({KEY!r}, route_cache.Path({str(tmp_path)!r})).put(
                f"class-{{writer}}-{{i}}", {{"backend": "torch", "ms": {{"torch": i}}}})
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(w)]) for w in range(8)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    classes = RouteCache(KEY, tmp_path).classes()
    assert set(classes) == {f"class-{w}-{i}" for w in range(8) for i in range(25)}
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".tmp"] == []


def test_show_prints_the_cache(tmp_path):
    cache = RouteCache(routing.device_key("cpu"), tmp_path)
    cache.put("tf32/H512/N16/training/padded/D1/L1", {"backend": "torch",
                                                     "ms": {"kernels": 2.5, "torch": 1.25}})
    env = {**__import__("os").environ, "TRITON_RNN_CACHE_DIR": str(tmp_path)}
    shown = subprocess.run([sys.executable, "-m", "triton_rnn.routing", "--show", "--device",
                            "cpu"], capture_output=True, text=True, env=env, timeout=300,
                           cwd=ROOT)
    assert shown.returncode == 0, shown.stderr
    assert "tf32/H512/N16/training/padded/D1/L1" in shown.stdout
    assert "torch" in shown.stdout and "1.250 ms" in shown.stdout


# ----- on a GPU ---------------------------------------------------------------------------------

@pytest.mark.gpu  # measured routing runs on CUDA
def test_real_measurement_routes_and_writes_the_cache(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("TRITON_RNN_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("TRITON_RNN_BACKEND", raising=False)
    routing.forget_loaded_caches()
    try:
        ours, _ = _pair(64, 256)
        ours = ours.to(DEVICE, torch.float32)
        ref = nn.RNN(64, 256).to(DEVICE)
        ref.load_state_dict(ours.state_dict())
        x = torch.randn(64, 16, 64, device=DEVICE)
        with caplog.at_level(logging.INFO, logger="triton_rnn"), torch.no_grad():
            out = ours(x)[0]
        lines = [r.getMessage() for r in caplog.records if r.name == "triton_rnn"]
        assert len(lines) == 1 and "tf32/H256/N16/inference" in lines[0]
        entry = routing._cache(str(x.device)).get("tf32/H256/N16/inference/padded/D1/L1")
        assert entry["backend"] in ("kernels", "torch") and entry["ms"]
        with torch.no_grad():
            assert (out - ref(x)[0]).abs().max() < 2e-2
        # A second process reads it without measuring.
        probe = textwrap.dedent("""
            import torch, triton_rnn
            from triton_rnn import measure
            measure.timer = lambda run: (_ for _ in ()).throw(AssertionError("measured"))
            m = triton_rnn.RNN(64, 256).cuda()
            with torch.no_grad():
                m(torch.randn(64, 16, 64, device="cuda"))
        """)
        env = {**__import__("os").environ, "TRITON_RNN_CACHE_DIR": str(tmp_path)}
        done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr
    finally:
        routing.forget_loaded_caches()
