"""perf/'s GPU pipeline, end to end, with a stand-in clock: sweep -> results.json -> table and
plots -> routing table.

The measurements run for real (both models, on the test device: through the interpreter
without a GPU; each checked against nn.RNN); only the clock is a stand-in, because the CPU is
never timed and timing is not a test. The stand-in latencies are arbitrary numbers written to
a temporary folder: what is checked is what the pipeline does with them, so that a GPU session
spends its time measuring, not debugging plumbing.
"""
import json
import sys
from pathlib import Path

import pytest
import torch

import triton_rnn
from conftest import DEVICE
from triton_rnn import gru_ops, lstm_ops, ops, routing

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "perf"))
import bench  # noqa: E402
import latency  # noqa: E402
import plots  # noqa: E402
import routing_table  # noqa: E402

FAKE_ENV = dict(gpu="Stand-in GPU", sm_count=1, arch="sm_90", torch=torch.__version__,
                triton="-", cuda="-", cudnn="-")
NN_RNN_MS = 2.0
PACKED_COST = {True: 1.25, False: 5.0}  # packed over padded latency, ours (True) and nn.RNN


def ours_ms(batch: int) -> float:
    """Stand-in latency: ours wins at batch 1 and loses at larger batches."""
    return 1.0 if batch == 1 else 4.0


@pytest.fixture
def tf32_flags_kept():
    """bench sets the TF32 flags per case: restore them for the tests that follow."""
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


@pytest.fixture(scope="session")
def sweep(tmp_path_factory):
    """Run latency.py's GPU path over a tiny sweep on the CPU, once for the tests that read it
    (they share one xdist worker: SWEEP_GROUP; session scope, since other modules' tests may
    run between them there); return (results, folder). Every patch is undone before the
    tests read the results."""
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:
        with pytest.MonkeyPatch.context() as monkeypatch:
            return _run_sweep(tmp_path_factory.mktemp("sweep"), monkeypatch)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags


# The tests that read one sweep run on one worker, so that it runs once.
SWEEP_GROUP = pytest.mark.xdist_group("perf-sweep")


def _run_sweep(tmp_path, monkeypatch):
    launches = []
    make_step = bench._step
    for module in (ops, lstm_ops, gru_ops):  # RNN, LSTM and GRU layers
        monkeypatch.setattr(module, "kernel_forward", lambda *a, kernel=module.kernel_forward,
                            **k: launches.append(1) or kernel(*a, **k))

    def tagged_step(model, inputs, grads, mode, packed=False, policy="kernels"):
        run = make_step(model, inputs, grads, mode, packed, policy)
        run.ours = isinstance(model, (triton_rnn.RNN, triton_rnn.LSTM, triton_rnn.GRU))
        run.auto = policy == "auto"
        run.batch = int(inputs[0].batch_sizes[0]) if packed else inputs[0].shape[1]
        run.packed = packed
        return run

    def stand_in_clock(step, warmup_ms, rep_ms):
        """Runs the step once (it must work, on our kernels for ours), then names a latency."""
        launches.clear()
        step()
        assert bool(launches) == step.ours
        ms = ours_ms(step.batch) if step.ours else NN_RNN_MS
        if step.auto:  # routed: as if it had picked the faster path
            ms = min(ms, NN_RNN_MS)
        ms *= PACKED_COST[step.ours] if step.packed else 1.0
        return ms, 0.9 * ms, 1.1 * ms

    monkeypatch.setattr(bench, "DEVICE", DEVICE)
    monkeypatch.setenv("TRITON_RNN_CACHE_DIR", str(tmp_path / "routing-cache"))
    monkeypatch.setattr(bench, "environment", lambda: dict(FAKE_ENV))
    monkeypatch.setattr(bench, "_step", tagged_step)
    monkeypatch.setattr(bench, "_time", stand_in_clock)
    monkeypatch.setattr(latency, "PACKED_SWEEP", dict(batch=[16], hidden=[16], seq=[4],
                                                      layers=[1], directions=[1]))
    monkeypatch.setattr(latency, "LSTM_SWEEP", dict(batch=[1, 16], hidden=[16], seq=[3],
                                                    layers=[1], directions=[1]))
    args = latency.parse_args(["--batch", "1", "16", "--hidden", "16", "--seq", "3",
                               "--layers", "1", "--directions", "1",
                               "--dtypes", "tf32", "bf16", "--out", str(tmp_path)])
    folder = latency.run_sweep(args)
    return json.loads((folder / "results.json").read_text()), folder


@SWEEP_GROUP
def test_every_case_is_measured_and_checked_against_nn_rnn(sweep):
    results, _ = sweep
    assert results["environment"] == FAKE_ENV and not results["failures"]
    assert results["cases_planned"] == 2 * 2  # dtypes x batch
    assert len(results["rows"]) == 4 * 2 * 3      # x modes x (ours, auto, nn.RNN)
    expected = {"triton_rnn": ours_ms, "auto": lambda b: min(ours_ms(b), NN_RNN_MS),
                "nn.RNN": lambda b: NN_RNN_MS}
    for row in results["rows"]:
        assert row["matches"], row
        assert row["ms"] == expected[row["impl"]](row["batch"])
    layouts = {(r["dtype"], r["mode"], r["impl"], r["layout"]) for r in results["packed_rows"]}
    assert len(layouts) == 2 * 2 * 2 * 2 and all(r["matches"] for r in results["packed_rows"])
    # LSTM and GRU layers: dtypes x batch x modes x (ours, auto, nn.LSTM or nn.GRU)
    reference = expected.pop("nn.RNN")
    for cell, name in (("lstm", "nn.LSTM"), ("gru", "nn.GRU")):
        assert len(results[f"{cell}_rows"]) == 2 * 2 * 2 * 3
        for row in results[f"{cell}_rows"]:
            assert row["matches"] and row["cell"] == cell, row
            assert row["ms"] == dict(expected, **{name: reference})[row["impl"]](row["batch"])


@SWEEP_GROUP
def test_table_and_plots_come_from_the_recorded_numbers(sweep):
    results, folder = sweep
    table = (folder / "speedup.md").read_text()
    assert "Stand-in GPU" in table
    # Per dtype and mode: speedups 2.0 (batch 1) and 0.5 (batch 16); auto: 2.0 and 1.0
    # (routed to nn.RNN at batch 16).
    for dtype in ("tf32", "bf16"):
        for mode in ("inference", "training"):
            assert (f"| {dtype} | {mode} | 2 | 1.00x | 0.50x | 2.00x | 1 | 0 | 1.41x | 0 |"
                    in table)
    assert "| 1 | 333.3 / 0.00 |" in table  # ours at batch 1: 1 ms over T = 3 steps
    for dtype in ("tf32", "bf16"):  # packed/padded ratios, then packed ms of both
        assert f"| {dtype} | 16 | 16 | 4 | training | 1.25 | 5.00 | 5.000 | 10.000 |" in table
    # the LSTM layers' table after the RNN's, with the same stand-in numbers
    for module in ("LSTM", "GRU"):
        rows = table[table.index(f"Speedup of triton_rnn.{module} over torch.nn.{module}"):]
        assert "| tf32 | training | 2 | 1.00x | 0.50x | 2.00x | 1 | 0 | 1.41x | 0 |" in rows
    names = {p.name for p in plots.draw(results, folder / "redrawn")}
    plotted = {"latency_vs_batch.png", "latency_vs_hidden.png", "latency_vs_seq.png",
               "speedup_heatmap.png"}
    assert names == plotted | {f"{cell}_{n}" for n in plotted for cell in ("lstm", "gru")} | \
        {"packed_vs_padded.png"}
    assert all((folder / n).stat().st_size > 0 for n in names)  # run_sweep drew them too


@SWEEP_GROUP
def test_routing_table_from_the_sweep_routes_exactly_where_nn_rnn_won(sweep):
    results, folder = sweep
    table = routing_table.build([folder / "results.json"])
    listed = {(c["dtype"], c["hidden"], c["batch"], c["mode"])
              for c in table["cudnn_faster"]["sm_90"]}
    assert listed == {(d, 16, 16, m) for d in ("tf32", "bf16") for m in ("inference", "training")}
    path = folder / "cudnn_faster.json"
    path.write_text(json.dumps(table))
    classes = routing._classes.__wrapped__(path)["sm_90"]
    assert routing.shape_class(torch.bfloat16, False, 13, 9, training=True) in classes
    assert routing.shape_class(torch.bfloat16, False, 13, 1, training=True) not in classes
    assert routing.shape_class(torch.float32, False, 13, 9, training=True) not in classes


@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_a_wrong_kernel_is_marked_and_never_wins(cell, monkeypatch, tf32_flags_kept):
    module = ops if cell == "rnn" else lstm_ops
    kernel_forward = module.kernel_forward

    def wrong(*a, **k):  # h_t 1.5x too large (the LSTM's: its first output of three)
        out = kernel_forward(*a, **k)
        return out * 1.5 if cell == "rnn" else (out[0] * 1.5, *out[1:])
    monkeypatch.setattr(module, "kernel_forward", wrong)
    monkeypatch.setattr(bench, "DEVICE", DEVICE)
    monkeypatch.setattr(bench, "_time", lambda step, warmup_ms, rep_ms: (1.0, 0.9, 1.1))
    rows = bench.measure(bench.Case("tf32", 4, 16, 3, 1, 1, cell), ["inference"])
    assert len(rows) == 3 and not any(r["matches"] for r in rows)  # ours, auto, torch.nn's
    if cell == "rnn":
        listed = routing_table.slower_classes({"rows": rows})  # as fast as nn.RNN, but wrong
        assert [c["output_mismatch"] for c in listed] == [True]


def test_gpu_check_steps_are_time_boxed(tmp_path):
    """perf/gpu_check.py --total-minutes must end a step that overruns, keeping its log."""
    import gpu_check
    log = tmp_path / "step.log"
    step = "import time; print('started', flush=True); time.sleep(60)"
    assert gpu_check._run([sys.executable, "-c", step], log, timeout_s=2) == 124
    assert log.read_text().split() == ["started", "stopped", "by", "gpu_check", "after", "2",
                                       "s"]


def test_model_is_printed_beside_what_was_measured(tmp_path):
    """perf/model_vs_measured.py on a results.json: every one-layer triton_rnn row gets the
    report's model for its shape (training: forward plus backward, more than inference) and
    the ratio of the stand-in measurement to it; other implementations and stacks are left
    out."""
    import subprocess
    row = dict(dtype="tf32", batch=16, hidden=1024, seq=8, layers=1, directions=1,
               impl="triton_rnn", us_per_step=20.0)
    results = dict(environment=FAKE_ENV, rows=[
        dict(row, mode="inference"), dict(row, mode="training", us_per_step=50.0),
        dict(row, mode="inference", impl="nn.RNN"), dict(row, mode="inference", layers=2)])
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results))
    script = Path(__file__).resolve().parent.parent / "perf" / "model_vs_measured.py"
    proc = subprocess.run([sys.executable, str(script), str(path)], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in (tmp_path / "model.md").read_text().splitlines()
             if line.startswith("| tf32")]
    assert len(lines) == 2 and "Stand-in GPU" in (tmp_path / "model.md").read_text()
    modeled = {}
    for line in lines:
        cells = [c.strip() for c in line.strip("|").split("|")]
        measured, model, ratio = float(cells[6]), float(cells[7]), float(cells[8])
        # the ratio is of the unrounded model: within the rounding of the printed model
        assert model > 0 and ratio == pytest.approx(measured / model, rel=0.01)
        modeled[cells[5]] = model
    assert modeled["training"] > modeled["inference"]


def test_main_slice_as_the_models_see_it(tmp_path):
    """perf/model_plots.py (latency.py's view without a GPU): for each dtype, hidden size,
    batch and mode, our model from the shipped table and cuDNN's, saved with the constants and
    the table's Triton version, titled as a model; tf32 H = 1024, batch 16: the split on tensor
    cores, cuDNN's standard algorithm (1024² x 4 B / 5.5 TB/s + 5 µs)."""
    import model_plots
    from triton_rnn import step_models
    paths = model_plots.write(tmp_path)
    assert {p.name for p in paths} == {"model.json", "model.md", "model_vs_hidden.png",
                                       "model_vs_batch.png"}
    saved = json.loads((tmp_path / "model.json").read_text())
    assert saved["title"] == "model from compiled code (sm_90), not a measurement"
    assert saved["triton"] and saved["margin"] == 1.5
    row = next(r for r in saved["rows"] if (r["dtype"], r["hidden"], r["batch"], r["mode"])
               == ("tf32", 1024, 16, "inference"))
    assert row["variant"] == "split/dot"
    assert row["ours"] == step_models._table()[("tf32", 1024, 16)]["forward"]
    assert row["cudnn"] == pytest.approx(1024 * 1024 * 4 / 5.5e12 * 1e6 + 5.0)
    training = next(r for r in saved["rows"] if (r["dtype"], r["hidden"], r["batch"],
                                                 r["mode"]) == ("tf32", 1024, 16, "training"))
    assert training["ours"] > row["ours"] and training["cudnn"] > row["cudnn"]
    assert "not a measurement" in (tmp_path / "model.md").read_text()


def test_measured_plots_carry_the_models_dotted():
    """A one-layer, one-direction measured series gets the models' latency for the same
    points (µs per step x T), ours for triton_rnn and cuDNN's for nn.RNN; none for "auto"."""
    import model_plots

    class Axes:
        def __init__(self):
            self.lines = []

        def plot(self, xs, ys, style, **kwargs):
            self.lines.append((list(xs), ys, style, kwargs["label"]))
    ax = Axes()
    shape = dict(batch=16, hidden=1024, seq=128, layers=1, directions=1)
    for impl in ("triton_rnn", "nn.RNN", "auto"):
        plots._draw_model(ax, impl, "training", "bf16", "batch", [1, 16], shape, "k")
    (xs, ours, style, label), (_, cudnn, _, _) = ax.lines
    assert style == ":" and xs == [1, 16] and "model" in label
    assert ours[1] == pytest.approx(model_plots.ms_per_sequence("bf16", 1024, 16, 128, True)[0])
    assert cudnn[0] == pytest.approx(model_plots.ms_per_sequence("bf16", 1024, 1, 128, True)[1])
