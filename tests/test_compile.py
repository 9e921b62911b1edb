"""Compile gate: the configurations the dispatcher picks compile for sm_90 without faults
(no spill beyond a few scalars, no shared-memory overflow, no tl.dot dimension under 16).

The interpreter runs code the GPU compiler rejects and says nothing about registers; this
compiles real sm_90 code (no GPU needed) for representative shapes, forward and backward,
through the resource report in a fresh process (kernels are only compilable with the
interpreter off)."""
import json
import os
import subprocess
import sys

import pytest


from triton_rnn.kernels.dispatch import choose

# (dtype, H, batch): every variant (resident and streaming, elementwise and tl.dot; split),
# float32 with TF32 on ("tf32") and off ("fp32", IEEE) on both sides of each limit, and the
# split variant's largest on-chip H (2048) in tf32 and bf16 at batch 1 and 16.
SHAPES = [("tf32", 3, 17), ("tf32", 17, 1), ("tf32", 128, 1), ("tf32", 128, 64),
          ("tf32", 256, 64), ("tf32", 2048, 1), ("tf32", 2048, 16), ("tf32", 1024, 64),
          ("tf32", 4096, 1), ("fp32", 32, 16), ("fp32", 128, 64), ("fp32", 512, 64),
          ("bf16", 128, 16), ("bf16", 2048, 1), ("bf16", 2048, 16), ("fp16", 256, 1),
          ("fp16", 4096, 256), ("fp64", 64, 16), ("fp64", 256, 16)]


# Two directions double the row stride (2H): a multiple of 16 for H = 24, 40, 72 where H is
# not, which changes the JIT's specialisation and so the compiled code.
BIDIRECTIONAL_SHAPES = [("tf32", 24, 1), ("tf32", 40, 16), ("bf16", 72, 16), ("fp64", 24, 5),
                        ("tf32", 200, 16)]


def _report(shapes, directions=1):
    spec = ",".join(f"{d}:{h}:{n}" for d, h, n in shapes)
    env = dict(os.environ, TRITON_INTERPRET="0")
    proc = subprocess.run([sys.executable, "-m", "triton_rnn.kernels.report", "--arch", "90",
                           "--json", "--shapes", spec, "--directions", str(directions)],
                          env=env, capture_output=True, text=True)
    rows = json.loads(proc.stdout)
    return proc.returncode, rows


@pytest.mark.parametrize("shapes,directions", [(SHAPES, 1), (BIDIRECTIONAL_SHAPES, 2)],
                         ids=["one-direction", "two-directions"])
def test_dispatched_kernels_compile_for_sm90_without_faults(shapes, directions):
    returncode, rows = _report(shapes, directions)
    # forward and backward, padded and packed, and the RNNCell kernel, for each shape
    assert len(rows) == 5 * len(shapes)
    faults = [f"{r['pass_']} {r['batch_kind']} {r['dtype']} H={r['H']} N={r['N']} "
              f"{r['config']}: {r['faults']}"
              for r in rows if r["faults"]]
    assert not faults, "\n".join(faults)
    assert returncode == 0
    assert all(r["registers"] > 0 and r["programs_per_sm"] >= 1 for r in rows)


def test_shapes_cover_every_variant():
    from triton_rnn.kernels.report import DTYPES
    kinds = {(c.variant, c.use_dot) for c in (choose(h, n, *DTYPES[d]) for d, h, n in SHAPES)}
    assert kinds == {(v, d) for v in ("resident", "streaming") for d in (True, False)} | {
        ("split", False)}


def test_split_holds_w_hh_on_chip_at_h2048():
    """tf32 and bf16 at H = 2048, batch 1 and 16: the split variant, no spill at all, and a
    grid an H100 holds at once."""
    shapes = [(d, 2048, n) for d in ("tf32", "bf16") for n in (1, 16)]
    returncode, rows = _report(shapes)
    recurrences = [r for r in rows if r["pass_"] != "cell"]
    assert len(recurrences) == 4 * len(shapes)
    for r in recurrences:
        assert r["config"].startswith("split/") and r["spilled_bytes"] == 0, r
        assert r["programs"] <= r["capacity"] and r["w_hh"].startswith("on-chip"), r


_PTX_CHECK = r"""
import json, re, sys, torch
from triton_rnn.kernels import report
arch = int(sys.argv[1])


def drop_bars_before_release(ptx):
    # the bar.syncs between the first release arrival and the global store before it, only
    lines = ptx.splitlines()
    release = next(i for i, l in enumerate(lines) if ".release" in l and ".gpu" in l)
    store = max(i for i in range(release) if "st.global" in lines[i])
    return "\n".join(l for i, l in enumerate(lines)
                     if not (store < i < release and re.search(r"\b(bar|barrier)\.sync", l)))


found = {}
for pass_ in ("forward", "backward"):
    launched = report._launch_arguments(pass_, torch.float32, 512, 4, False, True)
    ptx = report.compile_resources(*launched, arch)[3]
    mutated = {
        "as compiled": ptx,
        "relaxed arrival": ptx.replace(".release", ".relaxed"),
        "relaxed wait": ptx.replace(".acquire", ".relaxed"),
        "cached exchange loads": ptx.replace("ld.global.cg", "ld.global"),
        "no bar.sync before the arrival": drop_bars_before_release(ptx),
        "no CTA barrier at all": "\n".join(l for l in ptx.splitlines()
                                           if not re.search(r"\b(bar|barrier)\.sync", l)),
    }
    found[pass_] = {name: report.ordering_faults(text) for name, text in mutated.items()}
print(json.dumps(found))
"""


@pytest.mark.parametrize("arch", [90, 80], ids=["sm_90", "sm_80"])
def test_ptx_ordering_check_catches_what_threads_cannot(arch):
    """The split kernels' PTX has the barrier's release arrival, acquire wait, L2-coherent
    exchange loads and CTA barriers where they belong; removing any one of them is reported."""
    env = dict(os.environ, TRITON_INTERPRET="0")
    proc = subprocess.run([sys.executable, "-c", _PTX_CHECK, str(arch)], env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for pass_, faults in json.loads(proc.stdout).items():
        assert faults.pop("as compiled") == [], pass_
        for name, found in faults.items():
            assert found, f"{pass_}: {name} not caught"
