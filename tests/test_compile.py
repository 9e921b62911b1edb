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
from triton_rnn.kernels.report import DTYPES, SCALAR_SPILL_ALLOWANCE

# (dtype, H, batch): every variant (resident and streaming, elementwise and tl.dot; split),
# float32 with TF32 on ("tf32") and off ("fp32", IEEE) on both sides of each limit, and the
# split variant's largest on-chip H (2048) in tf32 and bf16 at batch 1 and 16, and a ragged H
# there (1100: rows 4-element aligned, W_hh in shared memory in 16-bit); the split in two
# dimensions at batch 64 (tf32 1024) and at a ragged H (600, batch 96).
SHAPES = [("tf32", 3, 17), ("tf32", 17, 1), ("tf32", 128, 1), ("tf32", 128, 64),
          ("tf32", 256, 64), ("tf32", 2048, 1), ("tf32", 2048, 16), ("tf32", 1024, 64),
          ("tf32", 4096, 1), ("fp32", 32, 16), ("fp32", 128, 64), ("fp32", 512, 64),
          ("bf16", 128, 16), ("bf16", 2048, 1), ("bf16", 2048, 16), ("fp16", 256, 1),
          ("fp16", 4096, 256), ("fp64", 64, 16), ("fp64", 256, 16), ("bf16", 1100, 16),
          ("tf32", 600, 96)]


# LSTM rows (one direction): the LSTM layer's smaller resident tiles (tl.dot BH = 16, the
# elementwise BH = 32 in TF32 and IEEE fp32; the gate compiles the largest), its split at
# small sizes (tensor cores: fp16 H = 256 at batch 1; split.py: fp64 H = 64), streaming at a
# ragged H past the split (bf16 1100), and the LSTMCell kernel, which streams the weights
# whatever H (H is no constexpr): in each product and dtype class the gate does not compile.
LSTM_TEST_SHAPES = [("tf32", 3, 17), ("tf32", 17, 1), ("fp32", 32, 16), ("fp64", 64, 16),
                    ("fp16", 256, 1), ("bf16", 1100, 16)]


# Two directions double the row stride (2H): a multiple of 16 for H = 24 and 72 where H is
# not, which changes the JIT's specialisation and so the compiled code (resident elementwise
# and tl.dot; and the tensor-core split at H = 200).
BIDIRECTIONAL_SHAPES = [("tf32", 24, 1), ("bf16", 72, 16), ("tf32", 200, 16)]


# Shapes only the W_hh column test reads, compiled in the same report run as SHAPES.
W_HH_SHAPES = [("tf32", 128, 1), ("fp64", 64, 16), ("tf32", 512, 1), ("tf32", 4096, 16),
               ("tf32", 4096, 1), ("tf32", 128, 16), ("bf16", 128, 16)]
# The tests that read one-direction report rows share one compilation, on one test worker.
shared_report = pytest.mark.xdist_group("compile-report")


@pytest.fixture(scope="session")
def report_rows():
    """(exit code, rows) of one report run over SHAPES and W_HH_SHAPES, one direction."""
    shapes = list(dict.fromkeys(SHAPES + W_HH_SHAPES))
    return _report(shapes, lstm_shapes=LSTM_TEST_SHAPES)


def _rows_of(rows, shapes, cells=("rnn",)):
    """The rows of these shapes and cells (the report adds LSTM rows where LSTM layers run our
    kernels)."""
    wanted = set(shapes)
    return [r for r in rows if (r["dtype"], r["H"], r["N"]) in wanted and r["cell"] in cells]


def _spec(shapes):
    return ",".join(f"{d}:{h}:{n}" for d, h, n in shapes)


def _report(shapes, directions=1, cells="rnn,lstm", lstm_shapes=()):
    env = dict(os.environ, TRITON_INTERPRET="0")
    # Without the cost model (tests/test_cost_model.py runs it): its disassembly would cost
    # more than these compilations, which CI's gate has cached.
    proc = subprocess.run([sys.executable, "-m", "triton_rnn.kernels.report", "--arch", "90",
                           "--json", "--shapes", _spec(shapes), "--directions", str(directions),
                           "--no-model", "--cells", cells] +
                          (["--lstm-shapes", _spec(lstm_shapes)] if lstm_shapes else []),
                          env=env, capture_output=True, text=True)
    rows = json.loads(proc.stdout)
    return proc.returncode, rows


# Runs scripts (source, argv) one after another in one fresh process (kernels are only
# compilable with the interpreter off): what each printed (its JSON), or its traceback.
_RUN_SCRIPTS = r"""
import contextlib, io, json, sys, traceback
results = {}
for name, (source, argv) in json.loads(sys.stdin.read()).items():
    sys.argv, printed = ["-c", *argv], io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            exec(compile(source, name, "exec"), {"__name__": "__main__"})
        results[name] = {"json": json.loads(printed.getvalue())}
    except Exception:
        results[name] = {"error": traceback.format_exc()}
print(json.dumps(results))
"""


@pytest.fixture(scope="session")
def compiled_scripts():
    """name -> the JSON of the compiled-code checks below (_PTX_CHECK and _REAL_TTGIR for
    sm_90 and sm_80, _PREFETCH_CHECK), all run in one process: one import of torch and the
    kernels instead of five. A script that failed fails the test that reads it."""
    scripts = {f"{kind}-sm{arch}": (source, [str(arch)]) for arch in (90, 80)
               for kind, source in (("ptx", _PTX_CHECK), ("ttgir", _REAL_TTGIR))}
    scripts["prefetch"] = (_PREFETCH_CHECK, [])
    proc = subprocess.run([sys.executable, "-c", _RUN_SCRIPTS], input=json.dumps(scripts),
                          env=dict(os.environ, TRITON_INTERPRET="0"), capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(proc.stdout)

    def result(name):
        assert "error" not in results[name], results[name].get("error")
        return results[name]["json"]
    return result


@pytest.mark.parametrize("shapes,directions", [(SHAPES, 1), (BIDIRECTIONAL_SHAPES, 2)],
                         ids=["one-direction", "two-directions"])
@shared_report
def test_dispatched_kernels_compile_for_sm90_without_faults(shapes, directions, request):
    if directions == 1:
        returncode, rows = request.getfixturevalue("report_rows")
        # the LSTMCell kernel, and forward and backward of an LSTM layer, for every shape
        lstm_rows = _rows_of(rows, LSTM_TEST_SHAPES, ("lstm",))
        variants = {choose(H, N, *DTYPES[d], arch=90, gates=4).variant
                    for d, H, N in LSTM_TEST_SHAPES}
        assert variants == {"resident", "split", "streaming"}
        assert len([r for r in lstm_rows if r["pass_"] != "cell"]) == 2 * len(LSTM_TEST_SHAPES)
        assert len([r for r in lstm_rows if r["pass_"] == "cell"]) == len(LSTM_TEST_SHAPES)
    else:
        returncode, rows = _report(shapes, directions, cells="rnn")
    # forward and backward, padded and packed, and the RNNCell kernel, for each shape
    assert len(_rows_of(rows, shapes)) == 5 * len(shapes)
    # (the exit code covers W_HH_SHAPES too; two directions: no LSTM rows)
    rows = _rows_of(rows, shapes) + _rows_of(rows, LSTM_TEST_SHAPES, ("lstm",))
    faults = [f"{r['pass_']} {r['batch_kind']} {r['dtype']} H={r['H']} N={r['N']} "
              f"{r['config']}: {r['faults']}"
              for r in rows if r["faults"]]
    assert not faults, "\n".join(faults)
    assert returncode == 0
    assert all(r["registers"] > 0 and r["programs_per_sm"] >= 1 for r in rows)


def test_shapes_cover_every_variant():
    from triton_rnn.kernels.report import DTYPES
    kinds = {(c.variant, c.use_dot) for c in (choose(h, n, *DTYPES[d]) for d, h, n in SHAPES)}
    assert kinds == {(v, d) for v in ("resident", "split", "streaming") for d in (True, False)}


@shared_report
def test_split_holds_w_hh_on_chip_at_h2048(report_rows):
    """tf32 and bf16 at H = 2048, batch 1 and 16: the split variant, at most the scalar
    allowance spilled (the W_hh tile alone is 64 registers a thread: a spill of it is far
    larger; with b_hh added in the kernel, Triton 3.9 parks 8 B in tf32 packed at batch 1),
    and a grid an H100 holds at once."""
    shapes = [(d, 2048, n) for d in ("tf32", "bf16") for n in (1, 16)]
    rows = _rows_of(report_rows[1], shapes)
    recurrences = [r for r in rows if r["pass_"] != "cell"]
    assert len(recurrences) == 4 * len(shapes)
    for r in recurrences:
        assert r["config"].startswith("split/"), r
        assert r["spilled_bytes"] <= SCALAR_SPILL_ALLOWANCE, r
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
for pass_, tf32 in [(p, tf32) for p in ("forward", "backward") for tf32 in (True, False)]:
    # TF32 runs the tensor-core split (split_dot.py), IEEE fp32 one row at a time (split.py)
    launched = report._launch_arguments(pass_, torch.float32, 512, 4, False, tf32)
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
    found[f"{pass_} {'tf32' if tf32 else 'fp32'}"] = {
        name: report.ordering_faults(text) for name, text in mutated.items()}
print(json.dumps(found))
"""


@pytest.mark.parametrize("arch", [90, 80], ids=["sm_90", "sm_80"])
@shared_report
def test_ptx_ordering_check_catches_what_threads_cannot(arch, compiled_scripts):
    """Both split kernels' PTX (tensor cores and one row at a time, forward and backward) has
    the barrier's release arrival, acquire wait, L2-coherent exchange loads and CTA barriers
    where they belong; removing any one of them is reported."""
    found = compiled_scripts(f"ptx-sm{arch}")
    for pass_, faults in found.items():
        assert faults.pop("as compiled") == [], pass_
        for name, caught in faults.items():
            assert caught, f"{pass_}: {name} not caught"
    assert len(found) == 4


# --- The W_hh column: where W_hh lives during the loop, read from the compiled TTGIR ---------

_TTGIR_HEAD = ('module {\n  tt.func public @k(%p_x: !tt.ptr<f32> loc("p_x"(#loc)), '
               '%p_b: !tt.ptr<f32> {tt.divisibility = 16 : i32} loc("p_b"(#loc)), '
               '%T: i32 loc("T"(#loc))) attributes {noinline = false} {\n')
_TTGIR_ADDR = ('    %c0 = arith.constant 0 : i32 loc(#loc1)\n'
               '    %c1 = arith.constant 1 : i32 loc(#loc1)\n'
               '    %r = tt.make_range {end = 64 : i32, start = 0 : i32} : tensor<64xi32, #b1>\n'
               '    %o = tt.expand_dims %r {axis = 1 : i32} : tensor<64xi32, #b1> -> '
               'tensor<64x1xi32, #blk>\n'
               '    %pb = tt.splat %p_b : !tt.ptr<f32> -> tensor<64x1x!tt.ptr<f32>, #blk> '
               'loc(callsite(#loc3 at #loc4))\n'
               '    %pw = tt.addptr %pb, %o : tensor<64x1x!tt.ptr<f32>, #blk>, '
               'tensor<64x1xi32, #blk>\n'
               '    %px = tt.splat %p_x : !tt.ptr<f32> -> tensor<64x1x!tt.ptr<f32>, #blk>\n'
               '    %h0 = tt.load %px : tensor<64x1x!tt.ptr<f32>, #blk>\n')
_TTGIR_TAIL = '    tt.return loc(#loc)\n  } loc(#loc)\n} loc(#loc)\n'
# What each class looks like, reduced from what Triton 3.6 and 3.9 emit for our kernels.
_TTGIR_CASES = {
    # mma.sync: W copied to shared memory once, ttg.local_load (ldmatrix) every step
    "shared, local_load": (
        '    %w = tt.load %pw : tensor<64x1x!tt.ptr<f32>, #blk> loc(#loc5)\n'
        '    %ws = ttg.local_alloc %w : (tensor<64x1xf32, #blk>) -> '
        '!ttg.memdesc<64x1xf32, #shared, #smem> loc(#loc5)\n'
        '    %h = scf.for %t = %c0 to %T step %c1 iter_args(%hh = %h0) -> '
        '(tensor<64x1xf32, #mma>)  : i32 {\n'
        '      %wd = ttg.local_load %ws : !ttg.memdesc<64x1xf32, #shared, #smem> -> '
        'tensor<64x1xf32, #ttg.dot_op<{opIdx = 1, parent = #mma, kWidth = 1}>> loc(#loc5)\n'
        '      %z = tt.dot %hh, %wd, %hh : tensor<64x1xf32> * tensor<64x1xf32> -> '
        'tensor<64x1xf32, #mma> loc(#loc6)\n'
        '      scf.yield %z : tensor<64x1xf32, #mma> loc(#loc7)\n'
        '    } loc(#loc8)\n', "on-chip: shared memory, re-read each step"),
    # wgmma with W as the shared-memory (descriptor) operand, in a while loop
    "shared, wgmma operand": (
        '    %w = tt.load %pw : tensor<64x1x!tt.ptr<f32>, #blk>\n'
        '    %ws = ttg.local_alloc %w : (tensor<64x1xf32, #blk>) -> '
        '!ttg.memdesc<64x1xf32, #shared, #smem>\n'
        '    %r:2 = scf.while (%t = %c0, %hh = %h0) : (i32, tensor<64x1xf32, #mma>) -> '
        '(i32, tensor<64x1xf32, #mma>) {\n'
        '      %go = arith.cmpi slt, %t, %T : i32\n'
        '      scf.condition(%go) %t, %hh : i32, tensor<64x1xf32, #mma>\n'
        '    } do {\n'
        '    ^bb0(%t: i32 loc("t"(#loc9)), %hh: tensor<64x1xf32, #mma> loc("h"(#loc9))):\n'
        '      %hs = ttg.local_alloc %hh : (tensor<64x1xf32, #mma>) -> '
        '!ttg.memdesc<64x1xf32, #shared1, #smem>\n'
        '      %z = ttng.warp_group_dot %ws, %hs, %hh {isAsync = true} : '
        '!ttg.memdesc<64x1xf32, #shared, #smem> * !ttg.memdesc<64x1xf32, #shared1, #smem> -> '
        'tensor<64x1xf32, #mma>\n'
        '      %t1 = arith.addi %t, %c1 : i32\n'
        '      scf.yield %t1, %z : i32, tensor<64x1xf32, #mma>\n'
        '    }\n', "on-chip: shared memory, re-read each step"),
    # wgmma with W in registers as the A operand, converted once before the loop
    "registers, wgmma A": (
        '    %w = tt.load %pw : tensor<64x1x!tt.ptr<f32>, #blk>\n'
        '    %wb = tt.bitcast %w : tensor<64x1xf32, #blk> -> tensor<64x1xi32, #blk>\n'
        '    %wr = tt.bitcast %wb : tensor<64x1xi32, #blk> -> tensor<64x1xf32, #blk>\n'
        '    %ws = ttg.local_alloc %wr : (tensor<64x1xf32, #blk>) -> '
        '!ttg.memdesc<64x1xf32, #shared, #smem>\n'
        '    %wd = ttg.local_load %ws : !ttg.memdesc<64x1xf32, #shared, #smem> -> '
        'tensor<64x1xf32, #ttg.dot_op<{opIdx = 0, parent = #mma, kWidth = 1}>>\n'
        '    %h = scf.for %t = %c0 to %T step %c1 iter_args(%hh = %h0) -> '
        '(tensor<64x1xf32, #mma>)  : i32 {\n'
        '      %hs = ttg.local_alloc %hh : (tensor<64x1xf32, #mma>) -> '
        '!ttg.memdesc<64x1xf32, #shared1, #smem>\n'
        '      %z = ttng.warp_group_dot %wd, %hs, %hh : tensor<64x1xf32> * '
        '!ttg.memdesc<64x1xf32, #shared1, #smem> -> tensor<64x1xf32, #mma>\n'
        '      scf.yield %z : tensor<64x1xf32, #mma>\n'
        '    }\n', "on-chip: registers"),
    # the elementwise product: W converted to its layout once, multiplied and reduced
    "registers, elementwise": (
        '    %w = tt.load %pw : tensor<64x1x!tt.ptr<f32>, #blk>\n'
        '    %wc = ttg.convert_layout %w : tensor<64x1xf32, #blk> -> '
        'tensor<64x1xf32, #ttg.slice<{dim = 0, parent = #b3}>>\n'
        '    %h = scf.for %t = %c0 to %T step %c1 iter_args(%hh = %h0) -> '
        '(tensor<64x1xf32, #blk>)  : i32 {\n'
        '      %m = arith.mulf %wc, %hh : tensor<64x1xf32, #blk>\n'
        '      %s = "tt.reduce"(%m) <{axis = 1 : i32}> ({\n'
        '      ^bb0(%a: f32 loc(#loc1), %b: f32 loc(#loc1)):\n'
        '        %ab = arith.addf %a, %b : f32\n'
        '        tt.reduce.return %ab : f32\n'
        '      }) : (tensor<64x1xf32, #blk>) -> tensor<64xf32, #b1>\n'
        '      scf.yield %hh : tensor<64x1xf32, #blk>\n'
        '    }\n', "on-chip: registers"),
    # carried through the loop in a blocked layout and copied into shared memory every step
    "registers, staged": (
        '    %w = tt.load %pw : tensor<64x1x!tt.ptr<f32>, #blk>\n'
        '    %h:2 = scf.for %t = %c0 to %T step %c1 iter_args(%wi = %w, %hh = %h0) -> '
        '(tensor<64x1xf32, #blk>, tensor<64x1xf32, #mma>)  : i32 {\n'
        '      %wk = tt.elementwise_inline_asm "mov.b32 $0, $1;" {pure = true} %wi : '
        'tensor<64x1xf32, #blk> -> tensor<64x1xf32, #blk>\n'
        '      %ws = ttg.local_alloc %wk : (tensor<64x1xf32, #blk>) -> '
        '!ttg.memdesc<64x1xf32, #shared, #smem>\n'
        '      %z = ttng.warp_group_dot %ws, %hh, %hh : !ttg.memdesc<64x1xf32> * '
        'tensor<64x1xf32> -> tensor<64x1xf32, #mma>\n'
        '      scf.yield %wk, %z : tensor<64x1xf32, #blk>, tensor<64x1xf32, #mma>\n'
        '    }\n', "on-chip: registers, copied to shared memory each step"),
    # streaming: the address advanced through an iteration argument, loaded in an inner loop,
    # pipelined into shared memory by an asynchronous copy
    "streamed": (
        '    scf.for %t = %c0 to %T step %c1  : i32 {\n'
        '      %a:2 = scf.for %j = %c0 to %T step %c1 iter_args(%pp = %pw, %acc = %h0) -> '
        '(tensor<64x1x!tt.ptr<f32>, #blk>, tensor<64x1xf32, #blk>)  : i32 {\n'
        '        %buf = ttg.local_alloc : () -> !ttg.memdesc<64x1xf32, #shared, #smem, mutable>\n'
        '        %tok = ttg.async_copy_global_to_local %pp, %buf : '
        'tensor<64x1x!tt.ptr<f32>, #blk> -> <64x1xf32, #shared, #smem, mutable>\n'
        '        %pn = tt.addptr %pp, %o : tensor<64x1x!tt.ptr<f32>, #blk>, tensor<64x1xi32>\n'
        '        scf.yield %pn, %acc : tensor<64x1x!tt.ptr<f32>, #blk>, tensor<64x1xf32>\n'
        '      }\n'
        '    }\n', "L2: streamed"),
    # names reused in sibling regions: the loop's %w is another value (a load of p_x)
    "sibling names": (
        '    %w0 = tt.load %pw : tensor<64x1x!tt.ptr<f32>, #blk>\n'
        '    %wc = ttg.convert_layout %w0 : tensor<64x1xf32, #blk> -> tensor<64x1xf32, #b2>\n'
        '    scf.if %c1 {\n'
        '      %w = tt.addptr %pb, %o : tensor<64x1x!tt.ptr<f32>, #blk>, tensor<64x1xi32>\n'
        '    }\n'
        '    %h = scf.for %t = %c0 to %T step %c1 iter_args(%hh = %h0) -> '
        '(tensor<64x1xf32, #blk>)  : i32 {\n'
        '      %w = tt.addptr %px, %o : tensor<64x1x!tt.ptr<f32>, #blk>, tensor<64x1xi32>\n'
        '      %x = tt.load %w : tensor<64x1x!tt.ptr<f32>, #blk>\n'
        '      %m = arith.mulf %wc, %x : tensor<64x1xf32, #b2>\n'
        '      scf.yield %m : tensor<64x1xf32, #blk>\n'
        '    }\n', "on-chip: registers"),
    "no load": ('    %h = scf.for %t = %c0 to %T step %c1 iter_args(%hh = %h0) -> '
                '(tensor<64x1xf32, #blk>)  : i32 {\n'
                '      scf.yield %hh : tensor<64x1xf32, #blk>\n'
                '    }\n', "unknown: no load of p_b"),
}


@pytest.mark.parametrize("case", list(_TTGIR_CASES))
def test_w_hh_placement_reads_the_ttgir(case):
    """Each placement class from a small TTGIR written like Triton's: the column is traced
    from the W_hh pointer argument, not assumed from the variant."""
    from triton_rnn.kernels.report import w_hh_placement
    body, expected = _TTGIR_CASES[case]
    ttgir = _TTGIR_HEAD + _TTGIR_ADDR + body + _TTGIR_TAIL
    assert w_hh_placement(ttgir, "p_b") == expected
    # the same kernel with arguments named only by position (%arg0, %arg1, ...)
    anonymous = (ttgir.replace("%p_x", "%arg0").replace("%p_b", "%arg1").replace("%T", "%arg2")
                 .replace('loc("p_x"(#loc))', "").replace('loc("p_b"(#loc))', "")
                 .replace('loc("T"(#loc))', ""))
    assert w_hh_placement(anonymous, "p_b", ["p_x", "p_b", "T"]) == expected
    assert w_hh_placement(ttgir, "p_whh").startswith("unknown")  # no such argument


_REAL_TTGIR = r"""
import json, re, sys, torch
from triton_rnn.kernels import report
arch = int(sys.argv[1])
out = {}
for pass_ in ("forward", "backward"):
    dtype, tf32 = report.DTYPES["tf32"]
    cfg = report.choose(128, 16, dtype, tf32)
    launched = report._launch_arguments(pass_, dtype, 128, 16, False, tf32, 1, cfg)
    ttgir = report.compile_resources(*launched, arch)[4]
    names = report.compiled_arguments(*launched, arch)
    found = report.w_hh_placement(ttgir, "p_b", names)
    # Mutation: every ttg.local_load inside the time loop of a buffer allocated before it,
    # moved in front of the loop (converted once, kept in registers).
    lines = ttgir.splitlines()
    loop = next(i for i, l in enumerate(lines) if re.search(r"= scf\.(for|while) ", l))
    before = {m.group(1) for l in lines[:loop]
              for m in [re.match(r"\s*(%[\w.$-]+) = ttg\.local_alloc %", l)] if m}
    moved = [l for l in lines[loop:] if re.match(r"\s*%[\w.$-]+ = ttg\.local_load (%[\w.$-]+)", l)
             and re.match(r"\s*%[\w.$-]+ = ttg\.local_load (%[\w.$-]+)", l).group(1) in before]
    hoisted = "\n".join(lines[:loop] + moved + [l for l in lines[loop:] if l not in moved])
    # Mutation: the W_hh load's address built inside the loop instead (streamed).
    out[pass_] = dict(found=found, moved=len(moved),
                      hoisted=report.w_hh_placement(hoisted, "p_b", names),
                      other=report.w_hh_placement(ttgir, "p_out", names))
print(json.dumps(out))
"""


@pytest.mark.parametrize("arch", [90, 80], ids=["sm_90", "sm_80"])
@shared_report
def test_w_hh_column_follows_the_compiled_loop_of_the_resident_dot(arch, compiled_scripts):
    """The resident tl.dot kernels (tf32, H = 128, batch 16): W_hh is on-chip; where it is
    re-read from shared memory each step (an in-loop ttg.local_load), hoisting those loads out
    of the loop in the TTGIR text turns the column into registers: it follows the code."""
    for pass_, r in compiled_scripts(f"ttgir-sm{arch}").items():
        assert r["found"] in ("on-chip: shared memory, re-read each step",
                              "on-chip: registers"), (pass_, r)
        if r["found"].startswith("on-chip: shared"):
            assert r["moved"] >= 1 and r["hoisted"] == "on-chip: registers", (pass_, r)
        # p_out: forward only stores it; backward reads the saved outputs every step
        assert r["other"] == ("L2: streamed" if pass_ == "backward"
                              else "unknown: no load of p_out"), (pass_, r)


@shared_report
def test_w_hh_column_in_the_report(report_rows):
    """The report's W_hh column for each kind of row, on sm_90: the elementwise resident
    product holds W_hh in registers, split slices too, streaming and the cell read it from L2
    inside the loop, the resident tl.dot keeps it on-chip (registers or shared memory, as
    compiled); every row's column is traced (no 'unknown')."""
    rows = _rows_of(report_rows[1], W_HH_SHAPES)
    assert len(rows) == 5 * len(W_HH_SHAPES)
    assert not [r["faults"] for r in rows if r["faults"]]
    for r in rows:
        kind = r["config"].split()[0]
        w = r["w_hh"]
        if r["pass_"] == "cell" or kind.startswith("streaming/"):
            assert w == "L2: streamed", r
        elif kind == "resident/elementwise":
            assert w == "on-chip: registers", r
        elif kind.startswith("split/"):
            assert w.startswith("on-chip: registers") and w.endswith("slices"), r
        else:
            assert kind == "resident/dot", r
            assert w in ("on-chip: shared memory, re-read each step", "on-chip: registers"), r


_PREFETCH_CHECK = r"""
import json, re, sys, torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import create_function_from_signature
from triton_rnn.kernels import report

PRODUCT = re.compile(r"^(mma|wgmma|fma\.rn\.f(32|64)|mul\.(rn\.)?f(32|64))")
found = {}
for name, H, N in (("tf32", 128, 16), ("bf16", 128, 16), ("tf32", 128, 1), ("fp16", 64, 1)):
    dtype, allow_tf32 = report.DTYPES[name]
    kernel, args, kwargs = report._launch_arguments("forward", dtype, H, N, False, allow_tf32)
    assert kernel.fn.__name__ == "rnn_forward_resident_kernel", kernel
    target = GPUTarget("cuda", 90, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, spec, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, spec,
                                                              options)
    compiled = triton.compile(ASTSource(kernel, signature, constexprs, attrs), target=target,
                              options=options.__dict__)
    # TTGIR: a load inside the time loop whose value the loop carries into the next step.
    ttgir = compiled.asm["ttgir"].splitlines()
    start = next(i for i, l in enumerate(ttgir) if re.search(r"scf\.(for|while) ", l))
    end = next(i for i in range(start, len(ttgir)) if "scf.yield" in ttgir[i])
    carried = set(re.findall(r"%[\w#]+", ttgir[end].split(":")[0]))
    loads = [re.match(r"\s*(%[\w#]+) = tt.load", l) for l in ttgir[start:end]]
    carried_load = any(m and m.group(1) in carried for m in loads)
    # PTX: in the loop body, the first global load is issued before the first product
    # instruction (tensor-core mma or the elementwise multiply-and-add).
    ptx = [re.sub(r"^@!?%p\d+\s+", "", l.strip()) for l in compiled.asm["ptx"].splitlines()]
    head = next(i for i, l in enumerate(ptx) if "Loop Header" in l)
    body = ptx[head:]
    first_load = next(i for i, l in enumerate(body) if l.startswith("ld.global"))
    first_product = next(i for i, l in enumerate(body) if PRODUCT.match(l))
    found[f"{name} H={H} N={N}"] = [carried_load, first_load < first_product]
print(json.dumps(found))
"""


@shared_report
def test_resident_forward_prefetches_the_next_step(compiled_scripts):
    """The resident forward's time loop loads P_{t+1} before step t's product (dot and
    elementwise, 32- and 16-bit), in the sm_90 code Triton 3.6 and 3.9 compile: in the TTGIR
    the loop carries a value loaded inside it into the next iteration, and in the PTX the
    loop's first global load comes before its first mma / multiply."""
    for config, (carried_load, load_first) in compiled_scripts("prefetch").items():
        assert carried_load, f"{config}: no loop-carried load in the time loop (no prefetch)"
        assert load_first, f"{config}: the product comes before the next step's load"
