"""The main slice as the models see it, where no GPU measured it: our compile-time cost model
(sm_90) beside the model of what cuDNN runs (triton_rnn/step_models.py), µs per step of one
layer and direction, for each dtype, hidden size and batch, inference (forward) and training
(forward + backward), with the variant the dispatcher picks. A model from compiled code, not a
measurement; perf/latency.py prints and draws it when it has no GPU, and its measured plots
carry the same models as dotted lines.

Output: perf/results/model-sm90/ (model.json with the models' constants and the Triton version
of the shipped table, model.md, model_vs_hidden.png, model_vs_batch.png).
"""
import json
from pathlib import Path

import torch

from triton_rnn import step_models
from triton_rnn.kernels import cost_model
from triton_rnn.kernels.dispatch import choose
from triton_rnn.routing import DTYPES

OUT = Path(__file__).resolve().parent / "results" / "model-sm90"
TITLE = "model from compiled code (sm_90), not a measurement"
SLICE = dict(dtypes=["tf32", "bf16", "fp16", "fp32"], hidden=[128, 256, 512, 1024, 2048, 4096],
             batch=[1, 4, 16, 64, 256])
MODES = {"inference": False, "training": True}


def rows(dtypes=SLICE["dtypes"], hiddens=SLICE["hidden"], batches=SLICE["batch"]) -> list:
    """One row per (dtype, hidden, batch, mode): both models' µs per step and our variant."""
    out = []
    for dtype in dtypes:
        for hidden in hiddens:
            for batch in batches:
                variant = choose(hidden, batch, *DTYPES[dtype], arch=90).describe().split()[0]
                for mode, training in MODES.items():
                    out.append(dict(dtype=dtype, hidden=hidden, batch=batch, mode=mode,
                                    variant=variant,
                                    ours=step_models.ours_us(dtype, hidden, batch, training),
                                    cudnn=step_models.cudnn_us(dtype, hidden, batch,
                                                               training)))
    return out


def _cell(r) -> str:
    if r is None:
        return "-"
    ours = "-" if r["ours"] is None else f"{r['ours']:.2f}"
    return f"{ours} / {r['cudnn']:.2f}"


def markdown(model_rows: list) -> str:
    lines = [f"Modeled µs per step, ours / cuDNN ({TITLE}; one layer and direction):", "",
             "| dtype | mode | hidden | " + " | ".join(f"N={n}" for n in SLICE["batch"]) + " |",
             "|---" * (3 + len(SLICE["batch"])) + "|"]
    cells = {(r["dtype"], r["mode"], r["hidden"], r["batch"]): r for r in model_rows}
    for dtype in SLICE["dtypes"]:
        for mode in MODES:
            for hidden in SLICE["hidden"]:
                row = [_cell(cells.get((dtype, mode, hidden, n))) for n in SLICE["batch"]]
                lines.append(f"| {dtype} | {mode} | {hidden} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def draw(model_rows: list, out_dir: Path) -> list:
    """model_vs_hidden.png (batch 16) and model_vs_batch.png (hidden 1024): per dtype, ours
    solid and cuDNN's dotted, inference and training."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    paths = []
    for vary, fixed_key, fixed in (("hidden", "batch", 16), ("batch", "hidden", 1024)):
        dtypes = SLICE["dtypes"]
        fig, axes = plt.subplots(1, len(dtypes), figsize=(5 * len(dtypes), 4), squeeze=False)
        for ax, dtype in zip(axes[0], dtypes):
            for mode, color in (("inference", "tab:blue"), ("training", "tab:purple")):
                pts = sorted((r[vary], r["ours"], r["cudnn"]) for r in model_rows
                             if r["dtype"] == dtype and r["mode"] == mode
                             and r[fixed_key] == fixed)
                xs = [p[0] for p in pts]
                ax.plot(xs, [p[1] if p[1] is not None else float("nan") for p in pts], "-",
                        marker="o", color=color, label=f"triton_rnn {mode} (model)")
                ax.plot(xs, [p[2] for p in pts], ":", marker="x", color=color,
                        label=f"cuDNN {mode} (model)")
            ax.set_xscale("log", base=2)
            ax.set(yscale="log", xlabel=vary, ylabel="µs per step", title=dtype,
                   xticks=xs, xticklabels=[str(x) for x in xs])
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(f"{TITLE}\nµs per step vs {vary} ({fixed_key}={fixed}, one layer and "
                     "direction)")
        fig.tight_layout()
        path = out_dir / f"model_vs_{vary}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def write(out_dir: Path = OUT) -> list:
    """Print the table and save it with the plots and the models' constants; their paths."""
    model_rows = rows()
    out_dir.mkdir(parents=True, exist_ok=True)
    table = step_models._table()
    meta = dict(title=TITLE, about=cost_model.HEADER,
                triton=json.loads(step_models.TABLE.read_text())["triton"] if table else None,
                cudnn=dict(small_h_us=step_models.CUDNN_SMALL_H_US,
                           persistent_static_us=step_models.CUDNN_PERSISTENT_US,
                           standard_overhead_us=step_models.CUDNN_STANDARD_OVERHEAD_US),
                margin=step_models.MODEL_MARGIN, torch=torch.__version__, rows=model_rows)
    (out_dir / "model.json").write_text(json.dumps(meta, indent=1) + "\n")
    text = markdown(model_rows)
    (out_dir / "model.md").write_text(text + "\n")
    print(text)
    return [out_dir / "model.json", out_dir / "model.md", *draw(model_rows, out_dir)]


def ms_per_sequence(dtype: str, hidden: int, batch: int, seq: int, training: bool):
    """(ours, cuDNN's) modeled ms for a sequence of `seq` steps of one layer and direction, as
    the measured plots draw latency (ours None where there is no model)."""
    ours = step_models.ours_us(dtype, hidden, batch, training)
    cudnn = step_models.cudnn_us(dtype, hidden, batch, training)
    return (None if ours is None else ours * seq / 1e3), cudnn * seq / 1e3
