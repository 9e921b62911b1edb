"""Shared pieces of the tests: model pairs, the float64 reference, tolerances."""
import functools
import itertools
import os
import subprocess
import sys
import tempfile

import torch
from torch import nn

import triton_rnn
from conftest import DEVICE

# Relative error ‖out − ref‖ / ‖ref‖ against nn.RNN run in float64 on the same weights.
# float32 honours cuDNN's TF32 default (torch.backends.cudnn.allow_tf32) on a GPU and under the
# interpreter alike: the kernels round the product's operands to TF32 themselves
# (kernels/blocks.py, round_tf32), so float32 gets the TF32 bound on every device; tests of
# IEEE float32 turn TF32 off and use 1e-5. 16-bit: h is rounded to the weight dtype before
# each product.
TOLERANCE = {
    torch.float64: 1e-9,
    torch.float32: 2e-3,
    torch.float16: 4e-3,
    torch.bfloat16: 3e-2,
}

# Gradients pass back through every layer and step, and 16-bit weight gradients sum many
# rounded products (the H = 1 case has only a handful of elements to average errors over).
GRAD_TOLERANCE = {
    torch.float64: 1e-9,
    torch.float32: 4e-3,
    torch.float16: 2e-2,
    torch.bfloat16: 6e-2,
}


def all_pairs(*factors) -> list:
    """Cases (one value of each factor) in which every value of every factor meets every value
    of every other factor at least once: the pairwise cover of the full product, chosen
    greedily from it in order (deterministic), so a grid of option factors costs about the
    product of its two largest factors instead of the product of all of them."""
    def pairs(case):
        return {(i, a, j, b) for (i, a), (j, b) in itertools.combinations(enumerate(case), 2)}

    product = list(itertools.product(*[range(len(f)) for f in factors]))
    uncovered = set().union(*(pairs(c) for c in product))
    chosen = []
    while uncovered:
        best = max(product, key=lambda c: len(pairs(c) & uncovered))
        chosen.append(best)
        uncovered -= pairs(best)
    return [tuple(f[k] for f, k in zip(factors, case)) for case in chosen]


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert not torch.isnan(actual).any(), "NaN in result (an element was never written?)"
    scale = expected.norm().item()
    return (actual - expected).norm().item() / (scale if scale > 0 else 1.0)


def module_pair(ours_cls, ref_cls, *args, dtype=torch.float64, device=DEVICE, seed=0,
                **kwargs):
    """(ours_cls on `device` in dtype, ref_cls, its torch.nn class, in float64 on the CPU)
    holding the same weights."""
    torch.manual_seed(seed)
    ours = ours_cls(*args, **kwargs).to(device=device, dtype=dtype)
    ref = ref_cls(*args, **kwargs).double()
    ref.load_state_dict({k: v.double().cpu() for k, v in ours.state_dict().items()})
    return ours, ref


def make_pair(*args, dtype=torch.float32, **kwargs):
    """(ours, nn.RNN in float64 on the CPU) holding the same weights."""
    return module_pair(triton_rnn.RNN, nn.RNN, *args, dtype=dtype, **kwargs)


def cpu_training_pair(*args, **kwargs):
    """(ours, nn.RNN) on the CPU in float64 and training mode with the same weights: on the
    CPU both draw their dropout masks with the same generator calls in the same order."""
    ours = triton_rnn.RNN(*args, **kwargs).double().train()
    ref = nn.RNN(*args, **kwargs).double().train()
    ref.load_state_dict(ours.state_dict())
    return ours, ref


# Every option combination of the module: nonlinearity, bias, layers, bidirectional, batch_first.
# The module's options (activation, bias, layers, both directions, batch_first) as an
# all-pairs cover (all_pairs above): every pair of their values meets in some case.
OPTIONS = all_pairs(("tanh", "relu"), (True, False), (1, 2), (False, True), (False, True))


def option_id(opt) -> str:
    act, bias, layers, bidir, batch_first = opt
    return (f"{act}-{'bias' if bias else 'nobias'}-L{layers}-{'bi' if bidir else 'uni'}-"
            f"{'batchfirst' if batch_first else 'seqfirst'}")


def option_grid_case(opt, input_size: int, hidden_size: int, N: int, T: int):
    """(ours, nn.RNN, x, h0), all float64, for one combination of OPTIONS."""
    act, bias, layers, bidir, batch_first = opt
    ours, ref = make_pair(input_size, hidden_size, layers, act, bias, batch_first, 0.0, bidir,
                          dtype=torch.float64)
    x = torch.randn((N, T, input_size) if batch_first else (T, N, input_size),
                    dtype=torch.float64)
    h0 = torch.randn(layers * (2 if bidir else 1), N, hidden_size, dtype=torch.float64)
    return ours, ref, x, h0


def one_percent_off(monkeypatch, pass_: str) -> None:
    """Make our forward kernels' output ("forward") or the backward's dz ("backward") 1% off:
    a kernel wrong only on some hardware, as the checks that compare with nn.RNN must see."""
    from triton_rnn import ops
    forward, backward = ops.kernel_forward, ops.kernel_backward
    if pass_ == "forward":
        monkeypatch.setattr(ops, "kernel_forward", lambda *a, **k: forward(*a, **k) * 1.01)
    else:
        monkeypatch.setattr(ops, "kernel_backward", lambda *a, **k: (
            lambda dz, dh0: (dz * 1.01, dh0))(*backward(*a, **k)))


_MODULE_INFO_DUMP = """
import sys, torch
from torch.testing._internal.common_modules import module_db
out = {}
for info in module_db:
    if info.module_cls.__name__ not in sys.argv[2:]:
        continue
    samples = info.module_inputs_func(info, device="cpu", dtype=torch.float64,
                                      requires_grad=False, training=True)
    errors = info.module_error_inputs_func(info, device="cpu", dtype=torch.float64,
                                           requires_grad=False, training=True)
    out[info.module_cls.__name__] = {
        "samples": [(s.constructor_input.args, s.constructor_input.kwargs,
                     s.forward_input.args, s.forward_input.kwargs) for s in samples],
        "errors": [(e.module_error_input.constructor_input.args,
                    e.module_error_input.constructor_input.kwargs,
                    *((None, None) if e.module_error_input.forward_input is None else
                      (e.module_error_input.forward_input.args,
                       e.module_error_input.forward_input.kwargs)),
                    e.error_type.__name__, e.error_regex) for e in errors]}
torch.save(out, sys.argv[1])
"""


@functools.lru_cache(maxsize=None)
def pytorch_module_info(*names: str) -> dict:
    """{torch.nn class name: {"samples": [(constructor args, kwargs, forward args, kwargs)],
    "errors": [(constructor args, kwargs, forward args, kwargs, exception name, regex)]}}
    (forward args and kwargs None for an error the constructor raises)
    from PyTorch's own ModuleInfo (torch.testing._internal.common_modules, float64, CPU),
    read in a subprocess: importing PyTorch's test utilities freezes torch.backends.cudnn's
    flags for the rest of the process, which other tests set."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "module_info.pt")
        subprocess.run([sys.executable, "-c", _MODULE_INFO_DUMP, path, *names], check=True,
                       env=dict(os.environ, TRITON_INTERPRET="0"))
        return torch.load(path, weights_only=False)


def check_module_info(info: dict, make_pair, outputs, module_cls) -> None:
    """Every ModuleInfo sample of `info` (pytorch_module_info's) gives the outputs of the
    torch.nn module's (make_pair(*constructor args) -> (ours on DEVICE, torch.nn's); outputs:
    a result's tensors), and every error input raises its error from `module_cls`."""
    import builtins
    import re

    import pytest
    assert info["samples"] and info["errors"]
    for args, kwargs, fwd_args, fwd_kwargs in info["samples"]:
        ours, ref = make_pair(*args, **kwargs)
        moved = [a.to(DEVICE) if isinstance(a, torch.Tensor) else
                 tuple(t.to(DEVICE) for t in a) for a in fwd_args]
        for a, b in zip(outputs(ours(*moved, **fwd_kwargs)), outputs(ref(*fwd_args,
                                                                         **fwd_kwargs))):
            assert rel_err(a, b) < 1e-9, (args, kwargs)
    for args, kwargs, fwd_args, fwd_kwargs, error, regex in info["errors"]:
        with pytest.raises(getattr(builtins, error)) as got:
            module = module_cls(*args, **kwargs)
            if fwd_args is not None:  # else the constructor must raise
                module(*fwd_args, **fwd_kwargs)
        assert re.search(regex, str(got.value)), (args, kwargs)


# ----- what the gated layers' tests (LSTM, GRU) share ----------------------------------------

def leaf(t, dtype=torch.float64):
    """A copy of t on DEVICE in dtype that gradients accumulate in."""
    return t.to(device=DEVICE, dtype=dtype, copy=True).requires_grad_()


def compare_with_torch(ours, ref, inputs, ref_inputs, tolerance, grad_tolerance, leaves,
                       ref_leaves, flatten):
    """Forward values (flatten: a result's tensors), then the gradients of every input, state
    and parameter, of one loss that weighs each output differently (so a swapped gradient
    shows)."""
    got, expected = flatten(ours(*inputs)), flatten(ref(*ref_inputs))
    for a, b in zip(got, expected):
        assert rel_err(a, b) < tolerance
    weights = [torch.randn(b.shape, dtype=torch.float64) for b in expected]
    sum(((a.double().cpu() * w).sum() for a, w in zip(got, weights))).backward()
    sum(((b * w).sum() for b, w in zip(expected, weights))).backward()
    for (name, p), (_, q) in zip(ours.named_parameters(), ref.named_parameters()):
        assert rel_err(p.grad, q.grad) < grad_tolerance, name
    for a, b in zip(leaves, ref_leaves):
        assert rel_err(a.grad, b.grad) < grad_tolerance


def check_drop_in_module(ours_cls, ref_cls, args, small_args) -> None:
    """ours_cls is a ref_cls with its parameters, initialisation and repr (constructed from
    the positional `args`); a saved model and its state_dict load with torch's defaults; and
    convert() re-classes a ref_cls in place (small_args: a small one's arguments)."""
    import io
    torch.manual_seed(0)
    ref = ref_cls(*args)
    torch.manual_seed(0)
    ours = ours_cls(*args)
    assert isinstance(ours, ref_cls) and ours_cls.__name__ in triton_rnn.__all__
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    for (_, a), (_, b) in zip(ours.named_parameters(), ref.named_parameters()):
        assert torch.equal(a, b)
    assert repr(ours) == repr(ref)
    buffer = io.BytesIO()
    torch.save(ours, buffer)
    buffer.seek(0)
    again = torch.load(buffer)  # weights_only=True, PyTorch's default
    assert type(again) is ours_cls
    ref.load_state_dict(again.state_dict(), strict=True)
    model = nn.Sequential(nn.Linear(small_args[0], small_args[0]), ref_cls(*small_args))
    params = [id(p) for p in model[1].parameters()]
    assert triton_rnn.convert(model) is model and type(model[1]) is ours_cls
    assert [id(p) for p in model[1].parameters()] == params
