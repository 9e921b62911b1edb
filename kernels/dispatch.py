"""Which kernel variant and block configuration runs a given problem.

The rule, in order (the resource report prints it beside every configuration):
1. Batch tile (resident and streaming; the split variant has its own, in rule 2): BN = 16
   with tensor-core tl.dot when the batch has at least 16 rows; otherwise
   BN = 1 with an elementwise multiply-and-sum, one program per sequence (tl.dot needs every
   dimension >= 16, and padding a batch of 1 to 16 wastes 15/16 of the work). Exception:
   float32 with TF32 disabled (IEEE) uses the elementwise product whenever BH > 32: its tl.dot
   has no tensor-core path and the FMA fallback spills. float64, when resident, always uses
   the elementwise product: its tl.dot spills 16-40 B on sm_90 with Triton 3.6, whatever the
   warps and stages.
2. Variant: "resident" (W_hh loaded once, on-chip, for the whole sequence) while the padded
   hidden size BH = next_pow2(H) is at most RESIDENT_MAX_BH for the element size; else
   "split" (split.py: W_hh divided by rows across co-resident programs that exchange the state
   through L2 every step) while BH is at most SPLIT_MAX_BH; else "streaming" (W_hh re-read
   from L2 in BJ-wide chunks every step). Split, 16-bit and TF32 (any batch): tensor cores,
   every row of a group in one pass per step, in row tiles of 16 (split_dot.py,
   `choose_split_dot`; TF32 at BH = 2048 holds its rows of W_hh in shared memory, where the
   device has room for them, else runs split.py). Split, IEEE fp32 and fp64: the
   elementwise product one batch row at a time (split.py), R = SPLIT_TILE // BH rows per
   program (within SPLIT_MIN_ROWS..SPLIT_MAX_ROWS), each program holding its (R, BH) tile in
   the accumulator dtype in registers. The launcher sizes the batch groups (on tensor cores
   at most one per row tile of the batch)
   and checks the grid against the device's co-resident capacity (launch.py); a layer whose
   S slices do not fit even one group per launch falls back to streaming (the IEEE fp32 gated
   forward of BH = 512 first to a split of fewer programs: split_with_fewer_programs). TF32 at
   BH = 1024-2048 and 16-bit at 2048 split in two dimensions (split_2d.py, `choose_split_2d`:
   row blocks of R rows times KP parts of the reduction, each block in shared memory, two
   barriers per step) where the one-dimensional form's batch groups would each hold more than
   SPLIT_2D_MIN_ROWS rows (two directions that share a launch share its groups): there the
   model read from their compiled code beats the one-dimensional form's (tf32 H = 2048, batch
   32: 3.99 against 7.95 µs per step; batch 64: 5.18 against 14.90; tf32 H = 1024 in two
   directions, batch 48: 4.30 against 6.85; 16-bit H = 1024 stays one-dimensional: 2.19
   against 3.44). Where the
   device cannot hold the two-dimensional form's programs, the one-dimensional form runs if
   it has fewer (split_with_fewer_programs).
3. Warps: enough that the resident W_hh tile needs at most ~64 registers per thread (the
   elementwise product holds it in the accumulator dtype, converted once before the loop); the
   streaming variant uses 4 warps, BJ = 32 and two pipeline stages, so the next chunk of W_hh
   is in flight while one is multiplied (BJ = 64 spills on sm_80, and 3 stages on sm_90).
   The resident forward loads P_{t+1} explicitly before step t's product (one step ahead;
   recurrence.py): Triton's pipeliner does not pipeline that load by itself (num_stages
   pipelines loads that feed tl.dot; before the explicit prefetch the sm_90 TTGIR loaded P_t
   inside step t, feeding the dot's accumulator). The resident time loops are `while` loops
   (recurrence.py: so that W_hh stays in registers), which Triton does not software-pipeline:
   num_stages has no effect on them. On sm_90 with tl.dot and BH >= 64 the product is
   z_tᵀ = W_hh h_{t-1}ᵀ ("W-first"): the warpgroup MMA then takes W_hh from registers. The
   backward has no prefetch and lost the cp.async pipelining of dY_t and y_t that the `for`
   loop had. Untuned on a GPU so far.
   16-bit with tl.dot stays resident only up to BH = 128: at BH = 256 the tile fits shared
   memory but the compiled kernel spills (152-216 B with 8 or 16 warps on sm_90).
4. Cells (kernels/cells.py): an LSTM layer (4 gates) takes rules 1-3 with its four (BH, BH)
   gate tiles together in the resident budget of one tile at RESIDENT_MAX_BH (so BH <= 64,
   32 in fp64), and IEEE fp32 never takes tl.dot (TF32 tiles take it, but not W-first: it
   held 230-255 registers). Beyond that, 16-bit and TF32 LSTM layers take the tensor-core
   split up to BH = 1024 in 16-bit on sm_90 (512 elsewhere) and 256 in TF32 (_split_gates),
   both passes with the configuration an RNN of the pass's reduction length K gets: the
   forward multiplies over K = BH, each program holding all four gates' rows of its R/4 features (R rows of W_hh:
   `gate_rows` = 4); the backward multiplies over every gate's rows, K = 4*BH, each program
   holding W_hh's columns of its R features (gate_rows = 1). IEEE fp32 and fp64 LSTM layers
   take split.py (one batch row at a time) the same way, fp32 to BH = 512 (its backward in 8
   warps), fp64 to 256; IEEE fp32 at BH = 1024 (H 513-1024) runs the tensor-core kernels'
   code with IEEE products (tl.dot on CUDA cores, _ieee_split_gates): the forward
   split_dot.py's B-in-shared form in 8 state chunks (128 programs at H = 1024: an A100
   streams from 865), the backward in two dimensions (IEEE_GATED_BACKWARD); that forward
   form also takes IEEE fp32 forwards of BH = 512 from batch IEEE_FMA_FORWARD_MIN_BATCH on
   (split.py's rows one after another cost more there). The tensor-core
   forward (K = BH) takes the split to BH = 1024 whatever the backward takes (the passes
   share only the saved h, c and gates): TF32 to H = 512 in registers (S = H/4 programs),
   513-1024 with B in shared memory and 8 features a program (S = H/8: 128 programs on an
   H100; on an A100 to H = 864), 16-bit on sm_80 to H = 864 too (108 SMs). The TF32
   backward past BH = 256 (K = 2048 and 4096: H 257-1024) splits in two dimensions
   (split_2d.py, SPLIT_2D_GATED_BACKWARD: row blocks of 32 or 64 features' W_hh columns times
   4 or 8 parts of K, each block in shared memory, 64 and 128 programs at H = 512 and 1024;
   an A100 holds the first, not the second); so does the 16-bit backward at K = 4096 where
   shared memory per block is below sm_90's (an A100: H 513-1024, 64 programs).
   Larger LSTM layers stream (rule 3's configuration; streaming.py multiplies the four gates'
   chunks one after another), as do split layers whose programs a device cannot hold.
   A GRU layer (3 gates) takes the resident variant the same way (BH <= 64, 32 in fp64) and,
   on tensor cores, the LSTM's split configurations (its gates in four slots, the fourth
   masked: the forward's programs hold R/4 features, the backward's K is 4*BH with 3H used),
   and in IEEE fp32 and fp64 its split.py configurations.
Every configuration this rule can produce is compiled for sm_90 and sm_80 by
`python -m triton_rnn.kernels.report`, which fails on spills (beyond a few parked scalars),
shared-memory overflow or errors (LSTM: the largest tiles, report.LSTM_SHAPES).
"""
from dataclasses import dataclass, replace

import torch
import triton

DOT_MIN_BATCH = 16
WGMMA_MIN_BH = 64  # a warpgroup MMA's M (64 per warpgroup): smaller tiles compile to mma.sync
IEEE_DOT_MAX_BH = 32
STREAM_CHUNK = 32

# Largest padded hidden size whose W_hh tile stays on-chip without spills, by element bytes
# (the same for tl.dot and elementwise tiles).
RESIDENT_MAX_BH = {8: 64, 4: 128, 2: 128}
# Largest padded hidden size the split variant holds on-chip, by element bytes: 16 MB of fp32
# (or widened 16-bit) W_hh at 2048, 8 MB of fp64 at 1024, over 128 programs.
SPLIT_MAX_BH = {8: 1024, 4: 2048, 2: 2048}
# Elements of one split program's W_hh tile (R x BH), by accumulator bytes (64 KB of fp32, 32 KB
# of fp64), with R between SPLIT_MIN_ROWS and SPLIT_MAX_ROWS: so 16 rows in fp32 at every BH up
# to 2048 (128 KB there: S = 128 programs, one per SM of an H100), 8-16 in fp64. What spilled
# on sm_90 or sm_80 with Triton 3.6 or 3.9 (the row loop compiled as it runs, ROWS not
# specialised): R = 32 at BH = 256-1024 (40-128 B), R = 64 or 128 at BH = 256 (0.1-1.6 KB),
# fp64 R = 16 at BH = 512 (40-64 B).
SPLIT_TILE = {8: 4096, 4: 16384}
SPLIT_MIN_ROWS = {8: 8, 4: 16}
SPLIT_MAX_ROWS = 16
SPLIT_WARPS = 16
# Registers per thread a split program may use (ptxas's .maxnreg): what 16 warps get anyway
# (65536 / 512 threads), and with 4 or 8 warps a cap that keeps 2-4 programs per SM. Without
# it, Triton 3.9's ptxas (13.x, --regAllocOptLevel=2) stopped at 64-128 registers and parked
# 40-48 B of 64-bit addresses on the stack in the packed sm_80 fp32/tf32 H = 512-1024 kernels.
SPLIT_MAX_REGISTERS = 128

# The tensor-core split (split_dot.py), sized by estimated registers per thread: its rows of
# B (R x BH) and one chunk of the state tile (BH x BN / KC) as tl.dot operands, 32-bit each for
# TF32 and two 16-bit values per register, at most SPLIT_DOT_OPERAND_REGISTERS of ptxas's 255
# (what fit without spills in compile probes for sm_90 and sm_80: tf32 H = 1024 R = 32 BN = 16
# and bf16 H = 2048 R = 32 BN = 16 at 192, 224 registers used; tf32 H = 2048 R = 16 BN = 16
# needs the state in chunks). The compile gate checks every configuration the rule gives.
SPLIT_DOT_OPERAND_REGISTERS = 160
# Shared memory one program may use (the opt-in maximum per block), by compute capability;
# other architectures (sm_75: 64 KB) get the smallest. Unknown (None: the interpreter) is
# taken as sm_90, the target the resource report models.
SHARED_PER_BLOCK = {80: 166912, 86: 101376, 87: 166912, 89: 101376, 90: 232448, 100: 232448,
                    103: 232448, 120: 101376}
SHARED_PER_BLOCK_OTHER = 65536
# The split in two dimensions (split_2d.py), in row tiles of SPLIT_2D_BN, at the (operand
# bytes, BH) it has a configuration for: (R rows of B, KP parts of the reduction, KC state
# chunks, warps), each program's block of B (R x BH/KP) in shared memory, at most
# SPLIT_2D_SHARED bytes of it per program in all (sm_80's opt-in maximum: what compiled without
# spills, sm_90 and sm_80, Triton 3.6 and the newest).
SPLIT_2D_BN = 64
SPLIT_2D = {(4, 2048): (128, 8, 8, 4), (2, 2048): (128, 4, 4, 4), (4, 1024): (64, 4, 4, 4)}
# It runs where each batch group of the one-dimensional form (split_dot.py) would hold more
# rows than this (one direction, one program an SM: split_dot.py's programs at these sizes hold
# 117-242 registers in 8-16 warps). The two forms' models (sm_90, forward and backward, H
# 528-2048, batch 8-256) cross there: one-dimensional steps grow with the rows a group reads
# the state for, two-dimensional ones are flat to a row tile of 64 (tf32 H = 2048: 24 rows
# 6.41 µs against 3.80, 12 rows 3.71 against 3.80; bf16 H = 2048, 16 rows 2.95 against 3.75;
# tf32 H = 768, 24 rows 3.36 against 3.67, 48 rows 4.83 against 3.71). Over that grid the
# rule's choice is never modeled slower than the batch-64 rule it replaced, and at most 0.8 µs
# slower than the better form (tf32 H = 2048 at 16 rows).
SPLIT_2D_MIN_ROWS = {(4, 2048): 16, (2, 2048): 16, (4, 1024): 24}
# The SMs that estimate of the groups takes, by compute capability (an A100's, an H100's, a
# B200's; the sm_90 model's elsewhere): the launcher then sizes the groups for the device.
SPLIT_2D_SMS = {80: 108, 90: 132, 100: 148}
SPLIT_2D_WARPS_SM80 = {(2, 2048): 8, (4, 1024): 8}  # (4 warps spilled 40-128 B on sm_80)
SPLIT_2D_SHARED = 166912
# ... and the backward of the gated cells past what split_dot.py holds (rule 4: TF32 past
# BH = 256, 16-bit past 512 where shared memory per block is below sm_90's), at every batch
# (row tiles of 16), by (operand bytes, K = 4 BH): its R features' W_hh columns over all
# gates' rows in KP parts of K (32 x 512 and 64 x 512 fp32, 64 x 1024 16-bit: 64-128 KB)
SPLIT_2D_GATED_BACKWARD = {(4, 2048): (32, 4, 2, 4), (4, 4096): (64, 8, 2, 4),
                           (2, 4096): (64, 4, 2, 4)}
# ... and of IEEE fp32 gated layers past split.py's K = 2048 (FMA products, _ieee_split_gates)
IEEE_GATED_BACKWARD = {(4, 4096): (64, 8, 8, 8)}
# ... and the IEEE fp32 gated forwards of BH = 512 (H 257-512) that take those FMA products
# rather than split.py from this batch on: split.py handles its batch rows one after another
# (model, sm_90, LSTM H = 512: 2.47 µs a step at batch 1, 7.61 at 5, 21.8 at 16), the FMA form
# all of a 16-row tile at once (4.39 at every batch to 16; 64 programs, which an A100 holds
# where split.py's 128 do not: there the launcher takes it at every batch,
# split_with_fewer_programs)
IEEE_FMA_FORWARD_MIN_BATCH = 3
IEEE_FMA_FORWARD_MIN_BH = 512
# (BH = 256 compared, model, sm_90, LSTM H = 256: split.py 2.45 µs at batch 4, 3.72 at 8, 5.78 at
# 16; the FMA form 2.74-2.96 at every batch to 16 in R = 16 or 32, KC = 4 or 8, 2 or 4 warps,
# but each at 226-255 registers spilled 0-64 B by H (129, 150, 200, 256 compiled) and arch,
# past the 32 B allowance somewhere on Triton 3.6 or 3.9, R = 16, KC = 4, 4 warps 3.9's 40-48 B:
# not routed until a form at BH = 256 compiles within the allowance at every H.)
# Features per program of the split LSTM backward, and its largest reduction length K = 4*BH,
# by element bytes (dispatch rule 4, _split_gates; 4 bytes: IEEE fp32's split.py to K = 2048,
# TF32's split_dot.py to 1024, past which it splits in two dimensions).
LSTM_BACKWARD_ROWS = 16
LSTM_SPLIT_MAX_K = {2: 4096, 4: 2048, 8: 1024}
# ... and its forward on tensor cores (K = BH), by element bytes (TF32's 4)
LSTM_SPLIT_FORWARD_MAX_BH = {2: 1024, 4: 1024}


@dataclass(frozen=True)
class Config:
    variant: str      # "resident", "split" or "streaming" (recurrence), or "cell"
    use_dot: bool
    BN: int           # batch rows per program (split: per step and row, one at a time)
    BH: int           # padded hidden size (resident, split) or chunk width BJ (streaming)
    num_warps: int
    num_stages: int = 3  # software pipelining of the innermost loop (rule 3)
    R: int = 0           # split: rows of W_hh per program
    w_first: bool = False  # resident tl.dot: W_hh the first operand, transposed state tiles
    k_chunks: int = 1      # split on tensor cores: the state tile's chunks per step (KC)
    b_shared: bool = False  # split on tensor cores: B kept in shared memory, not registers
    gate_rows: int = 1     # split: rows of B per feature a program owns (LSTM forward: 4)
    k_parts: int = 1       # split in two dimensions (split_2d.py): parts of the reduction (KP)

    @property
    def features(self) -> int:
        """split: the hidden features one program owns (its slice; in two dimensions the
        ones it finishes, R / KP of its block's R rows)."""
        return self.R // self.gate_rows // self.k_parts

    def slices(self, H: int) -> int:
        """split: the programs of one batch group, S (in two dimensions every row block's KP
        programs, those whose features lie past H too: they hold part of B's rows below H)."""
        if self.k_parts > 1:
            return triton.cdiv(H, self.R) * self.k_parts
        return triton.cdiv(H, self.features)

    def describe(self) -> str:
        block = {"resident": f"BH={self.BH}", "split": f"R={self.R} BH={self.BH}"}.get(
            self.variant, f"BJ={self.BH}") + (f" KC={self.k_chunks}" if self.k_chunks > 1 else "") \
            + (" B-shared" if self.b_shared else "") \
            + (f" gates={self.gate_rows}" if self.gate_rows > 1 else "") \
            + (f" KP={self.k_parts}" if self.k_parts > 1 else "")
        kind = "dot" if self.use_dot else "elementwise"
        return (f"{self.variant}/{kind} BN={self.BN} {block} warps={self.num_warps}"
                f" stages={self.num_stages}" + (" W-first" if self.w_first else ""))


def choose(hidden_size: int, batch: int, dtype: torch.dtype, allow_tf32: bool = True,
           split: bool = True, arch: int = None, gates: int = 1,
           pass_: str = "forward", directions: int = 1) -> Config:
    """The configuration rules 1-4 give; split=False skips the split variant (the launcher's
    fallback where a device cannot hold one group of its programs at once). arch: the target's
    compute capability (90 for sm_90), None when unknown (the interpreter). gates: rows of
    W_hh per hidden feature (cells.GATES: 1 for RNN, 4 for LSTM); a resident program holds
    all of them, so its tiles take the budget of one (BH, BH) tile at RESIDENT_MAX_BH
    together (LSTM: BH <= 64 in 16 and 32 bits, 32 in fp64). pass_: "forward" or "backward",
    which differ only for a split LSTM layer (rule 4). directions: the layer's (1 or 2), which
    share a launch where they fit and so the batch groups an RNN split may form (rule 2)."""
    BH = max(16, triton.next_power_of_2(hidden_size))
    elem = dtype.itemsize
    resident = gates * BH * BH <= RESIDENT_MAX_BH[elem] ** 2
    # IEEE fp32 (TF32 off) has no tensor-core path: tl.dot falls back to FMA, whose layouts
    # spill (kilobytes for resident tiles over 32, bytes when streaming); use the elementwise
    # product instead, which is what the FMA fallback computes anyway. Resident float64 tl.dot
    # spills 16-40 B on sm_90 with Triton 3.6 whatever the warps and stages.
    # With more than one gate (LSTM) IEEE fp32 never takes tl.dot: at BH = 32 its four FMA
    # products spilled 2 KB (Triton 3.6) or crashed LLVM's SLP vectorizer (3.9, sm_90).
    ieee_fp32 = dtype == torch.float32 and not allow_tf32
    use_dot = (batch >= DOT_MIN_BATCH
               and not (ieee_fp32 and (BH > IEEE_DOT_MAX_BH or gates > 1))
               and not (resident and dtype == torch.float64))
    BN = DOT_MIN_BATCH if use_dot else 1
    if resident:
        # 32-bit registers for the W_hh tile, held in the accumulator dtype (fp32, or fp64 for
        # fp64) by the elementwise product and in its own dtype by tl.dot.
        tile_bytes = elem if use_dot else max(elem, 4)
        tile_regs = gates * BH * BH * tile_bytes // 4
        num_warps = min(16, max(4, triton.next_power_of_2(tile_regs // (64 * 32))))
        # sm_90, BH >= 64: zᵀ = W_hh hᵀ, W_hh the first tl.dot operand, so that the warpgroup
        # MMA takes it from registers and only the small state tile from shared memory
        # (BH < 64 and sm_80 compile to mma.sync, where h @ B keeps W_hh in registers too).
        # LSTM tiles in TF32 stay h @ B: W-first held 230-255 registers and spilled 8-24 B on
        # sm_90 (Triton 3.6 and 3.9) where h @ B holds 174-197 and spills none.
        w_first = use_dot and arch is not None and arch >= 90 and BH >= WGMMA_MIN_BH and \
            not (gates > 1 and elem == 4)
        return Config("resident", use_dot, BN, BH, num_warps, w_first=w_first)
    ragged = hidden_size % 16 != 0
    if split and gates > 1:
        cfg = _split_gates(hidden_size, dtype, allow_tf32, arch, gates, pass_, batch)
        if cfg is not None:
            return cfg
    elif split and BH <= SPLIT_MAX_BH[elem]:
        cfg = choose_split(BH, dtype, allow_tf32=allow_tf32, arch=arch, ragged=ragged)
        rows_needed = SPLIT_2D_MIN_ROWS.get((elem, BH))
        if split_on_tensor_cores(dtype, allow_tf32) and rows_needed is not None and \
                _rows_per_group(cfg, hidden_size, batch, arch, directions) > rows_needed:
            return choose_split_2d(BH, dtype, arch, ragged) or cfg
        return cfg
    return Config("streaming", use_dot, BN, STREAM_CHUNK, num_warps=4, num_stages=2)


def split_plan(S: int, N: int, D: int, capacity: int, max_groups: int = None):
    """(groups G, batch rows per group, directions per launch) for S slices on a device that
    holds `capacity` programs at once, or None if one group of S programs does not fit.
    Both directions share a launch when they fit; else one launch per direction. As many
    groups as fit (up to max_groups), rows spread evenly over them."""
    if S > capacity:
        return None
    per_launch = D if S * D <= capacity else 1
    groups = min(N, capacity // (S * per_launch), max_groups or N)
    rows = triton.cdiv(N, max(1, groups))
    return triton.cdiv(N, rows), rows, per_launch


def _rows_per_group(cfg: Config, hidden_size: int, batch: int, arch: int,
                    directions: int) -> int:
    """The batch rows each group of the tensor-core split `cfg` would hold at one program an
    SM of SPLIT_2D_SMS (all of them where one group does not fit): two directions that share
    a launch leave half the groups (bf16 H = 2048: 64 programs a direction, batch 32 in one
    group of 32 rows, not two of 16)."""
    plan = split_plan(cfg.slices(hidden_size), batch, directions,
                      SPLIT_2D_SMS.get(arch, SPLIT_2D_SMS[90]), triton.cdiv(batch, cfg.BN))
    return batch if plan is None else plan[1]


def _split_gates(hidden_size: int, dtype: torch.dtype, allow_tf32: bool, arch: int,
                 gates: int, pass_: str, batch: int):
    """Rule 4's split for a cell of several gates, or None where it has none (the backward's
    K = gates*BH past what a split program holds; the forward's BH past
    LSTM_SPLIT_FORWARD_MAX_BH). IEEE fp32 and fp64: split.py's configuration for an RNN of K
    hidden features, fp32 to H = 512, fp64 to 256, but for IEEE fp32 forwards of H 257-512 at
    batch IEEE_FMA_FORWARD_MIN_BATCH and more (_ieee_split_gates's FMA form).
    16-bit and TF32: the tensor-core split an RNN with K hidden features gets, in both
    passes (the forward's in registers only: its rows at BH = 2048 would be 256 programs),
    except that the
    backward takes R = 16 features per program in 16-bit too, and keeps B in shared memory
    only at K = 4096. Its tile holds nine (R, BN) inputs besides the product (dL/dh_t, dL/dc_t,
    c_t, c_{t-1} and c0, the four gates): at R = 32 bf16 spilled 56-192 B (H = 65 and 512,
    sm_90 and sm_80). TF32 at K = 2048 (B in shared memory) needs 192 KB of shared memory,
    more than sm_80 has, and spilled 112 B on sm_90 with Triton 3.6: TF32 LSTM layers take the
    one-dimensional split to H = 256, and past it the split in two dimensions
    (SPLIT_2D_GATED_BACKWARD; 0 B spilled on sm_90 and sm_80, Triton 3.6 and 3.9, from H = 300
    to 1024). 16-bit at K = 4096 (H 513-1024): B (16 x 4096, 128 KB) in registers
    spilled 408-528 B whatever KC; in shared memory with KC = 4 (160 KB in all) it compiled
    with 0 B (3.6) and 32 B (3.9) on sm_90 but spilled 80-104 B on sm_80, so only GPUs with
    sm_90's shared memory per block take it; elsewhere the split in two dimensions (0 B on
    sm_80, both Tritons), and before it 16-bit LSTM layers took the split to
    H = 512."""
    BH = max(16, triton.next_power_of_2(hidden_size))
    # the GRU's three gates take four slots (the fourth masked): its tiles are the LSTM's
    slots = 4
    K = slots * BH
    if dtype == torch.float32 and not allow_tf32 and (
            K > LSTM_SPLIT_MAX_K[4] or pass_ == "forward" and BH >= IEEE_FMA_FORWARD_MIN_BH
            and batch >= IEEE_FMA_FORWARD_MIN_BATCH):
        # (past split.py's limit, to the tensor-core forward's in both passes; and the forward
        # where split.py's rows one after another cost more)
        if BH > LSTM_SPLIT_FORWARD_MAX_BH[4]:
            return None
        return _ieee_split_gates(BH, K, arch, slots, pass_)
    if not split_on_tensor_cores(dtype, allow_tf32):
        if allow_tf32 and dtype == torch.float32 or K > LSTM_SPLIT_MAX_K[dtype.itemsize]:
            return None
        # IEEE fp32 and fp64: split.py, one batch row at a time, as an RNN of K features; the
        # backward with 8 features per program, whose nine inputs per row every thread holds
        # whole (16: 48-176 B spilled in fp32 at H = 100-512), without the RNN's register cap
        # (launch.compile_options); fp32 in at most 8 warps: at K = 2048 (H 257-512) 16 warps (128
        # registers a thread) spilled 16-48 B on sm_90, 8 warps (216-232) none, sm_90 and
        # sm_80, Triton 3.6 and 3.9. fp32 to H = 512 (where an A100 cannot hold its forward's
        # programs, H 433-512, the launcher takes the FMA form: split_with_fewer_programs),
        # fp64 to 256.
        if pass_ == "backward":
            cfg = choose_split(K, dtype, rows=8, allow_tf32=False, arch=arch)
            return cfg if dtype.itemsize == 8 else replace(cfg, num_warps=min(cfg.num_warps, 8))
        return replace(choose_split(BH, dtype, allow_tf32=False, arch=arch), gate_rows=slots)
    if pass_ == "forward":
        # K = BH, as an RNN's, whatever the backward takes (the two passes exchange only the
        # saved h, c and gates, the same for every variant)
        if BH > LSTM_SPLIT_FORWARD_MAX_BH[dtype.itemsize]:
            return None
        if dtype.itemsize == 4 and BH == 1024:
            # TF32: R = 16 rows in registers are S = H/4 programs (192 at H = 768, more than
            # an H100 holds); R = 32 in registers spilled 24-192 B (Triton 3.6, 3.9); B in
            # shared memory, R = 32 (8 features, S = H/8), compiled with 0 B on both, 192 KB
            # (KC = 1) on sm_90 and 160 KB (KC = 2) on sm_80
            forward = _split_dot_shared(BH, 32, arch, 4, 1)
        else:
            forward = choose_split_dot(BH, dtype, arch=arch, ragged=hidden_size % 16 != 0)
            forward = None if forward is None or forward.b_shared else forward
        return None if forward is None else replace(forward, gate_rows=slots)
    if dtype.itemsize == 4 and (4, K) in SPLIT_2D_GATED_BACKWARD:
        return choose_split_2d(K, dtype, arch, table=SPLIT_2D_GATED_BACKWARD, BN=DOT_MIN_BATCH)
    if K > LSTM_SPLIT_MAX_K[dtype.itemsize]:
        return None
    if K > SPLIT_MAX_BH[dtype.itemsize]:
        shared = SHARED_PER_BLOCK.get(arch, SHARED_PER_BLOCK[90] if arch is None else 0)
        if shared >= SHARED_PER_BLOCK[90]:
            return _split_dot_shared(K, LSTM_BACKWARD_ROWS, arch, dtype.itemsize, 4)
        # (sm_80: in two dimensions, 0 B spilled; 4.17 µs modeled on sm_90, where the form
        # above models 3.66)
        return choose_split_2d(K, dtype, arch, table=SPLIT_2D_GATED_BACKWARD, BN=DOT_MIN_BATCH)
    # the backward's rows (dz's, of the four gates) are 4H long
    backward = choose_split_dot(K, dtype, rows=LSTM_BACKWARD_ROWS, arch=arch,
                                ragged=slots * hidden_size % 16 != 0)
    return None if backward is None or backward.b_shared else backward


def _ieee_split_gates(BH: int, K: int, arch: int, slots: int, pass_: str):
    """Rule 4's split for an IEEE fp32 layer of several gates past split.py's K = 2048 (H
    513-1024), and the forward of one of BH = 512 at batch IEEE_FMA_FORWARD_MIN_BATCH and more
    (4 or 8 warps there: the same chunks of K over half of it): the tensor-core kernels' code
    with IEEE products (tl.dot with input_precision="ieee", which Triton compiles to FMA on
    CUDA cores), B in shared memory
    and the state in K chunks of 16 or 8 elements (an FMA product holds its chunk of both
    operands in registers: whole parts of K spilled 0.6-3.6 KB). The forward: split_dot.py's
    B-in-shared form, 8 features a program (S = H/8: 128 programs at H = 1024, which an A100
    cannot hold: it streams from H = 865), KC = 8, in 16 warps on sm_90 with Triton newer than
    3.6 (chunks of 8; 8 warps spilled 32-40 B there) and 8 warps elsewhere (chunks of 16:
    Triton 3.6 rejects a tl.dot K under 16; 16 warps spilled 48 B on sm_80 with 3.9). The
    backward: the split in two dimensions, IEEE_GATED_BACKWARD (4 warps spilled 648-832 B on
    sm_90 with Triton 3.6). What split.py holds in registers at these sizes spilled (forward
    72-192 B at R = 16 and two programs an SM)."""
    if pass_ == "backward":
        return choose_split_2d(K, torch.float32, arch, table=IEEE_GATED_BACKWARD,
                               BN=DOT_MIN_BATCH)
    cfg = _split_dot_shared(BH, 32, arch, 4, 8)
    if cfg is None:
        return None
    newer = tuple(int(v) for v in triton.__version__.split(".")[:2]) > (3, 6)
    chunk = 8 if newer and (arch is None or arch >= 90) else 16
    # each warp a BH/warps part of K, in KC chunks of `chunk` (16 or 8 warps at BH = 1024)
    warps = max(1, min(16, BH // (cfg.k_chunks * chunk)))
    return replace(cfg, gate_rows=slots, num_warps=warps)


def split_with_fewer_programs(cfg: Config, hidden_size: int, dtype: torch.dtype,
                              allow_tf32: bool, arch: int):
    """The split the launcher tries next where a device cannot hold one group of `cfg`'s
    programs (before it streams), or None; only a configuration with fewer programs than
    cfg's:
    - an RNN layer's split in two dimensions (k_parts > 1): its one-dimensional form, which
      has fewer where H is not a multiple of the row blocks (tf32 H = 1700: 107 programs
      against 112, an A100 holds 108);
    - an IEEE fp32 gated forward (gate_rows > 1: only a gated layer's forward holds several
      gates' rows) of BH = 512 below batch IEEE_FMA_FORWARD_MIN_BATCH: _ieee_split_gates's
      FMA form, 8 features a program (S = H/8: 64 programs at H = 512) where split.py's hold
      4 (128, more than an A100's 108 SMs hold at one program an SM)."""
    if cfg.k_parts > 1 and cfg.BH == max(16, triton.next_power_of_2(hidden_size)):
        # (the RNN's: B as wide as H; the gated cells' backward reduces over K = 4 BH)
        fewer = choose_split(cfg.BH, dtype, allow_tf32=allow_tf32, arch=arch,
                             ragged=hidden_size % 16 != 0)
    elif cfg.gate_rows > 1 and dtype == torch.float32 and not allow_tf32 \
            and cfg.BH == IEEE_FMA_FORWARD_MIN_BH:
        fewer = _ieee_split_gates(cfg.BH, cfg.gate_rows * cfg.BH, arch, cfg.gate_rows,
                                  "forward")
    else:
        return None
    return fewer if fewer is not None and fewer.slices(hidden_size) < cfg.slices(hidden_size) \
        else None


def split_on_tensor_cores(dtype: torch.dtype, allow_tf32: bool) -> bool:
    """16-bit and TF32 split layers run split_dot.py where it fits (choose_split_dot); IEEE
    fp32 and fp64 run split.py (IEEE fp32 gated layers past K = 2048 aside: their tensor-core
    forms with IEEE products, _ieee_split_gates)."""
    return dtype in (torch.float16, torch.bfloat16) or (dtype == torch.float32 and allow_tf32)


def choose_split(BH: int, dtype: torch.dtype, rows: int = 0, allow_tf32: bool = True,
                 arch: int = None, ragged: bool = False) -> Config:
    """The split configuration for padded hidden size BH (every batch size: the launcher sizes
    the batch groups); `rows` (a power of two) overrides R, the rows of W_hh per program
    (tests use it to reach every slice count); arch as for `choose`; ragged: the hidden size
    is not a multiple of 16."""
    if split_on_tensor_cores(dtype, allow_tf32):
        cfg = choose_split_dot(BH, dtype, rows, arch, ragged)
        if cfg is not None:
            return cfg
    acc_bytes = max(dtype.itemsize, 4)
    R = rows or max(SPLIT_MIN_ROWS[acc_bytes], min(SPLIT_MAX_ROWS, SPLIT_TILE[acc_bytes] // BH))
    # One warp per 1024 32-bit registers of the tile (per 512 in fp64, whose products and sums
    # take twice the registers), 4 to 16: at 16 warps ptxas may use at most 128 registers per
    # thread, so small tiles take fewer warps (fp32 (32, 256) at 16 warps spilled).
    tile_regs = R * BH * acc_bytes // 4
    per_warp = 512 if acc_bytes == 8 else 1024
    num_warps = min(SPLIT_WARPS, max(4, tile_regs // per_warp))
    return Config("split", False, 1, BH, num_warps, num_stages=1, R=R)


def choose_split_dot(BH: int, dtype: torch.dtype, rows: int = 0, arch: int = None,
                     ragged: bool = False):
    """The tensor-core split: 8 warps from BH = 1024 (4 below), each holding a BH/num_warps
    part of the reduction dimension; R = 32 rows per program in 16-bit (fewer programs then
    read the exchanged state: S = BH/R), 16 in TF32 (R = 32 spilled 56-120 B on Triton 3.6 at
    BH = 512 and 1024). Row tiles of BN = 16 at every batch (a smaller batch is padded to the
    16 that tl.dot needs; padded rows are masked, never read), with the fewest state chunks KC
    (1, 2, 4) whose operands fit SPLIT_DOT_OPERAND_REGISTERS. A larger batch takes more batch
    groups, as many as the device holds, then several tiles per group. Wider tiles (32, 64
    rows) modeled no faster where groups can be added (bf16 BH = 1024, batch 64: 2.38 µs with
    tiles of 32, two groups; tiles of 16, four groups, no slower), and each was one more kernel
    to compile per dtype, BH and pass (a minute of CI's compile gate).
    At BH = 2048, TF32 at every hidden size and 16-bit at one that is not a multiple of 16
    (ragged): B in shared memory (`_split_dot_shared`) where the device's shared memory holds
    it; else TF32 returns None (split.py runs then) and 16-bit keeps B in registers."""
    elem = 2 if dtype.itemsize == 2 else 4  # TF32 operands are 32-bit
    if BH >= 2048 and (elem == 4 or ragged):
        # ragged 16-bit: rows load in narrower vectors (blocks.aligned), whose addresses take
        # more registers; at least 2 state chunks
        cfg = _split_dot_shared(BH, rows or (32 if elem == 2 else 16), arch, elem,
                                2 if ragged else 1)
        if cfg is not None or elem == 4:
            return cfg
    num_warps = 8 if BH >= 1024 else 4
    threads = 32 * num_warps
    R = rows or (32 if elem == 2 else 16)
    KC = next((kc for kc in (1, 2) if (R * BH + BH * DOT_MIN_BATCH // kc) * elem // 4 // threads
               <= SPLIT_DOT_OPERAND_REGISTERS), 4)
    return Config("split", True, DOT_MIN_BATCH, BH, num_warps, num_stages=1, R=R, k_chunks=KC)


def choose_split_2d(BH: int, dtype: torch.dtype, arch: int = None, ragged: bool = False,
                    table: dict = None, BN: int = None):
    """The split in two dimensions (split_2d.py) for an RNN layer of BH on tensor cores, or
    None where it has none (SPLIT_2D), the device's shared memory per block cannot hold it, or
    at BH = 2048 the hidden size is ragged (not a multiple of 16: its rows load in narrower
    vectors, and at H = 1100 the code spilled 16-496 B, sm_90 and sm_80, Triton 3.6 and 3.9;
    at BH = 1024, H = 600 compiled with none). table, BN: another table of configurations,
    and its row tile (the gated cells' backward: SPLIT_2D_GATED_BACKWARD, BH its K)."""
    elem = 2 if dtype.itemsize == 2 else 4  # TF32 operands are 32-bit
    table = SPLIT_2D if table is None else table
    if (elem, BH) not in table or (ragged and BH >= 2048):
        return None
    R, KP, KC, num_warps = table[elem, BH]
    if arch is not None and arch < 90:
        num_warps = SPLIT_2D_WARPS_SM80.get((elem, BH), num_warps)
    budget = SHARED_PER_BLOCK.get(arch, SHARED_PER_BLOCK[90] if arch is None else
                                  SHARED_PER_BLOCK_OTHER)
    if budget < SPLIT_2D_SHARED:
        return None
    return Config("split", True, BN or SPLIT_2D_BN, BH, num_warps, num_stages=1, R=R,
                  k_chunks=KC, k_parts=KP)


def _split_dot_shared(BH: int, R: int, arch: int, elem: int, min_chunks: int):
    """B in shared memory at BH = 2048, where its code in registers spills: TF32 on Triton 3.6
    96-248 B whatever the warps, rows or state chunks, on 3.9 the backward, 136 B at 8 warps
    and KC = 4 (its forward fits, and models no faster than this); 16-bit at a ragged hidden
    size, 40-80 B on 3.6 even with its alignment told. B (R x BH, 128 KB: R = 16 in TF32, 32
    in 16-bit) stays in shared memory for the whole sequence and is re-read from there every
    step; 16 warps, and the fewest state chunks (at least min_chunks) whose staging buffer
    (BH x 16 / KC) fits beside it in the device's shared memory per block: TF32 KC = 2 on
    sm_90 (192 KB), 4 on sm_80 (160 KB; an A100's 108 SMs cannot hold the 128 programs at
    once, so it streams); None where even KC = 4 does not fit (sm_86/89/120: 99 KB), and the
    layer runs split.py."""
    budget = SHARED_PER_BLOCK.get(arch, SHARED_PER_BLOCK[90] if arch is None else
                                  SHARED_PER_BLOCK_OTHER)
    KC = next((kc for kc in (1, 2, 4, 8)
               if kc >= min_chunks and (R * BH + BH * DOT_MIN_BATCH // kc) * elem <= budget),
              None)
    if KC is None:
        return None
    return Config("split", True, DOT_MIN_BATCH, BH, 16, num_stages=1, R=R, k_chunks=KC,
                  b_shared=True)


def choose_cell(batch: int, dtype: torch.dtype) -> Config:
    """RNNCell: one fused launch over (batch tiles, column tiles of H), both weight matrices
    streamed in STREAM_CHUNK-wide chunks; the batch tile follows rule 1 above."""
    use_dot = batch >= DOT_MIN_BATCH
    return Config("cell", use_dot, DOT_MIN_BATCH if use_dot else 1, STREAM_CHUNK, num_warps=4,
                  num_stages=1)
