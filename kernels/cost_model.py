"""A cost model of one time step, read from a kernel's compiled SASS: a model, not a measurement.

    µs per step = max(issue cycles / clock, shared-memory cycles / clock,
                      L2 bytes / L2 bandwidth) + round trips x L2 latency

with fixed H100 constants (below). The compile gate (report.py) prints it beside every
configuration; the first GPU run (perf/gpu_check.py) is what calibrates it.

- Issue cycles per SM: warp instructions of the time loop's body, each inner loop multiplied by
  its trip count for the row's shape, times warps per program and programs per SM (the launch's
  programs over the SMs, at least one), over 4 schedulers.
- Shared-memory cycles per SM: bytes the time loop's shared-memory loads and stores move
  (LDS, STS, LDSM, STSM, and cp.async's LDGSTS; by each instruction's width, 32 lanes, guarded
  or not), counted like instructions, over the SM's shared-memory bandwidth.
- MMA (tensor-core), FFMA (fused multiply-adds on CUDA cores, any width), MUFU and BAR.SYNC:
  warp instructions per warp and step, counted the same way.
- L2 bytes read per step by the whole grid, and the step's dependent global round trips (a
  load whose result the step waits for; a barrier between programs counts 2.5): from each
  variant's design as written down in `step_traffic` (the SASS does not say what a load waits
  for), so a reviewer can check them against the kernels.

Which code is "the step": the SASS's control-flow graph (basic blocks, edges from branches and
fall-through), natural loops from its back edges (an edge to a block that dominates its
source) and the blocks that reach the loop's latch without passing its header. The time loop
is the outermost loop with the most instructions (a kernel's failure path after it is smaller);
the RNNCell kernel has no time loop, and its whole kernel is one step. Loops inside the step:
one that polls with an acquire load (the barrier's wait: LDG.E.STRONG.GPU, then CCTL.IVALL;
the exchanged state's .cg loads are strong loads without the invalidation) runs once (no
waiting counted beyond the 2.5); every other loop at nesting level d inside the step gets the
variant's trip count for level d (`loop_trips`), whatever the compiler made of it. So a loop
ptxas unrolled (a main loop over u rows at a time, then a remainder) is counted as if each
part ran every trip: the split backward's first row loop at tf32 H = 1024 is unrolled 4x, and
its step counts about 1.8x the instructions it runs. Both sides of a branch inside the step
count once per step.
"""
import re
from dataclasses import dataclass

import triton

# H100 SXM constants the model uses (fixed in advance; the first GPU run calibrates them).
CLOCK_GHZ = 1.75
L2_LATENCY_CYCLES = 700
L2_BYTES_PER_S = 5.5e12
SCHEDULERS_PER_SM = 4
SHARED_BYTES_PER_CYCLE = 128  # per SM: 32 banks of 4 bytes
BARRIER_ROUND_TRIPS = 2.5
HEADER = (f"Model from compiled code (each row's SASS), not a measurement, with H100 "
          f"constants: µs/step = max(issue cycles / {CLOCK_GHZ} GHz, shared-memory bytes per "
          f"SM / {SHARED_BYTES_PER_CYCLE} B per cycle, L2 bytes / "
          f"{L2_BYTES_PER_S / 1e12:g} TB/s) + round trips x {L2_LATENCY_CYCLES} cycles; issue "
          f"cycles per SM = warp instructions per step x warps x programs per SM / "
          f"{SCHEDULERS_PER_SM}.")

_LINE = re.compile(r"^\s*/\*([0-9a-f]+)\*/\s+(@!?U?P[T\d]+\s+)?([A-Z][A-Z0-9_.]*)([^;]*);")
_MMA = re.compile(r"^(HMMA|HGMMA|DMMA|IMMA|BMMA|QGMMA|IGMMA)")
_FMA = re.compile(r"^(FFMA|DFMA|HFMA2(?!\.MMA))")  # HFMA2.MMA is also ptxas's constant move
_SHARED = re.compile(r"^(LDS|STS|LDSM|STSM|LDGSTS)(\.|$)")
_LANE_BYTES = {"U8": 1, "S8": 1, "U16": 2, "S16": 2, "64": 8, "128": 16}
_MATRICES = {"2": 2, "4": 4}


def shared_bytes(opcode: str) -> int:
    """Bytes of shared memory one warp instruction moves: LDS/STS/LDGSTS by their width suffix
    (32 bits without one) for 32 lanes; LDSM/STSM by their count of 8x8 16-bit matrices."""
    match = _SHARED.match(opcode)
    if not match:
        return 0
    parts = opcode.split(".")[1:]
    if match.group(1) in ("LDSM", "STSM"):
        return 128 * next((_MATRICES[p] for p in parts if p in _MATRICES), 1)
    return 32 * next((_LANE_BYTES[p] for p in parts if p in _LANE_BYTES), 4)


@dataclass(frozen=True)
class Instruction:
    address: int
    opcode: str
    predicated: bool    # may not execute (a guard, or a branch on a predicate operand)
    target: int = None  # a branch's destination address


def parse_sass(sass: str) -> list:
    """The instructions of the (one) function in cuobjdump -sass output, in address order."""
    found = []
    for line in sass.splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        address, predicate, opcode, operands = match.groups()
        target, conditional = None, predicate is not None
        if opcode.startswith("BRA"):
            hexes = re.findall(r"0x([0-9a-f]+)", operands)
            target = int(hexes[-1], 16) if hexes else None
            # BRA P5, addr / BRA.U !UP0, addr / BRA.DIV: conditional without a guard
            conditional = conditional or bool(re.match(r"\s*!?U?P[0-6]\b", operands)) or \
                any(kind in opcode for kind in (".DIV", ".CONV"))
        found.append(Instruction(int(address, 16), opcode, conditional, target))
    return found


@dataclass
class Loop:
    header: int       # index of the header block
    blocks: set       # indices of the blocks in the loop (header included)
    parent: "Loop" = None

    @property
    def depth(self) -> int:
        return 0 if self.parent is None else 1 + self.parent.depth


class Graph:
    """Basic blocks, edges and natural loops of a function's instructions."""

    def __init__(self, instructions: list):
        self.instructions = instructions
        index = {ins.address: i for i, ins in enumerate(instructions)}
        leaders = {0}
        for i, ins in enumerate(instructions):
            if ins.opcode.startswith(("BRA", "EXIT", "RET")):
                leaders.add(i + 1)
            if ins.target is not None and ins.target in index:
                leaders.add(index[ins.target])
        starts = sorted(s for s in leaders if s < len(instructions))
        self.ranges = [(s, e) for s, e in zip(starts, starts[1:] + [len(instructions)])]
        block_of = {s: b for b, (s, _) in enumerate(self.ranges)}
        self.successors = []
        for b, (s, e) in enumerate(self.ranges):
            last = instructions[e - 1]
            succ = set()
            if last.target is not None and last.target in index:
                succ.add(block_of[index[last.target]])
            # a predicated EXIT or branch may fall through; an unconditional one does not
            ends = last.opcode.startswith(("EXIT", "RET", "BRA")) and not last.predicated
            if not ends and b + 1 < len(self.ranges):
                succ.add(b + 1)
            self.successors.append(succ)
        self.reachable = self._reach({0}, self.successors)
        self.loops = self._loops()

    @staticmethod
    def _reach(seeds, edges) -> set:
        seen, todo = set(seeds), list(seeds)
        while todo:
            for nxt in edges[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    def _dominators(self, predecessors) -> dict:
        """For each reachable block, the blocks every path from the entry to it passes."""
        reachable = sorted(self.reachable)
        dom = {b: set(reachable) for b in reachable}
        dom[0] = {0}
        changed = True
        while changed:
            changed = False
            for b in reachable[1:]:
                preds = [dom[p] for p in predecessors[b] if p in self.reachable]
                new = set.intersection(*preds) | {b} if preds else {b}
                if new != dom[b]:
                    dom[b], changed = new, True
        return dom

    def _loops(self) -> list:
        predecessors = [set() for _ in self.ranges]
        for b, succ in enumerate(self.successors):
            for s in succ:
                predecessors[s].add(b)
        dominators = self._dominators(predecessors)
        by_header = {}
        for b in self.reachable:
            for h in self.successors[b]:
                if h in dominators[b]:  # a back edge: b is a latch of the loop headed by h
                    body, todo = {h, b}, [b] if b != h else []
                    while todo:
                        for p in predecessors[todo.pop()]:
                            if p not in body and p in self.reachable:
                                body.add(p)
                                todo.append(p)
                    by_header.setdefault(h, set()).update(body)
        loops = []  # one per body: headers whose loops have the same blocks are one loop
        for h, body in sorted(by_header.items()):
            if all(body != other.blocks for other in loops):
                loops.append(Loop(h, body))
        for loop in loops:  # the parent: the smallest larger loop holding this one
            holders = [o for o in loops if len(o.blocks) > len(loop.blocks)
                       and loop.blocks <= o.blocks]
            loop.parent = min(holders, key=lambda o: len(o.blocks), default=None)
        return loops

    def size(self, blocks) -> int:
        return sum(e - s for b, (s, e) in enumerate(self.ranges) if b in blocks)

    def block_instructions(self, b) -> list:
        s, e = self.ranges[b]
        return self.instructions[s:e]


def is_poll_loop(graph: Graph, loop: Loop) -> bool:
    """A loop that waits on a barrier counter: an acquire load in its body, which compiles to
    a strong GPU-scope load and an L1 invalidation (CCTL.IVALL). The exchanged state's .cg
    loads are strong GPU-scope loads too, without the invalidation."""
    return any(ins.opcode.startswith("CCTL.IVALL")
               for b in loop.blocks for ins in graph.block_instructions(b))


@dataclass
class StepCounts:
    instructions: float  # warp instructions per warp and step
    mma: float
    ffma: float
    mufu: float
    bar_sync: float
    shared_bytes: float = 0.0  # bytes of shared memory moved per warp and step


def step_counts(sass: str, trips, whole_kernel: bool = False) -> StepCounts:
    """Per-warp counts of one step: the time loop's body (or the whole kernel), each block
    weighted by the trip counts of the loops inside the step that hold it. trips[d]: the trip
    count of a loop at nesting level d inside the step (level 0 for the loops directly in it);
    levels beyond the list run once."""
    graph = Graph(parse_sass(sass))
    if whole_kernel:
        step, inner = graph.reachable, [lp for lp in graph.loops if lp.header in graph.reachable]
        base = -1
    else:
        outer = [lp for lp in graph.loops if lp.parent is None]
        if not outer:
            raise ValueError("no loop in the SASS: no time loop to model")
        time_loop = max(outer, key=lambda lp: graph.size(lp.blocks))
        step, base = time_loop.blocks, time_loop.depth
        inner = [lp for lp in graph.loops if lp is not time_loop and lp.blocks <= step]
    inner = [lp for lp in inner if not is_poll_loop(graph, lp)]  # a poll loop runs once
    counts = StepCounts(0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    for b in step:
        weight = 1
        for loop in inner:
            if b in loop.blocks:
                level = loop.depth - base - 1
                weight *= trips[level] if 0 <= level < len(trips) else 1
        for ins in graph.block_instructions(b):
            counts.instructions += weight
            counts.mma += weight * bool(_MMA.match(ins.opcode))
            counts.ffma += weight * bool(_FMA.match(ins.opcode))
            counts.mufu += weight * ins.opcode.startswith("MUFU")
            counts.bar_sync += weight * ins.opcode.startswith("BAR.SYNC")
            counts.shared_bytes += weight * shared_bytes(ins.opcode)
    return counts


def loop_trips(variant: str, H: int, BH: int, rows: int, BN: int = 1) -> list:
    """Trip counts of the loops inside one step, by nesting level, as the kernels are written:
    split, its group's batch rows in tiles of BN (one row at a time on CUDA cores, BN = 1);
    streaming, the BJ-wide chunks of the output features and, inside the product, of the
    reduction; the cell, the chunks of its two products (I = H in the report); resident, no
    inner loop."""
    chunks = triton.cdiv(H, BH)
    return {"split": [triton.cdiv(rows, BN)], "streaming": [chunks, chunks],
            "cell": [chunks]}.get(variant, [])


# What a backward step reads per feature in the layer's dtype besides the product (by gates):
# RNN dY_t and y_t; GRU dY_t, h_{t-1}, r, z, n and q_n; LSTM dY_t, dL/dc_t, c_t, c_{t-1} and the
# four gates' activations.
_BACKWARD_READS = {1: 2, 3: 6, 4: 8}


def step_traffic(variant: str, pass_: str, H: int, N: int, D: int, elem: int, acc: int, BN: int,
                 BH: int, S: int = 1, rows: int = 1, gates: int = 1, parts: int = 1) -> tuple:
    """(L2 bytes read by the whole grid, dependent global round trips) of one step, from the
    kernels' design (elem: the layer's element bytes; acc: the state's; gates: the cell's,
    kernels/cells.py).
    resident: forward reads P_t (P_{t+1} is prefetched: nothing waited for); backward reads
      dY_t and y_t at the top of the step and waits for them (1). LSTM (4 gates): forward
      reads the four gates' P_t; backward dY_t, dL/dc_t, c_t, c_{t-1} and the four gates'
      activations, waited for at the top of the step (1). GRU (3 gates): forward the three
      gates' P_t; backward dY_t, h_{t-1} and r, z, n, q_n (1).
    split: every program reads its group's whole state (S x the state). One row at a time
      (BN = 1): forward per row waits for the state, then for P_t loaded after the reduction
      (2 per row); backward per row waits for dY_t, y_t and its carry (phase 1), then for dz_t
      (phase 2): 2 per row. On tensor cores, per row tile of BN, each pass waits for the
      exchanged state alone (forward h_{t-1}; backward dz of the step visited before, its two
      phases fused per tile): the other loads (P_t; dY_t, y_t and the carry) are issued before
      it, the first tile's P_t (dY_t, y_t) before the barrier: 1 per tile. Each step ends at
      the barrier (2.5). LSTM (4 gates): forward, the four gates' P_t and the program's own
      fp32 c_{t-1} besides the exchanged h; backward, dY_t, dL/dc_t, c_t, c_{t-1}, the four
      gates' activations and its own fp32 dL/dc (one row at a time, the carry too), and every
      slice's dz of all four gates (4 x the state, S times); round trips as for RNN.
      In two dimensions (parts = KP > 1, split_2d.py): every program reads its part of its
      group's state (S/KP x the state; the gated cells' backward, of every gate's dz) and,
      finishing its features, their KP fp32 partial sums; forward P_t, backward dY_t and y_t
      besides (the gated cells' backward: what its one-dimensional form reads, and its own
      fp32 dL/dc or dL/dh z). Per row tile a partial product waits
      for the state part and a finish for the partials (2 per tile); two barriers (2 x 2.5).
    streaming: every program re-reads all of W_hh and, per output chunk, its rows of the
      product's other operand (the state forward, dz_t backward); per chunk it waits for the
      first chunk of the product's operands (the pipelined rest is in flight): forward 1 per
      chunk, backward 2 (phase 1's loads, then the product). LSTM (4 gates): all four gates'
      rows of W_hh, and per chunk four products one after another, each re-reading the
      operand's rows and waiting for its first chunk (forward 4 per chunk, backward 1 + 4);
      forward reads the four gates' P_t and c_{t-1} (the state's dtype), backward phase 1
      what the resident backward reads plus the dL/dh and dL/dc carries. GRU (3 gates): the
      same with three products, h_{t-1}'s chunk in place of c_{t-1}, and phase 2 reading the
      direct term dL/dh_t z back in place of the dL/dc carry.
    cell: per program and chunk of each product (each gate's two), the chunk of the weights
      and the rows of x and h, each chunk waited for (no pipelining: num_stages 1)."""
    chunks = triton.cdiv(H, BH)
    state = D * N * H * elem
    if variant == "resident":
        if pass_ == "forward":
            return gates * state, 0
        return _BACKWARD_READS[gates] * state, 1
    if variant == "split" and parts > 1:
        own = state if pass_ == "forward" else _BACKWARD_READS[gates] * state
        if gates != 1:  # (the gated cells' backward: its dz over all gates, its own fp32 carry)
            own += D * N * H * acc
        partials = D * N * H * parts * 4
        return own + S * gates * state / parts + partials, \
            2 * triton.cdiv(rows, BN) + 2 * BARRIER_ROUND_TRIPS
    if variant == "split":
        # backward: dY_t and y_t, and one row at a time the carry (on tensor cores only held
        # rows read it, none in a padded batch: the model, of a padded batch, leaves it out)
        carry = D * N * H * acc if BN == 1 else 0
        own = state if pass_ == "forward" else 2 * state + carry
        per_tile = 1 if BN > 1 else 2
        trips = per_tile * triton.cdiv(rows, BN) + BARRIER_ROUND_TRIPS
        if gates != 1:
            own_carry = D * N * H * acc
            if pass_ == "forward":
                return gates * state + own_carry + S * state, trips
            return (4 + gates) * state + own_carry + carry + S * gates * state, trips
        return own + S * state, trips
    programs = triton.cdiv(N, BN) * D
    if variant == "streaming":
        # the product's rows: the fp32 (fp64) state forward, dz_t (the layer's dtype) backward
        rows_read = acc if pass_ == "forward" else elem
        per_program = gates * (H * H * elem + chunks * BN * H * rows_read)
        row = BN * H
        if pass_ == "forward":  # P_t (LSTM: and c_{t-1})
            per_program += gates * row * elem + (0 if gates == 1 else row * acc)
            return programs * per_program, chunks * gates
        # phase 1: dY_t and y_t and the dL/dh carry (LSTM: dL/dc_t, c_t, c_{t-1}, the gates'
        # activations and the dL/dc carry instead of y_t)
        per_program += _BACKWARD_READS[gates] * row * elem + \
            (1 if gates == 1 else 2) * row * acc
        return programs * per_program, chunks * (1 + gates)
    # the cell: both products of each gate, I = H
    programs = triton.cdiv(N, BN) * chunks
    return programs * 2 * gates * (H * BH * elem + BN * H * elem), 2 * gates * chunks


def model_us(issue_cycles: float, l2_bytes: float, round_trips: float,
             shared_cycles: float = 0.0) -> float:
    compute = max(issue_cycles, shared_cycles) / (CLOCK_GHZ * 1e3)
    memory = l2_bytes / L2_BYTES_PER_S * 1e6
    return max(compute, memory) + round_trips * L2_LATENCY_CYCLES / (CLOCK_GHZ * 1e3)


def _per_sm(per_warp: float, num_warps: int, programs: int, sms: int) -> float:
    """A per-warp count summed over the warps of one SM's programs (the launch's programs
    spread over the SMs, at least one each)."""
    return per_warp * num_warps * max(1, triton.cdiv(programs, sms))


def issue_cycles(instructions: float, num_warps: int, programs: int, sms: int) -> float:
    """Issue cycles per SM for one step: every SM issues the warps of its programs."""
    return _per_sm(instructions, num_warps, programs, sms) / SCHEDULERS_PER_SM


def shared_cycles(shared_bytes: float, num_warps: int, programs: int, sms: int) -> float:
    """Shared-memory cycles per SM for one step: the bytes every warp of the SM's programs
    moves, at SHARED_BYTES_PER_CYCLE."""
    return _per_sm(shared_bytes, num_warps, programs, sms) / SHARED_BYTES_PER_CYCLE
