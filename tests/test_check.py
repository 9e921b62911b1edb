"""`python -m triton_rnn.check`: the self-test a user runs on their GPU. Here its checks run
through the interpreter (small sizes, as --interpret runs them), and must fail on a wrong
kernel."""
import pytest

from conftest import CUDA
from helpers import one_percent_off
from triton_rnn import check


@pytest.mark.skipif(CUDA, reason="says what it does without a GPU")
def test_without_a_gpu_it_says_so_and_exits_0(capsys):
    assert check.main([]) == 0
    assert "no CUDA GPU" in capsys.readouterr().out


CASES = [("resident", "bf16", True), ("split", "fp64", True), ("streaming", "tf32", False),
         ("cell", "fp16", False), ("lstm", "tf32", True), ("lstm-streaming", "fp64", True),
         ("lstm-cell", "bf16", False), ("gru", "tf32", True), ("gru-streaming", "fp64", False),
         ("split-2d", "tf32", True), ("lstm-2d", "tf32", False)]


@pytest.mark.skipif(CUDA, reason="the interpreted checks; on a GPU perf/gpu_check.py runs it")
def test_interpreted_checks_pass_and_name_the_variant_that_ran():
    lines = []
    assert check.run(CASES, "cpu", interpreted=True, out=lines.append) == 0
    rows = [line.split() for line in lines[2:-1]]
    assert [(r[0], r[1], r[3]) for r in rows] == [(v, check.RUNS_ON.get(v, v), d)
                                                  for v, d, _ in CASES]
    assert all(r[7] == "ok" for r in rows) and lines[-1] == "11 passed, 0 failed, 0 not run"


@pytest.mark.skipif(CUDA, reason="the interpreted checks")
def test_a_wrong_lstm_kernel_fails_the_check(monkeypatch):
    import triton_rnn.lstm_ops as lstm_ops
    backward = lstm_ops.kernel_backward
    monkeypatch.setattr(lstm_ops, "kernel_backward", lambda *a, **k: tuple(
        t * 1.01 for t in backward(*a, **k)))
    lines = []
    assert check.run([("lstm", "fp64", False)], "cpu", interpreted=True,
                     out=lines.append) == 1
    assert "FAIL" in lines[2] and "grad" in lines[2]


@pytest.mark.skipif(CUDA, reason="the interpreted checks")
@pytest.mark.parametrize("broken", ["forward", "backward"])
def test_a_wrong_kernel_fails_the_check(broken, monkeypatch):
    one_percent_off(monkeypatch, broken)
    lines = []
    assert check.run([("split", "fp64", False)], "cpu", interpreted=True,
                     out=lines.append) == 1
    assert "FAIL" in lines[2] and lines[-1] == "0 passed, 1 failed, 0 not run"
    assert ("grad" in lines[2]) == (broken == "backward")
