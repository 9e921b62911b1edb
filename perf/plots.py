"""Plots and Markdown tables drawn from recorded results (perf/results/<gpu>_<date>/results.json).

Everything here reads saved numbers only, so a machine without a GPU can redraw what a GPU
measured, labelled with that GPU and date."""
import json
import math
import re
from collections import defaultdict
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def results_folder(gpu: str, date: str) -> Path:
    """perf/results/<gpu>_<date>: where one run's numbers, tables, plots and logs go."""
    return RESULTS_DIR / f"{re.sub(r'[^A-Za-z0-9]+', '-', gpu)}_{date}"
IMPLS = ("triton_rnn", "nn.RNN")
# torch.nn's module each cell's rows compare with (perf/bench.py: results' "rows" are RNN
# layers, "lstm_rows" LSTM and "gru_rows" GRU layers)
REFERENCE = {"rnn": "nn.RNN", "lstm": "nn.LSTM", "gru": "nn.GRU"}
# "auto": triton_rnn.RNN routed by measurement, as a user gets it (perf/bench.py).
COLORS = {"triton_rnn": "tab:blue", "auto": "tab:green", "nn.RNN": "tab:orange",
          "nn.LSTM": "tab:orange", "nn.GRU": "tab:orange"}
MODES = ("inference", "training")


def latest_results(results_dir: Path = RESULTS_DIR):
    """Path of the most recently recorded results.json, or None."""
    found = sorted(results_dir.glob("*/results.json"),
                   key=lambda p: (json.loads(p.read_text()).get("date", ""), p.stat().st_mtime))
    return found[-1] if found else None


def _key(row):
    return (row["dtype"], row["batch"], row["hidden"], row["seq"], row["layers"],
            row["directions"], row["mode"])


def cell_of(rows) -> str:
    """The cell the rows measured ("rnn" for rows recorded before there were others)."""
    return rows[0].get("cell", "rnn") if rows else "rnn"


def speedups(rows, impl: str = "triton_rnn") -> dict:
    """(dtype, batch, hidden, seq, layers, directions, mode) -> torch.nn's ms (nn.RNN's or
    nn.LSTM's) / `impl`'s ms."""
    ref = REFERENCE[cell_of(rows)]
    by_impl = defaultdict(dict)
    for r in rows:
        by_impl[_key(r)][r["impl"]] = r
    return {k: v[ref]["ms"] / v[impl]["ms"] for k, v in by_impl.items()
            if {ref, impl} <= v.keys()}


def geomean(values):
    values = [v for v in values if v > 0]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else float("nan")


def _closest(values, target):
    return min(values, key=lambda v: (abs(math.log(v / target)), v))


def markdown(results: dict, key: str = "rows") -> str:
    """The speedup tables of results[key] ("rows": RNN layers; "lstm_rows": LSTM layers)."""
    env, rows = results["environment"], results.get(key) or []
    if not rows:
        return ""
    sp, sp_auto = speedups(rows), speedups(rows, "auto")
    ref = REFERENCE[cell_of(rows)]
    module = ref.split(".")[1]
    wrong = {_key(r) for r in rows if not r["matches"]}
    lines = [f"Speedup of triton_rnn.{module} over torch.{ref} (cuDNN) on {env['gpu']}, "
             f"{results['date']} (torch {env['torch']}, triton {env['triton']}, CUDA "
             f"{env['cuda']}, cuDNN {env['cudnn']}). Speedup = {ref} latency / ours; > 1 is "
             "faster. Our kernels, then \"auto\": the module as users get it, routed to the "
             "faster path by measurement on this GPU.", "",
             "| dtype | mode | cases | geomean | min | max | slower cases | output mismatches "
             "| auto geomean | auto slower cases |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for dtype in sorted({k[0] for k in sp}):
        for mode in MODES:
            vals = [v for k, v in sp.items() if k[0] == dtype and k[6] == mode]
            if not vals:
                continue
            bad = sum(1 for k in wrong if k[0] == dtype and k[6] == mode)
            auto = [v for k, v in sp_auto.items() if k[0] == dtype and k[6] == mode]
            auto_cells = (f"{geomean(auto):.2f}x | {sum(v < 1 for v in auto)}" if auto
                          else "- | -")
            lines.append(f"| {dtype} | {mode} | {len(vals)} | {geomean(vals):.2f}x | "
                         f"{min(vals):.2f}x | {max(vals):.2f}x | {sum(v < 1 for v in vals)} | "
                         f"{bad} | {auto_cells} |")
    for mode in MODES:
        cells = {k: v for k, v in sp.items() if k[6] == mode}
        if not cells:
            continue
        seq = _closest(sorted({k[3] for k in cells}), 128)
        sub = {k: v for k, v in cells.items() if k[3] == seq and k[4] == 1 and k[5] == 1}
        hiddens = sorted({k[2] for k in sub})
        lines += ["", f"{mode}, T = {seq}, 1 layer, unidirectional: by batch (rows) and "
                  "hidden size (columns)", ""]
        ours = {_key(r): r for r in rows if r["impl"] == "triton_rnn"}
        for dtype in sorted({k[0] for k in sub}):
            batches = sorted({k[1] for k in sub if k[0] == dtype})

            def speedup(b, h):
                v = sub.get((dtype, b, h, seq, 1, 1, mode))
                return "-" if v is None else f"{v:.2f}"

            def step_and_rate(b, h):
                r = ours.get((dtype, b, h, seq, 1, 1, mode))
                return "-" if r is None else f"{r['us_per_step']:.1f} / {r['tflops']:.2f}"

            lines += [f"**{dtype}**: speedup", ""] + _grid(batches, hiddens, speedup)
            lines += [f"**{dtype}**: triton_rnn µs per timestep / achieved TFLOP/s", ""]
            lines += _grid(batches, hiddens, step_and_rate)
    return "\n".join(lines)


def _grid(batches, hiddens, cell) -> list:
    """Markdown table lines: a row per batch size, a column per hidden size."""
    lines = ["| batch | " + " | ".join(map(str, hiddens)) + " |",
             "|---" * (len(hiddens) + 1) + "|"]
    lines += [f"| {b} | " + " | ".join(cell(b, h) for h in hiddens) + " |" for b in batches]
    return lines + [""]


def packed_markdown(results: dict) -> str:
    """Packed latency over padded latency at the same token count (1.0 = padded speed)."""
    rows = results.get("packed_rows") or []
    if not rows:
        return ""
    by_case = defaultdict(dict)
    for r in rows:
        by_case[(r["dtype"], r["batch"], r["hidden"], r["seq"], r["mode"])][
            (r["impl"], r["layout"])] = r["ms"]
    lines = ["Packed over padded latency at the same number of tokens; 1.00 = padded speed. "
             "Packed: `batch` sequences, lengths uniform in [T/2, T]; padded: as many tokens "
             "in sequences of length T (about 3/4 of the batch).", "",
             "| dtype | batch | hidden | T | mode | triton_rnn packed/padded | "
             "nn.RNN packed/padded | triton_rnn packed (ms) | nn.RNN packed (ms) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key in sorted(by_case):
        v = by_case[key]
        if len(v) < 4:
            continue
        ours = v[("triton_rnn", "packed")] / v[("triton_rnn", "padded")]
        ref = v[("nn.RNN", "packed")] / v[("nn.RNN", "padded")]
        lines.append(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {key[4]} | {ours:.2f} | "
                     f"{ref:.2f} | {v[('triton_rnn', 'packed')]:.3f} | "
                     f"{v[('nn.RNN', 'packed')]:.3f} |")
    return "\n".join(lines)


def _series(rows, vary, fixed):
    """{(impl, mode): [(x, ms, p20, p80)]} over `vary` with the other keys at `fixed`."""
    out = defaultdict(list)
    for r in rows:
        if all(r[k] == v for k, v in fixed.items()):
            out[(r["impl"], r["mode"])].append((r[vary], r["ms"], r["ms_p20"], r["ms_p80"]))
    return {k: sorted(v) for k, v in out.items()}


def draw(results: dict, out_dir: Path) -> list:
    """Write the latency and speedup plots as PNGs into out_dir (RNN layers', then LSTM and
    GRU layers' prefixed "lstm_" and "gru_", where measured); returns their paths."""
    paths = _draw_rows(results, "rows", out_dir, "")
    for cell in ("lstm", "gru"):
        if results.get(f"{cell}_rows"):
            paths += _draw_rows(results, f"{cell}_rows", out_dir, f"{cell}_")
    return paths


def _draw_rows(results: dict, key: str, out_dir: Path, prefix: str) -> list:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    env, rows = results["environment"], results[key]
    cell = cell_of(rows)
    ref = REFERENCE[cell]
    label = f"{env['gpu']}, {results['date']}" + ("" if cell == "rnn" else f", {cell.upper()}")
    out_dir.mkdir(parents=True, exist_ok=True)
    dtypes = sorted({r["dtype"] for r in rows})
    axes_values = {k: sorted({r[k] for r in rows}) for k in ("batch", "hidden", "seq")}
    defaults = {"batch": _closest(axes_values["batch"], 16),
                "hidden": _closest(axes_values["hidden"], 512),
                "seq": _closest(axes_values["seq"], 128), "layers": 1, "directions": 1}
    paths = []
    for vary, xlabel in (("batch", "batch size"), ("hidden", "hidden size"),
                         ("seq", "sequence length T")):
        fig, axes = plt.subplots(1, len(dtypes), figsize=(5 * len(dtypes), 4), squeeze=False)
        fixed_desc = ", ".join(f"{k}={v}" for k, v in defaults.items() if k != vary)
        for ax, dtype in zip(axes[0], dtypes):
            fixed = {k: v for k, v in defaults.items() if k != vary}
            fixed["dtype"] = dtype
            for (impl, mode), pts in sorted(_series(rows, vary, fixed).items()):
                xs, ms, lo, hi = zip(*pts)
                style = "-" if mode == "inference" else "--"
                color = COLORS.get(impl, "tab:gray")
                ax.plot(xs, ms, style, marker="o", color=color, label=f"{impl} {mode}")
                ax.fill_between(xs, lo, hi, color=color, alpha=0.2)
                if cell == "rnn":  # (the models of perf/model_plots.py are RNN layers')
                    _draw_model(ax, impl, mode, dtype, vary, xs, {**defaults, **fixed}, color)
            ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel="latency (ms)",
                   title=dtype)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle(f"Latency vs {xlabel} - {label}\n({fixed_desc}; median, 20-80% band)")
        fig.tight_layout()
        path = out_dir / f"{prefix}latency_vs_{vary}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)

    sp = speedups(rows)
    seq = defaults["seq"]
    fig, axes = plt.subplots(len(MODES), len(dtypes), figsize=(4.5 * len(dtypes), 8),
                             squeeze=False)
    for i, mode in enumerate(MODES):
        for j, dtype in enumerate(dtypes):
            ax = axes[i][j]
            bs, hs = axes_values["batch"], axes_values["hidden"]
            grid = [[sp.get((dtype, b, h, seq, 1, 1, mode), float("nan")) for h in hs]
                    for b in bs]
            # Log colour scale centred on 1x: equal steps for 2x faster and 2x slower.
            im = ax.imshow(grid, cmap="RdYlGn", origin="lower",
                           norm=matplotlib.colors.LogNorm(vmin=0.25, vmax=4.0))
            for bi in range(len(bs)):
                for hi in range(len(hs)):
                    if not math.isnan(grid[bi][hi]):
                        ax.text(hi, bi, f"{grid[bi][hi]:.1f}", ha="center", va="center",
                                fontsize=7)
            ax.set(xticks=range(len(hs)), xticklabels=hs, yticks=range(len(bs)),
                   yticklabels=bs, xlabel="hidden size", ylabel="batch",
                   title=f"{dtype} {mode}")
            fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(f"Speedup over {ref} - {label}\n(x, > 1 is faster; T={seq}, 1 layer, "
                 "unidirectional)")
    fig.tight_layout()
    path = out_dir / f"{prefix}speedup_heatmap.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    paths.append(path)
    if key == "rows" and results.get("packed_rows"):
        paths.append(_draw_packed(plt, results, out_dir, label))
    return paths


def _draw_model(ax, impl, mode, dtype, vary, xs, shape, color) -> None:
    """The models' latency (perf/model_plots.py: sm_90, a model, not a measurement) as a
    dotted line beside a measured one-layer, one-direction series, so that the first GPU run
    shows how far the model was off."""
    if impl not in ("triton_rnn", "nn.RNN") or shape["layers"] != 1 or shape["directions"] != 1:
        return
    import model_plots
    which = 0 if impl == "triton_rnn" else 1
    ys = []
    for x in xs:
        point = {**shape, vary: x}
        ms = model_plots.ms_per_sequence(dtype, point["hidden"], point["batch"], point["seq"],
                                         mode == "training")[which]
        ys.append(float("nan") if ms is None else ms)
    ax.plot(xs, ys, ":", color=color, alpha=0.7, label=f"{impl} {mode}, model (sm_90)")


def _draw_packed(plt, results, out_dir: Path, label: str) -> Path:
    """Grouped bars: padded and packed latency of both implementations per shape class."""
    rows = results["packed_rows"]
    cases = sorted({(r["dtype"], r["batch"], r["hidden"], r["seq"]) for r in rows})
    bars = [("triton_rnn", "padded"), ("triton_rnn", "packed"), ("nn.RNN", "padded"),
            ("nn.RNN", "packed")]
    colors = ["tab:blue", "lightsteelblue", "tab:orange", "navajowhite"]
    fig, axes = plt.subplots(1, len(MODES), figsize=(max(8, 1.2 * len(cases)) * len(MODES) / 1.5,
                                                      4.5), squeeze=False)
    for ax, mode in zip(axes[0], MODES):
        ms = {(r["dtype"], r["batch"], r["hidden"], r["seq"], r["impl"], r["layout"]): r
              for r in rows if r["mode"] == mode}
        width = 0.2
        for k, ((impl, layout), color) in enumerate(zip(bars, colors)):
            xs, ys, err = [], [], [[], []]
            for i, c in enumerate(cases):
                r = ms.get((*c, impl, layout))
                if r:
                    xs.append(i + (k - 1.5) * width)
                    ys.append(r["ms"])
                    err[0].append(r["ms"] - r["ms_p20"])
                    err[1].append(r["ms_p80"] - r["ms"])
            ax.bar(xs, ys, width, yerr=err, color=color, label=f"{impl} {layout}")
        ax.set(yscale="log", ylabel="latency (ms)", title=mode,
               xticks=range(len(cases)),
               xticklabels=[f"{d}\nN={b} H={h}\nT={t}" for d, b, h, t in cases])
        ax.tick_params(axis="x", labelsize=7)
        ax.legend(fontsize=7)
    fig.suptitle(f"Packed vs padded input at the same token count - {label}")
    fig.tight_layout()
    path = out_dir / "packed_vs_padded.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
