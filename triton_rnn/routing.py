"""Use nn.RNN's own path (cuDNN) for the shape classes where it was measured faster.

perf/routing_table.py turns recorded GPU results (perf/results/*/results.json) into
cudnn_faster.json beside this file: for each GPU architecture, the shape classes in which
triton_rnn.RNN's geometric-mean latency over the measured sequence lengths, layer counts and
directions was above nn.RNN's. A shape class is (dtype, hidden size rounded up to a power of
two, batch rounded up to a power of two, inference or training). Shapes outside every measured
class run our kernels, and so does everything under torch.compile (our custom ops trace into
the graph; nn.RNN's path does not). An empty table (no GPU results recorded yet) changes
nothing.
"""
import contextlib
import functools
import json
from pathlib import Path

import torch
import triton

TABLE = Path(__file__).with_name("cudnn_faster.json")
enabled = True  # perf/ turns routing off to measure our kernels themselves


@contextlib.contextmanager
def kernels_always():
    """Run triton_rnn.RNN's kernels for every shape, whatever the table says."""
    global enabled
    previous, enabled = enabled, False
    try:
        yield
    finally:
        enabled = previous


@functools.lru_cache(maxsize=None)
def _classes(path: Path = TABLE) -> dict:
    """{"sm_90": {(dtype, hidden, batch, mode), ...}, ...} from the shipped table."""
    if not path.exists():
        return {}
    table = json.loads(path.read_text())
    return {arch: {(c["dtype"], c["hidden"], c["batch"], c["mode"]) for c in classes}
            for arch, classes in table.get("cudnn_faster", {}).items()}


def dtype_name(dtype: torch.dtype, allow_tf32: bool) -> str:
    """perf/bench.py's names: float32 is "tf32" or "fp32" (IEEE) by whether TF32 is allowed."""
    if dtype == torch.float32:
        return "tf32" if allow_tf32 else "fp32"
    return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, str(dtype))


def bucket(n: int) -> int:
    """A size's shape-class bucket: the power of two at or above it."""
    return triton.next_power_of_2(max(int(n), 1))


def shape_class(dtype: torch.dtype, allow_tf32: bool, hidden: int, batch: int,
                training: bool) -> tuple:
    return (dtype_name(dtype, allow_tf32), bucket(hidden), bucket(batch),
            "training" if training else "inference")


def classes_for(device: torch.device) -> set:
    """The shape classes routed to nn.RNN on this device; empty where routing does not apply."""
    # Under torch.compile our custom ops trace into the graph and nn.RNN's path would not.
    if not enabled or device.type != "cuda" or torch.compiler.is_compiling():
        return set()
    classes = _classes()
    if not classes:
        return set()
    major, minor = torch.cuda.get_device_capability(device)
    return classes.get(f"sm_{major}{minor}", set())


def use_torch(module, input) -> bool:
    """Whether the table sends this call of triton_rnn.RNN `module` to nn.RNN's own path."""
    from torch.nn.utils.rnn import PackedSequence
    from .nn_rules import autocast_dtype, tf32_allowed
    data = input.data if isinstance(input, PackedSequence) else input
    classes = classes_for(data.device)
    if not classes:
        return False  # the common case: nothing routed here, nothing more to compute
    if isinstance(input, PackedSequence):
        batch = int(input.batch_sizes[0])
    elif input.dim() in (2, 3):
        batch = 1 if input.dim() == 2 else input.size(0 if module.batch_first else 1)
    else:
        return False  # our argument checks raise nn.RNN's error
    dtype = autocast_dtype("cuda") or module.weight_ih_l0.dtype
    training = torch.is_grad_enabled() and (
        data.requires_grad or any(p.requires_grad for p in module.parameters()))
    return shape_class(dtype, tf32_allowed(), module.hidden_size, batch, training) in classes
