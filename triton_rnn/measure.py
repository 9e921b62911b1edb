"""Time triton_rnn.RNN's (LSTM's) kernels against nn.RNN's (nn.LSTM's) own path on one
call's shape.

What is timed is a stand-in, a fresh module of the same class and configuration holding a copy
of the weights, which the module makes itself (stand_in: this module imports nothing from the
module layer), on the call's input (and h_0) cut to at most REPRESENTATIVE_STEPS timesteps.
Inference times a no-grad forward; training a forward plus `torch.autograd.grad` with respect to the
stand-in's parameters (and the input if it requires grad). So measuring writes no `.grad`,
runs no hooks of the user's module, leaves the RNG where it was (forked around everything,
dropout included) and does not touch `torch.backends`.
"""
import contextlib
import math
import warnings

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

REPRESENTATIVE_STEPS = 32
REPEATS = 3
# A candidate whose first timed run is this many times the best median so far is not
# repeated: it cannot win, and a slow candidate at large H costs most of the budget.
HOPELESS = 4.0


def cuda_timer(run) -> float:
    """Milliseconds of one run of `run`, by CUDA events on the current stream."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    run()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


timer = cuda_timer  # tests put a stand-in clock here


def representative(input, batch_first: bool):
    """The call's input cut to its first REPRESENTATIVE_STEPS timesteps."""
    if isinstance(input, PackedSequence):
        steps = input.batch_sizes[:REPRESENTATIVE_STEPS]
        rows = int(steps.sum())
        return PackedSequence(input.data[:rows], steps, input.sorted_indices,
                              input.unsorted_indices)
    time_dim = 1 if batch_first and input.dim() == 3 else 0
    return input.narrow(time_dim, 0, min(input.size(time_dim), REPRESENTATIVE_STEPS))


def torch_class(clone) -> type:
    """The torch.nn class the module replaces (nn.RNN, nn.LSTM)."""
    return next(c for c in type(clone).__mro__ if c.__module__.startswith("torch.nn."))


def candidates(clone: nn.RNNBase, kernels_forward) -> dict:
    """{name: forward(input, hx)}: our kernels, and the torch.nn class's own forward (nn.RNN's,
    nn.LSTM's) on the same module."""
    base = torch_class(clone)
    return {"kernels": kernels_forward, "torch": lambda x, h: base.forward(clone, x, h)}


def _states(value) -> tuple:
    """h (RNN), or (h, c) (LSTM), as a tuple; () for None."""
    return () if value is None else value if isinstance(value, tuple) else (value,)


STATE_NAMES = (("h_0", "h_n"), ("c_0", "c_n"))


def _step(forward, x, h, clone, training: bool):
    """One inference forward, or one forward + gradient, returning (output, h_n, gradients:
    {"input", "h_0" (LSTM: and "c_0"), parameter names: tensor}, empty for inference); h_n is
    LSTM's (h_n, c_n)."""
    def run():
        if not training:
            with torch.no_grad():
                return (*forward(x, h), {})
        out, h_n = forward(x, h)
        data = out.data if isinstance(out, PackedSequence) else out
        wrt = {n: p for n, p in clone.named_parameters() if p.requires_grad}
        x_data = x.data if isinstance(x, PackedSequence) else x
        wrt.update({n: t for n, t in (("input", x_data),
                                      *zip((a for a, _ in STATE_NAMES), _states(h)))
                    if t is not None and t.requires_grad})
        outputs = (data, *_states(h_n))
        grads = torch.autograd.grad(outputs, list(wrt.values()),
                                    [torch.ones_like(t) for t in outputs], allow_unused=True)
        return out, h_n, {n: g for n, g in zip(wrt, grads) if g is not None}
    return run


def _finite(outputs) -> bool:
    out, h_n = outputs[:2]
    out = out.data if isinstance(out, PackedSequence) else out
    return bool(torch.isfinite(out).all() and all(torch.isfinite(t).all()
                                                  for t in _states(h_n)))


# The first-use check's bounds: ‖ours − nn.RNN‖ / ‖nn.RNN‖ on the same inputs and weights, per
# shape-class dtype (README's numerics contract: each path's error against float64 is about
# 1e-12 (fp64), 1e-6 (fp32), 1e-3 (TF32), 1e-3 (fp16), 1e-2 (bf16); here both paths err, and
# gradients sum over every step). A kernel wrong on hardware is off by far more.
OUTPUT_TOLERANCE = {"fp64": 1e-9, "fp32": 1e-4, "tf32": 1e-2, "fp16": 1e-2, "bf16": 6e-2}
GRADIENT_TOLERANCE = {"fp64": 1e-8, "fp32": 1e-3, "tf32": 3e-2, "fp16": 3e-2, "bf16": 1.2e-1}


def relative_error(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    ours, theirs = ours.detach().double(), theirs.detach().double()
    scale = theirs.norm().item()
    return (ours - theirs).norm().item() / (scale if scale > 0 else 1.0)


def comparisons(ours, theirs, dtype: str) -> list:
    """(what, relative error, bound) for our output, h_n and each gradient against nn.RNN's
    (a gradient nn.RNN's path lacks counts as an infinite error)."""
    pairs = [("output", ours[0], theirs[0], OUTPUT_TOLERANCE[dtype])]
    pairs += [(name, a, b, OUTPUT_TOLERANCE[dtype]) for (_, name), a, b in
              zip(STATE_NAMES, _states(ours[1]), _states(theirs[1]))]
    pairs += [(f"grad {name}", g, theirs[2].get(name), GRADIENT_TOLERANCE[dtype])
              for name, g in ours[2].items()]
    found = []
    for what, a, b, bound in pairs:
        a = a.data if isinstance(a, PackedSequence) else a
        b = b.data if isinstance(b, PackedSequence) else b
        found.append((what, relative_error(a, b) if b is not None else float("inf"), bound))
    return found


def mismatches(ours, theirs, dtype: str) -> dict:
    """{what: relative error} where comparisons() is past the bound (NaN counts as past);
    empty when they agree."""
    return {what: error for what, error, bound in comparisons(ours, theirs, dtype)
            if not error <= bound}


def measure(module: nn.RNNBase, input, hx, training: bool, kernels_forward,
            dtype: str = "fp64") -> tuple:
    """({candidate: median ms}, whether the result may be kept across processes,
    {what: relative error} where our values left nn.RNN's) for the shape of this call.
    `kernels_forward(clone)` returns a forward running our kernels on `clone`; `dtype`: the
    call's shape-class dtype name (the check's bounds).
    Before timing, our output, h_n and (training) gradients of the input, h_0 and every
    parameter are compared with nn.RNN's from the same stand-in inputs (dropout off for the
    comparison: the two paths draw different masks); a mismatch leaves our kernels out.
    A candidate that gives non-finite values where nn.RNN's path did not is left out with a
    warning; one that raises (out of memory, say) too, and then nothing is kept beyond this
    process, since the failure may be passing."""
    device = (input.data if isinstance(input, PackedSequence) else input).device
    cuda = device.type == "cuda"
    # The CUDA events and the kernels must use the input's device, not just the current one.
    # Identity saved-tensor hooks: inside a checkpointed region the checkpoint's own hooks
    # would otherwise recompute the user's forward when our gradients unpack.
    with torch.random.fork_rng(devices=[device] if cuda else []), \
            torch.cuda.device(device) if cuda else contextlib.nullcontext(), \
            torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        try:
            clone = module.stand_in()
        except Exception as exc:  # noqa: BLE001 - e.g. a module we cannot copy: not measured
            warnings.warn(f"triton_rnn: could not measure this layer ({type(exc).__name__}: "
                          f"{exc}); the static routing rule decides")
            return {}, False, {}
        x = representative(input, module.batch_first)
        if isinstance(x, PackedSequence):
            x = PackedSequence(x.data.detach().requires_grad_(x.data.requires_grad),
                               x.batch_sizes, x.sorted_indices, x.unsorted_indices)
        else:
            x = x.detach().requires_grad_(x.requires_grad and training)
        h = None if hx is None else tuple(
            t.detach().requires_grad_(t.requires_grad and training) for t in _states(hx))
        h = h if h is None or isinstance(hx, tuple) else h[0]
        runs, results, times, raised = {}, {}, {}, False
        for name, forward in candidates(clone, kernels_forward(clone)).items():
            runs[name] = _step(forward, x, h, clone, training)
            try:
                results[name] = runs[name]()  # warm-up: compiles, allocates
            except Exception as exc:  # noqa: BLE001 - a failing candidate is only left out
                raised = True
                warnings.warn(f"triton_rnn: {name} failed on this shape and is not used for "
                              f"it: {type(exc).__name__}: {exc}")
        finite = {name: _finite(r) for name, r in results.items()}
        theirs = f"nn.{torch_class(clone).__name__}"
        for name in list(finite):
            if not finite[name] and finite.get("torch", False):
                warnings.warn(f"triton_rnn: {name} gave non-finite values where {theirs} did "
                              "not; it is not used for this shape")
                del finite[name]
        wrong = {}
        if "kernels" in finite and finite.get("torch", False):
            wrong = _check(runs, results, clone, dtype)
            if wrong:
                warnings.warn(f"triton_rnn: our kernels' values differ from {theirs}'s on "
                              f"this shape; {theirs} runs it: " + describe(wrong))
                del finite["kernels"]
        for name in finite:
            samples = [timer(runs[name])]
            best = min(times.values(), default=math.inf)
            while len(samples) < REPEATS and samples[0] < HOPELESS * best:
                samples.append(timer(runs[name]))
            times[name] = sorted(samples)[len(samples) // 2]
    return times, not raised, wrong


def _check(runs, results, clone, dtype: str) -> dict:
    """mismatches() of our run against nn.RNN's; with dropout between layers both run once
    more without it, since the two paths draw their masks differently."""
    if not (clone.training and clone.dropout and clone.num_layers > 1):
        return mismatches(results["kernels"], results["torch"], dtype)
    clone.eval()
    try:
        return mismatches(runs["kernels"](), runs["torch"](), dtype)
    finally:
        clone.train()


def describe(errors: dict) -> str:
    """"output 0.31, grad weight_hh_l0 0.5 (relative error; bound ...)"."""
    return ", ".join(f"{what} {error:.3g}" for what, error in errors.items()) + \
        " (relative error against nn.RNN past the dtype's bound)"
