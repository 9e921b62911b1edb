"""Writes triton_rnn/step_model.json: the cost model's µs per step (sm_90, one layer and
direction, padded) for every dtype, hidden size 16-4096 and batch 1-256 (powers of two),
forward and backward, from the resource report (a model from compiled code, not a
measurement; triton_rnn/step_models.py reads it for the static routing rule).

    python perf/step_model_table.py [--jobs N]    # no GPU needed; minutes (compiles and SASS)
"""
import argparse
import json
import multiprocessing
import os
import sys
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "0"  # the report compiles real sm_90 code
import triton  # noqa: E402

from triton_rnn.kernels import cost_model, report  # noqa: E402

HIDDEN = [1 << i for i in range(4, 13)]
BATCHES = [1 << i for i in range(9)]
OUT = Path(__file__).resolve().parent.parent / "triton_rnn" / "step_model.json"


def _row(case):
    dtype, H, N = case
    cells = {"dtype": dtype, "hidden": H, "batch": N}
    for pass_ in ("forward", "backward"):
        row = report.measure(pass_, dtype, H, N, 90)
        cells[pass_] = round(row.model_us, 3) if not row.error and row.model_us else None
        cells[f"{pass_}_config"] = row.config
    return cells


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    cases = [(d, H, N) for d in report.DTYPES for H in HIDDEN for N in BATCHES]
    # The cases of one dtype and H share compiled kernels: each worker takes them together.
    with multiprocessing.get_context("fork").Pool(args.jobs) as pool:
        rows = pool.map(_row, cases, chunksize=len(BATCHES))
    table = {"about": cost_model.HEADER + " sm_90; one layer and direction, padded; "
                      "forward and backward µs per step by dtype, hidden size and batch.",
             "triton": triton.__version__, "rows": rows}
    args.out.write_text(json.dumps(table, indent=1) + "\n")
    missing = [r for r in rows if r["forward"] is None or r["backward"] is None]
    print(f"{len(rows)} rows written to {args.out}; {len(missing)} without a model")
    return 0


if __name__ == "__main__":
    sys.exit(main())
