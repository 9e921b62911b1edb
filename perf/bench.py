"""Measure one RNN (LSTM, GRU) configuration: triton_rnn.RNN against torch.nn.RNN (cuDNN), or
triton_rnn.LSTM against nn.LSTM (GRU: nn.GRU), same weights, same inputs, in the same process. CUDA only; the
numbers are GPU latencies."""
from dataclasses import asdict, dataclass

import torch
import triton.testing
from torch import nn

import triton_rnn

# name -> (torch dtype, TF32 allowed for cuDNN and for our GEMMs/kernels): routing's classes.
DTYPES = {name: v for name, v in triton_rnn.routing.DTYPES.items() if name != "fp64"}
# Relative difference from nn.RNN (same dtype; output, h_n and weight gradients) above which a
# measurement is marked wrong. Both sides round, and gradients over up to 1024 steps of a 16-bit
# recurrence diverge more than outputs, hence the wide 16-bit bounds; a wrong kernel is off by
# order 1.
MATCH_TOLERANCE = {"fp32": 1e-3, "tf32": 5e-2, "bf16": 2e-1, "fp16": 1e-1}
INPUT_SETS = 4  # inputs rotated between calls so caches do not flatter either side
DEVICE = "cuda"  # what is timed; perf/latency.py never times anything else
# cell -> (ours, torch.nn's); the rows name torch.nn's by REFERENCE
MODULES = {"rnn": (triton_rnn.RNN, nn.RNN), "lstm": (triton_rnn.LSTM, nn.LSTM),
           "gru": (triton_rnn.GRU, nn.GRU)}
REFERENCE = {"rnn": "nn.RNN", "lstm": "nn.LSTM", "gru": "nn.GRU"}
GATES = {"rnn": 1, "lstm": 4, "gru": 3}


@dataclass
class Case:
    dtype: str
    batch: int
    hidden: int
    seq: int
    layers: int
    directions: int
    cell: str = "rnn"  # "rnn", "lstm" or "gru"

    def flops(self, mode: str) -> float:
        """2·T·N·G·H·(I + H) per layer and direction (I = H here; G gates: 4 LSTM, 3 GRU);
        training counts 3x."""
        fwd = 2.0 * self.seq * self.batch * GATES[self.cell] * self.hidden * 2 * self.hidden
        fwd *= self.layers * self.directions
        return fwd * (3 if mode == "training" else 1)


def _models(case: Case):
    dtype, _ = DTYPES[case.dtype]
    kwargs = dict(input_size=case.hidden, hidden_size=case.hidden, num_layers=case.layers,
                  bidirectional=case.directions == 2)
    ours_cls, ref_cls = MODULES[case.cell]
    ours = ours_cls(**kwargs).to(DEVICE, dtype)
    ref = ref_cls(**kwargs).to(DEVICE, dtype)
    ref.load_state_dict(ours.state_dict())
    return {"triton_rnn": ours, REFERENCE[case.cell]: ref}


def _step(model, inputs, grads, mode, packed=False, policy="kernels"):
    """A callable running one inference forward or one training step, rotating inputs, with
    triton_rnn's routing policy `policy` in force (nn.RNN ignores it)."""
    state = {"i": 0}

    def run():
        with triton_rnn.backend(policy):
            _run(state, model, inputs, grads, mode, packed)
    return run


def _run(state, model, inputs, grads, mode, packed):
    i = state["i"] = (state["i"] + 1) % len(inputs)
    if mode == "inference":
        with torch.no_grad():
            model(inputs[i])
    else:
        model.zero_grad(set_to_none=True)
        out, _ = model(inputs[i])
        (out.data if packed else out).backward(grads[i])


def _rel_err(a, b) -> float:
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _check(models, x, grad, packed=False) -> float:
    """Worst relative difference between triton_rnn and torch.nn's module over the output, h_n
    (and c_n) and every parameter gradient of one training step on the same input: a fast
    wrong kernel must not win, in inference or in training."""
    results = []
    for model in models.values():
        model.zero_grad(set_to_none=True)
        out, h_n = model(x)
        out = out.data if packed else out
        out.backward(grad)
        finals = h_n if isinstance(h_n, tuple) else (h_n,)
        results.append([out.detach(), *(t.detach() for t in finals)] +
                       [p.grad for p in model.parameters()])
        model.zero_grad(set_to_none=True)
    return max(_rel_err(a, b) for a, b in zip(*results))


def measure(case: Case, modes=("inference", "training"), warmup_ms=10, rep_ms=50) -> list:
    """One row per (mode, implementation): median and 20/80% quantile latencies in ms.
    "triton_rnn" is triton_rnn.RNN on its own kernels (routing off): these numbers are what
    perf/routing_table.py builds the recorded table from. "auto" is the same module as a user
    gets it, routed by measurement (triton_rnn/routing.py) to the faster of the two."""
    with triton_rnn.routing.kernels_always():
        return _measure(case, modes, warmup_ms, rep_ms)


def _setup(case: Case):
    """Set the TF32 flags for the case's dtype; return (dtype, both models)."""
    dtype, tf32 = DTYPES[case.dtype]
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    return dtype, _models(case)


def _time(step, warmup_ms, rep_ms):
    """(median, 20% quantile, 80% quantile) in ms."""
    return triton.testing.do_bench(step, warmup=warmup_ms, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])


def _measure(case: Case, modes, warmup_ms, rep_ms) -> list:
    dtype, models = _setup(case)
    shape = (case.seq, case.batch, case.hidden)
    inputs = [torch.randn(shape, device=DEVICE, dtype=dtype) for _ in range(INPUT_SETS)]
    out_shape = (case.seq, case.batch, case.directions * case.hidden)
    grads = [torch.randn(out_shape, device=DEVICE, dtype=dtype) for _ in range(INPUT_SETS)]
    err = _check(models, inputs[0], grads[0])
    rows = []
    reference = REFERENCE[case.cell]
    ours, ref = models["triton_rnn"], models[reference]
    runs = [("triton_rnn", ours, "kernels"), ("auto", ours, "auto"), (reference, ref, "kernels")]
    for mode in modes:
        for name, model, policy in runs:
            med, lo, hi = _time(_step(model, inputs, grads, mode, policy=policy), warmup_ms,
                                rep_ms)
            rows.append(dict(asdict(case), mode=mode, impl=name, ms=med, ms_p20=lo, ms_p80=hi,
                             us_per_step=1e3 * med / case.seq,
                             tflops=case.flops(mode) / (med * 1e-3) / 1e12,
                             rel_err_vs_torch_nn=err,
                             matches=bool(err < MATCH_TOLERANCE[case.dtype])))
    return rows


def sweep_cases(batch, hidden, seq, layers, directions, dtypes, cell="rnn") -> list:
    return [Case(d, b, h, t, nl, nd, cell) for d in dtypes for nl in layers
            for nd in directions for t in seq for h in hidden for b in batch]


def environment() -> dict:
    props = torch.cuda.get_device_properties(0)
    return dict(gpu=props.name, sm_count=props.multi_processor_count,
                arch=f"sm_{props.major}{props.minor}",
                torch=torch.__version__, triton=triton.__version__,
                cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())


def _lengths(case: Case, seed: int = 0) -> list:
    """Variable lengths uniform in [T/2, T], longest first, always including T."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(case.seq // 2, case.seq + 1, (case.batch,), generator=g)
    lengths[0] = case.seq
    return sorted(lengths.tolist(), reverse=True)


def measure_packed(case: Case, modes=("inference", "training"), warmup_ms=10, rep_ms=50) -> list:
    """Packed against padded input at the same number of tokens, for both implementations.

    Packed: `case.batch` sequences with lengths uniform in [T/2, T] (P tokens in all, the
    longest T). Padded: round(P / T) sequences of length T. Both recurrences are T steps deep:
    a recurrence's latency is set by its longest sequence, so a padded batch of the mean length
    would measure the length distribution, not the cost of packing."""
    with triton_rnn.routing.kernels_always():
        return _measure_packed(case, modes, warmup_ms, rep_ms)


def _measure_packed(case: Case, modes, warmup_ms, rep_ms) -> list:
    from torch.nn.utils.rnn import pack_padded_sequence

    dtype, models = _setup(case)
    lengths = _lengths(case)
    tokens = sum(lengths)
    padded_batch = max(1, round(tokens / case.seq))
    feature = case.hidden
    packed_inputs = [pack_padded_sequence(
        torch.randn(case.seq, case.batch, feature, device=DEVICE, dtype=dtype), lengths)
        for _ in range(INPUT_SETS)]
    padded_inputs = [torch.randn(case.seq, padded_batch, feature, device=DEVICE, dtype=dtype)
                     for _ in range(INPUT_SETS)]
    out_features = case.directions * case.hidden
    packed_grads = [torch.randn(tokens, out_features, device=DEVICE, dtype=dtype)
                    for _ in range(INPUT_SETS)]
    padded_grads = [torch.randn(case.seq, padded_batch, out_features, device=DEVICE,
                                dtype=dtype) for _ in range(INPUT_SETS)]
    err = _check(models, packed_inputs[0], packed_grads[0], packed=True)
    rows = []
    for mode in modes:
        for name, model in models.items():
            for layout, inputs, grads in (("packed", packed_inputs, packed_grads),
                                          ("padded", padded_inputs, padded_grads)):
                step = _step(model, inputs, grads, mode, packed=layout == "packed")
                med, lo, hi = _time(step, warmup_ms, rep_ms)
                rows.append(dict(asdict(case), mode=mode, impl=name, layout=layout,
                                 tokens=tokens, padded_batch=padded_batch, ms=med,
                                 ms_p20=lo, ms_p80=hi, rel_err_vs_torch_nn=err,
                                 matches=bool(err < MATCH_TOLERANCE[case.dtype])))
    return rows
