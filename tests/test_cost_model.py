"""The cost model's reading of compiled code (kernels/cost_model.py): handwritten SASS with known
loops and trip counts, and a real configuration against a count by hand. A model, not a
measurement: what is checked here is the counting and the formula, not GPU time."""
import json
import os
import subprocess
import sys

import pytest

from triton_rnn.kernels import cost_model, report


def _sass(lines: str) -> str:
    """cuobjdump -sass layout: address comment, instruction, encoding comment."""
    out = []
    for line in lines.strip().splitlines():
        address, instruction = line.split(None, 1)
        out.append(f"        /*{address}*/                   {instruction.strip()} ;"
                   f"                 /* 0x000000000000000000 */")
    return "\n".join(["\tcode for sm_90a", "\t\tFunction : k"] + out)


# A time loop (0x20-0xb0) holding a row loop (0x30-0x50) and a barrier's poll loop
# (0x60-0x80, an acquire: strong load then L1 invalidation); after it a smaller loop (0xc0,
# outside the step, as a kernel's failure path) and an unreachable self-branch.
STEP = _sass("""
0000 S2R R0, SR_TID.X
0010 @!P0 EXIT
0020 MOV R1, RZ
0030 FFMA R2, R3, R4, R2
0040 HMMA.16816.F32.TF32 R4, R8, R12, R4
0050 @P1 BRA 0x30
0060 LDG.E.STRONG.GPU R5, desc[UR4][R6.64]
0070 CCTL.IVALL
0080 @!P2 BRA 0x60
0090 MUFU.TANH R7, R7
00a0 BAR.SYNC.DEFER_BLOCKING 0x0
00b0 @P3 BRA 0x20
00c0 FFMA R2, R3, R4, R2
00d0 @P4 BRA 0xc0
00e0 EXIT
00f0 BRA 0xf0
""")


def test_a_step_counts_its_inner_loops_by_their_trips_and_the_poll_once():
    """Rows 5: MOV, 5 x (FFMA, HMMA, BRA), the poll once (3), MUFU, BAR, BRA = 22."""
    counts = cost_model.step_counts(STEP, [5])
    assert (counts.instructions, counts.ffma, counts.mma, counts.mufu, counts.bar_sync) == (
        22, 5, 5, 1, 1)
    assert cost_model.step_counts(STEP, [1]).instructions == 22 - 4 * 3


# An outer loop (0x10-0x50) around an inner one (0x20-0x30).
NESTED = _sass("""
0000 S2R R0, SR_TID.X
0010 MOV R1, RZ
0020 FFMA R2, R3, R4, R2
0030 @P1 BRA 0x20
0040 DFMA R2, R4, R4, R2
0050 @P2 BRA 0x10
0060 EXIT
""")


def test_nested_loops_multiply_and_a_kernel_without_time_loop_counts_whole():
    """Whole kernel, trips [3, 4]: S2R + 3 x (MOV + 4 x (FFMA, BRA) + DFMA + BRA) + EXIT =
    35, FFMA and DFMA 3 x 4 + 3; the outer loop is level 0 (3), the inner level 1 (4)."""
    counts = cost_model.step_counts(NESTED, [3, 4], whole_kernel=True)
    assert (counts.instructions, counts.ffma) == (35, 3 * 4 + 3)
    # as a time loop: the outer loop is the step, the inner one level 0
    assert cost_model.step_counts(NESTED, [4]).instructions == 1 + 4 * 2 + 2


# A time loop whose row loop (0x20-0x40) stages a tile through shared memory: per trip one
# 128-bit store, one 4-matrix ldmatrix and one 16-bit load (2 B a lane), then a 32-bit store.
SHARED = _sass("""
0000 S2R R0, SR_TID.X
0010 MOV R1, RZ
0020 STS.128 [R0], R4
0030 LDSM.16.M88.4 R8, [R0]
0040 @P1 BRA 0x20
0050 LDS.U16 R2, [R0+0x10]
0060 STS [R0], R2
0070 @P2 BRA 0x10
0080 EXIT
""")


def test_shared_memory_bytes_by_width_and_trips():
    """Row loop 3 trips: 3 x (512 + 512) + 64 + 128 B per warp; 8 warps, one program per SM
    at 128 B per cycle: 8 x 3264 / 128 = 204 cycles; which, over issue, sets the model's
    compute time."""
    assert [cost_model.shared_bytes(op) for op in (
        "LDS", "LDS.64", "STS.128", "LDS.U8", "LDSM.16.M88", "LDSM.16.MT88.2",
        "LDSM.16.M88.4", "STSM.16.M88.4", "LDGSTS.E.BYPASS.128", "LDG.E.128", "SHFL.BFLY")] == \
        [128, 256, 512, 32, 128, 256, 512, 512, 512, 0, 0]
    counts = cost_model.step_counts(SHARED, [3])
    assert counts.shared_bytes == 3 * (512 + 512) + 64 + 128
    cycles = cost_model.shared_cycles(counts.shared_bytes, 8, 132, 132)
    assert cycles == 8 * 3264 / 128
    assert cost_model.model_us(10, 0, 0, cycles) == pytest.approx(cycles / 1750)


def test_split_traffic_by_design():
    """The split variant's L2 bytes and round trips per step (step_traffic), tf32 H = 1024,
    batch 32 in one group of S = 64 slices: the state is 32 x 1024 x 4 B = 128 KB. Every slice
    reads it; forward reads P_t too, backward dY_t and y_t (and, one row at a time, the
    carry). On tensor cores each of the 2 row tiles waits for one load, in both passes; one
    row at a time, each row waits for two; the barrier counts 2.5."""
    state = 32 * 1024 * 4
    traffic = {(p, bn): cost_model.step_traffic("split", p, 1024, 32, 1, 4, 4, bn, 1024, 64, 32)
               for p in ("forward", "backward") for bn in (16, 1)}
    assert traffic[("forward", 16)] == (65 * state, 2 + 2.5)
    assert traffic[("backward", 16)] == (66 * state, 2 + 2.5)
    assert traffic[("forward", 1)] == (65 * state, 64 + 2.5)
    assert traffic[("backward", 1)] == (67 * state, 64 + 2.5)


def test_two_dimensional_split_traffic_by_design():
    """The split in two dimensions (split_2d.py), tf32 H = 2048, batch 64 in one group of
    S = 128 programs, KP = 8 parts (row blocks of 128): the state is 64 x 2048 x 4 B = 512 KB,
    and each program reads its 256-feature part of it (S / KP = 16 states in all); finishing,
    every feature's 8 fp32 partial sums (8 states' worth); forward P_t, backward dY_t and y_t.
    One row tile of 64: the partial product waits for the state part, the finish for the
    partials (2), and two barriers (2 x 2.5); with 4 tiles (batch 256), 8 loads."""
    state = 64 * 2048 * 4
    forward = cost_model.step_traffic("split", "forward", 2048, 64, 1, 4, 4, 64, 2048, 128, 64,
                                      parts=8)
    backward = cost_model.step_traffic("split", "backward", 2048, 64, 1, 4, 4, 64, 2048, 128,
                                       64, parts=8)
    assert forward == (state + 16 * state + 8 * state, 2 + 5.0)
    assert backward == (2 * state + 16 * state + 8 * state, 2 + 5.0)
    assert cost_model.step_traffic("split", "forward", 2048, 256, 1, 4, 4, 64, 2048, 128, 256,
                                   parts=8)[1] == 8 + 5.0
    # the LSTM's backward, tf32 H = 1024, batch 16 (state 64 KB), 128 programs of 8 parts of
    # K = 4096: every gate's dz (4 x 128/8 states), 8 partials, the 8 states' worth of reads
    # of its one-dimensional form and the fp32 dL/dc carry (one more); one tile
    lstm = 16 * 1024 * 4
    assert cost_model.step_traffic("split", "backward", 1024, 16, 1, 4, 4, 16, 4096, 128, 16,
                                   gates=4, parts=8) == (
        8 * lstm + lstm + 4 * 16 * lstm + 8 * lstm, 2 + 5.0)


def test_lstm_traffic_by_design():
    """An LSTM layer on the resident variant, bf16 H = 64, batch 16, one direction: the state
    is 16 x 64 x 2 B. Forward reads the four gates' P_t (nothing waited for: prefetched);
    backward dY_t, dL/dc_t, c_t, c_{t-1} and the four gates' activations, waited for at the
    top of the step. The LSTMCell: both products of each of the four gates, per chunk.
    The tensor-core split at H = 256, S = 32 slices, one tile of 16 rows: forward the four
    gates' P_t, the fp32 c carry (2 x the bf16 state) and S x h; backward dY_t, dL/dc_t, c_t,
    c_{t-1}, the four activations, the fp32 dL/dc carry and S x the four gates' dz; one round
    trip and the barrier each. One row at a time (split.py, fp32 state), 16 rows: 2 round
    trips a row, the backward reading the dL/dh carry too. Streaming, H = 256 in chunks of 32,
    one tile of 16 rows: all four gates' W_hh (4 x 256 x 256 x 2 B) and, per chunk, the four
    products' rows of the operand (fp32 h forward, bf16 dz backward), each product waiting
    for its first chunk; forward the four gates' P_t and the fp32 c_{t-1}, backward dY_t,
    dL/dc_t, c_t, c_{t-1}, the four activations and the fp32 dL/dh and dL/dc carries."""
    state = 16 * 64 * 2
    assert cost_model.step_traffic("resident", "forward", 64, 16, 1, 2, 4, 16, 64,
                                   gates=4) == (4 * state, 0)
    assert cost_model.step_traffic("resident", "backward", 64, 16, 1, 2, 4, 16, 64,
                                   gates=4) == (8 * state, 1)
    rnn_cell = cost_model.step_traffic("cell", "cell", 64, 16, 1, 2, 4, 16, 32)
    assert cost_model.step_traffic("cell", "cell", 64, 16, 1, 2, 4, 16, 32, gates=4) == \
        (4 * rnn_cell[0], 4 * rnn_cell[1])
    state = 16 * 256 * 2
    assert cost_model.step_traffic("split", "forward", 256, 16, 1, 2, 4, 16, 256, 32, 16,
                                   gates=4) == ((4 + 2 + 32) * state, 1 + 2.5)
    assert cost_model.step_traffic("split", "backward", 256, 16, 1, 2, 4, 16, 1024, 32, 16,
                                   gates=4) == ((8 + 2 + 32 * 4) * state, 1 + 2.5)
    state = 16 * 256 * 4
    assert cost_model.step_traffic("split", "forward", 256, 16, 1, 4, 4, 1, 256, 64, 16,
                                   gates=4) == ((4 + 1 + 64) * state, 2 * 16 + 2.5)
    assert cost_model.step_traffic("split", "backward", 256, 16, 1, 4, 4, 1, 1024, 32, 16,
                                   gates=4) == ((8 + 1 + 1 + 32 * 4) * state, 2 * 16 + 2.5)
    w_hh, state = 4 * 256 * 256 * 2, 16 * 256 * 2
    assert cost_model.step_traffic("streaming", "forward", 256, 16, 1, 2, 4, 16, 32,
                                   gates=4) == (w_hh + 8 * 4 * 2 * state + (4 + 2) * state,
                                                8 * 4)
    assert cost_model.step_traffic("streaming", "backward", 256, 16, 1, 2, 4, 16, 32,
                                   gates=4) == (w_hh + 8 * 4 * state + (8 + 2 * 2) * state,
                                                8 * 5)


def test_gru_traffic_by_design():
    """A GRU layer, bf16 H = 64, batch 16, one direction (the state 16 x 64 x 2 B): resident,
    forward the three gates' P_t, backward dY_t, h_{t-1} and the four saved values (r, z, n,
    q_n), waited for once. Streaming at H = 256 in chunks of 32: the three gates' W_hh and,
    per chunk, three products' rows of the operand (fp32 h forward, bf16 dz backward), each
    waiting for its first chunk; forward the three P_t and h_{t-1}'s chunk (fp32), backward
    phase 1's six inputs, the fp32 dL/dh carry and phase 2's direct term."""
    state = 16 * 64 * 2
    assert cost_model.step_traffic("resident", "forward", 64, 16, 1, 2, 4, 16, 64,
                                   gates=3) == (3 * state, 0)
    assert cost_model.step_traffic("resident", "backward", 64, 16, 1, 2, 4, 16, 64,
                                   gates=3) == (6 * state, 1)
    w_hh, state = 3 * 256 * 256 * 2, 16 * 256 * 2
    assert cost_model.step_traffic("streaming", "forward", 256, 16, 1, 2, 4, 16, 32,
                                   gates=3) == (w_hh + 8 * 3 * 2 * state + (3 + 2) * state,
                                                8 * 3)
    assert cost_model.step_traffic("streaming", "backward", 256, 16, 1, 2, 4, 16, 32,
                                   gates=3) == (w_hh + 8 * 3 * state + (6 + 2 * 2) * state,
                                                8 * 4)


def test_a_sass_without_loops_has_no_step():
    with pytest.raises(ValueError, match="no time loop"):
        cost_model.step_counts(_sass("0000 MOV R1, RZ\n0010 EXIT"), [])


def test_the_formula_and_its_constants():
    """1 µs each: 1750 issue cycles at 1.75 GHz; 5.5 MB at 5.5 TB/s; 2.5 round trips (a
    barrier) of 700 cycles."""
    assert cost_model.model_us(1750, 0, 0) == pytest.approx(1.0)
    assert cost_model.model_us(0, 5.5e6, 0) == pytest.approx(1.0)
    assert cost_model.model_us(1750, 5.5e6, cost_model.BARRIER_ROUND_TRIPS) == \
        pytest.approx(1.0 + 1.0)
    assert cost_model.issue_cycles(100, 16, 264, 132) == 100 * 16 * 2 / 4


# A configuration of every variant and product form on sm_90: split one row at a time (IEEE
# fp32) and on tensor cores (tf32, and the cell's tl.dot), resident W-first tl.dot, resident
# elementwise, streaming.
MODELED_SHAPES = "fp32:1024:16,tf32:1024:16,tf32:128:16,fp32:64:5,tf32:4096:16"


def test_split_forward_counts_match_a_hand_count(tmp_path):
    """IEEE fp32 H = 1024, batch 16, split forward on sm_90 (split.py), through the report
    (--json, --dump, with rows of the other variants, each of which the model must read):
    R = 16 rows of W_hh per program (64 slices), BK = 1024, 16 warps; an H100 holds two groups
    of the 64 slices, so 8 batch rows per group. Each of the 512 threads multiplies
    16 x 1024 / 512 = 32 elements of the tile for each batch row, so a row is at least 32 FFMA
    per warp; the row loop is all that grows with the rows, so the counts of 8 rows minus
    those of 1 are 7 times one row's. Round trips: 2 per row and the barrier's 2.5.
    tf32 on tensor cores (split_dot.py): R = 16, 8 warps, each warp's part of K is 128 wide:
    16 k-steps of mma.sync m16n8k8 for each of the BN / 8 = 2 column tiles, 32 HMMA per warp;
    one row tile, so 1 round trip (the state) and the barrier's."""
    env = dict(os.environ, TRITON_INTERPRET="0")
    proc = subprocess.run([sys.executable, "-m", "triton_rnn.kernels.report", "--arch", "90",
                           "--json", "--shapes", MODELED_SHAPES, "--dump", str(tmp_path),
                           "--cells", "rnn"],
                          env=env, capture_output=True, text=True)
    rows = json.loads(proc.stdout)
    assert proc.returncode == 0, proc.stderr
    assert all(r["model_us"] > 0 and r["issue_cycles"] > 0 and r["l2_bytes"] > 0 for r in rows)
    assert len(rows) == 5 * 5  # every row modeled: the model reads every variant's code
    forward = next(r for r in rows if r["pass_"] == "forward" and r["batch_kind"] == "padded"
                   and r["H"] == 1024 and r["dtype"] == "fp32")
    tiles = next(r for r in rows if r["pass_"] == "forward" and r["batch_kind"] == "padded"
                 and r["H"] == 1024 and r["dtype"] == "tf32")
    assert tiles["config"].startswith("split/dot BN=16 R=16") and "warps=8" in tiles["config"]
    assert tiles["mma"] == 32 and tiles["round_trips"] == 1 + 2.5
    assert "G=2 rows/group=8" in forward["config"] and forward["round_trips"] == 2 * 8 + 2.5
    name = report.dump_name(report.Row(**{k: v for k, v in forward.items() if k != "faults"}))
    sass = (tmp_path / f"{name}.sass").read_text()
    assert (tmp_path / f"{name}.ttgir").exists() and (tmp_path / f"{name}.ptx").exists()
    one, eight = (cost_model.step_counts(sass, [rows]) for rows in (1, 8))
    assert eight.ffma == forward["ffma"]
    per_row = (eight.instructions - one.instructions) / 7
    assert per_row == int(per_row) and per_row > 0
    assert (eight.ffma - one.ffma) / 7 >= 32
    assert one.ffma >= 32 and one.bar_sync >= 2  # the arrival's and the wait's CTA barriers


# A loop whose latch branches on a predicate operand without a guard (BRA P5, BRA.U !UP0):
# conditional, so what follows it is reachable. HFMA2.MMA of zeros is ptxas's constant move.
OPERAND_BRANCHES = _sass("""
0000 S2R R0, SR_TID.X
0010 MOV R1, RZ
0020 FFMA R2, R3, R4, R2
0030 BRA P5, 0x20
0040 HFMA2.MMA R6, -RZ, RZ, 0, 0
0050 BRA.U !UP0, 0x10
0060 EXIT
""")


def test_branches_on_a_predicate_operand_are_conditional():
    """The time loop 0x10-0x50 with the inner loop 0x20-0x30 (trips 3): MOV + 3 x (FFMA, BRA)
    + HFMA2.MMA + BRA = 9; the HFMA2.MMA is no FMA."""
    counts = cost_model.step_counts(OPERAND_BRANCHES, [3])
    assert (counts.instructions, counts.ffma) == (9, 3)
