"""perf/overhead.py runs on the CPU, prints a per-layer row for every shape, and its stand-in
takes every launch so that no kernel executes. Nothing here is timed or compared with a time."""
import contextlib
import re
import sys
from pathlib import Path

import pytest
from triton.runtime import interpreter

from conftest import CUDA

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "perf"))
import overhead  # noqa: E402

pytestmark = pytest.mark.skipif(CUDA, reason="on a GPU the script launches the real kernels")

SHAPES = [(8, 3, 1, 1, False), (8, 3, 2, 2, True)]  # (H, T, batch, layers, bidirectional)


def test_prints_a_row_per_shape_and_no_kernel_runs(monkeypatch):
    interpreted = []  # every launch that reached Triton's interpreter (a kernel executing)
    run_grid = interpreter.GridExecutor.__call__
    monkeypatch.setattr(interpreter.GridExecutor, "__call__",
                        lambda self, *a, **k: interpreted.append(self) or run_grid(self, *a, **k))
    stand_ins = {}
    stand_in_kernels = overhead.stand_in_kernels

    @contextlib.contextmanager
    def watched():
        with stand_in_kernels() as kernels:
            stand_ins.update(kernels)
            yield kernels

    monkeypatch.setattr(overhead, "stand_in_kernels", watched)
    lines = []
    iterations = 5
    results = overhead.main(iterations=iterations, shapes=SHAPES, out=lines.append)

    text = "\n".join(lines)
    assert "NOT GPU performance" in text and "nn.RNN CPU forward (includes its compute)" in text
    rows = [line for line in lines if re.match(r"\s*\d+\s+\d+\s+\d+\s+\d+\s+[12]\s+\|", line)]
    assert len(rows) == len(SHAPES)
    for line, (H, T, N, layers, bidir) in zip(rows, SHAPES):
        assert line.split("|")[0].split() == [str(H), str(T), str(N), str(layers),
                                              "2" if bidir else "1"]
        assert len(re.findall(r"-?\d+\.\d µs", line)) == 6
    for shape in SHAPES:
        assert results[shape]["ours inference"] > 0 and results[shape]["ours training"] > 0

    assert interpreted == []  # no kernel ran ...
    # ... because every forward launch of every call went to the stand-in: calls per mode are
    # the warm-up plus the timed blocks, two modes (inference, training), one launch a layer.
    calls = min(iterations, 5) + 5 * max(1, iterations // 5)
    expected = sum(2 * calls * layers for _, _, _, layers, _ in SHAPES)
    assert stand_ins["rnn_forward_resident_kernel"].launches == expected
    assert sum(k.launches for k in stand_ins.values()) == expected


def test_eager_calls_skip_the_custom_op_and_keep_its_meaning(monkeypatch):
    """Plain eager calls run the recurrence through ops._EagerRecurrence, not the registered
    custom op; under a dispatch mode the registered op runs. Both give nn.RNN's values and
    gradients, and double backward raises the same error on both paths."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    from triton_rnn import ops
    from helpers import make_pair, rel_err

    class Seen(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.add(str(func))
            return func(*args, **(kwargs or {}))

    registered = []
    op = ops.recurrence
    monkeypatch.setattr(ops, "recurrence", lambda *a: registered.append(1) or op(*a))
    ours, ref = make_pair(3, 5, 1, bidirectional=True, dtype=torch.float64)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    expected = ref(x)[0]
    expected.sum().backward()
    for mode in (None, Seen()):
        ours.zero_grad()
        with mode if mode is not None else contextlib.nullcontext():
            out = ours(x)[0]
        assert len(registered) == (0 if mode is None else 1)
        if mode is not None:
            assert "triton_rnn.recurrence.default" in mode.ops
        assert rel_err(out, expected) < 1e-12
        out.sum().backward()
        for p, q in zip(ours.parameters(), ref.parameters()):
            assert rel_err(p.grad, q.grad) < 1e-9
        x2 = x.clone().requires_grad_()
        with mode if mode is not None else contextlib.nullcontext():
            out2 = ours(x2)[0]
        (g,) = torch.autograd.grad(out2.sum(), x2, create_graph=True)
        with pytest.raises(RuntimeError, match="double backward .* is not supported"):
            g.sum().backward()
