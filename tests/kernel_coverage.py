"""Which kernel configurations the test suite launches: the coverage matrix of tests/README.md.

    TRITON_RNN_COVERAGE=DIR python -m pytest -q    # record every kernel launch per test
    python tests/kernel_coverage.py DIR            # print the matrix
    python tests/kernel_coverage.py OLD NEW        # the cells OLD covers and NEW does not

While TRITON_RNN_COVERAGE is set, conftest.py wraps the launcher's kernels (and the concurrent
interpreter's launch) with recorders: each launch adds one cell, (pass, variant and product,
dtype class, padded/packed, directions, batch class), with the test that launched it, to
DIR/<worker>.jsonl. Nothing is recorded otherwise, and the kernels run unchanged either way.
"""
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

import triton_rnn.kernels.launch as launch

# launch.py's kernel names -> (pass, variant), from the launcher's own table (kernel_for).
KERNELS = {launch.kernel_for(p, v).fn.__name__: (p, v) for p in ("forward", "backward")
           for v in ("resident", "split", "streaming")}
KERNELS.update({launch.kernel_for(p, "split", True).fn.__name__: (p, "split")
                for p in ("forward", "backward")})
KERNELS.update({launch.kernel_for(p, "split", True, 2).fn.__name__: (p, "split-2d")
                for p in ("forward", "backward")})
KERNELS[launch.rnn_cell_forward_kernel.fn.__name__] = ("cell", "cell")
FIELDS = ("pass", "variant", "dtype", "batch", "directions", "batch class")
_current = {"test": None}
_cells = []


def batch_class(n: int) -> str:
    return "1" if n == 1 else "2-15" if n < 16 else "16" if n == 16 else ">16"


def _dtype_class(dtype, precision: str) -> str:
    name = str(dtype).replace("torch.", "")
    if name == "float32":
        return "tf32" if precision == "tf32" else "fp32"
    return {"bfloat16": "bf16", "float16": "fp16", "float64": "fp64"}[name]


def cell(kernel_name: str, arg_names, args, kwargs) -> tuple:
    pass_, variant = KERNELS[kernel_name]
    named = dict(zip(arg_names, args))
    # the tensor-core splits have no USE_DOT flag: their row tile BN says it
    product = "dot" if kwargs.get("USE_DOT", "BN" in kwargs and variant.startswith("split")) \
        else "elementwise"
    weights = named["p_whh" if pass_ == "cell" else "p_b"]
    if pass_ == "cell":
        packed, directions = "-", "-"
    else:
        packed = "packed" if kwargs.get("HAS_LENGTHS") else "padded"
        directions = "D1" if named["p_b_r"] is weights else "D2"  # one direction: twice
    return (pass_, f"{variant}/{product}", _dtype_class(weights.dtype, kwargs["PRECISION"]),
            packed, directions, batch_class(int(named["N"])))


def _record(kernel_name, arg_names, args, kwargs):
    _cells.append([_current["test"], *cell(kernel_name, arg_names, args, kwargs)])


class _Recorder:
    """Stands in for one @triton.jit kernel: kernel[grid](...) records, then launches."""

    def __init__(self, name, kernel):
        self.name, self.kernel = name, kernel

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def run(*args, **kwargs):
            _record(self.name, self.kernel.arg_names, args, kwargs)
            return launch(*args, **kwargs)
        return run

    def __getattr__(self, attr):  # warmup, arg_names, fn, ...
        return getattr(self.kernel, attr)


def install() -> None:
    """Wrap the launcher's kernels and the concurrent interpreter's launch (for the life of
    the process: the kernels' behaviour is unchanged)."""
    import triton_rnn.kernels.concurrent_interpreter as ci
    for name in KERNELS:
        setattr(launch, name, _Recorder(name, getattr(launch, name)))
    original = ci.launch

    def concurrent_launch(kernel, grid, *args, **kwargs):
        if isinstance(kernel, _Recorder):
            _record(kernel.name, kernel.kernel.arg_names, args, kwargs)
            kernel = kernel.kernel
        return original(kernel, grid, *args, **kwargs)
    ci.launch = concurrent_launch


def set_test(nodeid) -> None:
    _current["test"] = nodeid


def save(directory: str) -> None:
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(path / f"{worker}.jsonl", "a") as f:
        for row in _cells:
            f.write(json.dumps(row) + "\n")
    _cells.clear()


def load(directory: str) -> dict:
    """{cell: sorted test ids} from a recorded run."""
    found = defaultdict(set)
    for file in sorted(Path(directory).glob("*.jsonl")):
        for line in file.read_text().splitlines():
            test, *key = json.loads(line)
            # the test function: no parameters, no xdist group (name@group)
            found[tuple(key)].add(test.split("[")[0].split("@")[0] if test else "?")
    return {key: sorted(tests) for key, tests in found.items()}


def matrix(cells: dict) -> str:
    """A markdown table: one row per cell, with the test functions that cover it."""
    head = "| " + " | ".join(FIELDS) + " | tests |\n|" + "---|" * (len(FIELDS) + 1) + "\n"
    rows = []
    for key in sorted(cells):
        tests = cells[key]
        names = sorted({t.split("::")[0].removeprefix("tests/") + "::" + t.split("::")[-1]
                        for t in tests})
        shown = ", ".join(names[:3]) + (f" (+{len(names) - 3})" if len(names) > 3 else "")
        rows.append("| " + " | ".join(key) + f" | {shown} |")
    return head + "\n".join(rows) + "\n"


def main(argv) -> int:
    if len(argv) == 1:
        print(matrix(load(argv[0])), end="")
        return 0
    old, new = load(argv[0]), load(argv[1])
    lost = sorted(set(old) - set(new))
    for key in lost:
        print("lost:", " / ".join(key), "(was:", ", ".join(old[key][:3]) + ")")
    print(f"{len(old)} cells before, {len(new)} after, {len(lost)} lost")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
