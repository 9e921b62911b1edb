"""Test setup: without a GPU, Triton kernels run on CPU tensors through Triton's interpreter.

TRITON_INTERPRET must be set before triton_rnn (and so triton.jit) is imported.
"""
import os

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton_rnn.kernels.launch as launch  # noqa: E402
import triton_rnn.reference as reference  # noqa: E402
from triton_rnn.ops import uses_kernels  # noqa: E402

DEVICE = "cuda" if CUDA else "cpu"

# TRITON_RNN_COVERAGE=DIR records which kernel configurations each test launches
# (tests/kernel_coverage.py; the matrix in tests/README.md).
COVERAGE = os.environ.get("TRITON_RNN_COVERAGE")
if COVERAGE:
    import kernel_coverage  # noqa: E402
    kernel_coverage.install()

    def pytest_runtest_setup(item):
        kernel_coverage.set_test(item.nodeid)

    def pytest_sessionfinish(session):
        kernel_coverage.save(COVERAGE)


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need a CUDA device: without one they are skipped, saying so."""
    if CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (perf/gpu_check.py runs the gpu tests)")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def kernels_only(monkeypatch):
    """Poison kernel outputs with NaN, and fail any test in which a tensor the kernels should
    handle reaches the plain-PyTorch reference instead (so a pass proves the kernels ran).
    Routing is off (policy "kernels"): on a GPU, "auto" could send a call to nn.RNN's own
    path, which would then be compared with itself. The routing tests turn it back on."""
    monkeypatch.setattr(launch, "poison_outputs", True)
    monkeypatch.setenv("TRITON_RNN_BACKEND", "kernels")
    for name in ("recurrence_forward", "recurrence_backward", "rnn_cell"):
        original = getattr(reference, name)

        def guarded(*args, _original=original, _name=name, **kwargs):
            assert not uses_kernels(args[0]), f"reference.{_name} ran instead of the kernels"
            return _original(*args, **kwargs)

        monkeypatch.setattr(reference, name, guarded)


@pytest.fixture
def no_split(monkeypatch):
    """Layers the split variant would run take the streaming variant instead (its fallback)."""
    from triton_rnn.kernels import dispatch
    monkeypatch.setattr(dispatch, "SPLIT_MAX_BH", dict.fromkeys(dispatch.SPLIT_MAX_BH, 0))
