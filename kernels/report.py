"""Kernel resource report and compile gate; needs no GPU.

    python -m triton_rnn.kernels.report [--arch 90|80|all] [--json] [--jobs N] [--dump DIR]
                                        [--no-model] [--cells rnn,lstm,gru]

Compiles, for a real GPU target, every configuration the dispatcher can choose over a table of
dtype x hidden size x batch (forward and backward kernels, padded and packed, and the cell;
and an LSTM and a GRU layer's forward and backward), and prints
registers, spilled bytes, shared memory and occupancy for each. What it compiles is
what a launch compiles: the launcher's own arguments and options for tensors of that shape,
bound and specialised by Triton's JIT as at launch. Exits non-zero if any configuration spills
more than a few scalars, overflows shared memory, or fails to compile.
Triton's interpreter accepts code the GPU compiler rejects (tl.dot with a dimension under 16,
say) and says nothing about spills, which decide whether W_hh really stays on-chip: this is
the check that catches both.

The W_hh column says where W_hh lives while the kernel loops, read from the compiled TTGIR
(w_hh_placement), not from the variant's intent: traced from the kernel's W_hh pointer
argument (W_HH_POINTERS, by name) to its global loads, and from what they load to what the
loops use. "on-chip: registers" (a register tensor the loop uses as it is), "on-chip: shared
memory, re-read each step" (a shared-memory buffer the loop reads every iteration: a
ttg.local_load into an MMA operand layout, or a warpgroup MMA operand), "on-chip: registers,
converted each step" / "copied to shared memory each step" (the loop changes its layout or
stages it through shared memory every iteration), "L2: streamed" (loaded from global memory
inside a loop). A resident or split row whose W_hh is not on-chip, or whose W_hh the trace
cannot find, is a fault.

The model columns (sm_90 rows): one time step as cost_model.py models it from the row's SASS
with an H100's constants, a model and not a measurement (cost_model.HEADER, printed above the
table). --no-model skips it (CI's full gates do: the disassembly it reads costs more CPU than
many compilations); tests/test_cost_model.py runs it for a configuration of every variant.
"""
import argparse
import concurrent.futures
import contextlib
import hashlib
import json
import multiprocessing
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

from . import cost_model, launch, occupancy
from .cells import GATES, GRU, LSTM, RNN

# the report's cell names -> CELL values (kernels/cells.py)
CELLS = {"rnn": RNN.value, "lstm": LSTM.value, "gru": GRU.value}
from .dispatch import Config, SHARED_PER_BLOCK, choose, choose_cell, split_with_fewer_programs
from .launch import interpreting

# Per-SM limits of the targets we ship for.
ARCHS = {
    90: dict(name="H100 (sm_90)", sms=132, regs_per_sm=65536, smem_per_sm=233472,
             smem_per_block=SHARED_PER_BLOCK[90], max_blocks_per_sm=32),
    80: dict(name="A100 (sm_80)", sms=108, regs_per_sm=65536, smem_per_sm=167936,
             smem_per_block=SHARED_PER_BLOCK[80], max_blocks_per_sm=32),
}
# name -> (dtype, TF32 allowed): "tf32" is float32 with torch.backends.cudnn.allow_tf32 on
# (PyTorch's default), "fp32" with it off (IEEE products).
DTYPES = {"tf32": (torch.float32, True), "fp32": (torch.float32, False),
          "bf16": (torch.bfloat16, False), "fp16": (torch.float16, False),
          "fp64": (torch.float64, False)}
HIDDEN_SIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
# The kernels do not specialise on N (one compiled kernel serves every batch with the same
# tile); 1, 5, 16 and 256 are the batch classes whose tiles and split plans differ.
BATCHES = (1, 5, 16, 256)
# LSTM layers run our resident kernels up to H = 64 (32 in fp64), the split beyond and
# streaming past the split (dispatch rule 4). The default table compiles the largest tiles,
# which hold the most registers: resident tl.dot in tf32, bf16 and fp16 (batch 16; W-first on
# sm_90, 170-224 registers), the elementwise product in IEEE fp32 (which never takes tl.dot
# with four gates) and fp64 (110-142 registers; the 16-bit and TF32 elementwise tiles compiled
# the same, 0 B spilled, when checked); the split at its largest, H = 256 in TF32 and 512 and
# 1024 in bf16 (the backward's K = 1024, 2048 and 4096; 1024 on sm_90 only) on tensor cores,
# H = 256 in IEEE fp32 and fp64 and 512 in IEEE fp32 one row at a time (split.py; at 512 the
# forward at batch 1: from batch 3 on it takes the FMA products), IEEE fp32 512 (the forward),
# 768 and 1024 with FMA products (split_dot.py's forward, B in shared memory; split_2d.py's
# backward; 1024 streams on sm_80, whose 108 SMs do not hold its 128 programs); the
# tensor-core forward past the backward's one-dimensional limit (TF32 512 in registers and 768
# with B in shared memory, KC = 1 on sm_90 and 2 on sm_80, whose backwards split in two
# dimensions, split_2d.py; bf16 1024 on sm_80, whose 128 programs an A100 cannot hold: it
# streams, and whose backward there splits in two dimensions); streaming, whose W_hh chunks
# are streamed whatever H (one H per product and dtype class: tl.dot in bf16, TF32 (2048) and
# fp64, the elementwise product in IEEE fp32 (1024 on sm_80)); and the LSTMCell, whose kernel
# streams the weights whatever H, at batch 16 (tl.dot) in every dtype and 1 (elementwise) in
# bf16. Smaller tiles compile in
# tests/test_compile.py's shapes (sm_90, the newest Triton).
LSTM_SHAPES = [("tf32", 64, 16), ("bf16", 64, 16), ("fp16", 64, 16), ("fp32", 64, 16),
               ("fp64", 32, 1), ("tf32", 256, 16), ("bf16", 512, 16), ("bf16", 1024, 16),
               ("fp32", 256, 16), ("fp64", 256, 16),
               ("tf32", 512, 16), ("tf32", 768, 16), ("bf16", 2048, 16), ("tf32", 2048, 16),
               ("fp32", 512, 1), ("fp32", 512, 16), ("fp32", 768, 16), ("fp32", 1024, 1),
               ("fp64", 512, 16)]
# GRU layers: the largest resident tiles (three gates of BH = 64; 32 in fp64), tl.dot in TF32
# (h @ B) and bf16 (W-first on sm_90), the elementwise product in IEEE fp32 and fp64; the
# tensor-core split at the LSTM's limits (TF32 256, whose backward's K is the largest in
# registers, 512 and 768, its forward's in registers and in shared memory; bf16 512 and
# 1024, the backward's B in shared memory there); split.py's at H = 256 in IEEE fp32 and fp64
# and 512 in IEEE fp32 (the forward at batch 1), and IEEE fp32's FMA products at 512 (the
# forward at batch 16), 768 and 1024 (as the LSTM's);
# streaming past them in each product class (tl.dot in bf16, the elementwise product in IEEE
# fp32 on sm_80 at 1024).
GRU_SHAPES = [("tf32", 64, 16), ("bf16", 64, 16), ("fp32", 64, 1), ("fp64", 32, 1),
              ("tf32", 256, 16), ("tf32", 512, 16), ("bf16", 512, 16), ("bf16", 1024, 16),
              ("tf32", 768, 16), ("fp32", 256, 16), ("fp64", 256, 16), ("bf16", 2048, 16),
              ("fp32", 512, 1), ("fp32", 512, 16), ("fp32", 768, 16), ("fp32", 1024, 1)]
# GRUCell: the LSTMCell's kernel with three gates (tl.dot in TF32 and fp64, elementwise bf16)
GRU_CELL_SHAPES = [("tf32", 64, 16), ("fp64", 64, 16), ("bf16", 64, 1)]
LSTM_CELL_SHAPES = [(d, 64, 16) for d in ("tf32", "fp32", "bf16", "fp16", "fp64")] + \
    [("bf16", 64, 1)]
# ptxas sometimes parks a few scalars (8-24 B, e.g. halves of 64-bit addresses) on the stack at
# 60-170 registers, far from the limit, depending on the Triton version and the JIT's
# specialisation of a launch; such a frame stays in L1. A tile that does not fit spills far
# more: the resident float32 BH = 256 tile spills 288 B, 16-bit BH = 256 tiles 150-220 B.
# More than this is a fault; the report prints every spill.
SCALAR_SPILL_ALLOWANCE = 32


# --- Where W_hh lives during the loop, read from the compiled TTGIR ---------------------------
# The kernels' names for their pointer to W_hh (the product matrix B); the first one a kernel
# has is traced.
W_HH_POINTERS = ("p_b", "p_whh", "p_w_hh")
# Ops that read global memory; their first operand is the address (or descriptor).
_GLOBAL_READS = {"tt.load", "ttg.async_copy_global_to_local", "tt.descriptor_load",
                 "tt.descriptor_gather", "ttng.async_tma_copy_global_to_local"}
# Ops whose results are not addresses derived from their operands.
_NOT_ADDRESS = _GLOBAL_READS | {"ttg.local_load", "ttg.local_alloc", "ttg.local_store",
                                "tt.dot", "ttng.warp_group_dot", "tt.reduce", "tt.store"}
# Ops whose results are no longer W_hh itself (products, reductions, loop results).
_NOT_W_HH = {"tt.dot", "tt.dot_scaled", "ttng.warp_group_dot", "ttng.tc_gen5_mma", "tt.reduce",
             "tt.scan", "tt.store", "tt.atomic_rmw", "tt.atomic_cas", "scf.for", "scf.while",
             "scf.if"}
_LOOPS = ("scf.for", "scf.while")
_NAME = r"%[\w$.\-]+"
_USE = re.compile(_NAME + r"(?:#\d+)?")
_PAIR = re.compile(r"(" + _NAME + r")\s*=\s*(" + _NAME + r"(?:#\d+)?)")
_RESULTS = re.compile(r"((?:" + _NAME + r"(?::\d+)?\s*,\s*)*" + _NAME + r"(?::\d+)?)\s*=\s*(.*)$")
REGISTERS = "on-chip: registers"
CONVERTED = "on-chip: registers, converted each step"
SHARED = "on-chip: shared memory, re-read each step"
STAGED = "on-chip: registers, copied to shared memory each step"
STREAMED = "L2: streamed"


def _strip_locs(line: str) -> str:
    """The line without its loc(...) annotations (they nest parentheses and quote names)."""
    out, i = [], 0
    while (j := line.find("loc(", i)) >= 0:
        out.append(line[i:j])
        depth, k = 0, j + 3
        while k < len(line):
            depth += {"(": 1, ")": -1}.get(line[k], 0)
            k += 1
            if depth == 0:
                break
        i = k
    return "".join(out) + line[i:]


@dataclass
class _Op:
    name: str
    results: list      # value ids
    operands: list     # value ids
    loop_depth: int    # enclosing scf.for / scf.while regions
    result_type: str   # printed type text after the last "->" (else after the last " : ")


def _parse_ttgir(ttgir: str):
    """(arguments {python name: value id}, ops, region edges) of the kernel function in a
    TTGIR module. Values get unique ids (MLIR reuses names in sibling regions). Region edges
    (source id, destination id) carry values into and out of regions: initial values to loop
    iteration arguments, yields and conditions to iteration arguments and to results."""
    scopes, regions, ops, edges, args = [{}], [], [], [], {}
    count = [0]

    def define(name):
        scopes[-1][name] = count[0]
        count[0] += 1
        return count[0] - 1

    def lookup(token):
        return next((s[token] for s in reversed(scopes) if token in s), None)

    for raw in ttgir.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("tt.func"):
            for ssa, rest in re.findall(r"(" + _NAME + r"):([^%]*)", line.partition("(")[2]):
                named = re.search(r'loc\("([^"]+)"', rest)
                args[named.group(1) if named else ssa[1:]] = define(ssa)
            scopes.append({})
            regions.append(dict(op="tt.func", loop=False, outs=[], args=[]))
            continue
        line = _strip_locs(line).strip()
        if line.startswith("}"):
            closed = regions.pop() if regions else dict(op="", loop=False, outs=[], args=[])
            scopes.pop()
            if line.endswith("{"):  # "} do {" of a while, "} else {" of an if
                scopes.append({})
                regions.append(dict(closed, after=closed["op"] == "scf.while"))
            continue
        if line.startswith("^bb"):
            block_args = [define(n) for n in re.findall(r"(" + _NAME + r")\s*:", line)]
            if regions and regions[-1].get("after"):  # a while's body: what the condition passes
                edges.extend(zip(regions[-1].get("condition", []), block_args))
            continue
        match = _RESULTS.match(line)
        results_text, body = (match.group(1), match.group(2)) if match else ("", line)
        op_match = re.match(r'"?([\w.]+)"?', body)
        if not op_match:
            continue
        name = op_match.group(1)
        opens = body.endswith("{")
        pairs = _PAIR.findall(body) if opens else []
        paired = {dst for dst, _ in pairs}
        operands = [v for v in (lookup(t) for t in _USE.findall(body) if t not in paired)
                    if v is not None]
        outs = []
        for item in re.findall(_NAME + r"(?::\d+)?", results_text):
            base, _, n = item.partition(":")
            outs += [define(f"{base}#{k}") for k in range(int(n))] if n else [define(base)]
        types = body.rpartition("->")[2] if "->" in body else body.rpartition(" : ")[2]
        depth = sum(r["loop"] for r in regions)
        ops.append(_Op(name, outs, operands, depth, types.strip()))
        region = regions[-1] if regions else None
        if region is not None and name == "scf.condition":
            region["condition"] = operands[1:]
            edges.extend(zip(operands[1:], region["outs"]))
        elif region is not None and name == "scf.yield":
            edges.extend(zip(operands, region["outs"]))
            if region["loop"]:  # the next iteration's arguments
                edges.extend(zip(operands, region["args"]))
        if opens:
            inits = [lookup(src) for _, src in pairs]
            scopes.append({})
            region_args = [define(dst) for dst, _ in pairs]
            if name == "scf.for" and region_args:  # the induction variable is no iter_arg
                inits, region_args = inits[1:], region_args[1:]
            edges.extend((s, d) for s, d in zip(inits, region_args) if s is not None)
            regions.append(dict(op=name, loop=name in _LOOPS, outs=outs, args=region_args))
    return args, ops, edges


def _reach(seeds, ops, edges, through) -> set:
    """Values reached from `seeds` through ops for which through(op) holds (operands to
    results) and through region edges."""
    reached, changed = set(seeds), True
    while changed:
        changed = False
        for op in ops:
            if (through(op) and any(v in reached for v in op.operands)
                    and not reached.issuperset(op.results)):
                reached.update(op.results)
                changed = True
        for src, dst in edges:
            if src in reached and dst not in reached:
                reached.add(dst)
                changed = True
    return reached


def w_hh_pointer(kernel) -> str:
    """The name of `kernel`'s W_hh pointer argument (the first of W_HH_POINTERS it has)."""
    names = getattr(kernel, "arg_names", None) or [p.name for p in kernel.params]
    found = [name for name in W_HH_POINTERS if name in names]
    if not found:
        raise ValueError(f"{getattr(kernel, '__name__', kernel)} has none of {W_HH_POINTERS}")
    return found[0]


def w_hh_placement(ttgir: str, pointer: str, arguments=None) -> str:
    """Where the matrix behind kernel argument `pointer` lives while the kernel loops, read
    from its compiled TTGIR. Traced from the argument through address arithmetic to the global
    loads of it; then:
    - loaded inside a loop (re-read from global memory, L2, every iteration): STREAMED;
    - loaded before the loops: followed through what happens to it there (type conversions,
      layout conversions, rounding, a copy into shared memory) to the values the loops use.
      A register tensor: REGISTERS (CONVERTED if the loop first changes its layout, which goes
      through shared memory or shuffles every step); a shared-memory buffer (ttg.local_alloc)
      that the loop reads (ttg.local_load into registers, or a warpgroup MMA operand): SHARED.
    Several places (part of the matrix in each) are joined with " + "; "unknown: ..." when the
    trace finds no load. The argument is found by the name its loc() gives it (or its SSA
    name); where the TTGIR names arguments only by position (%arg2), by its position in
    `arguments`, the names of the compiled function's arguments (compiled_arguments)."""
    args, ops, edges = _parse_ttgir(ttgir)
    arg = args.get(pointer)
    if arg is None and arguments and pointer in arguments and len(arguments) == len(args):
        arg = list(args.values())[arguments.index(pointer)]
    if arg is None:
        return f"unknown: no kernel argument {pointer}"
    address = _reach({arg}, ops, edges, lambda op: op.name not in _NOT_ADDRESS)
    reads = [op for op in ops if op.name in _GLOBAL_READS and op.operands[:1]
             and op.operands[0] in address]
    if not reads:
        return f"unknown: no load of {pointer}"
    if any(op.loop_depth > 0 for op in reads):
        return STREAMED
    copies = [op.operands[1] for op in reads if op.name != "tt.load" and len(op.operands) > 1]
    seeds = {v for op in reads for v in op.results} | set(copies)
    before = [op for op in ops if op.loop_depth == 0]
    data = _reach(seeds, before, [], lambda op: op.name not in _NOT_W_HH)
    stored = [op.operands[1] for op in before
              if op.name == "ttg.local_store" and op.operands[0] in data]
    data = _reach(data | set(stored), before, [], lambda op: op.name not in _NOT_W_HH)
    defining = {v: op for op in ops for v in op.results}
    places = set()
    for value in data:
        op = defining.get(value)
        in_shared = value in copies or (op is not None and (
            op.name.startswith("ttg.memdesc") or op.name == "ttg.local_alloc"
            or op.result_type.startswith("!ttg.memdesc")))
        kind = _in_loop(value, ops, edges)
        if kind is not None:
            places.add(SHARED if in_shared else kind)
    return " + ".join(sorted(places)) if places else "L2: read once, before any loop"


def _in_loop(value, ops, edges):
    """How the loops use a register tensor (or shared buffer) `value` defined outside them,
    following it through iteration arguments and through ops inside the loop that keep it
    W_hh (layout-free element-wise ops): None if no loop uses it; STAGED if a loop stores it
    into shared memory (ttg.local_alloc) every iteration; CONVERTED if a loop changes its
    layout; else REGISTERS."""
    frontier, seen, found = {value}, set(), set()
    used = False
    while frontier:
        seen |= frontier
        carried = {d for s, d in edges if s in frontier}
        new = set()
        for op in ops:
            if op.loop_depth == 0 or not set(op.operands) & (frontier | carried):
                continue  # not inside a loop (before or after the loops), or unrelated
            if op.name in _LOOPS or op.name in ("scf.yield", "scf.condition"):
                continue
            used = True
            if op.name == "ttg.local_alloc":
                found.add(STAGED)
            elif op.name == "ttg.convert_layout":
                found.add(CONVERTED)
            elif op.name not in _NOT_W_HH and op.name not in ("ttg.local_load", "tt.store"):
                new.update(op.results)
        frontier = (new | (carried - seen)) - seen
    if not used:
        return None
    return STAGED if STAGED in found else CONVERTED if CONVERTED in found else REGISTERS


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
    w_hh: str         # where W_hh lives during the loop, read from the TTGIR (w_hh_placement)
    error: str = ""
    # One time step as cost_model.py models it from the SASS (a model, not a measurement):
    # issue cycles per SM; per-warp MMA, FFMA, MUFU and BAR.SYNC counts; L2 bytes read by the
    # grid; dependent global round trips; modeled µs; shared-memory cycles per SM. sm_90 rows
    # only (H100 constants); zero elsewhere and where the build failed.
    issue_cycles: float = 0.0
    mma: float = 0.0
    ffma: float = 0.0
    mufu: float = 0.0
    bar_sync: float = 0.0
    l2_bytes: float = 0.0
    round_trips: float = 0.0
    model_us: float = 0.0
    shared_cycles: float = 0.0  # shared-memory bytes moved per SM and step / bytes per cycle
    cell: str = "rnn"  # the recurrence's cell (kernels/cells.py): "rnn", "lstm" or "gru"

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
        if not self.error and self.w_hh.startswith("unknown"):
            found.append(f"W_hh not traced in the compiled code ({self.w_hh})")
        elif (not self.error and self.config.startswith(("resident/", "split/"))
              and not self.w_hh.startswith("on-chip")):
            found.append(f"W_hh of an on-chip variant is {self.w_hh} in the compiled loop")
        return found


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

    saved = {name: getattr(launch, name)
             for name in launch.KERNEL_NAMES + ("_split_capacity",)}
    for name in launch.KERNEL_NAMES:
        setattr(launch, name, Recorder(saved[name]))
    # A split launch is planned here for a device without limits (one launch, both
    # directions); measure() plans it again for the target's capacity.
    launch._split_capacity = lambda *args: 1 << 30
    try:
        yield launches
    finally:
        for name, value in saved.items():
            setattr(launch, name, value)


def _lstm_launch_arguments(pass_: str, dtype: torch.dtype, H: int, N: int, lengths,
                           allow_tf32: bool, D: int, cfg):
    """_launch_arguments for an LSTM layer (lstm_forward / lstm_backward)."""
    T = 2
    seq, gates, states = (torch.empty((T, N, D * H), dtype=dtype),
                          torch.empty((T, N, D * 4 * H), dtype=dtype),
                          torch.empty((D, N, H), dtype=dtype))
    w_hh = [torch.empty((4 * H, H), dtype=dtype) for _ in range(D)]
    with _captured_launches() as launches:
        if pass_ == "forward":
            launch.lstm_forward([torch.empty((T, N, 4 * H), dtype=dtype) for _ in range(D)],
                                states, torch.empty_like(states), w_hh, lengths, allow_tf32,
                                cfg, b_hh=[torch.empty(4 * H, dtype=dtype) for _ in range(D)])
        else:
            launch.lstm_backward(seq, torch.empty_like(seq), torch.empty_like(seq),
                                 torch.empty_like(seq), gates, states, w_hh, lengths,
                                 allow_tf32, cfg)
    (launched,) = launches
    return launched


def _gru_launch_arguments(pass_: str, dtype: torch.dtype, H: int, N: int, lengths,
                          allow_tf32: bool, D: int, cfg):
    """_launch_arguments for a GRU layer (gru_forward / gru_backward)."""
    T = 2
    seq, gates = (torch.empty((T, N, D * H), dtype=dtype),
                  torch.empty((T, N, D * 4 * H), dtype=dtype))
    h0, w_hh = torch.empty((D, N, H), dtype=dtype), [torch.empty((3 * H, H), dtype=dtype)
                                                     for _ in range(D)]
    with _captured_launches() as launches:
        if pass_ == "forward":
            launch.gru_forward([torch.empty((T, N, 3 * H), dtype=dtype) for _ in range(D)], h0,
                               w_hh, lengths, allow_tf32, cfg,
                               b_hh=[torch.empty(3 * H, dtype=dtype) for _ in range(D)])
        else:
            launch.gru_backward(seq, torch.empty_like(seq), gates, h0, w_hh, lengths,
                                allow_tf32, cfg)
    (launched,) = launches
    return launched


def _launch_arguments(pass_: str, dtype: torch.dtype, H: int, N: int, packed: bool,
                      allow_tf32: bool, D: int = 1, cfg=None, cell: str = "rnn"):
    """(kernel, args, kwargs) the launcher passes for a first layer's recurrence (D directions,
    T = 2; h0 at the start of its buffer) or for a cell call with I = H, built from CPU tensors
    of the real shapes and strides (never written). Later layers' h0 slices and other input
    sizes can change the JIT's alignment marks, so their code may differ slightly."""
    T = 2
    lengths = torch.full((N,), T, dtype=torch.int32) if packed else None
    if cell == "lstm" and pass_ != "cell":
        return _lstm_launch_arguments(pass_, dtype, H, N, lengths, allow_tf32, D, cfg)
    if cell == "gru" and pass_ != "cell":
        return _gru_launch_arguments(pass_, dtype, H, N, lengths, allow_tf32, D, cfg)
    seq = torch.empty((T, N, D * H), dtype=dtype)
    # Each direction's own W_hh, b_hh and projection, as the module passes its parameters
    # (a bias or none compile the same code: the kernels take its length at run time).
    w_hh = [torch.empty((H, H), dtype=dtype) for _ in range(D)]
    with _captured_launches() as launches:
        if pass_ == "forward":
            launch.recurrence_forward([torch.empty((T, N, H), dtype=dtype) for _ in range(D)],
                                      torch.empty((D, N, H), dtype=dtype), w_hh, lengths,
                                      False, allow_tf32, cfg,
                                      b_hh=[torch.empty(H, dtype=dtype) for _ in range(D)])
        elif pass_ == "backward":
            launch.recurrence_backward(seq, torch.empty_like(seq), w_hh, lengths, False,
                                       allow_tf32, cfg)
        elif cell == "gru":  # GRUCell, with I = H
            x, bias = torch.empty((N, H), dtype=dtype), torch.empty(3 * H, dtype=dtype)
            w = torch.empty((3 * H, H), dtype=dtype)
            launch.gru_cell_forward(x, torch.empty_like(x), w, w, bias, bias, allow_tf32)
        elif cell == "lstm":  # LSTMCell, with I = H
            x, bias = torch.empty((N, H), dtype=dtype), torch.empty(4 * H, dtype=dtype)
            w = torch.empty((4 * H, H), dtype=dtype)
            launch.lstm_cell_forward(x, torch.empty_like(x), torch.empty_like(x), w, w, bias,
                                     bias, allow_tf32)
        else:  # the cell, with I = H
            x, bias = torch.empty((N, H), dtype=dtype), torch.empty(H, dtype=dtype)
            w = torch.empty((H, H), dtype=dtype)
            launch.rnn_cell_forward(x, torch.empty_like(x), w, w, bias, bias, False, allow_tf32)
    (launched,) = launches
    return launched


def _cuobjdump() -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def compile_resources(kernel, args, kwargs, arch: int):
    """(registers, stack bytes, shared bytes, PTX, TTGIR, cubin) of `kernel` compiled for sm_<arch> as
    a launch with these arguments would compile it: the JIT's own binding and specialisation
    (integer arguments equal to 1 become constants, multiples of 16 and aligned pointers are
    marked so), so the report measures exactly the code that runs. Raises on a compile
    failure."""
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound,
                                                              specialization, options)
    return _compile(ASTSource(kernel, signature, constexprs, attrs), target, options)


def compiled_arguments(kernel, args, kwargs, arch: int) -> list:
    """Names of the parameters that stay arguments of the compiled function, in order (the
    JIT turns constexprs, and integers it specialises, into constants)."""
    backend = make_backend(GPUTarget("cuda", arch, 32))
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    constexprs = kernel._pack_args(backend, kwargs, bound, specialization, options)[2]
    return [p.name for i, p in enumerate(kernel.params) if (i,) not in constexprs]


_compiled = {}  # (source and specialisation, arch, options) -> resources


def _compile(src, target, options):
    key = (src.hash(), target.arch, repr(sorted(options.__dict__.items())))
    if key not in _compiled:
        compiled = triton.compile(src, target=target, options=options.__dict__)
        usage = _cuobjdump_of(compiled.asm["cubin"], "-res-usage")
        regs = int(re.search(r"REG:(\d+)", usage).group(1))
        stack = int(re.search(r"STACK:(\d+)", usage).group(1))
        _compiled[key] = (regs, stack, compiled.metadata.shared, compiled.asm["ptx"],
                          compiled.asm["ttgir"], compiled.asm["cubin"])
    return _compiled[key]


def _cuobjdump_of(cubin: bytes, flag: str) -> str:
    """What `cuobjdump <flag>` prints for a cubin."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([_cuobjdump(), flag, f.name], capture_output=True, text=True,
                              check=True).stdout


def _sass_cache_dir() -> str:
    base = os.environ.get("TRITON_CACHE_DIR") or os.path.join(os.path.expanduser("~"),
                                                              ".triton", "cache")
    return os.path.join(base, "triton_rnn_sass")


def disassemble(cubin: bytes) -> str:
    """cuobjdump -sass of a cubin, kept on disk beside Triton's cache by the cubin's hash:
    a disassembly costs ~0.7 s of CPU (more than many compilations it follows), and the
    report's rows and the tests read the same kernels again and again."""
    path = os.path.join(_sass_cache_dir(), hashlib.sha256(cubin).hexdigest() + ".sass")
    if os.path.exists(path):
        with open(path) as f:
            return f.read()
    sass = _cuobjdump_of(cubin, "-sass")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=os.path.dirname(path), delete=False) as f:
        f.write(sass)
    os.replace(f.name, path)  # whole or absent, with several workers at once
    return sass


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


_read = {}  # (reader, its arguments) -> what it read


def _read_once(reader, *args):
    """reader(*args), read once per compiled kernel: most rows share their kernel with others
    (padded and packed, the batch classes of a tile, the cell at every H), and reading its
    TTGIR or PTX again would find the same."""
    key = (reader, *args)
    if key not in _read:
        _read[key] = reader(*args)
    return _read[key]


def programs_per_sm(arch: int, regs: int, shared: int, num_warps: int) -> int:
    limits = ARCHS[arch]
    return occupancy.programs_per_sm(regs, shared, num_warps, limits["regs_per_sm"],
                                     limits["smem_per_sm"], 2048, limits["max_blocks_per_sm"])


def measure(pass_: str, dtype_name: str, H: int, N: int, arch: int, directions: int = 1,
            packed: bool = False, split: bool = True, cell: str = "rnn",
            config: Config = None) -> Row:
    """pass_: "forward" or "backward" (recurrence of a layer), or "cell" (RNNCell).
    split=False: the configuration the launcher falls back to where split does not fit;
    config: the split of fewer programs it tries before that (split_with_fewer_programs).
    cell: the recurrence's cell, "rnn", "lstm" or "gru"."""
    dtype, allow_tf32 = DTYPES[dtype_name]
    if pass_ == "cell":
        cfg = choose_cell(N, dtype)
        programs = triton.cdiv(N, cfg.BN) * triton.cdiv(H, cfg.BH)
    else:
        cfg = config or choose(H, N, dtype, allow_tf32, split, arch=arch,
                               gates=GATES[CELLS[cell]], pass_=pass_, directions=directions)
        programs = triton.cdiv(N, cfg.BN) * directions
    ordering = []
    w_hh = "-"
    try:
        launched = _launch_arguments(pass_, dtype, H, N, packed, allow_tf32, directions,
                                     None if pass_ == "cell" else cfg, cell)
        regs, stack, shared, ptx, ttgir, cubin = compile_resources(*launched, arch)
        error = ""
        w_hh = _read_once(w_hh_placement, ttgir, w_hh_pointer(launched[0]),
                          tuple(compiled_arguments(*launched, arch)))
        if cfg.variant == "split":
            ordering = _read_once(ordering_faults, ptx)
    except Exception as exc:  # a failure is a finding, not a crash
        regs = stack = shared = 0
        ptx = ttgir = cubin = ""
        error = f"build failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    if cfg.use_dot and min(cfg.BN, cfg.BH) < 16:
        # Some Triton versions accept this for some dtypes (falling back to FMA), others reject
        # it: a shipped configuration must compile on all the versions we support.
        error = error or f"tl.dot with a dimension under 16 (BN={cfg.BN}, block={cfg.BH})"
    per_sm = programs_per_sm(arch, regs, shared, cfg.num_warps) if not error else 0
    capacity = per_sm * ARCHS[arch]["sms"]
    config = cfg.describe()
    S, rows, launches = 1, 1, 1
    if cfg.variant == "split" and not error:
        S = cfg.slices(H)
        plan = launch.split_plan(S, N, directions, capacity, launch.split_max_groups(cfg, N))
        if plan is None:  # what the launcher runs instead
            fewer = split_with_fewer_programs(cfg, H, dtype, allow_tf32, arch)
            row = measure(pass_, dtype_name, H, N, arch, directions, packed,
                          split=fewer is not None, cell=cell, config=fewer)
            row.w_hh += f" (split needs {S} programs, {capacity} fit)"
            return row
        else:
            G, rows, per_launch = plan
            programs = S * G * per_launch
            launches = directions // per_launch
            config += f" S={S} G={G} rows/group={rows} launches={launches}"
            w_hh += f", {S} slices"
    batch_kind = "-" if pass_ == "cell" else "packed" if packed else "padded"
    row = Row(arch, pass_, batch_kind, dtype_name, H, N, config, regs, stack, shared,
              per_sm, programs, capacity, w_hh, cell=cell)
    # The model's constants are an H100's: sm_90 rows only (sm_80 rows leave it at zero).
    modeled = _with_model and arch == 90
    sass = disassemble(cubin) if cubin and (modeled or _dump_dir) else ""
    if not error and modeled:
        try:
            _model(row, cfg, sass, dtype, directions, S, rows, launches)
        except Exception as exc:  # a model that cannot read the code is a finding too
            error = f"cost model: {type(exc).__name__}: {exc}"
    if _dump_dir and sass:
        _dump(row, ttgir, ptx, sass)
    row.error = "; ".join(filter(None, [error] + [f"PTX: {f}" for f in ordering]))
    return row


def _model(row: Row, cfg, sass: str, dtype: torch.dtype, D: int, S: int, rows: int,
           launches: int) -> None:
    """Fill the row's cost-model columns (cost_model.py) for one step of the layer: each of
    `launches` launches runs its directions' whole sequence, one after another."""
    pass_ = "cell" if cfg.variant == "cell" else row.pass_
    counts = cost_model.step_counts(sass, cost_model.loop_trips(cfg.variant, row.H, cfg.BH,
                                                                 rows, cfg.BN),
                                    whole_kernel=cfg.variant == "cell")
    l2_bytes, trips = cost_model.step_traffic(
        cfg.variant, pass_, row.H, row.N, D // launches, dtype.itemsize,
        launch.acc_dtype(dtype).itemsize, cfg.BN, cfg.BH, S, rows,
        GATES[CELLS[row.cell]], cfg.k_parts)
    cycles = cost_model.issue_cycles(counts.instructions, cfg.num_warps, row.programs,
                                     ARCHS[row.arch]["sms"])
    row.issue_cycles, row.l2_bytes = cycles * launches, l2_bytes * launches
    row.mma, row.ffma, row.mufu, row.bar_sync = counts.mma, counts.ffma, counts.mufu, \
        counts.bar_sync
    row.round_trips = trips * launches
    shared = cost_model.shared_cycles(counts.shared_bytes, cfg.num_warps, row.programs,
                                      ARCHS[row.arch]["sms"])
    row.shared_cycles = shared * launches
    row.model_us = cost_model.model_us(cycles, l2_bytes, trips, shared) * launches


_dump_dir = None  # --dump DIR: each row's TTGIR, PTX and SASS are written there
_with_model = True  # --no-model: skip the cost model and the disassembly it reads


def dump_name(row: Row) -> str:
    cell = "" if row.cell == "rnn" else f"{row.cell}-"
    return (f"sm{row.arch}-{cell}{row.pass_}-{row.batch_kind.replace('-', 'cell')}-{row.dtype}"
            f"-H{row.H}-N{row.N}")


def _dump(row: Row, ttgir: str, ptx: str, sass: str) -> None:
    for ext, text in (("ttgir", ttgir), ("ptx", ptx), ("sass", sass)):
        with open(os.path.join(_dump_dir, f"{dump_name(row)}.{ext}"), "w") as f:
            f.write(text)


def table(archs, shapes=None, directions: int = 1, jobs: int = 1,
          cells=("rnn", "lstm", "gru"), lstm_shapes=None) -> list:
    """Rows for every (dtype, H, batch) of the default table, or of `shapes` if given, in
    this order, for the recurrences of `cells` (LSTM and GRU rows: of `lstm_shapes` if given,
    else of the same shapes); `jobs` processes compile them (Triton's on-disk cache is shared
    among them)."""
    default = shapes is None and lstm_shapes is None
    shapes = shapes or [(d, H, N) for d in DTYPES for H in HIDDEN_SIZES for N in BATCHES]
    cases = [] if "rnn" not in cells else \
        [(p, d, H, N, arch, directions, packed) for arch in archs
         for p in ("forward", "backward") for packed in (False, True) for d, H, N in shapes] + \
        [("cell", d, H, N, arch, 1, False) for arch in archs for d, H, N in shapes]
    # LSTM layers (padded: a packed batch runs the same compiled kernel; LSTM_SHAPES)
    lstm_shapes = LSTM_SHAPES if default else lstm_shapes or shapes
    cases += [(p, d, H, N, arch, directions, False, True, "lstm") for arch in archs
              for p in ("forward", "backward") for d, H, N in lstm_shapes if "lstm" in cells]
    # LSTMCell: its kernel streams the weights in chunks whatever H, so one H per product
    cases += [("cell", d, H, N, arch, 1, False, True, "lstm") for arch in archs
              for d, H, N in (LSTM_CELL_SHAPES if default else lstm_shapes) if "lstm" in cells]
    cases += [(p, d, H, N, arch, directions, False, True, "gru") for arch in archs
              for p in ("forward", "backward")
              for d, H, N in (GRU_SHAPES if default else lstm_shapes) if "gru" in cells]
    cases += [("cell", d, H, N, arch, 1, False, True, "gru") for arch in archs
              for d, H, N in (GRU_CELL_SHAPES if default else lstm_shapes) if "gru" in cells]
    if jobs <= 1:
        return [measure(*case) for case in cases]
    # Forked workers (no CUDA here), each taking whole groups of the cases that share a
    # configuration, and so mostly one compiled kernel (every batch class of a tile, padded
    # and packed; the cell's every H): no two workers then compile the same kernel at once,
    # which chunks of the case list did where a chunk's end fell inside a group (with the
    # LSTM cases among the RNN ones, most kernels: +105 s of CPU in the gate).
    groups = {}
    for i, case in enumerate(cases):
        groups.setdefault(_group_key(case), []).append(i)
    rows = [None] * len(cases)
    context = multiprocessing.get_context("fork")
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context) as pool:
        for indices, measured in zip(groups.values(), pool.map(
                _measure_cases, [[cases[i] for i in g] for g in groups.values()])):
            for i, row in zip(indices, measured):
                rows[i] = row
    return rows


def _group_key(case) -> tuple:
    """What decides the compiled kernel of a case, short of compiling it: the target, the cell,
    the pass, the dtype and the dispatcher's configuration (the split plan and the batch
    aside)."""
    pass_, dtype_name, H, N, arch = case[:5]
    cell = case[8] if len(case) > 8 else "rnn"
    dtype, allow_tf32 = DTYPES[dtype_name]
    cfg = choose_cell(N, dtype) if pass_ == "cell" else \
        choose(H, N, dtype, allow_tf32, arch=arch,
               gates=GATES[CELLS[cell]], directions=case[5])
    return arch, cell, pass_, dtype_name, case[5], cfg


def _measure_cases(cases) -> list:
    return [measure(*case) for case in cases]


def _parse_shapes(text: str) -> list:
    shapes = []
    for item in text.split(","):
        dtype, H, N = item.split(":")
        if dtype not in DTYPES:
            raise argparse.ArgumentTypeError(f"unknown dtype {dtype!r}; one of {list(DTYPES)}")
        shapes.append((dtype, int(H), int(N)))
    return shapes


def _model_cells(r: Row) -> tuple:
    if not r.model_us:
        return ("-",) * 6
    return (f"{r.model_us:.2f}", f"{r.issue_cycles:.0f}", f"{r.shared_cycles:.0f}",
            f"{r.l2_bytes / 1024:.1f}", f"{r.round_trips:g}",
            f"{r.mma:.0f}/{r.ffma:.0f}/{r.mufu:.0f}/{r.bar_sync:.0f}")


def _print(rows) -> None:
    head = ("arch", "cell", "pass", "batch", "dtype", "H", "N", "configuration", "regs",
            "spill B", "smem B", "prog/SM", "programs/capacity", "W_hh", "model µs/step",
            "issue cyc/SM", "smem cyc/SM", "L2 KB", "trips", "mma/ffma/mufu/bar per warp",
            "faults")
    lines = [head] + [(f"sm_{r.arch}", r.cell, r.pass_, r.batch_kind, r.dtype, r.H, r.N,
                       r.config,
                       r.registers, r.spilled_bytes, r.shared_bytes, r.programs_per_sm,
                       f"{r.programs}/{r.capacity}", r.w_hh, *_model_cells(r),
                       "; ".join(r.faults) or "-")
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
    parser.add_argument("--cells", default="rnn,lstm,gru",
                        help="the recurrences' cells: rnn, lstm and/or gru")
    parser.add_argument("--lstm-shapes", type=_parse_shapes, default=None,
                        help="dtype:H:batch[,...] of the LSTM and GRU rows (default: those of "
                             "--shapes)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="compile in this many processes (e.g. one per core)")
    parser.add_argument("--dump", metavar="DIR", default=None,
                        help="write each row's TTGIR, PTX and SASS into DIR, named by the row")
    parser.add_argument("--no-model", action="store_true",
                        help="skip the cost model (its disassembly costs ~0.7 s of CPU per "
                             "kernel; no fault but a model that cannot read the code "
                             "depends on it)")
    args = parser.parse_args(argv)
    if interpreting():
        # Under the interpreter the kernels are not compilable JIT functions: run afresh.
        env = dict(os.environ, TRITON_INTERPRET="0")
        argv = sys.argv[1:] if argv is None else argv
        return subprocess.run([sys.executable, "-m", __spec__.name, *argv], env=env).returncode
    archs = sorted(ARCHS, reverse=True) if args.arch == "all" else [int(args.arch)]
    global _dump_dir, _with_model
    _with_model = not args.no_model
    if args.dump:
        os.makedirs(args.dump, exist_ok=True)
        _dump_dir = args.dump
    rows = table(archs, args.shapes, args.directions, args.jobs, args.cells.split(","),
                 args.lstm_shapes)
    if args.json:
        print(json.dumps([dict(asdict(r), faults=r.faults) for r in rows], indent=1))
    else:
        print("Variant rule: kernels/dispatch.py. 'spill B' is the compiled stack frame; "
              "'programs/capacity' is the launch's programs against co-resident capacity "
              "(only variants whose programs exchange state need all of them co-resident).")
        print(cost_model.HEADER)
        _print(rows)
    bad = [r for r in rows if r.faults]
    if bad:
        print(f"{len(bad)} configuration(s) with faults", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
