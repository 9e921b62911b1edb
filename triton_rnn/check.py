"""Self-test on this machine's GPU: every variant the dispatcher can pick, against nn.RNN
(and the LSTM's kernels against nn.LSTM).

    python -m triton_rnn.check              # on a CUDA GPU (a minute or two)
    python -m triton_rnn.check --interpret  # the same checks, small, in Triton's interpreter

Each row runs one bidirectional layer of triton_rnn.RNN (or a triton_rnn.RNNCell) on our
kernels and nn.RNN (nn.RNNCell) on the same weights and inputs: resident, split and streaming,
padded and packed, bf16, fp16, float32 with and without TF32 (tf32, fp32) and float64; then
triton_rnn.LSTM ("lstm": its resident kernels; "lstm-split": the split, on tensor cores in bf16
and TF32, one row at a time in fp64; "lstm-streaming": past the split) and LSTMCell against
nn.LSTM and nn.LSTMCell, triton_rnn.GRU ("gru": its resident kernels; "gru-split": the split
on tensor cores; "gru-streaming" beyond) and GRUCell against nn.GRU and nn.GRUCell; the split
in two dimensions ("split-2d": the RNN's, at batch 64 on a GPU; "lstm-2d": the LSTM's TF32 backward);
IEEE fp32 LSTM and GRU layers past split.py's reach ("lstm-fma", "gru-fma": FMA products, the
forward with B in shared memory, the backward in two dimensions);
the forward's output and h_n (and c_n), then the gradients of the input, the initial states
and every parameter, each
compared by relative error with the bound of the first-use check (measure.py). It prints the
variant that ran, the largest error over its bound, and on a GPU our µs per step beside
nn.RNN's (CUDA events, median of 5). It exits non-zero on a mismatch, a launch failure or a
barrier timeout. Without a GPU it says so and exits 0. --interpret lowers the dispatcher's
limits so that H = 40 reaches split and streaming, and times nothing (the interpreter's speed
means nothing).
"""
import argparse
import contextlib
import os
import subprocess
import sys
import time

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from . import measure, routing
from .cell import GRUCell, LSTMCell, RNNCell
from .kernels import dispatch, failures, launch
from .gru import GRU
from .lstm import LSTM
from .rnn import RNN

DTYPES = ("bf16", "fp16", "tf32", "fp32", "fp64")
# (variant, dtype, packed): every variant the dispatcher picks, padded and packed, each dtype;
# then an LSTM layer (its resident kernels, its split) and the LSTMCell in some dtypes.
CASES = [(v, d, p) for v in ("resident", "split", "streaming") for p in (False, True)
         for d in DTYPES] + [("cell", d, False) for d in DTYPES] + \
    [("lstm", d, p) for d in ("bf16", "tf32", "fp64") for p in (False, True)] + \
    [("lstm-split", d, p) for d in ("bf16", "tf32", "fp64") for p in (False, True)] + \
    [("lstm-streaming", d, p) for d in ("bf16", "tf32") for p in (False, True)] + \
    [("lstm-streaming", "fp64", False)] + \
    [("gru", d, p) for d in ("bf16", "tf32", "fp64") for p in (False, True)] + \
    [("gru-split", d, p) for d in ("bf16", "tf32") for p in (False, True)] + \
    [("gru-streaming", d, False) for d in ("bf16", "fp64")] + \
    [("gru-cell", d, False) for d in ("fp16", "tf32")] + \
    [("lstm-cell", d, False) for d in ("fp16", "tf32")] + \
    [(v, "tf32", p) for v in ("split-2d", "lstm-2d") for p in (False, True)] + \
    [("lstm-fma", "fp32", p) for p in (False, True)] + [("gru-fma", "fp32", False)]
BUDGET_S = 100  # no case starts after this; each is a few compiles and a few short runs
# variant -> (H on a GPU, H interpreted, T on a GPU): sizes the dispatcher gives that variant
# in every dtype it is checked in (LSTM and GRU: 32, their resident tile in fp64 too;
# interpreted: with the limits of _small_limits).
SIZES = {"resident": (64, 24, 64), "split": (512, 40, 64), "streaming": (4096, 40, 8),
         "lstm": (32, 16, 64), "lstm-split": (256, 40, 64), "lstm-streaming": (1100, 40, 8),
         "lstm-cell": (256, 40, 1), "gru": (32, 12, 64), "gru-split": (256, 40, 64),
         "gru-streaming": (1100, 40, 8),
         "gru-cell": (256, 40, 1), "split-2d": (1024, 40, 64), "lstm-2d": (512, 40, 64),
         "lstm-fma": (768, 40, 64), "gru-fma": (768, 40, 64)}
# variant -> batch on a GPU (16 otherwise): the RNN's split in two dimensions at H = 1024
# takes more than 24 rows a group of the one-dimensional form (dispatch.SPLIT_2D_MIN_ROWS)
BATCH = {"split-2d": 64}
# variant -> (ours, torch.nn's) and the kernel variant that must run it
MODULES = {"cell": (RNNCell, nn.RNNCell), "lstm": (LSTM, nn.LSTM),
           "lstm-split": (LSTM, nn.LSTM), "lstm-streaming": (LSTM, nn.LSTM),
           "lstm-cell": (LSTMCell, nn.LSTMCell), "gru": (GRU, nn.GRU),
           "gru-split": (GRU, nn.GRU), "gru-streaming": (GRU, nn.GRU),
           "gru-cell": (GRUCell, nn.GRUCell), "lstm-2d": (LSTM, nn.LSTM),
           "lstm-fma": (LSTM, nn.LSTM), "gru-fma": (GRU, nn.GRU)}
RUNS_ON = {"lstm": "resident", "lstm-split": "split", "lstm-streaming": "streaming",
           "lstm-cell": "cell", "gru": "resident", "gru-split": "split",
           "gru-streaming": "streaming",
           "gru-cell": "cell", "lstm-2d": "split-2d", "lstm-fma": "split-2d",
           "gru-fma": "split-2d"}


def _small_limits():
    """Interpreted: resident up to 32 hidden units, split above (saved limits returned)."""
    saved = (dict(dispatch.RESIDENT_MAX_BH), dict(dispatch.SPLIT_MAX_BH),
             dict(dispatch.LSTM_SPLIT_MAX_K), dict(dispatch.LSTM_SPLIT_FORWARD_MAX_BH))
    dispatch.RESIDENT_MAX_BH.update(dict.fromkeys(dispatch.RESIDENT_MAX_BH, 32))
    return saved


def _streaming_only(on: bool, saved: tuple):
    """The split limits (RNN and LSTM) zero while `on`, else as saved."""
    for limits, kept in zip((dispatch.SPLIT_MAX_BH, dispatch.LSTM_SPLIT_MAX_K,
                             dispatch.LSTM_SPLIT_FORWARD_MAX_BH), saved[1:]):
        limits.update(dict.fromkeys(kept, 0) if on else kept)


@contextlib.contextmanager
def _two_dimensions(variant: str, interpreted: bool):
    """Interpreted, for the split in two dimensions ("split-2d": the RNN's, "lstm-2d": the
    LSTM's TF32 backward, "lstm-fma"/"gru-fma": the IEEE fp32 gated layers'): its
    configurations at H = 40 (BH = 64; the backward's K = 256), row blocks of 16 times 2
    parts, and the RNN's at the interpreted batch of 3."""
    patches = {}
    if interpreted and variant == "split-2d":
        patches = dict(SPLIT_2D={(4, 64): (16, 2, 2, 4)}, SPLIT_2D_MIN_ROWS={(4, 64): 1},
                       SPLIT_2D_BN=16)
    elif interpreted and variant == "lstm-2d":
        patches = dict(SPLIT_2D_GATED_BACKWARD={(4, 256): (16, 2, 2, 4)})
    elif interpreted and variant in ("lstm-fma", "gru-fma"):  # (split.py's K limit under 256)
        patches = dict(IEEE_GATED_BACKWARD={(4, 256): (16, 2, 8, 8)},
                       LSTM_SPLIT_MAX_K={**dispatch.LSTM_SPLIT_MAX_K, 4: 128})
    saved = {name: getattr(dispatch, name) for name in patches}
    for name, value in patches.items():
        setattr(dispatch, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(dispatch, name, value)


class _VariantSeen:
    """Records the variant of the last recurrence plan (a split plan that does not fit is
    followed by its fallback's); "split-2d" for the split in two dimensions."""

    def __init__(self):
        self.seen, self._plan = [], launch._plan

    def __enter__(self):
        def plan(*args, **kwargs):
            result = self._plan(*args, **kwargs)
            cfg = result[0]
            self.seen.append(cfg.variant + ("-2d" if cfg.k_parts > 1 else ""))
            return result
        launch._plan = plan
        return self

    def __exit__(self, *exc):
        launch._plan = self._plan


def _inputs(T, N, I, D, H, dtype, device, cell, lstm):
    """(x, states): (N, I) and [(N, H)] for a cell, else (T, N, I) and [(D, N, H)]; LSTM's
    states are [h_0, c_0]."""
    g = torch.Generator().manual_seed(0)
    shapes = ((N, I), (N, H)) if cell else ((T, N, I), (D, N, H))
    x, *states = (torch.randn(shape, generator=g).to(device, dtype).requires_grad_()
                  for shape in shapes + shapes[1:] * lstm)
    return x, states


def _as_input(x, packed: bool):
    """x itself, or packed with uneven lengths (unsorted): a new graph for each run."""
    if not packed:
        return x
    T, N = x.shape[:2]
    lengths = torch.tensor([T - i % max(T // 2, 1) for i in range(N)])
    return pack_padded_sequence(x, lengths, enforce_sorted=False)


def _hx(states):
    """The module's hx argument: h_0, or LSTM's (h_0, c_0)."""
    return states[0] if len(states) == 1 else tuple(states)


def _run(model, x, states, packed: bool, cell: bool):
    """(output, h_n (LSTM: (h_n, c_n)), {gradient name: gradient}) of one forward and
    backward."""
    out = model(_as_input(x, packed), _hx(states))
    if cell:  # RNNCell: h'; LSTMCell: (h', c')
        out = (out[0] if isinstance(out, tuple) else out, out)
    y, h_n = out
    y = y.data if packed else y
    finals = h_n if isinstance(h_n, tuple) else (h_n,)
    g = torch.Generator().manual_seed(1)
    weights = torch.randn(y.shape, generator=g).to(y)
    names = ["input", "h_0", "c_0"][:1 + len(states)] + [n for n, _ in model.named_parameters()]
    grads = torch.autograd.grad((y * weights).float().sum()
                                + sum(t.float().pow(2).sum() for t in finals),
                                [x, *states, *model.parameters()])
    h_n = tuple(t.detach() for t in finals) if len(finals) > 1 else finals[0].detach()
    return y.detach(), h_n, dict(zip(names, grads))


def _us_per_step(call, steps: int) -> float:
    times = []
    for _ in range(6):
        times.append(measure.cuda_timer(call))
    return sorted(times[1:])[2] * 1000 / steps


def check_case(variant: str, dtype_name: str, packed: bool, device: str,
               interpreted: bool) -> dict:
    cell = variant.endswith("cell")
    H_gpu, H_small, T_gpu = SIZES.get(variant, (256, 40, 1))
    H = H_small if interpreted else H_gpu
    T, N, I = (1 if cell else 3 if interpreted else T_gpu), \
        (3 if interpreted else BATCH.get(variant, 16)), 32
    dtype, tf32 = routing.DTYPES[dtype_name]
    torch.manual_seed(0)
    ours_cls, ref_cls = MODULES.get(variant, (RNN, nn.RNN))
    kwargs = {} if cell else dict(bidirectional=True)
    ours = ours_cls(I, H, **kwargs).to(device, dtype)
    ref = ref_cls(I, H, **kwargs).to(device, dtype)
    ref.load_state_dict(ours.state_dict())
    row = dict(variant=variant, dtype=dtype_name, layout="-" if cell else
               "packed" if packed else "padded", H=H, N=N, T=T)
    packed = packed and not cell
    x, states = _inputs(T, N, I, 2, H, dtype, device, cell, variant.startswith("lstm"))
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=tf32), _matmul_tf32(tf32), \
            routing.kernels_always(), _two_dimensions(variant, interpreted), \
            _VariantSeen() as seen:
        got = _run(ours, x, states, packed, cell)
        if device == "cuda":
            failures.check()  # a barrier timeout raises here
        ran = seen.seen[-1] if seen.seen else "cell"
        want = _run(ref, x, states, packed, cell)
        errors = measure.mismatches(got, want, dtype_name)
        row.update(ran=ran, ok=not errors and ran == RUNS_ON.get(variant, variant),
                   error=describe_worst(got, want, dtype_name))
        if device == "cuda":  # forward latency, no gradients recorded
            inp, hx = _as_input(x.detach(), packed), _hx([t.detach() for t in states])
            with torch.no_grad():
                row["ours_us"] = _us_per_step(lambda: ours(inp, hx), T)
                row["nn_us"] = _us_per_step(lambda: ref(inp, hx), T)
    return row


@contextlib.contextmanager
def _matmul_tf32(allow: bool):
    """torch.backends.cuda.matmul.allow_tf32 for the block (the cell follows it)."""
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allow
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


def describe_worst(got, want, dtype_name: str) -> str:
    """The largest error of the row as a fraction of its bound, with what it was."""
    ratio, what = max(((error / bound, what) for what, error, bound in
                       measure.comparisons(got, want, dtype_name)),
                      key=lambda r: (r[0] != r[0], r[0]))
    return f"{ratio:.2g} of bound ({what})"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m triton_rnn.check",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--interpret", action="store_true",
                        help="run the checks at small sizes in Triton's interpreter (CPU)")
    args = parser.parse_args(argv)
    if args.interpret and not launch.interpreting():
        # Triton reads TRITON_INTERPRET when the kernels are decorated, at import: start over.
        env = dict(os.environ, TRITON_INTERPRET="1")
        return subprocess.run([sys.executable, "-m", "triton_rnn.check", "--interpret"],
                              env=env).returncode
    if not args.interpret and not torch.cuda.is_available():
        print("triton_rnn.check: no CUDA GPU here, nothing to check on hardware "
              "(--interpret runs the same checks in Triton's interpreter).")
        return 0
    failed = run(CASES, "cpu" if args.interpret else "cuda", args.interpret)
    return 1 if failed else 0


def run(cases, device: str, interpreted: bool, out=print) -> int:
    """Checks `cases` ((variant, dtype name, packed) each), prints the table through `out`;
    returns how many failed."""
    where = "Triton's interpreter (CPU), small sizes" if interpreted else \
        torch.cuda.get_device_name()
    out(f"triton_rnn.check on {where}: ours against torch.nn's, same weights and inputs")
    out(f"{'variant':10} {'ran':10} {'layout':7} {'dtype':5} {'H':>5} {'N':>3} {'T':>3}  "
        f"{'result':6} {'largest error':40} {'fwd µs/step':>12} {'torch.nn':>8}")
    saved = _small_limits() if interpreted else None
    start, failed, skipped = time.monotonic(), 0, 0
    try:
        for variant, dtype_name, packed in cases:
            if time.monotonic() - start > BUDGET_S and not interpreted:
                skipped += 1
                continue
            if saved is not None:
                _streaming_only(variant.endswith("streaming"), saved)
            try:
                row = check_case(variant, dtype_name, packed, device, interpreted)
            except Exception as exc:  # noqa: BLE001 - a failure is a finding, reported
                failed += 1
                message = (str(exc).splitlines() or [""])[0][:120]
                out(f"{variant:10} {'-':10} {'packed' if packed else 'padded':7} "
                    f"{dtype_name:5}  FAIL   {type(exc).__name__}: {message}")
                continue
            failed += not row["ok"]
            timing = (f"{row['ours_us']:>12.2f} {row['nn_us']:>8.2f}" if "ours_us" in row
                      else f"{'-':>12} {'-':>8}")
            out(f"{row['variant']:10} {row['ran']:10} {row['layout']:7} {row['dtype']:5} "
                f"{row['H']:>5} {row['N']:>3} {row['T']:>3}  "
                f"{'ok' if row['ok'] else 'FAIL':6} {row['error']:40} {timing}")
    finally:
        if saved is not None:
            dispatch.RESIDENT_MAX_BH.update(saved[0])
            _streaming_only(False, saved)
    if skipped:
        out(f"{skipped} case(s) not started within {BUDGET_S} s (first compiles); run again: "
            "compiled kernels are cached")
    out(f"{len(cases) - skipped - failed} passed, {failed} failed, {skipped} not run")
    return failed + skipped


if __name__ == "__main__":
    raise SystemExit(main())
