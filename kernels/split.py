"""Split variant (Persistent RNN): W_hh divided by rows across co-resident programs, one batch
row at a time on CUDA cores. This file runs IEEE float32 and float64 (and TF32 at BH = 2048
where the device's shared memory cannot hold split_dot.py's form for it); 16-bit and TF32 run
split_dot.py, the same design on tensor cores. The cell is a constexpr (CELL): the LSTM's and
the GRU's are split_dot.py's design (read its docstring) one row at a time
(_lstm_forward_row, _lstm_backward_row; _gru_forward_row, _gru_backward_row).

Grid (slices S, batch groups, directions). Program (s, g, d) loads its R rows of the product
matrix once, on-chip for the whole sequence, from direction d's own W_hh (by its pointer):
rows j = s*R .. s*R+R-1 of B, where element (j, k) is W_hh[j, k] forward
(z_t = P_t + W_hh h_{t-1}) and W_hh[k, j] backward (c_{t-1} = W_hhᵀ dz_t), chosen by the
launcher through strides. Every step each program reads
the group's whole state row by row from global memory, computes its R features for each of the
group's ROWS batch rows, writes them, and meets the group's other programs at a barrier
(barrier.py) before anyone reads the next state. The forward adds b_hh of its R features
(held, or re-read per row in fp64, where holding it spills) to each row's P_t.

Exchange buffers are the outputs themselves: forward, `out` (h_t in the output dtype, so
16-bit layers exchange half the bytes; h0 is read for the first step); backward, `dz`. The
backward's carried gradient for a program's own features never leaves that program: it lives in
a small fp32 buffer `carry` (D, N, H) that only its owner reads and writes, always in the same
(R,) layout, with a CTA barrier between one step's stores and the next step's loads. Within a
step, a held row's carry is read, then overwritten: where the layout replicates values across
warps, the thread that stores an element is the one whose load it used.

Numerics as in blocks.py: the exchanged h (dz) in the layer's dtype is exactly the product
operand every other path uses (state_operand: rounded to the weight dtype, the layer's dtype;
float32 is exchanged exactly and TF32-rounded here when TF32 is allowed, as W_hh is once);
a held row's state is read back rounded, but it is only stored again as that same output, or
used as an operand, where it is rounded anyway. The carried gradient stays in fp32 (`carry`).

Every wait is bounded. A program whose wait runs out sets the failure flag (p_sync[0]), writes
NaN into every element it still owns (the steps it has not written, and dh0), and leaves: a
result is never silently wrong, and the launch never hangs. Counters: p_sync[1 + d*G + g].
"""
import triton
import triton.language as tl

from .barrier import arrive_and_wait
from .blocks import (activate, activation_grad, aligned, convert, direction_pointer,
                     hidden_bias, program_rows, sequence_lengths, state_operand, time_index,
                     weight_operand)
from .cells import GRU, LSTM, RNN, gru_update, gru_update_grad, lstm_update, lstm_update_grad


@triton.jit
def _program(p_b, p_b_r, p_sync, s_bk, s_bj, H, J, K, G, ROWS, i_d0, ACC: tl.constexpr,
             PRECISION: tl.constexpr, R: tl.constexpr, BK: tl.constexpr,
             GATE_ROWS: tl.constexpr = 1):
    """What program (s, g, d) works on: its direction; the slice count S; its (R, BK) block of
    B (element (j, k)), zero outside H, the J rows of B (the GRU's fourth gate slot) and the
    reduction length K, rounded for the product
    (TF32) and converted to ACC once, on-chip for all T steps; the offsets of its R rows of B
    (o_j: its output features, or with GATE_ROWS > 1 every gate's rows of its features,
    blocks.program_rows) and of the BK reduction features (o_k); its group's barrier counter;
    its group's first batch row."""
    i_g = tl.program_id(1)
    i_d = (tl.program_id(2) + i_d0).to(tl.int64)
    # Feature offsets within one row of H (< 2^13) stay int32: every thread holds all R of
    # o_j, so int64 would cost 2R registers for the whole sequence. Offsets that grow with
    # T, N or D (time, batch row, direction) are int64 scalars added to them.
    o_j, o_f = program_rows(H, R, GATE_ROWS)
    o_k = tl.arange(0, BK)
    p_b = direction_pointer(p_b, p_b_r, i_d)
    m_j = o_f < H
    if GATE_ROWS > 1:  # (one gate: o_j is o_f, and J is H)
        m_j = m_j & (o_j < J)
    b_b = tl.load(p_b + o_j[:, None] * s_bj + o_k[None, :] * s_bk,
                  mask=m_j[:, None] & (o_k < K)[None, :], other=0.0)
    b_b = weight_operand(b_b, ACC, False, PRECISION)
    p_cnt = p_sync + 1 + i_d * G + i_g
    return i_d, tl.num_programs(0), b_b, o_j, o_k, p_cnt, i_g.to(tl.int64) * ROWS


@triton.jit
def _poison(p_x, s_t, s_n, t_from, T, N, H, n0, ROWS, i_d, o_j,
            BACKWARD_IN_TIME: tl.constexpr, R: tl.constexpr):
    """NaN into this program's features of steps t_from..T-1 (in visiting order)."""
    for t in range(t_from, T):
        tt = time_index(t, T, i_d, BACKWARD_IN_TIME)
        for i in range(ROWS):
            n = n0 + i
            tl.store(p_x + tt * s_t + n * s_n + o_j,
                     tl.full((R,), float("nan"), p_x.dtype.element_ty),
                     mask=o_j < tl.where(n < N, H, 0))


@triton.jit
def _gate(b_z, g: tl.constexpr, RF: tl.constexpr):
    """Gate g's RF values of gate-major (4 * RF,) pre-activations."""
    return tl.gather(b_z, g * RF + tl.arange(0, RF), 0)


@triton.jit
def _lstm_forward_row(b_b, b_hb, p_bias, HB, p_row, p_step, p_out, p_cell, p_carry, p_gates,
                      p_len, o_j, o_k, n, tt, T, N, H, W_DTYPE: tl.constexpr,
                      ACC: tl.constexpr, PRECISION: tl.constexpr, R: tl.constexpr,
                      BIAS_PER_ROW: tl.constexpr, HAS_LENGTHS):
    """Step tt of the LSTM forward for batch row n (its h_{tt-1} at p_row; p_step, p_out,
    p_cell, p_carry and p_gates at the row's P_tt, h_tt, c_tt, carried c and gates): the
    program's R rows are the four gates of R/4 features; c_{tt-1} comes from its own carry."""
    RF: tl.constexpr = R // 4
    o_rf = program_rows(H, R, 4)[1]  # each of the R rows' feature
    o_f = tl.program_id(0) * RF + tl.arange(0, RF)
    lim = tl.where(n < N, H, 0)  # features to touch in row n: none past the batch
    b_h = tl.load(p_row + o_k, mask=o_k < lim, other=0.0, cache_modifier=".cg")
    b_h = state_operand(b_h, W_DTYPE, PRECISION).to(ACC)
    b_z = tl.sum(b_b * b_h[None, :], 1)
    b_z += tl.load(p_step + o_j, mask=o_rf < lim, other=0.0).to(ACC)
    if BIAS_PER_ROW:
        b_z += tl.load(p_bias + o_j, mask=o_rf < tl.minimum(lim, HB), other=0.0).to(ACC)
    else:
        b_z += b_hb
    held = tt >= sequence_lengths(p_len, n, n < N, T, HAS_LENGTHS)
    b_c = tl.load(p_carry + o_f, mask=o_f < lim, other=0.0)
    b_old = tl.load(p_row + o_f, mask=o_f < tl.where(held, lim, 0), other=0.0,
                    cache_modifier=".cg").to(ACC)
    g_i, g_f, g_g, g_o, c_new, h_new = lstm_update(_gate(b_z, 0, RF), _gate(b_z, 1, RF),
                                                   _gate(b_z, 2, RF), _gate(b_z, 3, RF), b_c)
    b_h = tl.where(held, b_old, h_new)  # a held row keeps h and c
    b_c = tl.where(held, b_c, c_new)
    # the carry's loads may replicate values across warps and its stores come from one of
    # them: every load above before any store below
    tl.debug_barrier()
    m_f = o_f < lim
    tl.store(p_out + o_f, convert(b_h, p_out.dtype.element_ty), mask=m_f)
    tl.store(p_cell + o_f, convert(b_c, p_cell.dtype.element_ty), mask=m_f)
    tl.store(p_carry + o_f, b_c, mask=m_f)
    GATE_DTYPE: tl.constexpr = p_gates.dtype.element_ty
    tl.store(p_gates + o_f, convert(g_i, GATE_DTYPE), mask=m_f)
    tl.store(p_gates + H + o_f, convert(g_f, GATE_DTYPE), mask=m_f)
    tl.store(p_gates + 2 * H + o_f, convert(g_g, GATE_DTYPE), mask=m_f)
    tl.store(p_gates + 3 * H + o_f, convert(g_o, GATE_DTYPE), mask=m_f)


@triton.jit
def _gru_forward_row(b_b, b_hb, p_bias, HB, p_row, p_step, p_out, p_gates, p_len, o_j, o_k, n,
                     tt, T, N, H, W_DTYPE: tl.constexpr, ACC: tl.constexpr,
                     PRECISION: tl.constexpr, R: tl.constexpr, BIAS_PER_ROW: tl.constexpr,
                     HAS_LENGTHS):
    """Step tt of the GRU forward for batch row n (its h_{tt-1} at p_row; p_step, p_out and
    p_gates at the row's P_tt, h_tt and saved values): the program's R rows are the three
    gates' (four slots, the fourth masked) of R/4 features; the hidden products (b_hh in them)
    stay apart from P."""
    RF: tl.constexpr = R // 4
    o_rf = program_rows(H, R, 4)[1]  # each of the R rows' feature
    o_f = tl.program_id(0) * RF + tl.arange(0, RF)
    lim = tl.where(n < N, H, 0)  # features to touch in row n: none past the batch
    m_rows = (o_rf < lim) & (o_j < 3 * H)
    b_h = tl.load(p_row + o_k, mask=o_k < lim, other=0.0, cache_modifier=".cg")
    b_h = state_operand(b_h, W_DTYPE, PRECISION).to(ACC)
    b_q = tl.sum(b_b * b_h[None, :], 1)
    if BIAS_PER_ROW:
        b_q += tl.load(p_bias + o_j, mask=m_rows & (o_rf < HB), other=0.0).to(ACC)
    else:
        b_q += b_hb
    b_p = tl.load(p_step + o_j, mask=m_rows, other=0.0).to(ACC)
    held = tt >= sequence_lengths(p_len, n, n < N, T, HAS_LENGTHS)
    b_old = tl.load(p_row + o_f, mask=o_f < lim, other=0.0, cache_modifier=".cg").to(ACC)
    q_n = _gate(b_q, 2, RF)
    g_r, g_z, g_n, h_new = gru_update(_gate(b_p, 0, RF), _gate(b_p, 1, RF), _gate(b_p, 2, RF),
                                      _gate(b_q, 0, RF), _gate(b_q, 1, RF), q_n, b_old)
    b_h = tl.where(held, b_old, h_new)  # a held row keeps h
    m_f = o_f < lim
    tl.store(p_out + o_f, convert(b_h, p_out.dtype.element_ty), mask=m_f)
    GATE_DTYPE: tl.constexpr = p_gates.dtype.element_ty
    tl.store(p_gates + o_f, convert(g_r, GATE_DTYPE), mask=m_f)
    tl.store(p_gates + H + o_f, convert(g_z, GATE_DTYPE), mask=m_f)
    tl.store(p_gates + 2 * H + o_f, convert(g_n, GATE_DTYPE), mask=m_f)
    tl.store(p_gates + 3 * H + o_f, convert(q_n, GATE_DTYPE), mask=m_f)


@triton.jit(do_not_specialize=["T", "N", "HB", "ROWS", "i_d0", "G", "HAS_LENGTHS"])
def rnn_forward_split_kernel(
    p_proj, p_proj_r,    # each direction's P (T, N, H), features contiguous (same strides)
    p_h0,
    p_b, p_b_r,          # each direction's B = W_hhᵀ: element (k, j) (same strides)
    p_bias, p_bias_r,    # each direction's b_hh (G*H,), read where HB > 0
    p_out, p_len,
    p_cell, p_gates,     # LSTM: c_t (T, N, D*H) as out; the gate activations (T, N, D*4H)
    p_carry,             # LSTM: c_{t-1} (D, N, H) in ACC as h0, c0 on entry
    p_sync,
    T, N, H, HB,
    ROWS,                # batch rows per group
    i_d0, G,             # this launch's first direction; batch groups
    s_pt, s_pn,          # P: time and batch strides
    s_t, s_n,            # out (T, N, D*H), and the cell states
    s_hd, s_hn,          # h0 (D, N, H), and the carry
    s_bk, s_bj,          # B
    s_gt, s_gn,          # LSTM: the gate activations
    ACT: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr, R: tl.constexpr,
    BK: tl.constexpr, MAX_POLLS: tl.constexpr, HAS_LENGTHS, ALIGN: tl.constexpr = 1,
    ALIGN_BK: tl.constexpr = 1, ALIGN_BJ: tl.constexpr = 1, CELL: tl.constexpr = 0,
):
    """CELL (cells.py): RNN, or LSTM, whose programs each hold every gate's rows of R/4
    features (_lstm_forward_row): only h is exchanged, c stays with its feature's program."""
    H, s_pt, s_pn = aligned(H, ALIGN), aligned(s_pt, ALIGN), aligned(s_pn, ALIGN)
    s_t, s_n = aligned(s_t, ALIGN), aligned(s_n, ALIGN)
    s_hd, s_hn = aligned(s_hd, ALIGN), aligned(s_hn, ALIGN)
    s_bk, s_bj = aligned(s_bk, ALIGN_BK), aligned(s_bj, ALIGN_BJ)
    GATE_ROWS: tl.constexpr = 1 if CELL == RNN else 4  # (the GRU's fourth slot masked)
    J_ROWS = (3 if CELL == GRU else GATE_ROWS) * H  # rows of B (W_hh's)
    i_d, S, b_b, o_j, o_k, p_cnt, n0 = _program(p_b, p_b_r, p_sync, s_bk, s_bj, H, J_ROWS, H, G,
                                                ROWS, i_d0, ACC, PRECISION, R, BK, GATE_ROWS)
    p_bias = direction_pointer(p_bias, p_bias_r, i_d)
    # fp64 re-reads b_hh for every row (an L1 hit): held across the loop it tips fp64
    # H = 1024 into spilling under the register cap. Others hold it (re-reading tips bf16
    # H = 2048 into spilling on Triton 3.9). The compile gate checks both.
    BIAS_PER_ROW: tl.constexpr = ACC == tl.float64
    b_hb = tl.zeros((R,), ACC)
    if not BIAS_PER_ROW:  # this program's R rows of b_hh, held for the whole sequence
        if CELL != RNN:  # HB is 0 or H: a row's bias is there when its feature's is
            b_hb = tl.load(p_bias + o_j, mask=tl.where(HB > 0, program_rows(H, R, 4)[1] < H,
                                                       False) & (o_j < J_ROWS),
                           other=0.0).to(ACC)
        else:
            b_hb = tl.load(p_bias + o_j, mask=o_j < HB, other=0.0).to(ACC)
    p_h0 = p_h0 + i_d * s_hd
    p_carry = p_carry + i_d * s_hd
    p_gates = p_gates + i_d * 4 * H
    p_cell = p_cell + i_d * H
    p_out = p_out + i_d * H  # this direction's features
    p_proj = direction_pointer(p_proj, p_proj_r, i_d)
    t = T * 0
    ok = t == 0
    while (t < T) & ok:
        tt = time_index(t, T, i_d, False)
        # h_{t-1}: h0 at the first step, else what every slice wrote last step (rows of it
        # s_prev apart); read from L2 (.cg), where the other programs' stores are visible
        # after the wait. Row pointers are formed per step, not kept per row.
        p_prev = tl.where(t == 0, p_h0, p_out + time_index(t - 1, T, i_d, False) * s_t)
        s_prev = tl.where(t == 0, s_hn, s_n)
        o_step = tt * s_t  # step tt's offset in out
        p_step = p_proj + tt * s_pt  # and its P
        for i in range(ROWS):
            n = n0 + i
            if CELL == LSTM:
                _lstm_forward_row(b_b, b_hb, p_bias, HB, p_prev + n * s_prev,
                                  p_step + n * s_pn, p_out + o_step + n * s_n,
                                  p_cell + o_step + n * s_n, p_carry + n * s_hn,
                                  p_gates + tt * s_gt + n * s_gn, p_len, o_j, o_k, n, tt, T,
                                  N, H, p_b.dtype.element_ty, ACC, PRECISION, R, BIAS_PER_ROW,
                                  HAS_LENGTHS)
            elif CELL == GRU:
                _gru_forward_row(b_b, b_hb, p_bias, HB, p_prev + n * s_prev, p_step + n * s_pn,
                                 p_out + o_step + n * s_n, p_gates + tt * s_gt + n * s_gn,
                                 p_len, o_j, o_k, n, tt, T, N, H, p_b.dtype.element_ty, ACC,
                                 PRECISION, R, BIAS_PER_ROW, HAS_LENGTHS)
            else:
                lim = tl.where(n < N, H, 0)  # features to touch in row n: none past the batch
                p_row = p_prev + n * s_prev
                b_h = tl.load(p_row + o_k, mask=o_k < lim, other=0.0, cache_modifier=".cg")
                b_h = state_operand(b_h, p_b.dtype.element_ty, PRECISION).to(ACC)
                b_z = tl.sum(b_b * b_h[None, :], 1)
                b_z += tl.load(p_step + n * s_pn + o_j, mask=o_j < lim, other=0.0).to(ACC)
                if BIAS_PER_ROW:
                    b_z += tl.load(p_bias + o_j, mask=o_j < tl.minimum(lim, HB), other=0.0).to(ACC)
                else:
                    b_z += b_hb
                b_new = activate(b_z, ACT)
                # A row outside its sequence holds its previous state (read only for such a row).
                held = tt >= sequence_lengths(p_len, n, n < N, T, HAS_LENGTHS)
                b_old = tl.load(p_row + o_j, mask=o_j < tl.where(held, lim, 0), other=0.0,
                                cache_modifier=".cg").to(ACC)
                b_new = tl.where(held, b_old, b_new)
                tl.store(p_out + o_step + n * s_n + o_j, convert(b_new, p_out.dtype.element_ty),
                         mask=o_j < lim)
        if t < T - 1:  # the last step's state is read by no program
            ok = arrive_and_wait(p_cnt, S * (t + 1), MAX_POLLS)
        t += 1
    if ok == 0:
        tl.store(p_sync, 1)
        if CELL == GRU:
            RF: tl.constexpr = R // 4
            o_f = tl.program_id(0) * RF + tl.arange(0, RF)
            _poison(p_out, s_t, s_n, t, T, N, H, n0, ROWS, i_d, o_f, False, RF)
        elif CELL == LSTM:
            RF: tl.constexpr = R // 4
            o_f = tl.program_id(0) * RF + tl.arange(0, RF)
            _poison(p_out, s_t, s_n, t, T, N, H, n0, ROWS, i_d, o_f, False, RF)
            _poison(p_cell, s_t, s_n, t, T, N, H, n0, ROWS, i_d, o_f, False, RF)
        else:
            _poison(p_out, s_t, s_n, t, T, N, H, n0, ROWS, i_d, o_j, False, R)


@triton.jit
def _lstm_backward_row(b_dh, p_dc, p_dcell, p_cell, p_c0, p_gates, p_dz, m_row, active, t, tt,
                       T, i_d, H, s_t, ACC: tl.constexpr):
    """Phase 1 of the LSTM backward for one batch row at step tt (visit t): from dL/dh_tt
    (b_dh), dL/dc carried in (p_dc, this program's own, updated here), dL/dc_tt (p_dcell),
    c_tt and c_{tt-1} (p_cell rows s_t apart; c0 before the first step) and the saved gates,
    the four gates' dz (stored at p_dz + g*H; zero where the row is held)."""
    tb = time_index(t + 1, T, i_d, True)  # the step before tt in time, visited next
    b_dc = tl.load(p_dc, mask=m_row, other=0.0) + \
        tl.load(p_dcell + tt * s_t, mask=m_row, other=0.0).to(ACC)
    b_cn = tl.load(p_cell + tt * s_t, mask=m_row, other=0.0).to(ACC)
    b_cp = tl.where(t + 1 < T,
                    tl.load(p_cell + tb * s_t, mask=tl.where(t + 1 < T, m_row, False),
                            other=0.0).to(ACC),
                    tl.load(p_c0, mask=tl.where(t + 1 < T, False, m_row), other=0.0).to(ACC))
    d_i, d_f, d_g, d_o, b_dcp = lstm_update_grad(
        b_dh, b_dc, tl.load(p_gates, mask=m_row, other=0.0).to(ACC),
        tl.load(p_gates + H, mask=m_row, other=0.0).to(ACC),
        tl.load(p_gates + 2 * H, mask=m_row, other=0.0).to(ACC),
        tl.load(p_gates + 3 * H, mask=m_row, other=0.0).to(ACC), b_cn, b_cp)
    # p_dc's loads may replicate values across warps and its stores come from one of them
    tl.debug_barrier()
    tl.store(p_dc, tl.where(active, b_dcp, b_dc), mask=m_row)  # a held row passes dL/dc on
    DZ_DTYPE: tl.constexpr = p_dz.dtype.element_ty
    tl.store(p_dz, convert(tl.where(active, d_i, 0.0), DZ_DTYPE), mask=m_row)
    tl.store(p_dz + H, convert(tl.where(active, d_f, 0.0), DZ_DTYPE), mask=m_row)
    tl.store(p_dz + 2 * H, convert(tl.where(active, d_g, 0.0), DZ_DTYPE), mask=m_row)
    tl.store(p_dz + 3 * H, convert(tl.where(active, d_o, 0.0), DZ_DTYPE), mask=m_row)


@triton.jit
def _gru_backward_row(b_dh, p_direct, p_out, p_h0, p_gates, p_dz, m_row, active, t, tt, T, i_d,
                      H, s_t, ACC: tl.constexpr):
    """Phase 1 of the GRU backward for one batch row at step tt (visit t): from dL/dh_tt
    (b_dh), h_{tt-1} (p_out rows s_t apart; h0 before the first step) and the saved r, z, n,
    q_n: dq_r, dq_z, dq_n and dL/dP_n (stored at p_dz + g*H; zero where the row is held), and
    dL/dh_tt z into p_direct (this program's own), which phase 2 adds to the flow."""
    tb = time_index(t + 1, T, i_d, True)  # the step before tt in time, visited next
    b_hp = tl.where(t + 1 < T,
                    tl.load(p_out + tb * s_t, mask=tl.where(t + 1 < T, m_row, False),
                            other=0.0).to(ACC),
                    tl.load(p_h0, mask=tl.where(t + 1 < T, False, m_row), other=0.0).to(ACC))
    d_r, d_z, dq_n, d_n, b_through = gru_update_grad(
        b_dh, tl.load(p_gates, mask=m_row, other=0.0).to(ACC),
        tl.load(p_gates + H, mask=m_row, other=0.0).to(ACC),
        tl.load(p_gates + 2 * H, mask=m_row, other=0.0).to(ACC),
        tl.load(p_gates + 3 * H, mask=m_row, other=0.0).to(ACC), b_hp)
    tl.store(p_direct, b_through, mask=tl.where(active, m_row, False))
    DZ_DTYPE: tl.constexpr = p_dz.dtype.element_ty
    tl.store(p_dz, convert(tl.where(active, d_r, 0.0), DZ_DTYPE), mask=m_row)
    tl.store(p_dz + H, convert(tl.where(active, d_z, 0.0), DZ_DTYPE), mask=m_row)
    tl.store(p_dz + 2 * H, convert(tl.where(active, dq_n, 0.0), DZ_DTYPE), mask=m_row)
    tl.store(p_dz + 3 * H, convert(tl.where(active, d_n, 0.0), DZ_DTYPE), mask=m_row)


@triton.jit(do_not_specialize=["T", "N", "ROWS", "i_d0", "G", "HAS_LENGTHS"])
def rnn_backward_split_kernel(
    p_dout, p_out,
    p_b, p_b_r,          # each direction's B = W_hh: element (k, j) (same strides)
    p_dz, p_dh0, p_carry, p_len,
    p_cell, p_dcell,     # LSTM: c_t as the forward left it; dL/dc_t (T, N, D*H) as dout
    p_c0, p_gates,       # LSTM: c0 (D, N, H) as dh0; the gate activations (T, N, D*4H) as dz
    p_dc0, p_dc,         # LSTM: dL/dc0; dL/dc carried, in ACC (D, N, H) as dh0, zero on entry
    p_sync,
    T, N, H,
    ROWS,                # batch rows per group
    i_d0, G,             # this launch's first direction; batch groups
    s_t, s_n,            # dout, out (RNN: and dz) share the contiguous (T, N, D*H) layout
    s_bk, s_bj,          # B
    s_hd, s_hn,          # dh0 and carry (D, N, H)
    s_zt, s_zn,          # LSTM: dz and the gate activations
    ACT: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr, R: tl.constexpr,
    BK: tl.constexpr, MAX_POLLS: tl.constexpr, HAS_LENGTHS, ALIGN: tl.constexpr = 1,
    ALIGN_BK: tl.constexpr = 1, ALIGN_BJ: tl.constexpr = 1, CELL: tl.constexpr = 0,
):
    """LSTM (CELL): each program owns R features and holds W_hh's columns of them over all
    four gates' rows (K = 4H); phase 1 computes the four gates' dz from dL/dh (the carry) and
    dL/dc (its own p_dc), phase 2 the flow W_hhᵀ dz over every gate."""
    H, s_t, s_n = aligned(H, ALIGN), aligned(s_t, ALIGN), aligned(s_n, ALIGN)
    s_hd, s_hn = aligned(s_hd, ALIGN), aligned(s_hn, ALIGN)
    s_bk, s_bj = aligned(s_bk, ALIGN_BK), aligned(s_bj, ALIGN_BJ)
    # the product's reduction length, by hidden feature: dz's (LSTM), dq's (GRU: dz's first
    # three slots of four)
    GATES_K: tl.constexpr = 4 if CELL == LSTM else 3 if CELL == GRU else 1
    i_d, S, b_b, o_j, o_k, p_cnt, n0 = _program(p_b, p_b_r, p_sync, s_bk, s_bj, H, H,
                                                GATES_K * H, G, ROWS, i_d0, ACC, PRECISION, R,
                                                BK)
    p_carry = p_carry + i_d * s_hd
    p_dh0 = p_dh0 + i_d * s_hd
    if CELL != RNN:  # (GRU: p_dc carries dL/dh z, p_c0 is h0)
        p_dc = p_dc + i_d * s_hd
        p_dc0 = p_dc0 + i_d * s_hd
        p_c0 = p_c0 + i_d * s_hd
        p_gates = p_gates + i_d * 4 * H
        p_dz = p_dz + i_d * 4 * H  # this direction's dz: its gates' (T, N, 4H) part
        s_dzt, s_dzn = s_zt, s_zn
    else:
        p_dz = p_dz + i_d * H
        s_dzt, s_dzn = s_t, s_n
    o_x = i_d * H + o_j  # this program's features in the (T, N, D*H) layout
    for i in range(ROWS):  # the gradient carried into the last step is zero
        tl.store(p_carry + (n0 + i) * s_hn + o_j, tl.zeros((R,), ACC),
                 mask=o_j < tl.where(n0 + i < N, H, 0))
    t = T * 0
    ok = t == 0
    while (t < T) & ok:
        tt = time_index(t, T, i_d, True)
        # carry is written and read in the same layout, but a layout may replicate values
        # across warps and store from one of them: all of its stores first, then its loads.
        tl.debug_barrier()
        # Phase 1: this program's features of dz_t, from the gradient it carried itself.
        for i in range(ROWS):
            n = n0 + i
            m_row = o_j < tl.where(n < N, H, 0)
            p_c = p_carry + n * s_hn + o_j
            b_g = tl.load(p_dout + tt * s_t + n * s_n + o_x, mask=m_row, other=0.0).to(ACC)
            b_g += tl.load(p_c, mask=m_row, other=0.0)
            # A held step passes its gradient through unchanged.
            active = tt < sequence_lengths(p_len, n, n < N, T, HAS_LENGTHS)
            if CELL == LSTM:
                _lstm_backward_row(b_g, p_dc + n * s_hn + o_j, p_dcell + n * s_n + o_x,
                                   p_cell + n * s_n + o_x, p_c0 + n * s_hn + o_j,
                                   p_gates + tt * s_zt + n * s_zn + o_j,
                                   p_dz + tt * s_zt + n * s_zn + o_j, m_row, active, t, tt, T,
                                   i_d, H, s_t, ACC)
            elif CELL == GRU:
                _gru_backward_row(b_g, p_dc + n * s_hn + o_j, p_out + n * s_n + o_x,
                                  p_c0 + n * s_hn + o_j, p_gates + tt * s_zt + n * s_zn + o_j,
                                  p_dz + tt * s_zt + n * s_zn + o_j, m_row, active, t, tt, T,
                                  i_d, H, s_t, ACC)
            else:
                b_y = tl.load(p_out + tt * s_t + n * s_n + o_x, mask=m_row,
                              other=0.0).to(ACC)
                b_dz = tl.where(active, activation_grad(b_g, b_y, ACT), 0.0)
                tl.store(p_dz + tt * s_t + n * s_n + o_j,
                         convert(b_dz, p_dz.dtype.element_ty), mask=m_row)
            tl.store(p_c, b_g, mask=o_j < tl.where((n < N) & ~active, H, 0))
        ok = arrive_and_wait(p_cnt, S * (t + 1), MAX_POLLS)
        if ok:
            # Phase 2: the gradient carried into the previous step, c = W_hhᵀ dz_t, for this
            # program's features, from every slice's dz_t (read from L2 after the wait).
            p_dz_t = p_dz + tt * s_dzt
            for i in range(ROWS):
                n = n0 + i
                b_dzr = tl.load(p_dz_t + n * s_dzn + o_k,
                                mask=o_k < tl.where(n < N, GATES_K * H, 0), other=0.0,
                                cache_modifier=".cg")
                b_dzr = state_operand(b_dzr, p_b.dtype.element_ty, PRECISION).to(ACC)
                # Held rows keep what phase 1 stored.
                writes = (n < N) & (tt < sequence_lengths(p_len, n, n < N, T, HAS_LENGTHS))
                b_flow = tl.sum(b_b * b_dzr[None, :], 1)
                if CELL == GRU:  # and the part of dL/dh_{tt-1} that does not pass W_hh
                    b_flow += tl.load(p_dc + n * s_hn + o_j, mask=o_j < tl.where(writes, H, 0),
                                      other=0.0)
                tl.store(p_carry + n * s_hn + o_j, b_flow, mask=o_j < tl.where(writes, H, 0))
        t += 1
    tl.debug_barrier()  # carry's last stores, then its loads
    for i in range(ROWS):
        n = n0 + i
        m_row = o_j < tl.where(n < N, H, 0)
        b_c = tl.load(p_carry + n * s_hn + o_j, mask=m_row, other=0.0)
        b_c = tl.where(ok, b_c, float("nan"))
        tl.store(p_dh0 + n * s_hn + o_j, convert(b_c, p_dh0.dtype.element_ty), mask=m_row)
        if CELL == LSTM:
            b_dc = tl.load(p_dc + n * s_hn + o_j, mask=m_row, other=0.0)
            b_dc = tl.where(ok, b_dc, float("nan"))
            tl.store(p_dc0 + n * s_hn + o_j, convert(b_dc, p_dc0.dtype.element_ty),
                     mask=m_row)
    if ok == 0:
        tl.store(p_sync, 1)
        if CELL != RNN:
            for g in tl.static_range(4):
                _poison(p_dz + g * H, s_zt, s_zn, t, T, N, H, n0, ROWS, i_d, o_j, True, R)
        else:
            _poison(p_dz, s_t, s_n, t, T, N, H, n0, ROWS, i_d, o_j, True, R)
