"""GPU validation in one command, for a machine with a CUDA GPU and no network:

    python perf/gpu_check.py [latency.py options, e.g. --quick or --budget-minutes 6]

Install first; with no network: pip install --no-build-isolation --no-deps -e .

1. the whole test suite on CUDA (GPU-only tests included), log to perf/results/<run>/tests.log;
2. the bytes saved for backward against cuDNN (memory.log);
3. the latency sweep (perf/latency.py, default sweep unless options narrow it);
4. perf/routing_table.py on those results (updates triton_rnn/cudnn_faster.json);
5. summary.md beside them. Commit the folder it prints and the routing table.
The kernel resource report needs no GPU: CI runs it in full with Triton 3.6 (what our GPU
machine runs), and tests/test_compile.py runs a subset with the newest.
"""
import datetime
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "perf"))
import plots  # noqa: E402


def _run(cmd, log: Path, env=None) -> int:
    print("$", " ".join(map(str, cmd)), f"> {log}", flush=True)
    with log.open("w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env)
    tail = log.read_text().strip().splitlines()[-1:] or [""]
    print(f"  exit {proc.returncode}: {tail[0]}", flush=True)
    return proc.returncode


def main(argv) -> int:
    if not torch.cuda.is_available():
        print("No CUDA GPU found: gpu_check needs one (run the tests with python -m pytest).")
        return 1
    gpu = torch.cuda.get_device_name(0)
    date = datetime.date.today().isoformat()
    out = plots.results_folder(gpu, date)
    out.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    codes = {
        "tests": _run([sys.executable, "-m", "pytest", "-q", "-rs"], out / "tests.log", env),
        "memory": _run([sys.executable, "perf/memory.py"], out / "memory.log", env),
        "latency": _run([sys.executable, "perf/latency.py", "--out", str(out), *argv],
                        out / "latency.log", env),
    }
    if (out / "results.json").exists():  # route shape classes where cuDNN won
        codes["routing"] = _run([sys.executable, "perf/routing_table.py",
                                 str(out / "results.json")], out / "routing.log", env)
    lines = [f"# GPU validation: {gpu}, {date}", "",
             f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
             f"cuDNN {torch.backends.cudnn.version()}", ""]
    for name, code in codes.items():
        tail = (out / f"{name}.log").read_text().strip().splitlines()[-1:] or [""]
        lines.append(f"- {name}: {'PASS' if code == 0 else f'FAIL (exit {code})'}: {tail[0]}")
    speedup = out / "speedup.md"
    if speedup.exists():
        lines += ["", speedup.read_text()]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:8]))
    print(f"Results to commit: {out.relative_to(ROOT)}")
    return 0 if all(c == 0 for c in codes.values()) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
