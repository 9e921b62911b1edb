"""Latency of triton_rnn.RNN against torch.nn.RNN (cuDNN), and of triton_rnn.LSTM and GRU
against nn.LSTM and nn.GRU: the project's main job.

    python perf/latency.py [--quick] [--batch 1 16 ...] [--hidden ...] [--seq ...] ...

On a CUDA GPU: measures inference (no_grad forward) and a training step (forward + backward)
of both, same weights and inputs, over the sweep: triton_rnn.RNN on its own kernels, the same
module routed by measurement ("auto", with a fresh routing cache kept in the results folder
unless TRITON_RNN_CACHE_DIR is set) and nn.RNN; then the same for LSTM and GRU layers over a
smaller sweep (LSTM_SWEEP, one layer, one direction); checks every measured output against
torch.nn's;
saves raw numbers with the GPU's name and versions under perf/results/<gpu>_<date>/, prints
and saves a speedup table (Markdown) and draws the plots.
Without a GPU: says so, checks the kernels once through Triton's interpreter against nn.RNN,
prints and draws the main slice as the models see it (perf/model_plots.py: our compile-time
cost model for sm_90 beside a model of cuDNN; models, not measurements) and redraws the plots
of the most recent recorded GPU results. It never times the CPU. Measured plots carry the
models as dotted lines.
"""
import os
import sys

import torch

HAS_GPU = torch.cuda.is_available()
if not HAS_GPU:
    print("No CUDA GPU found: nothing will be timed. Checking the kernels through Triton's "
          "interpreter instead, then showing the main slice as the models see it (not a "
          "measurement) and redrawing the most recent recorded GPU results.", flush=True)
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton_rnn is imported

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import plots  # noqa: E402

DEFAULT_SWEEP = dict(batch=[1, 2, 4, 8, 16, 32, 64, 128, 256],
                     hidden=[128, 256, 512, 1024, 2048, 4096], seq=[16, 128, 1024],
                     layers=[1, 2], directions=[1, 2], dtypes=["fp32", "tf32", "bf16", "fp16"])
# Packed (variable-length) against padded input at the same token count: a few shape classes.
# The padded batches (about 3/4 of these, see bench.measure_packed) stay at 16 or more, so both
# sides run the same kernel configuration.
PACKED_SWEEP = dict(batch=[32, 128], hidden=[256, 1024], seq=[128], layers=[1], directions=[1])
# LSTM and GRU layers against nn.LSTM and nn.GRU: the main slice's shape (T = 128, one layer,
# one direction), over batch and hidden sizes that reach each of their variants (resident to
# 64; LSTM split to 1024 in 16-bit on sm_90; streaming beyond), in the sweep's dtypes.
LSTM_SWEEP = dict(batch=[1, 16, 64], hidden=[64, 256, 768, 1024, 2048], seq=[128], layers=[1],
                  directions=[1])
QUICK_SWEEP = dict(batch=[1, 16, 64], hidden=[128, 512, 2048], seq=[128], layers=[1],
                   directions=[1], dtypes=["tf32", "bf16"])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a small sweep: " + str(QUICK_SWEEP))
    for name, values in DEFAULT_SWEEP.items():
        kind = str if name == "dtypes" else int
        p.add_argument(f"--{name}", nargs="+", type=kind, default=None,
                       help=f"default {values}")
    p.add_argument("--modes", nargs="+", default=["inference", "training"],
                   choices=["inference", "training"])
    p.add_argument("--out", type=Path, default=None,
                   help="results folder (default perf/results/<gpu>_<date>)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--budget-minutes", type=float, default=None,
                   help="start no new case after this long; the results say how far it got")
    p.add_argument("--no-packed", action="store_true",
                   help="skip the packed-vs-padded comparison " + str(PACKED_SWEEP))
    p.add_argument("--no-gated", action="store_true",
                   help="skip the LSTM and GRU layers against nn.LSTM and nn.GRU " +
                   str(LSTM_SWEEP))
    args = p.parse_args(argv)
    base = QUICK_SWEEP if args.quick else DEFAULT_SWEEP
    for name in DEFAULT_SWEEP:
        if getattr(args, name) is None:
            setattr(args, name, base[name])
    return args


def interpreter_check() -> bool:
    """Forward and gradients of the Triton kernels (interpreted) against nn.RNN, nn.LSTM and
    nn.GRU in float64."""
    import triton_rnn
    torch.manual_seed(0)
    ok = True
    for cell, N, H in (("RNN", 3, 17), ("RNN", 17, 33), ("RNN", 2, 130), ("LSTM", 3, 40),
                       ("GRU", 3, 40)):
        ours = getattr(triton_rnn, cell)(5, H, 2, bidirectional=True).double()
        ref = getattr(torch.nn, cell)(5, H, 2, bidirectional=True).double()
        ref.load_state_dict(ours.state_dict())
        x = torch.randn(4, N, 5, dtype=torch.float64)
        errs = []
        for model in (ours, ref):
            model.zero_grad()
            out, finals = model(x)
            finals = finals if isinstance(finals, tuple) else (finals,)
            (out.sum() + sum(t.sum() for t in finals)).backward()
            errs.append([out, *finals] + [p.grad for p in model.parameters()])
        worst = max(((a - b).norm() / b.norm()).item() for a, b in zip(*errs))
        good = worst < 1e-9
        ok &= good
        print(f"  interpreter check {cell:4} N={N:3d} H={H:4d} (2 layers, bidirectional, "
              f"fwd+grads): max relative error vs nn.{cell} {worst:.1e} "
              f"{'ok' if good else 'MISMATCH'}")
    return ok


def redraw_latest() -> None:
    path = plots.latest_results()
    if path is None:
        print("No recorded GPU results under perf/results/ yet.")
        return
    results = json.loads(path.read_text())
    print(f"Redrawing recorded GPU results: {results['environment']['gpu']}, "
          f"{results['date']} ({path.parent.name})")
    print(_tables(results))
    for p in plots.draw(results, path.parent):
        print(f"  wrote {p}")


def _progress(items):
    try:
        from tqdm import tqdm
        return tqdm(items, unit="case")
    except ImportError:
        def gen():
            for i, item in enumerate(items, 1):
                print(f"[{i}/{len(items)}] {item}", flush=True)
                yield item
        return gen()


def run_sweep(args) -> Path:
    import bench
    env = bench.environment()
    date = datetime.date.today().isoformat()
    out = args.out or plots.results_folder(env["gpu"], date)
    out.mkdir(parents=True, exist_ok=True)
    # "auto" starts cold, as for a new user, and its decisions are kept with the results.
    os.environ.setdefault("TRITON_RNN_CACHE_DIR", str(out / "routing-cache"))
    import triton_rnn.routing
    triton_rnn.routing.forget_loaded_caches()
    cases = bench.sweep_cases(args.batch, args.hidden, args.seq, args.layers, args.directions,
                              args.dtypes)
    results = dict(environment=env, date=date, rows=[], packed_rows=[], lstm_rows=[],
                   gru_rows=[], failures=[], cases_planned=len(cases),
                   cases_skipped_by_budget=0)
    primary, rest = _most_informative_first(cases)
    jobs = [(bench.measure, "rows", c) for c in primary]
    if not args.no_packed:
        jobs += [(bench.measure_packed, "packed_rows", c) for c in bench.sweep_cases(
            dtypes=args.dtypes, **PACKED_SWEEP)]
    if not args.no_gated:
        jobs += [(bench.measure, f"{cell}_rows", c) for cell in ("lstm", "gru")
                 for c in bench.sweep_cases(dtypes=args.dtypes, cell=cell, **LSTM_SWEEP)]
    jobs += [(bench.measure, "rows", c) for c in rest]
    deadline = None if args.budget_minutes is None else time.monotonic() + 60 * args.budget_minutes
    for measure, key, case in _progress(jobs):
        if deadline is not None and time.monotonic() > deadline:
            results["cases_skipped_by_budget"] += 1
            continue
        try:
            results[key] += measure(case, args.modes)
        except Exception as exc:  # one failing case (out of memory, say) must not end the sweep
            error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            results["failures"].append(dict(case=vars(case), error=error))
            print(f"FAILED {case}: {error}", flush=True)
            if HAS_GPU:
                torch.cuda.empty_cache()
        (out / "results.json").write_text(json.dumps(results, indent=1))  # after every case
    (out / "results.json").write_text(json.dumps(results, indent=1))
    table = _tables(results)
    (out / "speedup.md").write_text(table + "\n")
    print(table)
    if results["failures"]:
        print(f"WARNING: {len(results['failures'])} cases failed (see failures in results.json)")
    mismatches = [r for r in results["rows"] + results["lstm_rows"] + results["gru_rows"]
                  if not r["matches"]]
    if mismatches:
        print(f"WARNING: {len(mismatches)} measured outputs did not match torch.nn's (see "
              "rel_err_vs_torch_nn in results.json)")
    if not args.no_plots:
        for p in plots.draw(results, out):
            print(f"wrote {p}")
    if results["cases_skipped_by_budget"]:
        print(f"Budget reached: {results['cases_skipped_by_budget']} cases not measured.")
    print(f"results: {out}")
    return out


def _tables(results: dict) -> str:
    """The speedup tables (RNN, packed, LSTM, GRU) as Markdown."""
    return "\n\n".join(filter(None, [plots.markdown(results), plots.packed_markdown(results),
                                       plots.markdown(results, "lstm_rows"),
                                       plots.markdown(results, "gru_rows")]))


def _most_informative_first(cases: list):
    """(the plots' main slice: T = 128, one unidirectional layer; the rest), measured in that
    order with the packed comparison and the LSTM layers between, so that a sweep cut short by --budget-minutes
    still covers every dtype, batch and hidden size."""
    def main_slice(c):
        return c.seq == 128 and c.layers == 1 and c.directions == 1
    return [c for c in cases if main_slice(c)], [c for c in cases if not main_slice(c)]


def main(argv=None) -> int:
    args = parse_args(argv)
    if HAS_GPU:  # exit 1 when a case failed or an output did not match nn.RNN's
        results = json.loads((run_sweep(args) / "results.json").read_text())
        rows = results["rows"] + results["packed_rows"] + results["lstm_rows"] + \
            results["gru_rows"]
        return 0 if not results["failures"] and all(r["matches"] for r in rows) else 1
    ok = interpreter_check()
    import model_plots
    for path in model_plots.write():
        print(f"  wrote {path}")
    redraw_latest()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
