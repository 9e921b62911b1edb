"""Write triton_rnn/cudnn_faster.json from recorded GPU results: the shape classes in which
nn.RNN (cuDNN) was faster, so triton_rnn.RNN routes them to nn.RNN's own path.

    python perf/routing_table.py [perf/results/<gpu>_<date>/results.json ...]

With no arguments, uses the most recent results of each GPU under perf/results/. A class is
(dtype, hidden bucket, batch bucket, mode); it is listed when the geometric mean of the
measured speedups (nn.RNN ms / ours) over the other axes (T, layers, directions) is below 1,
or when any of its measured outputs did not match nn.RNN.
"""
import json
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "perf"))
import plots  # noqa: E402
from triton_rnn.routing import bucket  # noqa: E402

TABLE = ROOT / "triton_rnn" / "cudnn_faster.json"


def slower_classes(results: dict) -> list:
    speedups = defaultdict(list)
    wrong = set()
    for key, speedup in plots.speedups(results["rows"]).items():
        dtype, batch, hidden, _, _, _, mode = key
        speedups[(dtype, bucket(hidden), bucket(batch), mode)].append(speedup)
    for r in results["rows"]:
        if not r["matches"]:
            wrong.add((r["dtype"], bucket(r["hidden"]), bucket(r["batch"]), r["mode"]))
    listed = []
    for cls, values in sorted(speedups.items()):
        speedup = plots.geomean(values)
        if speedup < 1.0 or cls in wrong:
            listed.append(dict(zip(("dtype", "hidden", "batch", "mode"), cls),
                               speedup=round(speedup, 3), output_mismatch=cls in wrong))
    return listed


def _source_name(path: Path) -> str:
    """A results file as the table records it: relative to the repository when inside it."""
    path = path.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def build(paths) -> dict:
    table = json.loads(TABLE.read_text())
    table["sources"], table["cudnn_faster"] = [], {}
    for path in paths:
        results = json.loads(Path(path).read_text())
        arch = results["environment"].get("arch")
        if arch is None:
            raise SystemExit(f"{path}: no 'arch' (compute capability) recorded")
        table["sources"].append(_source_name(Path(path)))
        table["cudnn_faster"][arch] = slower_classes(results)
    return table


def latest_per_gpu() -> list:
    newest = {}
    for path in sorted((ROOT / "perf" / "results").glob("*/results.json")):
        results = json.loads(path.read_text())
        gpu = results["environment"]["gpu"]
        if gpu not in newest or results["date"] >= newest[gpu][0]:
            newest[gpu] = (results["date"], path)
    return [p for _, p in newest.values()]


def main(argv) -> int:
    paths = argv or latest_per_gpu()
    table = build(paths)
    TABLE.write_text(json.dumps(table, indent=1) + "\n")
    for arch, classes in table["cudnn_faster"].items():
        print(f"{arch}: {len(classes)} shape classes routed to nn.RNN")
    print(f"wrote {TABLE.relative_to(ROOT)} from {len(paths)} result file(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
