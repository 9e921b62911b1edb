"""Split variant on tensor cores: every batch row of a group in one pass per step.

The same division of work, exchange and barrier as split.py (read its docstring first): grid
(slices S, batch groups G, directions), program (s, g, d) owns rows j = s*R .. s*R+R-1 of
the product matrix B (W_hh forward, W_hhᵀ backward, by strides) for the whole sequence, and
the group's programs exchange the state through L2 and meet at barrier.py's barrier every step.
What differs is the product. split.py multiplies its (R, BH) tile with one batch row at a
time on CUDA cores; here a step takes the group's rows BN at a time (one tile when the group
has at most BN rows) as a tensor-core product

    z (R, BN) = Σ_w  B[:, w-th K part] (R, BKW)  @  state[w-th K part, rows] (BKW, BN)

written as one batched (3-D) tl.dot over KW = num_warps parts of the reduction dimension: Triton
places its batch dimension on the warps, so each warp holds its (R, BKW) part of B in registers
for the whole sequence (the row-tile loop is a `while`, which keeps tl.dot's first operand out of
shared memory), multiplies it with its part of the state tile (staged through shared memory each
step) by mma.sync, and the sum over the KW parts is one cross-warp reduction. With B_SHARED the
row-tile loop is a `for`, in which Triton keeps B in shared memory for the whole sequence and
re-reads it (ldmatrix) every step: what TF32 at BH = 2048 runs (and 16-bit at a ragged hidden
size there), whose code for B in registers spills (dispatch.choose_split_dot). KC > 1 takes
each part's state in KC chunks, one after another, so that fewer of its registers are live at
once (tf32 H = 2048 spills without).

The reduction's result is replicated on every warp; `_spread` moves it to a layout whose
threads hold different elements before the bias, the activation and the stores, so that each
output element's activation is computed by one thread (two where the tile has fewer elements
than the program has threads).

Exposed latencies: P_t of the first row tile (backward: dY_t and y_t) is loaded before the
previous step's barrier wait. After the wait, a row tile waits for the exchanged state alone
(forward h_{t-1}; backward the dz of the step visited before, the backward's two phases being
fused per tile); the loads issued before its product (P_t, or dY_t and y_t, of a later tile; a
held row's previous state, or what it carried) are the other loads of a step.

The cell is a constexpr (CELL, kernels/cells.py). LSTM forward: a program's R rows of B are
the four gates' rows of R/4 features (gate-major, `blocks.program_rows`), so the cell update
needs nothing from other programs; the product is taken apart into its gates by gathers
(`_gate`, which spread them over the threads as `_spread` does), c_{t-1} comes from the
program's own fp32 carry (c0 on entry), and h_t, c_t and the gate activations are stored for
the backward. Only h is exchanged. LSTM backward: a program owns R features and holds W_hh's
columns of them over all four gates' rows (K = 4H): its product takes every slice's dz of all
four gates from the step visited before, and dL/dc is carried in an fp32 buffer of its own
(`_lstm_backward_tile`). What spilled and what fits: dispatch rule 4.

Numerics are split.py's (blocks.py): the exchanged state is rounded as the product's operand
(state_operand), B once before the loop (weight_operand); under the interpreter a 16-bit
product runs in fp32 on the same 16-bit values (DOT_DTYPE), whose products are exact.
"""
import triton
import triton.language as tl

from .barrier import arrive_and_wait
from .blocks import (activate, activation_grad, aligned, convert, direction_pointer,
                     program_rows, sequence_lengths, state_mask, state_offsets, state_operand,
                     tf32_dot_operand, time_index, weight_operand)
from .cells import GRU, LSTM, RNN, gru_update, gru_update_grad, lstm_update, lstm_update_grad
from .split import _poison


@triton.jit
def _b_chunk(p_b, s_bk, s_bj, o_j, m_j, K, c, PRECISION: tl.constexpr,
             DOT_DTYPE: tl.constexpr, KW: tl.constexpr, BKW: tl.constexpr, KC: tl.constexpr):
    """Chunk c of the program's rows of B as a (KW, R, BKW/KC) tile: element (w, r, i) is
    B[o_j[r], w*BKW + c*BKW/KC + i], zero outside the rows' mask m_j and the reduction length
    K, rounded for the product, in DOT_DTYPE."""
    o_k = tl.arange(0, KW)[:, None] * BKW + c * (BKW // KC) + tl.arange(0, BKW // KC)[None, :]
    b_b = tl.load(p_b + o_j[None, :, None] * s_bj + o_k[:, None, :] * s_bk,
                  mask=m_j[None, :, None] & (o_k < K)[:, None, :], other=0.0)
    return weight_operand(b_b, tl.float32, True, PRECISION).to(DOT_DTYPE)


@triton.jit
def _program(p_b, p_b_r, p_sync, s_bk, s_bj, H, J, K, G, ROWS, N, i_d0,
             PRECISION: tl.constexpr, DOT_DTYPE: tl.constexpr, R: tl.constexpr,
             KW: tl.constexpr, BK: tl.constexpr, KC: tl.constexpr, BN: tl.constexpr,
             GATE_ROWS: tl.constexpr = 1):
    """What program (s, g, d) works on (split.py's _program, in row tiles): its direction; the
    slice count S; its R rows o_j of B (program_rows: its output features, or with GATE_ROWS > 1
    every gate's rows of its features) and their mask (rows of B past J masked: the GRU's fourth
    gate slot); its rows of B over the reduction length K in KC (1, 2, 4 or 8) chunks, a
    tuple of 8 (unused chunks repeat the first), on-chip for all T steps; its group's
    barrier counter; its group's first batch row n0, and the rows and mask of the group's
    first row tile."""
    i_g = tl.program_id(1)
    i_d = (tl.program_id(2) + i_d0).to(tl.int64)
    BKW: tl.constexpr = BK // KW
    o_j, o_f = program_rows(H, R, GATE_ROWS)
    m_j = o_f < H
    if GATE_ROWS > 1:  # (one gate: o_j is o_f, and J is H)
        m_j = m_j & (o_j < J)
    p_b = direction_pointer(p_b, p_b_r, i_d)
    b_b0 = _b_chunk(p_b, s_bk, s_bj, o_j, m_j, K, 0, PRECISION, DOT_DTYPE, KW, BKW, KC)
    b_b1, b_b2, b_b3, b_b4, b_b5, b_b6, b_b7 = b_b0, b_b0, b_b0, b_b0, b_b0, b_b0, b_b0
    if KC >= 2:
        b_b1 = _b_chunk(p_b, s_bk, s_bj, o_j, m_j, K, 1, PRECISION, DOT_DTYPE, KW, BKW, KC)
    if KC >= 4:
        b_b2 = _b_chunk(p_b, s_bk, s_bj, o_j, m_j, K, 2, PRECISION, DOT_DTYPE, KW, BKW, KC)
        b_b3 = _b_chunk(p_b, s_bk, s_bj, o_j, m_j, K, 3, PRECISION, DOT_DTYPE, KW, BKW, KC)
    if KC == 8:
        b_b4 = _b_chunk(p_b, s_bk, s_bj, o_j, m_j, K, 4, PRECISION, DOT_DTYPE, KW, BKW, KC)
        b_b5 = _b_chunk(p_b, s_bk, s_bj, o_j, m_j, K, 5, PRECISION, DOT_DTYPE, KW, BKW, KC)
        b_b6 = _b_chunk(p_b, s_bk, s_bj, o_j, m_j, K, 6, PRECISION, DOT_DTYPE, KW, BKW, KC)
        b_b7 = _b_chunk(p_b, s_bk, s_bj, o_j, m_j, K, 7, PRECISION, DOT_DTYPE, KW, BKW, KC)
    n0 = i_g.to(tl.int64) * ROWS
    o_first, m_first = _tile(n0, 0, ROWS, N, BN)
    return (i_d, tl.num_programs(0), o_j, m_j, (b_b0, b_b1, b_b2, b_b3, b_b4, b_b5, b_b6, b_b7),
            p_sync + 1 + i_d * G + i_g, n0, o_first, m_first)


@triton.jit
def _spread(b_z, R: tl.constexpr, BN: tl.constexpr):
    """b_z unchanged, in a layout that spreads its elements over the threads: a gather with the
    identity index takes the index's (blocked) layout, where Triton would otherwise run
    everything after the reduction in the reduction's layout, replicated on every warp."""
    return tl.gather(b_z, tl.broadcast_to(tl.arange(0, R)[:, None], (R, BN)), 0)


@triton.jit
def _product(b_bs, p_rows, s_row, n_first, m_n, K, W_DTYPE: tl.constexpr,
             DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, R: tl.constexpr,
             KW: tl.constexpr, BKW: tl.constexpr, KC: tl.constexpr, BN: tl.constexpr,
             SPREAD: tl.constexpr = True):
    """(R, BN) fp32: Σ_k B[j, k] s[n, k] (k < K) for the program's rows j and the state s of
    the BN rows from n_first (s[n, k] at p_rows + n*s_row + k; m_n masks them), read from L2
    (.cg) after the barrier; spread over the threads (_spread) unless SPREAD is off (the
    LSTM's gates take their rows apart by gathers, which spread them too)."""
    o_k = tl.arange(0, KW)[:, None] * BKW + tl.arange(0, BKW // KC)[None, :]
    p_s = p_rows + (n_first + tl.arange(0, BN).to(tl.int64))[None, None, :] * s_row
    b_z = tl.zeros((KW, R, BN), tl.float32)
    for c in tl.static_range(KC):
        o_kc = o_k + c * (BKW // KC)
        b_s = tl.load(p_s + o_kc[:, :, None], mask=(o_kc < K)[:, :, None] & m_n[None, None, :],
                      other=0.0, cache_modifier=".cg")
        if PRECISION == "tf32":  # as state_operand rounds it, in one instruction
            b_s = tf32_dot_operand(b_s)
        else:
            b_s = state_operand(b_s, W_DTYPE, PRECISION).to(DOT_DTYPE)
        b_z = tl.dot(b_bs[c], b_s, b_z, input_precision=PRECISION, out_dtype=tl.float32)
    if SPREAD:
        return _spread(tl.sum(b_z, 0), R, BN)
    else:
        return tl.sum(b_z, 0)


@triton.jit
def _summed(p_part, s_qk, s_qn, o_n, m_n, o_j, m_j, m_extra, KP: tl.constexpr):
    """(R, BN) fp32: the KP partial sums split_2d.py's programs left for features o_j of rows
    o_n (part b at p_part + b*s_qk, row stride s_qn), added in part order, read from L2 (.cg),
    where m_extra holds; zero elsewhere."""
    b_sum = _features(p_part, o_n, s_qn, o_j, m_n, m_j, m_extra, True)
    for b in tl.static_range(1, KP):
        b_sum += _features(p_part + b * s_qk, o_n, s_qn, o_j, m_n, m_j, m_extra, True)
    return b_sum


@triton.jit
def _flow(b_bs, p_rows, s_row, n_first, o_n, m_n, K, v, p_part, s_qk, s_qn,
          o_j, m_j,
          W_DTYPE: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
          R: tl.constexpr, KW: tl.constexpr, BKW: tl.constexpr, KC: tl.constexpr,
          BN: tl.constexpr, KP: tl.constexpr):
    """What flows into visit v's step from the step visited before (nothing read at v = 0):
    this program's rows of B times every slice's dz there (_product: rows o_n from n_first,
    at p_rows, s_row apart), or with KP > 0 (split_2d.py) the sum of the KP partial products its
    programs left for features o_j (_summed)."""
    if KP > 0:
        b_flow = _summed(p_part, s_qk, s_qn, o_n, m_n, o_j, m_j, v > 0, KP)
    else:
        b_flow = _product(b_bs, p_rows, s_row, n_first,
                          tl.where(v > 0, m_n, False), K, W_DTYPE, DOT_DTYPE, PRECISION, R,
                          KW, BKW, KC, BN)
    return b_flow


@triton.jit
def _load_now(i0, now, KP: tl.constexpr):
    """Whether a backward tile loads its dY_t (y_t) itself: where it is in its step (now),
    except the first tile's, loaded a visit ahead; in two dimensions (KP > 0) every tile's."""
    if KP > 0:
        load = now
    else:
        load = tl.where(i0 > 0, now, False)
    return load


@triton.jit
def _this_tile(b_ahead, b_loaded, i0, KP: tl.constexpr):
    """A backward tile's dY_t (y_t): the first tile's loaded a visit ahead (b_ahead), the
    others' by the tile (b_loaded); in two dimensions (KP > 0) every tile's by the tile."""
    if KP > 0:
        b_x = b_loaded
    else:
        b_x = tl.where(i0 == 0, b_ahead, b_loaded)
    return b_x


@triton.jit
def _gate(b_z, g: tl.constexpr, RF: tl.constexpr, BN: tl.constexpr):
    """Gate g's (RF, BN) rows of gate-major (GATES * RF, BN) pre-activations, by a gather
    whose index layout spreads them over the threads (as _spread does)."""
    return tl.gather(b_z, tl.broadcast_to(g * RF + tl.arange(0, RF)[:, None], (RF, BN)), 0)


@triton.jit
def _tile(n0, i0, ROWS, N, BN: tl.constexpr):
    """Rows n0+i0 .. n0+i0+BN-1 of a group of ROWS rows from n0: int64 offsets, and the mask
    of those inside both the group and the batch."""
    o_i = i0 + tl.arange(0, BN)
    o_n = n0 + o_i.to(tl.int64)
    return o_n, (o_i < ROWS) & (o_n < N)


@triton.jit
def _features(p_x, o_n, s_n, o_j, m_n, m_j, m_extra, EXCHANGED: tl.constexpr = False):
    """The (R, BN) tile x[n, j] of this program's features (x[n, j] at p_x + n*s_n + j),
    where m_extra (a scalar or a mask of rows) holds; from L2 (.cg) where x is an exchange
    buffer. (A where: the interpreter rejects a mask anded with a scalar comparison.)"""
    return tl.load(p_x + state_offsets(o_n, s_n, o_j, True),
                   mask=tl.where(m_extra, state_mask(m_n, m_j, True), False), other=0.0,
                   cache_modifier=".cg" if EXCHANGED else "")


@triton.jit
def _forward_tile(b_bs, b_p0, b_hb, p_proj, s_pn, p_prev, s_prev, p_out, s_n,
                  p_cell, p_carry, s_cn, p_gates, s_gn, p_len, o_j, m_j, n0, i0, tt, T, N, H,
                  ROWS, W_DTYPE: tl.constexpr, ACT: tl.constexpr, ACC: tl.constexpr,
                  PRECISION: tl.constexpr, R: tl.constexpr, KW: tl.constexpr,
                  BKW: tl.constexpr, KC: tl.constexpr, BN: tl.constexpr,
                  DOT_DTYPE: tl.constexpr, HAS_LENGTHS, CELL: tl.constexpr):
    """Step tt of the forward for the row tile from n0 + i0: h_tt = act(P_tt + B h_{tt-1} +
    b_hh) of this program's features (P_tt of the first tile is b_p0, loaded a step ahead).
    LSTM: the R rows are the four gates of R/4 features (P and b_hh at the same rows); c_{tt-1}
    comes from the program's own fp32 carry (p_carry, row stride s_cn; c0 before the first
    step), and h_tt, c_tt (p_out, p_cell) and the gates (p_gates, row stride s_gn) are stored."""
    o_n, m_n = _tile(n0, i0, ROWS, N, BN)
    # Loads that do not wait for the product are issued before it: P_t of a later tile, and
    # the previous state of rows outside their sequence (which hold it).
    b_p = _features(p_proj, o_n, s_pn, o_j, m_n, m_j, i0 > 0)
    held = (tt >= sequence_lengths(p_len, o_n, m_n, T, HAS_LENGTHS))[None, :]
    if CELL == LSTM:
        RF: tl.constexpr = R // 4
        o_f = tl.program_id(0) * RF + tl.arange(0, RF)
        m_c = state_mask(m_n, o_f < H, True)
        o_c = state_offsets(o_n, s_cn, o_f, True)
        b_old = _features(p_prev, o_n, s_prev, o_f, m_n, o_f < H, held, True)
        b_c = tl.load(p_carry + o_c, mask=m_c, other=0.0)
        b_z = _product(b_bs, p_prev, s_prev, n0 + i0, m_n, H, W_DTYPE,
                       DOT_DTYPE, PRECISION, R, KW, BKW, KC, BN, False)
        b_z += tl.where(i0 == 0, b_p0.to(ACC), b_p.to(ACC)) + b_hb
        g_i, g_f, g_g, g_o, c_new, h_new = lstm_update(
            _gate(b_z, 0, RF, BN), _gate(b_z, 1, RF, BN), _gate(b_z, 2, RF, BN),
            _gate(b_z, 3, RF, BN), b_c)
        b_h = tl.where(held, b_old.to(ACC), h_new)  # a held row keeps h and c
        b_c = tl.where(held, b_c, c_new)
        # the carry's loads may replicate values across warps and its stores come from one of
        # them: every load above before any store below
        tl.debug_barrier()
        o_s = state_offsets(o_n, s_n, o_f, True)
        tl.store(p_out + o_s, convert(b_h, p_out.dtype.element_ty), mask=m_c)
        tl.store(p_cell + o_s, convert(b_c, p_cell.dtype.element_ty), mask=m_c)
        tl.store(p_carry + o_c, b_c, mask=m_c)
        p_g = p_gates + state_offsets(o_n, s_gn, o_f, True)
        GATE_DTYPE: tl.constexpr = p_gates.dtype.element_ty
        tl.store(p_g, convert(g_i, GATE_DTYPE), mask=m_c)
        tl.store(p_g + H, convert(g_f, GATE_DTYPE), mask=m_c)
        tl.store(p_g + 2 * H, convert(g_g, GATE_DTYPE), mask=m_c)
        tl.store(p_g + 3 * H, convert(g_o, GATE_DTYPE), mask=m_c)
    elif CELL == GRU:
        # R rows: gate slots r, z, n (and a fourth, masked) of R/4 features; the hidden
        # products (b_hh in them) apart from P, h_{tt-1} of the program's own features
        RF: tl.constexpr = R // 4
        o_f = tl.program_id(0) * RF + tl.arange(0, RF)
        m_c = state_mask(m_n, o_f < H, True)
        b_old = _features(p_prev, o_n, s_prev, o_f, m_n, o_f < H, True, True).to(ACC)
        b_q = _product(b_bs, p_prev, s_prev, n0 + i0, m_n, H, W_DTYPE,
                       DOT_DTYPE, PRECISION, R, KW, BKW, KC, BN, False) + b_hb
        b_pp = tl.where(i0 == 0, b_p0.to(ACC), b_p.to(ACC))
        q_n = _gate(b_q, 2, RF, BN)
        g_r, g_z, g_n, h_new = gru_update(
            _gate(b_pp, 0, RF, BN), _gate(b_pp, 1, RF, BN), _gate(b_pp, 2, RF, BN),
            _gate(b_q, 0, RF, BN), _gate(b_q, 1, RF, BN), q_n, b_old)
        b_h = tl.where(held, b_old, h_new)  # a held row keeps h
        tl.store(p_out + state_offsets(o_n, s_n, o_f, True),
                 convert(b_h, p_out.dtype.element_ty), mask=m_c)
        p_g = p_gates + state_offsets(o_n, s_gn, o_f, True)
        GATE_DTYPE: tl.constexpr = p_gates.dtype.element_ty
        tl.store(p_g, convert(g_r, GATE_DTYPE), mask=m_c)
        tl.store(p_g + H, convert(g_z, GATE_DTYPE), mask=m_c)
        tl.store(p_g + 2 * H, convert(g_n, GATE_DTYPE), mask=m_c)
        tl.store(p_g + 3 * H, convert(q_n, GATE_DTYPE), mask=m_c)
    else:
        b_old = _features(p_prev, o_n, s_prev, o_j, m_n, m_j, held, True)
        b_z = _product(b_bs, p_prev, s_prev, n0 + i0, m_n, H, W_DTYPE,
                       DOT_DTYPE, PRECISION, R, KW, BKW, KC, BN)
        b_z += tl.where(i0 == 0, b_p0.to(ACC), b_p.to(ACC)) + b_hb
        b_new = tl.where(held, b_old.to(ACC), activate(b_z, ACT))
        tl.store(p_out + state_offsets(o_n, s_n, o_j, True),
                 convert(b_new, p_out.dtype.element_ty), mask=state_mask(m_n, m_j, True))


@triton.jit(do_not_specialize=["T", "N", "HB", "ROWS", "i_d0", "G", "HAS_LENGTHS"])
def rnn_forward_split_dot_kernel(
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
    BK: tl.constexpr, MAX_POLLS: tl.constexpr, HAS_LENGTHS,
    BN: tl.constexpr, KW: tl.constexpr, KC: tl.constexpr, DOT_DTYPE: tl.constexpr,
    B_SHARED: tl.constexpr = False, ALIGN: tl.constexpr = 1, ALIGN_BK: tl.constexpr = 1,
    ALIGN_BJ: tl.constexpr = 1, CELL: tl.constexpr = 0,
):
    """CELL (cells.py): RNN, or LSTM, whose programs each hold every gate's rows of R/4
    features (the cell update needs no exchange): only h is exchanged, c stays with the
    program that owns its feature."""
    H, s_pt, s_pn, s_t, s_n = aligned(H, ALIGN), aligned(s_pt, ALIGN), aligned(s_pn, ALIGN), \
        aligned(s_t, ALIGN), aligned(s_n, ALIGN)
    s_hd, s_hn = aligned(s_hd, ALIGN), aligned(s_hn, ALIGN)
    s_bk, s_bj = aligned(s_bk, ALIGN_BK), aligned(s_bj, ALIGN_BJ)
    GATE_ROWS: tl.constexpr = 1 if CELL == RNN else 4  # (the GRU's fourth slot masked)
    i_d, S, o_j, m_j, b_bs, p_cnt, n0, o_first, m_first = _program(
        p_b, p_b_r, p_sync, s_bk, s_bj, H, (3 if CELL == GRU else GATE_ROWS) * H, H, G, ROWS, N,
        i_d0, PRECISION, DOT_DTYPE, R, KW, BK, KC, BN, GATE_ROWS)
    BKW: tl.constexpr = BK // KW
    if CELL != RNN:  # HB is 0 or H: a row's bias is there when its feature's is
        m_hb = tl.where(HB > 0, m_j, False)
    else:
        m_hb = o_j < HB
    b_hb = tl.load(direction_pointer(p_bias, p_bias_r, i_d) + o_j, mask=m_hb,
                   other=0.0).to(ACC)[:, None]
    p_h0 = p_h0 + i_d * s_hd
    p_carry = p_carry + i_d * s_hd
    p_gates = p_gates + i_d * 4 * H
    p_out = p_out + i_d * H  # this direction's features
    p_cell = p_cell + i_d * H
    p_proj = direction_pointer(p_proj, p_proj_r, i_d)
    b_p0 = _features(p_proj + time_index(0, T, i_d, False) * s_pt, o_first, s_pn, o_j,
                     m_first, m_j, T > 0)  # P_t of the first row tile, loaded one step ahead
    t = T * 0
    ok = t == 0
    while (t < T) & ok:
        tt = time_index(t, T, i_d, False)
        # h_{t-1}: h0 at the first step, else what every slice wrote last step (rows s_prev
        # apart), read from L2 (.cg) where the other programs' stores are visible after the wait.
        p_prev = tl.where(t == 0, p_h0, p_out + time_index(t - 1, T, i_d, False) * s_t)
        s_prev = tl.where(t == 0, s_hn, s_n)
        if B_SHARED:  # a for loop: Triton keeps B in shared memory and re-reads it
            for i0 in range(0, ROWS, BN):
                _forward_tile(b_bs, b_p0, b_hb, p_proj + tt * s_pt, s_pn,
                              p_prev, s_prev, p_out + tt * s_t, s_n, p_cell + tt * s_t, p_carry,
                              s_hn, p_gates + tt * s_gt, s_gn, p_len, o_j, m_j, n0, i0, tt, T,
                              N, H, ROWS, p_b.dtype.element_ty, ACT, ACC, PRECISION, R, KW,
                              BKW, KC, BN, DOT_DTYPE, HAS_LENGTHS, CELL)
        else:  # a while loop: in a for loop Triton re-reads B from shared memory
            i0 = ROWS * 0
            while i0 < ROWS:
                _forward_tile(b_bs, b_p0, b_hb, p_proj + tt * s_pt, s_pn,
                              p_prev, s_prev, p_out + tt * s_t, s_n, p_cell + tt * s_t, p_carry,
                              s_hn, p_gates + tt * s_gt, s_gn, p_len, o_j, m_j, n0, i0, tt, T,
                              N, H, ROWS, p_b.dtype.element_ty, ACT, ACC, PRECISION, R, KW,
                              BKW, KC, BN, DOT_DTYPE, HAS_LENGTHS, CELL)
                i0 += BN
        if t < T - 1:  # the last step's state is read by no program
            b_p0 = _features(p_proj + time_index(t + 1, T, i_d, False) * s_pt, o_first, s_pn,
                             o_j, m_first, m_j, True)
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
def _backward_tile(b_bs, b_g0, b_y0, p_dout, p_out, p_dz, p_carry, p_dh0,
                   s_t, s_n, s_hn, p_len, o_x, o_j, m_j, n0, i0, v, T, N, H, ROWS, i_d,
                   W_DTYPE: tl.constexpr, ACT: tl.constexpr, ACC: tl.constexpr,
                   PRECISION: tl.constexpr, R: tl.constexpr, KW: tl.constexpr,
                   BKW: tl.constexpr, KC: tl.constexpr, BN: tl.constexpr,
                   DOT_DTYPE: tl.constexpr, HAS_LENGTHS, p_part, s_qk, s_qn,
                   KP: tl.constexpr):
    """Visit v of the backward for the row tile from n0 + i0 (its step tt = the v-th visited).
    First the gradient that flows into tt from the step tt' visited before it: the product
    B dz_tt' over every slice's dz_tt' (nothing at v = 0), or, for a row held at tt', what it
    carried there. Then dz_tt = act'(y_tt) (dY_tt + flow) where the row is active at tt, the
    sum carried where it is held. At v = T the flow is the gradient of h0. b_g0, b_y0: dY_tt
    and y_tt of the first tile, loaded a visit ahead."""
    o_n, m_n = _tile(n0, i0, ROWS, N, BN)
    m_c = state_mask(m_n, m_j, True)
    o_c = state_offsets(o_n, s_hn, o_j, True)
    tt, tt_before = time_index(v, T, i_d, True), time_index(v - 1, T, i_d, True)
    o_now, o_before = tt * s_t + o_x, tt_before * s_t + o_x
    lengths = sequence_lengths(p_len, o_n, m_n, T, HAS_LENGTHS)
    # (Scalar conditions enter masks through a where: the interpreter rejects a mask anded
    # with a scalar comparison.)
    held_before = tl.where(v > 0, tt_before >= lengths, False)[None, :]
    # Loads that do not wait for the product, issued before it: dY_tt and y_tt of a later
    # tile, and what rows held at tt' carried (this program's own).
    b_carried = tl.load(p_carry + o_c, mask=m_c & held_before, other=0.0)
    later = _load_now(i0, v < T, KP)
    b_g = _features(p_dout + o_now, o_n, s_n, o_j, m_n, m_j, later)
    b_y = _features(p_out + o_now, o_n, s_n, o_j, m_n, m_j, later)
    b_flow = _flow(b_bs, p_dz + o_before, s_n, n0 + i0, o_n, m_n, H, v, p_part,
                   s_qk, s_qn, o_j, m_j, W_DTYPE, DOT_DTYPE, PRECISION, R, KW, BKW, KC, BN, KP)
    # At v = 0 nothing flows in: a zero, not the product of masked (zero) operands, which
    # is NaN where B holds an Inf or a NaN (nn.RNN's backward gives finite values there).
    b_flow = tl.where(held_before, b_carried, tl.where(v > 0, b_flow, 0.0))
    # carry's loads may replicate values across warps and its stores come from one of them:
    # every load above before any store below.
    tl.debug_barrier()
    tl.store(p_dh0 + o_c, convert(b_flow, p_dh0.dtype.element_ty),
             mask=tl.where(v == T, m_c, False))
    b_g = _this_tile(b_g0, b_g, i0, KP).to(ACC) + b_flow
    b_y = _this_tile(b_y0, b_y, i0, KP).to(ACC)
    active = (tt < lengths)[None, :]
    b_dz = tl.where(active, activation_grad(b_g, b_y, ACT), 0.0)
    m_c = tl.where(v < T, m_c, False)
    tl.store(p_carry + o_c, b_g, mask=m_c & ~active)
    tl.store(p_dz + o_now + state_offsets(o_n, s_n, o_j, True),
             convert(b_dz, p_dz.dtype.element_ty), mask=m_c)


@triton.jit
def _lstm_backward_tile(b_bs, b_g0, p_dout, p_dz, p_carry, p_dc, p_dh0,
                        p_dc0, p_cell, p_c0, p_gates, p_dcell, s_t, s_n, s_hn, s_zt, s_zn,
                        p_len, o_x, o_j, m_j, n0, i0, v, T, N, H, ROWS, i_d,
                        W_DTYPE: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
                        R: tl.constexpr, KW: tl.constexpr, BKW: tl.constexpr, KC: tl.constexpr,
                        BN: tl.constexpr, DOT_DTYPE: tl.constexpr, HAS_LENGTHS, p_part, s_qk,
                        s_qn, KP: tl.constexpr):
    """_backward_tile for the LSTM: the flow into step tt is dL/dh_tt = Σ over all four gates'
    rows of W_hh times every slice's dz of the step visited before (K = 4H: dz (T, N, D*4H),
    row stride s_zn, p_dz at this direction's gates); dL/dc_tt is this program's own, carried
    in ACC through p_dc (zero before visit 0). From them, the step's saved gates, c_tt and
    c_{tt-1} (c0 before the first step), its four gates' dz and dL/dc_{tt-1}; a row held at tt
    passes both gradients through. At v = T the flow is dh0 and the carried dL/dc is dc0."""
    o_n, m_n = _tile(n0, i0, ROWS, N, BN)
    m_c = state_mask(m_n, m_j, True)
    o_c = state_offsets(o_n, s_hn, o_j, True)
    tt, tt_before = time_index(v, T, i_d, True), time_index(v - 1, T, i_d, True)
    tt_prev = time_index(v + 1, T, i_d, True)  # the step before tt in time
    o_now = tt * s_t + o_x
    lengths = sequence_lengths(p_len, o_n, m_n, T, HAS_LENGTHS)
    held_before = tl.where(v > 0, tt_before >= lengths, False)[None, :]
    now = v < T
    # Loads that do not wait for the product, issued before it
    b_carried = tl.load(p_carry + o_c, mask=m_c & held_before, other=0.0)
    b_dc = tl.load(p_dc + o_c, mask=tl.where(v > 0, m_c, False), other=0.0)
    b_g = _features(p_dout + o_now, o_n, s_n, o_j, m_n, m_j, _load_now(i0, now, KP))
    b_dcell = _features(p_dcell + o_now, o_n, s_n, o_j, m_n, m_j, now)
    b_cn = _features(p_cell + o_now, o_n, s_n, o_j, m_n, m_j, now)
    b_cp = tl.where(v + 1 < T,
                    _features(p_cell + tt_prev * s_t + o_x, o_n, s_n, o_j, m_n, m_j, v + 1 < T),
                    _features(p_c0, o_n, s_hn, o_j, m_n, m_j, v + 1 == T))
    p_g = p_gates + tt * s_zt
    g_i = _features(p_g, o_n, s_zn, o_j, m_n, m_j, now)
    g_f = _features(p_g + H, o_n, s_zn, o_j, m_n, m_j, now)
    g_g = _features(p_g + 2 * H, o_n, s_zn, o_j, m_n, m_j, now)
    g_o = _features(p_g + 3 * H, o_n, s_zn, o_j, m_n, m_j, now)
    b_flow = _flow(b_bs, p_dz + tt_before * s_zt, s_zn, n0 + i0, o_n, m_n,
                   4 * H, v, p_part, s_qk, s_qn, o_j, m_j, W_DTYPE, DOT_DTYPE, PRECISION, R, KW,
                   BKW, KC, BN, KP)
    # nothing flows in at v = 0 (a zero, not a product of zeros: see _backward_tile)
    b_flow = tl.where(held_before, b_carried, tl.where(v > 0, b_flow, 0.0))
    # the carries' loads may replicate values across warps and their stores come from one of
    # them: every load above before any store below
    tl.debug_barrier()
    m_end = tl.where(v == T, m_c, False)
    tl.store(p_dh0 + o_c, convert(b_flow, p_dh0.dtype.element_ty), mask=m_end)
    tl.store(p_dc0 + o_c, convert(b_dc, p_dc0.dtype.element_ty), mask=m_end)
    b_dh = _this_tile(b_g0, b_g, i0, KP).to(ACC) + b_flow
    b_dct = b_dc + b_dcell.to(ACC)
    d_i, d_f, d_g, d_o, b_dcp = lstm_update_grad(b_dh, b_dct, g_i.to(ACC), g_f.to(ACC),
                                                 g_g.to(ACC), g_o.to(ACC), b_cn.to(ACC),
                                                 b_cp.to(ACC))
    active = (tt < lengths)[None, :]
    m_c = tl.where(now, m_c, False)
    tl.store(p_carry + o_c, b_dh, mask=m_c & ~active)
    tl.store(p_dc + o_c, tl.where(active, b_dcp, b_dct), mask=m_c)
    p_d = p_dz + tt * s_zt + state_offsets(o_n, s_zn, o_j, True)
    DZ_DTYPE: tl.constexpr = p_dz.dtype.element_ty
    tl.store(p_d, convert(tl.where(active, d_i, 0.0), DZ_DTYPE), mask=m_c)
    tl.store(p_d + H, convert(tl.where(active, d_f, 0.0), DZ_DTYPE), mask=m_c)
    tl.store(p_d + 2 * H, convert(tl.where(active, d_g, 0.0), DZ_DTYPE), mask=m_c)
    tl.store(p_d + 3 * H, convert(tl.where(active, d_o, 0.0), DZ_DTYPE), mask=m_c)


@triton.jit
def _gru_backward_tile(b_bs, b_g0, p_dout, p_out, p_dz, p_carry, p_direct,
                       p_dh0, p_h0, p_gates, s_t, s_n, s_hn, s_zt, s_zn, p_len, o_x, o_j, m_j,
                       n0, i0, v, T, N, H, ROWS, i_d, W_DTYPE: tl.constexpr, ACC: tl.constexpr,
                       PRECISION: tl.constexpr, R: tl.constexpr, KW: tl.constexpr,
                       BKW: tl.constexpr, KC: tl.constexpr, BN: tl.constexpr,
                       DOT_DTYPE: tl.constexpr, HAS_LENGTHS, p_part, s_qk, s_qn,
                       KP: tl.constexpr):
    """_backward_tile for the GRU: the flow into step tt is dL/dh_tt = Σ over the three gates'
    rows of W_hh times every slice's dq of the step visited before (K = 3H: dz's first three
    slots, row stride s_zn) plus dL/dh z of that step, this program's own, carried in ACC
    through p_direct (zero before visit 0). From it, the step's saved r, z, n, q_n and h_{tt-1}
    (out of the step before in time, h0 before the first), its dq_r, dq_z, dq_n and dL/dP_n;
    a row held at tt passes dL/dh through. At v = T the flow is dh0."""
    o_n, m_n = _tile(n0, i0, ROWS, N, BN)
    m_c = state_mask(m_n, m_j, True)
    o_c = state_offsets(o_n, s_hn, o_j, True)
    tt, tt_before = time_index(v, T, i_d, True), time_index(v - 1, T, i_d, True)
    tt_prev = time_index(v + 1, T, i_d, True)  # the step before tt in time
    o_now = tt * s_t + o_x
    lengths = sequence_lengths(p_len, o_n, m_n, T, HAS_LENGTHS)
    held_before = tl.where(v > 0, tt_before >= lengths, False)[None, :]
    now = v < T
    # Loads that do not wait for the product, issued before it
    b_carried = tl.load(p_carry + o_c, mask=m_c & held_before, other=0.0)
    b_direct = tl.load(p_direct + o_c, mask=tl.where(v > 0, m_c, False), other=0.0)
    b_g = _features(p_dout + o_now, o_n, s_n, o_j, m_n, m_j, _load_now(i0, now, KP))
    b_hp = tl.where(v + 1 < T,
                    _features(p_out + tt_prev * s_t + o_x, o_n, s_n, o_j, m_n, m_j, v + 1 < T),
                    _features(p_h0, o_n, s_hn, o_j, m_n, m_j, v + 1 == T))
    p_g = p_gates + tt * s_zt
    g_r = _features(p_g, o_n, s_zn, o_j, m_n, m_j, now)
    g_z = _features(p_g + H, o_n, s_zn, o_j, m_n, m_j, now)
    g_n = _features(p_g + 2 * H, o_n, s_zn, o_j, m_n, m_j, now)
    q_n = _features(p_g + 3 * H, o_n, s_zn, o_j, m_n, m_j, now)
    b_flow = _flow(b_bs, p_dz + tt_before * s_zt, s_zn, n0 + i0, o_n, m_n,
                   3 * H, v, p_part, s_qk, s_qn, o_j, m_j, W_DTYPE, DOT_DTYPE, PRECISION, R, KW,
                   BKW, KC, BN, KP)
    # nothing flows in at v = 0 (a zero, not a product of zeros: see _backward_tile)
    b_flow = tl.where(held_before, b_carried, tl.where(v > 0, b_flow + b_direct, 0.0))
    # the carries' loads may replicate values across warps and their stores come from one of
    # them: every load above before any store below
    tl.debug_barrier()
    tl.store(p_dh0 + o_c, convert(b_flow, p_dh0.dtype.element_ty),
             mask=tl.where(v == T, m_c, False))
    b_dh = _this_tile(b_g0, b_g, i0, KP).to(ACC) + b_flow
    d_r, d_z, dq_n, d_n, b_through = gru_update_grad(b_dh, g_r.to(ACC), g_z.to(ACC),
                                                     g_n.to(ACC), q_n.to(ACC), b_hp.to(ACC))
    active = (tt < lengths)[None, :]
    m_c = tl.where(now, m_c, False)
    tl.store(p_carry + o_c, b_dh, mask=m_c & ~active)
    tl.store(p_direct + o_c, b_through, mask=m_c & active)
    p_d = p_dz + tt * s_zt + state_offsets(o_n, s_zn, o_j, True)
    DZ_DTYPE: tl.constexpr = p_dz.dtype.element_ty
    tl.store(p_d, convert(tl.where(active, d_r, 0.0), DZ_DTYPE), mask=m_c)
    tl.store(p_d + H, convert(tl.where(active, d_z, 0.0), DZ_DTYPE), mask=m_c)
    tl.store(p_d + 2 * H, convert(tl.where(active, dq_n, 0.0), DZ_DTYPE), mask=m_c)
    tl.store(p_d + 3 * H, convert(tl.where(active, d_n, 0.0), DZ_DTYPE), mask=m_c)


@triton.jit
def _visit_tile(b_bs, b_g0, b_y0, p_dout, p_out, p_dz, p_carry, p_dh0, p_dc,
                p_dc0, p_cell, p_c0, p_gates, p_dcell, s_t, s_n, s_hn, s_zt, s_zn, p_len, o_x,
                o_j, m_j, n0, i0, v, T, N, H, ROWS, i_d, W_DTYPE: tl.constexpr,
                ACT: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
                R: tl.constexpr, KW: tl.constexpr, BKW: tl.constexpr, KC: tl.constexpr,
                BN: tl.constexpr, DOT_DTYPE: tl.constexpr, HAS_LENGTHS, CELL: tl.constexpr,
                p_part, s_qk, s_qn, KP: tl.constexpr):
    """Visit v of the backward for one row tile: the cell's tile function (KP > 0: the flow
    from split_2d.py's partial sums, o_j the features the program finishes)."""
    if CELL == GRU:
        _gru_backward_tile(b_bs, b_g0, p_dout, p_out, p_dz, p_carry, p_dc,
                           p_dh0, p_c0, p_gates, s_t, s_n, s_hn, s_zt, s_zn, p_len, o_x, o_j,
                           m_j, n0, i0, v, T, N, H, ROWS, i_d, W_DTYPE, ACC, PRECISION, R, KW,
                           BKW, KC, BN, DOT_DTYPE, HAS_LENGTHS, p_part, s_qk, s_qn, KP)
    elif CELL == LSTM:
        _lstm_backward_tile(b_bs, b_g0, p_dout, p_dz, p_carry, p_dc, p_dh0,
                            p_dc0, p_cell, p_c0, p_gates, p_dcell, s_t, s_n, s_hn, s_zt, s_zn,
                            p_len, o_x, o_j, m_j, n0, i0, v, T, N, H, ROWS, i_d, W_DTYPE, ACC,
                            PRECISION, R, KW, BKW, KC, BN, DOT_DTYPE, HAS_LENGTHS, p_part, s_qk,
                            s_qn, KP)
    else:
        _backward_tile(b_bs, b_g0, b_y0, p_dout, p_out, p_dz, p_carry, p_dh0,
                       s_t, s_n, s_hn, p_len, o_x, o_j, m_j, n0, i0, v, T, N, H, ROWS, i_d,
                       W_DTYPE, ACT, ACC, PRECISION, R, KW, BKW, KC, BN, DOT_DTYPE,
                       HAS_LENGTHS, p_part, s_qk, s_qn, KP)


@triton.jit(do_not_specialize=["T", "N", "ROWS", "i_d0", "G", "HAS_LENGTHS"])
def rnn_backward_split_dot_kernel(
    p_dout, p_out,
    p_b, p_b_r,          # each direction's B = W_hh: element (k, j) (same strides)
    p_dz, p_dh0, p_carry, p_len,
    p_cell, p_dcell,     # LSTM: c_t as the forward left it; dL/dc_t (T, N, D*H) as dout
    p_c0, p_gates,       # LSTM: c0 (D, N, H) as dh0; the gate activations (T, N, D*4H) as dz
    p_dc0, p_dc,         # LSTM: dL/dc0; dL/dc carried, in ACC (D, N, H) as dh0
    p_sync,
    T, N, H,
    ROWS,                # batch rows per group
    i_d0, G,             # this launch's first direction; batch groups
    s_t, s_n,            # dout, out (RNN: and dz) share the contiguous (T, N, D*H) layout
    s_bk, s_bj,          # B
    s_hd, s_hn,          # dh0 and carry (D, N, H)
    s_zt, s_zn,          # LSTM: dz and the gate activations
    ACT: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr, R: tl.constexpr,
    BK: tl.constexpr, MAX_POLLS: tl.constexpr, HAS_LENGTHS,
    BN: tl.constexpr, KW: tl.constexpr, KC: tl.constexpr, DOT_DTYPE: tl.constexpr,
    B_SHARED: tl.constexpr = False, ALIGN: tl.constexpr = 1, ALIGN_BK: tl.constexpr = 1,
    ALIGN_BJ: tl.constexpr = 1, CELL: tl.constexpr = 0,
):
    """split.py's backward (its exchange of dz_t and barrier) with its two phases fused per
    row tile (_backward_tile): after visit v-1's barrier a tile waits for one load, every
    slice's dz of the step visited before, multiplies it and at once computes its dz of visit
    v, which the next barrier exchanges. Visits 0..T (T + 1 of them; the last writes dh0), T
    barriers in between. The carry buffer holds only what rows past their sequence (packed
    input) pass through; split.py's holds every row's carried gradient.
    LSTM (CELL): each program owns R features and holds W_hh's columns of them over all four
    gates' rows (K = 4H; _lstm_backward_tile)."""
    H, s_t, s_n = aligned(H, ALIGN), aligned(s_t, ALIGN), aligned(s_n, ALIGN)
    s_hd, s_hn = aligned(s_hd, ALIGN), aligned(s_hn, ALIGN)
    s_bk, s_bj = aligned(s_bk, ALIGN_BK), aligned(s_bj, ALIGN_BJ)
    K_GATES: tl.constexpr = 4 if CELL == LSTM else 3 if CELL == GRU else 1
    i_d, S, o_j, m_j, b_bs, p_cnt, n0, o_first, m_first = _program(
        p_b, p_b_r, p_sync, s_bk, s_bj, H, H, K_GATES * H, G, ROWS, N, i_d0, PRECISION,
        DOT_DTYPE, R, KW, BK, KC, BN)
    BKW: tl.constexpr = BK // KW
    p_carry = p_carry + i_d * s_hd
    p_dh0 = p_dh0 + i_d * s_hd
    if CELL != RNN:  # (GRU: p_dc carries dL/dh z, p_c0 is h0)
        p_dc = p_dc + i_d * s_hd
        p_dc0 = p_dc0 + i_d * s_hd
        p_c0 = p_c0 + i_d * s_hd
        p_gates = p_gates + i_d * 4 * H
        p_dz = p_dz + i_d * 4 * H
    o_x = i_d * H  # this direction's features in the (T, N, D*H) layout
    o_step = time_index(0, T, i_d, True) * s_t + o_x
    b_g0 = _features(p_dout + o_step, o_first, s_n, o_j, m_first, m_j, T > 0)  # a visit ahead
    if CELL == RNN:
        b_y0 = _features(p_out + o_step, o_first, s_n, o_j, m_first, m_j, T > 0)
    else:
        b_y0 = b_g0  # (unused)
    v = T * 0
    ok = v == 0
    while (v <= T) & ok:
        # Not under an `if`, which would copy B to shared memory every visit; a while loop
        # unless B is meant to stay in shared memory (see the forward).
        if B_SHARED:
            for i0 in range(0, ROWS, BN):
                _visit_tile(b_bs, b_g0, b_y0, p_dout, p_out, p_dz, p_carry,
                            p_dh0, p_dc, p_dc0, p_cell, p_c0, p_gates, p_dcell, s_t, s_n, s_hn,
                            s_zt, s_zn, p_len, o_x, o_j, m_j, n0, i0, v, T, N, H, ROWS, i_d,
                            p_b.dtype.element_ty, ACT, ACC, PRECISION, R, KW, BKW, KC, BN,
                            DOT_DTYPE, HAS_LENGTHS, CELL, p_dz, 0, 0, 0)
        else:
            i0 = ROWS * 0
            while i0 < ROWS:
                _visit_tile(b_bs, b_g0, b_y0, p_dout, p_out, p_dz, p_carry,
                            p_dh0, p_dc, p_dc0, p_cell, p_c0, p_gates, p_dcell, s_t, s_n, s_hn,
                            s_zt, s_zn, p_len, o_x, o_j, m_j, n0, i0, v, T, N, H, ROWS, i_d,
                            p_b.dtype.element_ty, ACT, ACC, PRECISION, R, KW, BKW, KC, BN,
                            DOT_DTYPE, HAS_LENGTHS, CELL, p_dz, 0, 0, 0)
                i0 += BN
        if v < T:  # dz of this visit, from every slice, is what the next one multiplies
            o_next = time_index(v + 1, T, i_d, True) * s_t + o_x
            b_g0 = _features(p_dout + o_next, o_first, s_n, o_j, m_first, m_j, v + 1 < T)
            if CELL == RNN:
                b_y0 = _features(p_out + o_next, o_first, s_n, o_j, m_first, m_j, v + 1 < T)
            ok = arrive_and_wait(p_cnt, S * (v + 1), MAX_POLLS)
        v += 1
    if ok == 0:  # visit v and later never ran: their dz, and dh0, are NaN
        backward_failed(p_sync, p_dz, p_dh0, p_dc0, s_t, s_n, s_zt, s_zn, s_hn, v, T, N, H,
                        n0, ROWS, i_d, o_j, m_j, R, BN, CELL)


@triton.jit
def backward_failed(p_sync, p_dz, p_dh0, p_dc0, s_t, s_n, s_zt, s_zn, s_hn, v_from, T, N, H,
                    n0, ROWS, i_d, o_j, m_j, R: tl.constexpr, BN: tl.constexpr,
                    CELL: tl.constexpr):
    """A tensor-core split backward whose wait ran out: the failure flag, and NaN into the
    program's features o_j of dz from visit v_from on (the gated cells': of all four slots,
    p_dz at the direction's) and of dh0 (and dc0)."""
    tl.store(p_sync, 1)
    if CELL != RNN:
        for g in tl.static_range(4):
            _poison(p_dz + g * H, s_zt, s_zn, v_from, T, N, H, n0, ROWS, i_d, o_j, True, R)
    else:
        _poison(p_dz + i_d * H, s_t, s_n, v_from, T, N, H, n0, ROWS, i_d, o_j, True, R)
    for i0 in range(0, ROWS, BN):
        o_n, m_n = _tile(n0, i0, ROWS, N, BN)
        nan = tl.full((R, BN), float("nan"), p_dh0.dtype.element_ty)
        tl.store(p_dh0 + state_offsets(o_n, s_hn, o_j, True), nan,
                 mask=state_mask(m_n, m_j, True))
        if CELL == LSTM:
            tl.store(p_dc0 + state_offsets(o_n, s_hn, o_j, True), nan,
                     mask=state_mask(m_n, m_j, True))
