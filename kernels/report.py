"""Kernel resource report and compile gate; needs no GPU.

    python -m triton_rnn.kernels.report [--arch 90|80|all] [--json]

Compiles, for a real GPU target, every configuration the dispatcher can choose over a table of
dtype x hidden size x batch (forward and backward kernels, padded and packed, and the cell),
and prints registers, spilled bytes, shared memory and occupancy for each. What it compiles is
what a launch compiles: the launcher's own arguments and options for tensors of that shape,
bound and specialised by Triton's JIT as at launch. Exits non-zero if any configuration spills
more than a few scalars, overflows shared memory, or fails to compile.
Triton's interpreter accepts code the GPU compiler rejects (tl.dot with a dimension under 16,
say) and says nothing about spills, which decide whether W_hh really stays on-chip: this is
the check that catches both.
"""
import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import create_function_from_signature

from . import launch, occupancy
from .dispatch import choose, choose_cell
from .launch import interpreting

# Per-SM limits of the targets we ship for.
ARCHS = {
    90: dict(name="H100 (sm_90)", sms=132, regs_per_sm=65536, smem_per_sm=233472,
             smem_per_block=232448, max_blocks_per_sm=32),
    80: dict(name="A100 (sm_80)", sms=108, regs_per_sm=65536, smem_per_sm=167936,
             smem_per_block=166912, max_blocks_per_sm=32),
}
# name -> (dtype, TF32 allowed): "tf32" is float32 with torch.backends.cudnn.allow_tf32 on
# (PyTorch's default), "fp32" with it off (IEEE products).
DTYPES = {"tf32": (torch.float32, True), "fp32": (torch.float32, False),
          "bf16": (torch.bfloat16, False), "fp16": (torch.float16, False),
          "fp64": (torch.float64, False)}
HIDDEN_SIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
# 1 and 5 both run one row per program, but a launch with N = 1 compiles N as a constant.
BATCHES = (1, 5, 16, 256)
# ptxas sometimes parks a few scalars (8-24 B, e.g. halves of 64-bit addresses) on the stack at
# 60-170 registers, far from the limit, depending on the Triton version and the JIT's
# specialisation of a launch; such a frame stays in L1. A tile that does not fit spills far
# more: the resident float32 BH = 256 tile spills 288 B, 16-bit BH = 256 tiles 150-220 B.
# More than this is a fault; the report prints every spill.
SCALAR_SPILL_ALLOWANCE = 32


@dataclass
class Row:
    arch: int
    pass_: str
    batch_kind: str  # "padded" or "packed" (per-sequence lengths)
    dtype: str
    H: int
    N: int
    config: str
    registers: int
    spilled_bytes: int
    shared_bytes: int
    programs_per_sm: int
    programs: int
    capacity: int
    w_hh: str
    error: str = ""

    @property
    def faults(self) -> list:
        limits = ARCHS[self.arch]
        found = [self.error] if self.error else []
        if self.spilled_bytes > SCALAR_SPILL_ALLOWANCE:
            found.append(f"spills {self.spilled_bytes} B")
        if self.shared_bytes > limits["smem_per_block"]:
            found.append(f"shared memory {self.shared_bytes} B > {limits['smem_per_block']} B")
        if not self.error and self.programs_per_sm == 0:
            found.append("does not fit on an SM")
        return found


# The launchers' kernels, by their names in launch.py.
_KERNEL_NAMES = ("rnn_forward_resident_kernel", "rnn_forward_streaming_kernel",
                 "rnn_forward_split_kernel", "rnn_backward_resident_kernel",
                 "rnn_backward_streaming_kernel", "rnn_backward_split_kernel",
                 "rnn_cell_forward_kernel")


@contextlib.contextmanager
def _captured_launches():
    """Swap the launcher's kernels for recorders: a launcher then computes its real arguments
    and options, and hands them over instead of launching."""
    launches = []

    class Recorder:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append((self.kernel, args, kwargs))

    saved = {name: getattr(launch, name) for name in _KERNEL_NAMES + ("_split_capacity",)}
    for name in _KERNEL_NAMES:
        setattr(launch, name, Recorder(saved[name]))
    # A split launch is planned here for a device without limits (one launch, both
    # directions); measure() plans it again for the target's capacity.
    launch._split_capacity = lambda *args: 1 << 30
    try:
        yield launches
    finally:
        for name, value in saved.items():
            setattr(launch, name, value)


def _launch_arguments(pass_: str, dtype: torch.dtype, H: int, N: int, packed: bool,
                      allow_tf32: bool, D: int = 1, cfg=None):
    """(kernel, args, kwargs) the launcher passes for a first layer's recurrence (D directions,
    T = 2; h0 at the start of its buffer) or for a cell call with I = H, built from CPU tensors
    of the real shapes and strides (never written). Later layers' h0 slices and other input
    sizes can change the JIT's alignment marks, so their code may differ slightly."""
    T = 2
    lengths = torch.full((N,), T, dtype=torch.int32) if packed else None
    seq = torch.empty((T, N, D * H), dtype=dtype)
    w_hh = torch.empty((D, H, H), dtype=dtype)
    with _captured_launches() as launches:
        if pass_ == "forward":
            launch.recurrence_forward(seq, torch.empty((D, N, H), dtype=dtype), w_hh, lengths,
                                      False, allow_tf32, cfg)
        elif pass_ == "backward":
            launch.recurrence_backward(seq, torch.empty_like(seq), w_hh, lengths, False,
                                       allow_tf32, cfg)
        else:  # the cell, with I = H
            x, bias = torch.empty((N, H), dtype=dtype), torch.empty(H, dtype=dtype)
            w = torch.empty((H, H), dtype=dtype)
            launch.rnn_cell_forward(x, torch.empty_like(x), w, w, bias, bias, False, allow_tf32)
    (launched,) = launches
    return launched


def _cuobjdump() -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def compile_resources(kernel, args, kwargs, arch: int):
    """(registers, stack bytes, shared bytes, PTX) of `kernel` compiled for sm_<arch> as a launch
    with these arguments would compile it: the JIT's own binding and specialisation (integer
    arguments equal to 1 become constants, multiples of 16 and aligned pointers are marked
    so), so the report measures exactly the code that runs. Raises on a compile failure."""
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound,
                                                              specialization, options)
    return _compile(ASTSource(kernel, signature, constexprs, attrs), target, options)


_compiled = {}  # (source and specialisation, arch, options) -> resources


def _compile(src, target, options):
    key = (src.hash(), target.arch, repr(sorted(options.__dict__.items())))
    if key not in _compiled:
        compiled = triton.compile(src, target=target, options=options.__dict__)
        with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
            f.write(compiled.asm["cubin"])
            f.flush()
            usage = subprocess.run([_cuobjdump(), "-res-usage", f.name], capture_output=True,
                                   text=True, check=True).stdout
        regs = int(re.search(r"REG:(\d+)", usage).group(1))
        stack = int(re.search(r"STACK:(\d+)", usage).group(1))
        _compiled[key] = regs, stack, compiled.metadata.shared, compiled.asm["ptx"]
    return _compiled[key]


def ordering_faults(ptx: str) -> list:
    """What the split kernels' barrier needs from the compiled code and its PTX lacks: every
    arrival a release atomic add at gpu scope with a bar.sync between it and the stores before
    it (every warp's stores issued first); every wait an acquire read at gpu scope with a
    bar.sync between it and the loads after it; the exchanged state read with L2-coherent loads
    (ld.global.cg). Positions are textual, which follows program order within the loop body.
    Threads on a CPU cannot show any of these."""
    lines = [re.sub(r"^@!?%p\d+\s+", "", line.strip()) for line in ptx.splitlines()]

    def nearest(start, step, patterns):
        """The first of `patterns` met walking from `start` in direction `step`, or None."""
        i = start + step
        while 0 <= i < len(lines):
            for name, pattern in patterns.items():
                if re.match(pattern, lines[i]):
                    return name
            i += step
        return None

    bar = r"(bar|barrier)\.sync"
    releases = [i for i, line in enumerate(lines)
                if re.match(r"(atom|red)\.(?=[\w.]*\.release)(?=[\w.]*\.gpu)[\w.]*\.add", line)]
    acquires = [i for i, line in enumerate(lines)
                if re.match(r"(ld|atom)\.(?=[\w.]*\.acquire)(?=[\w.]*\.gpu)", line)]
    faults = []
    if not releases:
        faults.append("no release atomic add at gpu scope (the arrival)")
    if any(nearest(i, -1, {"bar": bar, "store": r"st\.global"}) != "bar" for i in releases):
        faults.append("a global store reaches the arrival without a bar.sync between them")
    if not acquires:
        faults.append("no acquire read at gpu scope (the wait)")
    if any(nearest(i, 1, {"bar": bar, "load": r"ld\.global(?!\.[\w.]*acquire)"}) != "bar"
           for i in acquires):
        faults.append("a global load follows the wait without a bar.sync between them")
    if not any(re.match(r"ld\.global\.cg", line) for line in lines):
        faults.append("no L2-coherent load (ld.global.cg) of the exchanged state")
    return faults


def programs_per_sm(arch: int, regs: int, shared: int, num_warps: int) -> int:
    limits = ARCHS[arch]
    return occupancy.programs_per_sm(regs, shared, num_warps, limits["regs_per_sm"],
                                     limits["smem_per_sm"], 2048, limits["max_blocks_per_sm"])


def measure(pass_: str, dtype_name: str, H: int, N: int, arch: int, directions: int = 1,
            packed: bool = False, split: bool = True) -> Row:
    """pass_: "forward" or "backward" (recurrence of a layer), or "cell" (RNNCell).
    split=False: the configuration the launcher falls back to where split does not fit."""
    dtype, allow_tf32 = DTYPES[dtype_name]
    if pass_ == "cell":
        cfg = choose_cell(N, dtype)
        programs = triton.cdiv(N, cfg.BN) * triton.cdiv(H, cfg.BH)
        w_hh = "streamed (one step)"
    else:
        cfg = choose(H, N, dtype, allow_tf32, split)
        programs = triton.cdiv(N, cfg.BN) * directions
        w_hh = "streamed from L2" if cfg.variant == "streaming" else "on-chip"
    ordering = []
    try:
        launched = _launch_arguments(pass_, dtype, H, N, packed, allow_tf32, directions,
                                     None if pass_ == "cell" else cfg)
        regs, stack, shared, ptx = compile_resources(*launched, arch)
        error = ""
        if cfg.variant == "split":
            ordering = ordering_faults(ptx)
    except Exception as exc:  # a failure is a finding, not a crash
        regs = stack = shared = 0
        error = f"build failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    if cfg.use_dot and min(cfg.BN, cfg.BH) < 16:
        # Some Triton versions accept this for some dtypes (falling back to FMA), others reject
        # it: a shipped configuration must compile on all the versions we support.
        error = error or f"tl.dot with a dimension under 16 (BN={cfg.BN}, block={cfg.BH})"
    per_sm = programs_per_sm(arch, regs, shared, cfg.num_warps) if not error else 0
    if cfg.variant == "resident" and not error:
        # tl.dot may take W_hh from shared memory (wgmma on sm_90); the elementwise product
        # holds it in registers (its shared memory is the reduction's scratch).
        in_shared = cfg.use_dot and shared >= cfg.BH * cfg.BH * dtype.itemsize
        w_hh = "on-chip (shared memory)" if in_shared else "on-chip (registers)"
    capacity = per_sm * ARCHS[arch]["sms"]
    config = cfg.describe()
    if cfg.variant == "split" and not error:
        S = triton.cdiv(H, cfg.R)
        plan = launch.split_plan(S, N, directions, capacity)
        if plan is None:  # what the launcher runs instead
            row = measure(pass_, dtype_name, H, N, arch, directions, packed, split=False)
            row.w_hh += f" (split needs {S} programs, {capacity} fit)"
            return row
        else:
            G, rows, per_launch = plan
            programs = S * G * per_launch
            config += f" S={S} G={G} rows/group={rows} launches={directions // per_launch}"
            w_hh = f"on-chip (registers), {S} slices"
    error = "; ".join(filter(None, [error] + [f"PTX: {f}" for f in ordering]))
    batch_kind = "-" if pass_ == "cell" else "packed" if packed else "padded"
    return Row(arch, pass_, batch_kind, dtype_name, H, N, config, regs, stack, shared,
               per_sm, programs, capacity, w_hh, error)


def table(archs, shapes=None, directions: int = 1) -> list:
    """Rows for every (dtype, H, batch) of the default table, or of `shapes` if given."""
    shapes = shapes or [(d, H, N) for d in DTYPES for H in HIDDEN_SIZES for N in BATCHES]
    rows = [measure(p, d, H, N, arch, directions, packed) for arch in archs
            for p in ("forward", "backward") for packed in (False, True) for d, H, N in shapes]
    return rows + [measure("cell", d, H, N, arch) for arch in archs for d, H, N in shapes]


def _parse_shapes(text: str) -> list:
    shapes = []
    for item in text.split(","):
        dtype, H, N = item.split(":")
        if dtype not in DTYPES:
            raise argparse.ArgumentTypeError(f"unknown dtype {dtype!r}; one of {list(DTYPES)}")
        shapes.append((dtype, int(H), int(N)))
    return shapes


def _print(rows) -> None:
    head = ("arch", "pass", "batch", "dtype", "H", "N", "configuration", "regs", "spill B",
            "smem B", "prog/SM", "programs/capacity", "W_hh", "faults")
    lines = [head] + [(f"sm_{r.arch}", r.pass_, r.batch_kind, r.dtype, r.H, r.N, r.config,
                       r.registers, r.spilled_bytes, r.shared_bytes, r.programs_per_sm,
                       f"{r.programs}/{r.capacity}", r.w_hh, "; ".join(r.faults) or "-")
                      for r in rows]
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
    for line in lines:
        print("  ".join(str(v).ljust(w) for v, w in zip(line, widths)).rstrip())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=("90", "80", "all"), default="all")
    parser.add_argument("--json", action="store_true", help="print rows as JSON")
    parser.add_argument("--shapes", type=_parse_shapes, default=None,
                        help="dtype:H:batch[,...] instead of the default table, e.g. fp32:128:16")
    parser.add_argument("--directions", type=int, choices=(1, 2), default=1,
                        help="recurrences of one or two directions (their strides differ)")
    args = parser.parse_args(argv)
    if interpreting():
        # Under the interpreter the kernels are not compilable JIT functions: run afresh.
        env = dict(os.environ, TRITON_INTERPRET="0")
        argv = sys.argv[1:] if argv is None else argv
        return subprocess.run([sys.executable, "-m", __spec__.name, *argv], env=env).returncode
    archs = sorted(ARCHS, reverse=True) if args.arch == "all" else [int(args.arch)]
    rows = table(archs, args.shapes, args.directions)
    if args.json:
        print(json.dumps([dict(asdict(r), faults=r.faults) for r in rows], indent=1))
    else:
        print("Variant rule: kernels/dispatch.py. 'spill B' is the compiled stack frame; "
              "'programs/capacity' is the launch's programs against co-resident capacity "
              "(only variants whose programs exchange state need all of them co-resident).")
        _print(rows)
    bad = [r for r in rows if r.faults]
    if bad:
        print(f"{len(bad)} configuration(s) with faults", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
