"""Host cost of one triton_rnn.RNN call, per layer: Python, argument checks, autograd and
custom-op dispatch, the launcher, with kernel execution excluded.

    python perf/overhead.py [--iterations N]

On a CUDA GPU the kernels are real and the host cost is the CPU time to enqueue one call (the
queue is drained before each timed call, never inside it), beside nn.RNN's (cuDNN) enqueue time
measured the same way.
Without a GPU the Triton launchers' kernels are replaced by a stand-in that does nothing (no
kernel runs; Triton's own launch path, JIT cache lookup and driver call, is left out), so what
is timed is our Python and dispatch path up to the launch, plus the CPU compute of the torch
ops around it: the input projection GEMMs (one per direction), timed alone and subtracted in
the "host" column. (Meta tensors would skip that compute, but on the CPU their ops run through
Python decompositions, many times slower than any real dispatch.) nn.RNN cannot be
split into host and compute on the CPU: its CPU forward is printed for reference, compute
included.
Either way these are host-side costs on this machine, never GPU performance.
"""
import argparse
import contextlib
import os
import statistics
import sys
import time

import torch

HAS_GPU = torch.cuda.is_available()
if not HAS_GPU:
    # The launchers run only for tensors the kernels handle: CPU tensors under the interpreter.
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton_rnn is imported

from torch import nn  # noqa: E402

import triton_rnn  # noqa: E402
from triton_rnn import routing  # noqa: E402
from triton_rnn.kernels import launch  # noqa: E402

# (hidden, seq, batch, layers, bidirectional): the sizes where a persistent RNN should win most.
SHAPES = [(128, 32, b, layers, bidir) for b in (1, 16) for layers in (1, 2)
          for bidir in (False, True)]
CLOCK = time.perf_counter if HAS_GPU else time.thread_time
KERNEL_NAMES = launch.KERNEL_NAMES


class StandInKernel:
    """Takes `kernel[grid](*args, **options)` like a @triton.jit kernel and does nothing but
    count, so the host path up to the launch is timed with no kernel executing."""

    def __init__(self, name: str):
        self.name, self.launches = name, 0

    def __getitem__(self, grid):
        return self._launch

    def _launch(self, *args, **options):
        self.launches += 1


@contextlib.contextmanager
def stand_in_kernels():
    """Replace every kernel the launchers launch by a StandInKernel; yields them by name."""
    stand_ins = {name: StandInKernel(name) for name in KERNEL_NAMES}
    originals = {name: getattr(launch, name) for name in KERNEL_NAMES}
    try:
        for name, kernel in stand_ins.items():
            setattr(launch, name, kernel)
        yield stand_ins
    finally:
        for name, kernel in originals.items():
            setattr(launch, name, kernel)


def host_seconds(call, iterations: int, blocks: int = 5) -> float:
    """Host time of `call()`: the median of each of `blocks` blocks of calls, the lowest of
    those (other processes on a shared machine only ever add time). On a GPU, wall time with
    the queue drained before each call and not inside it: what the host spends to enqueue
    one call. On the CPU, this thread's CPU time (with one torch thread all the work is on
    it), which other processes' load disturbs far less than wall time."""
    for _ in range(min(iterations, 5)):  # warm-up: first-call caches, lazy imports, compiles
        call()
    medians = []
    for _ in range(blocks):
        times = []
        for _ in range(max(1, iterations // blocks)):
            if HAS_GPU:
                torch.cuda.synchronize()
            start = CLOCK()
            call()
            times.append(CLOCK() - start)
        medians.append(statistics.median(times))
    if HAS_GPU:
        torch.cuda.synchronize()
    return min(medians)


def measure(shape, iterations: int) -> dict:
    """Per-layer µs of one forward call, inference (no_grad) and training (grad); on the CPU
    also the projection GEMMs alone ("gemm"), the part of ours that is compute there."""
    H, T, N, layers, bidir = shape
    device = "cuda" if HAS_GPU else "cpu"
    D = 2 if bidir else 1
    torch.manual_seed(0)
    ours = triton_rnn.RNN(H, H, layers, bidirectional=bidir).to(device)
    ref = nn.RNN(H, H, layers, bidirectional=bidir).to(device)
    x = torch.randn(T, N, H, device=device)
    # The input projections as the layers run them: one (T*N, I) x (H, I)ᵀ + b_ih per direction.
    gemms = [(torch.randn(T * N, H if layer == 0 else D * H, device=device),
              torch.randn(H, H if layer == 0 else D * H, device=device),
              torch.randn(H, device=device)) for layer in range(layers) for _ in range(D)]
    row = {}
    for mode, grad in (("inference", False), ("training", True)):
        with torch.set_grad_enabled(grad):
            row[f"ours {mode}"] = host_seconds(lambda: ours(x), iterations) / layers * 1e6
            row[f"nn.RNN {mode}"] = host_seconds(lambda: ref(x), iterations) / layers * 1e6
    if not HAS_GPU:
        with torch.no_grad():
            row["gemm"] = host_seconds(lambda: [torch.nn.functional.linear(*g) for g in gemms],
                                       iterations) / layers * 1e6
    return row


def main(iterations: int = 300, shapes=SHAPES, out=print) -> dict:
    """Measures `shapes`, prints a table through `out`, returns {shape: row}."""
    if not HAS_GPU:
        torch.set_num_threads(1)  # steadier on a shared machine; only compute slows
    where = torch.cuda.get_device_name() if HAS_GPU else "CPU (no GPU), 1 torch thread"
    clock = "wall time" if HAS_GPU else "this thread's CPU time"
    out(f"Host-side cost per layer of one forward call on this machine ({where}), {clock}: "
        f"the lowest of 5 block medians over {iterations} calls. These are host costs, NOT "
        "GPU performance.")
    if HAS_GPU:
        out("ours: CPU time to enqueue the call, real kernels. nn.RNN: the same for cuDNN.")
        columns = ("ours inference", "ours training", "nn.RNN inference", "nn.RNN training")
        out("host µs per layer: ours inference, ours training | nn.RNN (cuDNN) host enqueue "
            "inference, training")
    else:
        out("ours: Python, checks, dispatch and launcher, with a no-op "
            "stand-in for every kernel (no kernel executes; Triton's own launch path is not "
            "included). 'host' = ours minus the projection GEMM's CPU compute, timed alone.")
        out("nn.RNN CPU forward (includes its compute): its host cost alone cannot be "
            "separated on the CPU.")
        columns = ("host inference", "host training", "ours inference", "gemm",
                   "nn.RNN inference", "nn.RNN training")
        out("µs per layer: ours host inference, ours host training | ours inference as "
            "timed, of it GEMM compute | nn.RNN CPU forward (includes its compute) "
            "inference, training")
    out(f"{'H':>5} {'T':>4} {'batch':>5} {'layers':>6} {'dirs':>4} | " +
        " ".join(f"{c:>16}" for c in columns))
    results = {}
    with routing.kernels_always(), \
            (contextlib.nullcontext() if HAS_GPU else stand_in_kernels()):
        for shape in shapes:
            row = measure(shape, iterations)
            if "gemm" in row:
                for mode in ("inference", "training"):
                    row[f"host {mode}"] = row[f"ours {mode}"] - row["gemm"]
            results[shape] = row
            H, T, N, layers, bidir = shape
            out(f"{H:>5} {T:>4} {N:>5} {layers:>6} {2 if bidir else 1:>4} | " +
                " ".join(f"{row[c]:>13.1f} µs" for c in columns))
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=300)
    main(parser.parse_args().iterations)
    sys.exit(0)
