"""GPU validation in one command, for a machine with a CUDA GPU and no network:

    python perf/gpu_check.py [--total-minutes M] [latency.py options, e.g. --quick]

Install first; with no network: pip install --no-build-isolation --no-deps -e .
--total-minutes fits the whole run into M minutes (a machine lent for a limited time): the
tests get at most 40% of it, and the sweep the rest less a margin, most informative cases
first (perf/latency.py --budget-minutes); every step still writes its log.

0. `python -m triton_rnn.check`, the self-test every user can run (check.log);
1. the tests on CUDA: first those marked `gpu` (gpu-tests.log), then all the others
   (tests.log), in one process each (README's worker-per-core option is turned off: one GPU);
2. the bytes saved for backward against cuDNN (memory.log);
3. the latency sweep (perf/latency.py, default sweep unless options narrow it);
4. perf/routing_table.py on those results (updates triton_rnn/cudnn_faster.json);
5. perf/model_vs_measured.py: the measured µs per step beside the cost model's (model.md;
   it needs no GPU, so what the time left does not allow can run later on any machine);
6. summary.md beside them. Commit the folder it prints and the routing table.
The kernel resource report needs no GPU: CI runs it in full with Triton 3.6 (what our GPU
machine runs), and tests/test_compile.py runs a subset with the newest.
"""
import argparse
import datetime
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "perf"))
import plots  # noqa: E402


def _run(cmd, log: Path, env=None, timeout_s=None) -> int:
    """Run one step with its output in `log`; exit code 124 if it ran past timeout_s."""
    print("$", " ".join(map(str, cmd)), f"> {log}", flush=True)
    with log.open("w") as f:
        try:
            code = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=env,
                                  timeout=timeout_s).returncode
        except subprocess.TimeoutExpired:
            code = 124
    if code == 124:
        with log.open("a") as f:
            f.write(f"\nstopped by gpu_check after {timeout_s:.0f} s\n")
    tail = log.read_text().strip().splitlines()[-1:] or [""]
    print(f"  exit {code}: {tail[0]}", flush=True)
    return code


def main(argv) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--total-minutes", type=float, default=None)
    args, latency_args = parser.parse_known_args(argv)
    if not torch.cuda.is_available():
        print("No CUDA GPU found: gpu_check needs one (run the tests with python -m pytest).")
        return 1
    deadline = None if args.total_minutes is None else time.monotonic() + 60 * args.total_minutes

    def seconds_left(share=1.0, margin_s=0.0):
        return None if deadline is None else max(1.0, share * (deadline - time.monotonic())
                                                 - margin_s)
    gpu = torch.cuda.get_device_name(0)
    date = datetime.date.today().isoformat()
    out = plots.results_folder(gpu, date)
    out.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # -o addopts=: no pytest-xdist workers (the GPU machine may lack the plugin; one GPU).
    pytest = [sys.executable, "-m", "pytest", "-q", "-rs", "-o", "addopts="]
    codes = {
        "check": _run([sys.executable, "-m", "triton_rnn.check"], out / "check.log", env,
                      seconds_left(0.05)),
        "gpu-tests": _run(pytest + ["-m", "gpu"], out / "gpu-tests.log", env,
                          seconds_left(0.1)),
        "tests": _run(pytest + ["-m", "not gpu"], out / "tests.log", env, seconds_left(0.35)),
        "memory": _run([sys.executable, "perf/memory.py"], out / "memory.log", env,
                       seconds_left(0.1)),
    }
    if deadline is not None:  # start no case after the budget; a started case may run on
        budget_s = seconds_left(margin_s=90)
        latency_args += ["--budget-minutes", f"{budget_s / 60:.2f}"]
    codes["latency"] = _run([sys.executable, "perf/latency.py", "--out", str(out),
                             *latency_args], out / "latency.log", env, seconds_left(margin_s=20))
    if (out / "results.json").exists():  # route shape classes where cuDNN won
        codes["routing"] = _run([sys.executable, "perf/routing_table.py",
                                 str(out / "results.json")], out / "routing.log", env)
        # the cost model beside the measurements: how far it is off (model.md). It compiles
        # but needs no GPU: if the time left runs out, run it later on any machine.
        codes["model"] = _run([sys.executable, "perf/model_vs_measured.py",
                               str(out / "results.json")], out / "model.log", env,
                              seconds_left(margin_s=5))
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
