"""Which path runs a triton_rnn.RNN (LSTM, GRU) call: our kernels, or nn.RNN's (nn.LSTM's,
nn.GRU's) own (cuDNN on a GPU).

The policy: `TRITON_RNN_BACKEND=auto|kernels|torch` in the environment, overridden in Python by
`set_backend(...)` or, for a block, `with backend(...)`. "kernels" and "torch" mean what they
say, on every device. "auto" (the default) routes each shape class on CUDA to whichever path
was measured faster on this GPU:

- A shape class is the dtype (float32 split into "tf32" and "fp32" by whether TF32 is allowed,
  the autocast dtype under autocast), hidden size and batch rounded up to powers of two,
  inference or training (gradients being recorded), packed or padded, directions and layers.
- The first call of a class on a GPU times both paths on a short stand-in run (measure.py:
  it writes no `.grad`, leaves the RNG and `torch.backends` as they were), records the winner
  in the persistent cache (route_cache.py) and logs one INFO line on the "triton_rnn" logger.
  Before timing it checks our output, h_n and gradients against nn.RNN's on the same inputs:
  a mismatch routes the class to nn.RNN, is recorded with the errors and warns once.
  Later calls, in this process or any other on the same GPU and versions, read the cache.
- Nothing is measured while torch.compile traces or a CUDA graph is being captured: a class
  found in the cache follows it, others follow the static rule (fixed into the compiled graph
  at trace time). `tune(model, example_inputs)` fills the cache ahead of time.
- The static rule, for classes never measured: nn.RNN where the shipped table of recorded GPU
  results (cudnn_faster.json, built by perf/routing_table.py) says it was faster, else nn.RNN
  for layers our dispatcher would run on the streaming variant (W_hh re-read from L2 every
  step, far slower than cuDNN), else our kernels only where the model of our step beats the
  model of cuDNN's by 1.5x (step_models.py: models from compiled code and from PyTorch's
  choice of cuDNN algorithm, not measurements), else nn.RNN.
- Under `torch.use_deterministic_algorithms(True)` training always runs our kernels, whose
  backward is bitwise deterministic.
- LSTM and GRU: the same, with classes of their own ("lstm/...", "lstm-proj/..." with
  proj_size, "gru/..." in the cache), measured against nn.LSTM and nn.GRU (lstm_uses_torch;
  the GRU's forward calls use_torch as RNN's does); the static rule sends their classes never
  measured to torch.nn (no model of our gated steps against cuDNN's yet).
CPU tensors are not routed under "auto": they run our kernels' CPU path as before.

    python -m triton_rnn.routing --show     # this GPU's measured classes
    python -m triton_rnn.routing --clear    # forget them (or delete the cache directory)
"""
import contextlib
import functools
import json
import logging
import os
import threading
from pathlib import Path

import torch
import triton
from torch.nn.utils.rnn import PackedSequence

from . import measure, step_models
from .route_cache import RouteCache
from .version import __version__

POLICIES = ("auto", "kernels", "torch")
TABLE = Path(__file__).with_name("cudnn_faster.json")
MEASURED_DEVICES = ("cuda",)  # where "auto" measures; tests add "cpu"
MAX_BATCH_BITS = 20           # batch buckets looked up under torch.compile: 1 .. 2^20

log = logging.getLogger("triton_rnn")
_override = None            # set_backend()'s policy; None: the environment's
_local = threading.local()  # forced: the measurement's own calls; tuning: tune()'s record
_caches = {}                # device -> RouteCache
_measuring = threading.Lock()


# ----- the policy ---------------------------------------------------------------------------

def get_backend() -> str:
    """The policy in force: set_backend()'s, else TRITON_RNN_BACKEND's, else "auto"."""
    if _override is not None:
        return _override
    return _valid(os.environ.get("TRITON_RNN_BACKEND", "").strip().lower() or "auto",
                  "TRITON_RNN_BACKEND")


def set_backend(policy) -> None:
    """"auto", "kernels" or "torch" for this process; None goes back to TRITON_RNN_BACKEND."""
    global _override
    _override = None if policy is None else _valid(policy, "set_backend")


@contextlib.contextmanager
def backend(policy: str):
    """The policy for the calls made inside the block (process-wide, like torch.backends)."""
    global _override
    previous = _override
    set_backend(policy)
    try:
        yield
    finally:
        _override = previous


def kernels_always():
    """Our kernels for every shape (perf/ measures them with this)."""
    return backend("kernels")


def _valid(policy, where: str) -> str:
    if policy not in POLICIES:
        raise ValueError(f"{where}: the triton_rnn backend must be one of "
                         f"{', '.join(POLICIES)}, got {policy!r}")
    return policy


# ----- shape classes and the static rule ----------------------------------------------------

DTYPES = step_models.DTYPES  # shape-class dtype names -> (torch dtype, TF32 allowed)
_NAMES = {(dtype, tf32): name for name, (dtype, tf32) in DTYPES.items()}


def dtype_name(dtype: torch.dtype, allow_tf32: bool) -> str:
    """float32 is "tf32" or "fp32" (IEEE) by whether TF32 is allowed; TF32 means nothing to
    the other dtypes."""
    return _NAMES.get((dtype, allow_tf32 and dtype == torch.float32),
                      str(dtype).replace("torch.", ""))


bucket = step_models.bucket  # a size's shape-class bucket: the power of two at or above it


def shape_class(dtype: torch.dtype, allow_tf32: bool, hidden: int, batch: int,
                training: bool) -> tuple:
    """The recorded table's class: (dtype name, hidden bucket, batch bucket, mode)."""
    return (dtype_name(dtype, allow_tf32), bucket(hidden), bucket(batch),
            "training" if training else "inference")


def class_name(dtype: str, hidden: int, batch: int, training: bool, packed: bool,
               directions: int, layers: int, cell: str = "rnn") -> str:
    """The measured class, as the cache names it: "bf16/H512/N16/training/padded/D2/L1"
    ("N?" for a batch unknown while tracing), "lstm/..." for an LSTM's."""
    return ("" if cell == "rnn" else f"{cell}/") + (
            f"{dtype}/H{bucket(hidden)}/N{'?' if batch is None else bucket(batch)}/"
            f"{'training' if training else 'inference'}/{'packed' if packed else 'padded'}/"
            f"D{directions}/L{layers}")


@functools.lru_cache(maxsize=None)
def _classes(path: Path = TABLE) -> dict:
    """{"sm_90": {(dtype, hidden, batch, mode), ...}, ...} from the shipped table."""
    if not path.exists():
        return {}
    table = json.loads(path.read_text())
    return {arch: {(c["dtype"], c["hidden"], c["batch"], c["mode"]) for c in classes}
            for arch, classes in table.get("cudnn_faster", {}).items()}


def static_choice(device: str, dtype: str, hidden: int, batch: int, training: bool,
                  packed: bool = False, directions: int = 1, layers: int = 1,
                  cell: str = "rnn") -> str:
    """"torch" or "kernels" for a class never measured (see the module docstring). LSTM and
    GRU classes: "torch" (no model of our gated steps against cuDNN's yet)."""
    from .kernels.dispatch import choose
    if cell != "rnn":
        return "torch"
    arch = 90  # what the shipped step table models: taken where the device is unknown
    if device.startswith("cuda"):
        major, minor = torch.cuda.get_device_capability(torch.device(device))
        arch = 10 * major + minor
        listed = _classes().get(f"sm_{major}{minor}", set())
        if batch is not None and (dtype, bucket(hidden), bucket(batch),
                                  "training" if training else "inference") in listed:
            return "torch"
    if choose(hidden, batch or 1, *DTYPES[dtype], arch=arch).variant == "streaming":
        return "torch"
    wins = step_models.kernels_win(dtype, hidden, batch or 1, training, arch=arch,
                                   packed=packed, directions=directions, layers=layers)
    return "kernels" if wins else "torch"


# ----- the decision -------------------------------------------------------------------------

def use_torch(module, input, hx=None) -> bool:
    """Whether this call of triton_rnn.RNN (LSTM) `module` runs nn.RNN's (nn.LSTM's) own
    forward."""
    if torch.compiler.is_compiling():
        call = _describe(module, input, hx)
        return call is not None and _traced_choice(call)
    forced = getattr(_local, "forced", None)
    if forced is not None:
        return forced == "torch"
    tuning = getattr(_local, "tuning", None)
    policy = "auto" if tuning is not None else get_backend()
    if policy != "auto":
        return policy == "torch"
    data = input.data if isinstance(input, PackedSequence) else input
    if not isinstance(data, torch.Tensor) or data.device.type not in MEASURED_DEVICES:
        return False  # the common case off the GPU: nothing more to compute
    call = _describe(module, input, hx)
    return call is not None and _measured_choice(module, input, hx, call, tuning)


def lstm_uses_torch(module, input, hx=None) -> bool:
    """Whether this call of triton_rnn.LSTM `module` runs nn.LSTM's own forward: as use_torch
    decides (LSTM classes are measured apart from RNN ones, and those with a projection apart
    from those without; never measured, the static rule sends them to nn.LSTM)."""
    data = input.data if isinstance(input, PackedSequence) else input
    if not isinstance(data, torch.Tensor):
        return True
    return use_torch(module, input, hx)


def _describe(module, input, hx=None):
    """(device, dtype name, hidden, batch, training, packed, directions, layers, cell) of a
    call, or None for an input we do not accept (our argument checks raise nn.RNN's error)."""
    from .nn_rules import autocast_dtype, tf32_allowed
    packed = isinstance(input, PackedSequence)
    data = input.data if packed else input
    if not isinstance(data, torch.Tensor):
        return None
    if packed and torch.compiler.is_compiling():
        # batch_sizes' values are data to the tracer; sorted_indices' length is a shape.
        batch = None if input.sorted_indices is None else input.sorted_indices.shape[0]
    elif packed:
        batch = int(input.batch_sizes[0])
    elif data.dim() in (2, 3):
        batch = 1 if data.dim() == 2 else data.size(0 if module.batch_first else 1)
    else:
        return None
    if isinstance(batch, torch.SymInt):  # symbolic outside Dynamo (make_fx, export); Dynamo
        batch = None                      # passes its symbolic sizes on as ints
    dtype = autocast_dtype(data.device.type) or module.weight_ih_l0.dtype
    states = hx if isinstance(hx, tuple) else (hx,)  # LSTM's (h_0, c_0)
    training = torch.is_grad_enabled() and (
        data.requires_grad or any(isinstance(h, torch.Tensor) and h.requires_grad
                                  for h in states)
        or any(p.requires_grad for p in module.parameters()))
    return (str(data.device), dtype_name(dtype, tf32_allowed()), module.hidden_size, batch,
            training, packed, 2 if module.bidirectional else 1, module.num_layers,
            getattr(module, "cell", "rnn"))


def _measured_choice(module, input, hx, call, tuning) -> bool:
    """auto on a measured device: the cache, else a measurement (or, while a CUDA graph is
    being captured, the static rule)."""
    device, dtype, hidden, batch, training = call[:5]
    if training and torch.are_deterministic_algorithms_enabled():
        return False
    name = class_name(*call[1:])
    cache = _cache(device)
    entry = cache.get(name)
    if tuning is not None and tuning["force"] and name not in tuning["measured"]:
        entry = None
    if entry is None and (_capturing(device) or not _measurable(input)):
        return static_choice(device, dtype, hidden, batch, training, *call[5:]) == "torch"
    if entry is None:
        with _measuring:  # one measurement at a time: concurrent ones would time each other
            entry = cache.get(name)
            if entry is None or tuning is not None and tuning["force"]:
                entry = _measure_and_record(module, input, hx, call, name, cache)
    if tuning is not None:
        tuning["measured"][name] = entry["backend"]
    return entry["backend"] == "torch"


def _traced_choice(call) -> bool:
    """The decision under torch.compile, fixed in the graph: the policy, else the cache, else
    the static rule, never a measurement. The batch may be symbolic (dynamic shapes): the
    comparisons with bucket bounds become the graph's guards, so it is traced again only when
    the batch leaves its bucket and the bucket's decision differs."""
    device, dtype, hidden, batch, training, packed, directions, layers, cell = call
    exceptions, default = _decisions_while_tracing(device, dtype, hidden, training, packed,
                                                   directions, layers, cell)
    if batch is not None:
        for bucket_top, decision in exceptions:
            if bucket_top // 2 < batch <= bucket_top:
                return decision
    return default


@torch._dynamo.assume_constant_result
def _decisions_while_tracing(device, dtype, hidden, training, packed, directions,
                             layers, cell="rnn") -> tuple:
    """(((batch bucket, use nn.RNN), ...) where it differs from the default, default), read
    once at trace time with no tensor in sight (the tracer treats it as a constant)."""
    policy = get_backend()
    if policy != "auto":
        return (), policy == "torch"
    if not device.startswith(MEASURED_DEVICES) or (
            training and torch.are_deterministic_algorithms_enabled()):
        return (), False
    default = static_choice(device, dtype, hidden, None, training, packed, directions,
                            layers, cell) == "torch"
    cache = _cache(device)
    exceptions = []
    for bucket_top in (1 << i for i in range(MAX_BATCH_BITS + 1)):
        entry = cache.get(class_name(dtype, hidden, bucket_top, training, packed, directions,
                                     layers, cell))
        decision = (entry["backend"] if entry is not None else
                    static_choice(device, dtype, hidden, bucket_top, training, packed,
                                  directions, layers, cell)) == "torch"
        if decision != default:
            exceptions.append((bucket_top, decision))
    return tuple(exceptions), default


def _capturing(device: str) -> bool:
    if not device.startswith("cuda"):
        return False
    with torch.cuda.device(torch.device(device)):
        return torch.cuda.is_current_stream_capturing()


def _measurable(input) -> bool:
    """Plain tensors, outside functorch transforms and dispatch modes (fake tensors, flop
    counters): anything else would time something other than the user's runs."""
    data = input.data if isinstance(input, PackedSequence) else input
    return (type(data) is torch.Tensor and torch._C._len_torch_dispatch_stack() == 0
            and torch._C._functorch.peek_interpreter_stack() is None)


def _measure_and_record(module, input, hx, call, name: str, cache: RouteCache) -> dict:
    device, dtype, hidden, batch, training = call[:5]
    times, keep, wrong = measure.measure(module, input, hx, training, _kernels_forward, dtype)
    if times:
        choice = min(times, key=times.get)
    elif wrong:  # nn.RNN's own path ran and is right
        choice = "torch"
    else:  # every candidate failed: leave it to the static rule, which raises nn.RNN's error
        choice = static_choice(device, dtype, hidden, batch, training, *call[5:])
    entry = {"backend": choice, "ms": {k: round(v, 6) for k, v in times.items()}}
    if wrong:  # kept with the class: a kernel wrong on this GPU stays routed away from
        entry["reason"] = "our values differ from nn.RNN's (first-use check)"
        entry["errors"] = {k: float(f"{v:.4g}") for k, v in wrong.items()}
    if keep:
        cache.put(name, entry)
    else:  # a failure that may pass (out of memory, say): decided for this process only
        cache.remember(name, entry)
    log.info("triton_rnn: %s on %s: %s -> %s", name, cache.key.get("gpu", device),
             ", ".join(f"{k} {v:.3f} ms" for k, v in times.items()) or "no candidate ran",
             f"nn.{type(module).__name__}" if choice == "torch" else "triton_rnn kernels")
    return entry


def _kernels_forward(clone):
    """A forward of `clone` that runs our kernels whatever the policy."""
    def forward(x, h):
        previous, _local.forced = getattr(_local, "forced", None), "kernels"
        try:
            return clone(x, h)
        finally:
            _local.forced = previous
    return forward


# ----- the cache ----------------------------------------------------------------------------

def device_key(device: str) -> dict:
    """What a measurement depends on besides the shape: the GPU and every version."""
    key = {"device": torch.device(device).type}
    if key["device"] == "cuda":
        props = torch.cuda.get_device_properties(torch.device(device))
        key.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                   sm_count=props.multi_processor_count, driver=_driver_version(),
                   cuda=torch.version.cuda)
    key.update(torch=torch.__version__, triton=triton.__version__,
               triton_rnn=__version__)
    return key


def _driver_version() -> str:
    import ctypes
    try:
        lib = ctypes.CDLL("nvcuda.dll" if os.name == "nt" else "libcuda.so.1")
        version = ctypes.c_int()
        lib.cuDriverGetVersion(ctypes.byref(version))
        return str(version.value)
    except (OSError, AttributeError):
        return "unknown"


def _cache(device: str) -> RouteCache:
    if device not in _caches:
        _caches[device] = RouteCache(device_key(device))
    return _caches[device]


def forget_loaded_caches() -> None:
    """Drop the caches this process has read (after TRITON_RNN_CACHE_DIR changes, say)."""
    _caches.clear()


# ----- tune ---------------------------------------------------------------------------------

def tune(model, example_inputs, force: bool = False) -> dict:
    """Measure, ahead of time, every shape class the triton_rnn.RNN and LSTM modules of `model`
    meet in one forward of `model` on `example_inputs` (a tensor or a tuple of arguments): once
    without gradients (inference classes) and, if any parameter requires grad, once recording
    them (training classes; no backward runs). Use it before torch.compile or CUDA-graph
    capture, which never measure. force: measure classes already in the cache again.

    Leaves `model` as it was: buffers (running statistics, say) are restored, the RNG is
    forked, no `.grad` is written. Returns {class name: "kernels" or "torch"}."""
    if not isinstance(example_inputs, (tuple, list)):
        example_inputs = (example_inputs,)
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    devices = sorted({p.device.index or 0 for p in model.parameters() if p.is_cuda})
    record = {"force": force, "measured": {}}
    previous, _local.tuning = getattr(_local, "tuning", None), record
    try:
        with torch.random.fork_rng(devices=devices):
            with torch.no_grad():
                model(*example_inputs)
            if any(p.requires_grad for p in model.parameters()):
                with torch.enable_grad():
                    model(*example_inputs)
    finally:
        _local.tuning = previous
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
    return record["measured"]


def _main(argv=None) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="python -m triton_rnn.routing",
                                description="The measured routing cache of this GPU.")
    p.add_argument("--show", action="store_true", help="print the measured classes")
    p.add_argument("--clear", action="store_true", help="forget them")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    cache = _cache(args.device)
    print(f"policy: {get_backend()}   cache: {cache.path}")
    print("key: " + ", ".join(f"{k}={v}" for k, v in cache.key.items()))
    if args.clear:
        cache.clear()
        print("cleared")
    classes = cache.classes()
    if not classes:
        print("no measured classes")
    for name, entry in sorted(classes.items()):
        times = ", ".join(f"{k} {v:.3f} ms" for k, v in entry.get("ms", {}).items())
        print(f"  {name:42s} -> {entry['backend']:7s} ({times})")
        if "reason" in entry:
            print(f"  {'':42s}    {entry['reason']}: {measure.describe(entry['errors'])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
