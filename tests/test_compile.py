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

# (dtype, H, batch): every variant (resident/streaming) x (elementwise/tl.dot), float32 with
# TF32 on ("tf32") and off ("fp32", IEEE) on both sides of each limit.
SHAPES = [("tf32", 3, 17), ("tf32", 17, 1), ("tf32", 128, 1), ("tf32", 128, 64),
          ("tf32", 256, 64), ("tf32", 1024, 1), ("tf32", 1024, 64), ("fp32", 32, 16),
          ("fp32", 128, 64), ("fp32", 512, 64), ("bf16", 128, 16), ("bf16", 2048, 64),
          ("fp16", 256, 1), ("fp16", 4096, 256), ("fp64", 64, 16), ("fp64", 256, 16)]


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
    assert kinds == {(v, d) for v in ("resident", "streaming") for d in (True, False)}
