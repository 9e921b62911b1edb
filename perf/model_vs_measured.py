"""Measured µs per step beside the cost model's for the same shapes: how far the model read
from the compiled code (kernels/cost_model.py) is off on this GPU.

    python perf/model_vs_measured.py RESULTS_JSON    # writes model.md beside it

Rows: the sweep's one-layer triton_rnn rows (routing off), inference against the model's
forward step, training against forward plus backward. The measured time per step is the whole
call over its steps: the input projection's GEMM included (and in training the weight and
input gradients' GEMMs), which the model of the recurrence leaves out. The model is
the sm_90 report's (an H100's constants): on another GPU it is still printed, and the header
says which GPU measured. perf/gpu_check.py runs this after the sweep; it compiles (no GPU
needed for that) and needs Triton's compiler, not its interpreter.
"""
import json
import os
import sys
from pathlib import Path

if os.environ.get("TRITON_INTERPRET") == "1":  # the report compiles: not the interpreter
    os.execve(sys.executable, [sys.executable, *sys.argv],
              dict(os.environ, TRITON_INTERPRET="0"))

from triton_rnn.kernels import cost_model, report  # noqa: E402


def model_us(dtype: str, H: int, N: int, directions: int, mode: str) -> float:
    passes = ("forward",) if mode == "inference" else ("forward", "backward")
    return sum(report.measure(p, dtype, H, N, 90, directions).model_us for p in passes)


def table(results: dict) -> str:
    rows = [r for r in results["rows"] if r["impl"] == "triton_rnn" and r["layers"] == 1]
    gpu = results.get("environment", {}).get("gpu", "?")
    lines = [f"Measured on {gpu} against the model ({cost_model.HEADER})", "",
             "| dtype | H | batch | T | directions | mode | measured µs/step | model µs/step "
             "| measured / model |", "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["dtype"], r["hidden"], r["batch"], r["mode"])):
        modeled = model_us(r["dtype"], r["hidden"], r["batch"], r["directions"], r["mode"])
        ratio = f"{r['us_per_step'] / modeled:.2f}" if modeled else "-"
        lines.append(f"| {r['dtype']} | {r['hidden']} | {r['batch']} | {r['seq']} | "
                     f"{r['directions']} | {r['mode']} | {r['us_per_step']:.2f} | "
                     f"{modeled:.2f} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv) -> int:
    path = Path(argv[0])
    text = table(json.loads(path.read_text()))
    (path.parent / "model.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
