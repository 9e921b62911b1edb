"""Test setup: without a GPU, Triton kernels run on CPU tensors through Triton's interpreter.

TRITON_INTERPRET must be set before triton_rnn (and so triton.jit) is imported.
"""
import os

# One thread per test worker (pytest-xdist runs one worker per core): torch's own threads
# would compete with the other workers for the same cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

if os.environ.get("TRITON_INTERPRET") == "1":
    import fast_interpreter  # noqa: E402
    fast_interpreter.install()

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


# Test files that are about one kernel variant (the quick loop: python -m pytest -m split).
VARIANT_FILES = {"test_split.py": "split", "test_split_gpu.py": "split",
                 "test_lstm_split.py": "split", "test_lstm_streaming.py": "streaming",
                 "test_gru_split.py": "split", "test_split_2d.py": "split",
                 "test_concurrent_interpreter.py": "split", "test_cell.py": "cell",
                 "test_w_first.py": "resident"}
VARIANTS = ("resident", "split", "streaming", "cell")


def _variant(item):
    """The kernel variant a test targets: its file's, or its `variant` parameter's ("dispatched":
    what the dispatcher picks for its H, N and dtype), or None."""
    params = item.callspec.params if hasattr(item, "callspec") else {}
    variant = params.get("variant") or VARIANT_FILES.get(item.path.name)
    if variant == "dispatched":
        from triton_rnn.kernels.dispatch import choose
        variant = choose(params["H"], params["N"], params.get("dtype", torch.float32)).variant
    return variant


def pytest_collection_modifyitems(config, items):
    """Each test gets the marker of the kernel variant it targets (see VARIANT_FILES and
    _variant; tests about several carry their markers themselves). Tests marked `gpu` need a
    CUDA device: without one they are skipped, saying so."""
    skip = pytest.mark.skip(reason="needs a CUDA GPU (perf/gpu_check.py runs the gpu tests)")
    for item in items:
        variant = _variant(item)
        if variant in VARIANTS:
            item.add_marker(variant)
        if not CUDA and item.get_closest_marker("gpu"):
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def kernels_only(monkeypatch):
    """Poison kernel outputs with NaN, and fail any test in which a tensor the kernels should
    handle reaches the plain-PyTorch reference instead (so a pass proves the kernels ran).
    Routing is off (policy "kernels"): on a GPU, "auto" could send a call to nn.RNN's own
    path, which would then be compared with itself. The routing tests turn it back on."""
    monkeypatch.setattr(launch, "poison_outputs", True)
    monkeypatch.setenv("TRITON_RNN_BACKEND", "kernels")
    for name in ("recurrence_forward", "recurrence_backward", "rnn_cell", "lstm_forward",
                 "lstm_backward", "lstm_cell"):
        original = getattr(reference, name)

        def guarded(*args, _original=original, _name=name, **kwargs):
            first = args[0][0] if isinstance(args[0], (list, tuple)) else args[0]  # LSTM: projs
            assert not uses_kernels(first), f"reference.{_name} ran instead of the kernels"
            return _original(*args, **kwargs)

        monkeypatch.setattr(reference, name, guarded)


@pytest.fixture
def small_variant(monkeypatch):
    """small_variant("split" | "streaming"): layers over 32 hidden units run that variant (the
    dispatcher's resident limit lowered to 32 and, for streaming, split turned off), so that a
    test reaches it at a small hidden size: H = 40 is 3 split slices of 16 rows, or 2 streamed
    chunks of 32 (one ragged), where the natural H = 130 takes 9 slices or 5 chunks and several
    times the interpreter's time for the same code paths. The natural limits are checked by
    test_split.py::test_dispatch_rule, and the compile gate compiles every size."""
    from triton_rnn.kernels import dispatch

    def force(variant):
        monkeypatch.setattr(dispatch, "RESIDENT_MAX_BH", dict.fromkeys(dispatch.RESIDENT_MAX_BH, 32))
        if variant == "streaming":
            _no_split(monkeypatch)
    return force


@pytest.fixture
def no_split(monkeypatch):
    """Layers the split variant would run take the streaming variant instead (its fallback)."""
    _no_split(monkeypatch)


def _no_split(monkeypatch):
    """The dispatcher's split limits set to zero: RNN (SPLIT_MAX_BH) and LSTM layers (the
    backward's reduction length K, LSTM_SPLIT_MAX_K, and the forward's BH)."""
    from triton_rnn.kernels import dispatch
    for limits in ("SPLIT_MAX_BH", "LSTM_SPLIT_MAX_K", "LSTM_SPLIT_FORWARD_MAX_BH"):
        monkeypatch.setattr(dispatch, limits, dict.fromkeys(getattr(dispatch, limits), 0))
