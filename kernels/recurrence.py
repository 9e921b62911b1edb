"""Persistent recurrence kernels: W_hh stays on-chip and one launch loops over all timesteps.

The cell is a constexpr (CELL, kernels/cells.py). Below, the RNN's; the LSTM's is the same
loop with four (BH, BH) tiles of B, one per gate (i, f, g, o: W_hh's rows g*H.., s_bg apart),
four parts of P and of b_hh, the cell state c beside h in ACC, and the gate activations and
c_t stored every step for the backward, which walks time backwards carrying dL/dh and dL/dc,
reads them back (with c_{t-1}) and sums the four gates' products for dL/dh_{t-1}. The GRU's:
three tiles (r, z, n), its hidden products kept apart from P (cells.gru_update), r, z, n and
q_n stored every step; its backward reads them back with h_{t-1} (out, or h0 passed as c0).

Forward:  h_t = act(P_t + b_hh + h_{t-1} W_hhᵀ), P = X W_ihᵀ + b_ih (precomputed by one GEMM
per direction); b_hh is read from the parameter once per program.
Backward: dz_t = (dY_t + c_t) ⊙ act'(y_t),  c_{t-1} = dz_t W_hh,  dh_0 = c_0.

Both are "h ← f(h @ B)" with B = W_hhᵀ forward and B = W_hh backward; the launcher picks B by
passing W_hh's strides swapped, so no transposed copy exists. Grid: (batch tiles, directions).
Each direction's W_hh, b_hh and P come by their own pointers (blocks.direction_pointer): the
parameters are read in place at every launch, and nothing derived from them is kept.
Direction 1 walks time backwards through index arithmetic (no flipped copies).

Two variants share the helpers in blocks.py:
- resident (this file): the whole B tile is loaded once, on-chip, before the time loop.
- streaming (streaming.py): B is re-read from L2 in chunks every step, for H too large to hold.

The resident forward software-prefetches P one step ahead: P_{t+1} is loaded before step t's
product, carried through the loop, and used by step t+1 (the last step re-reads its own P).
Checked in the sm_90 code of Triton 3.6 and 3.9 (tests/test_compile.py,
test_resident_forward_prefetches_the_next_step): the TTGIR's time loop yields a value loaded
inside it, and the PTX loop's first ld.global comes before its first mma.sync (tl.dot) or
multiply (elementwise); in the SASS of tf32 H = 128, batch 16 (cuobjdump -sass) the loop's
LDG.E.128 of P_{t+1} is issued before its first HMMA.1688.F32.TF32 (read before the loop
became a `while` and sm_90 took the W-first product; the test checks the current code).
Triton's own pipelining (num_stages) does not do this: before, P_t was loaded inside step t as the dot's accumulator.
The backward does not prefetch (its dY_t and y_t loads are still issued at the top of step t).
Numerics: blocks.py (the state stays in ACC; the product's operands are rounded as tl.dot
takes them, in every path).
"""
import triton
import triton.language as tl

from .blocks import (activate, activation_grad, active, batch_tile, convert, direction_pointer,
                     hidden_bias, load_square_tile, mix, mix_w_first, sequence_lengths,
                     state_mask, state_offsets, time_index, w_first_operand, weight_operand)
from .cells import GRU, LSTM, gru_update, gru_update_grad, lstm_update, lstm_update_grad


@triton.jit
def _resident_weight(p_b, s_bk, s_bj, o_h, m_h, ACC: tl.constexpr, USE_DOT: tl.constexpr,
                     PRECISION: tl.constexpr, W_FIRST: tl.constexpr):
    """The product matrix, on-chip for all T steps, rounded for the product once: B (k, j) for
    mix(), or A = Bᵀ (j, k) for mix_w_first() (W_FIRST)."""
    if W_FIRST:
        return w_first_operand(load_square_tile(p_b, s_bj, s_bk, o_h, m_h),
                               m_h[:, None] & m_h[None, :], PRECISION)
    else:
        return weight_operand(load_square_tile(p_b, s_bk, s_bj, o_h, m_h), ACC, USE_DOT,
                              PRECISION)


@triton.jit
def _product(b_h, b_b, ACC: tl.constexpr, W_DTYPE: tl.constexpr, USE_DOT: tl.constexpr,
             DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, W_FIRST: tl.constexpr):
    """h @ B (BN, BH), or its transpose B^T h^T (BH, BN) for transposed tiles (W_FIRST)."""
    if W_FIRST:
        return mix_w_first(b_b, b_h, ACC, W_DTYPE, DOT_DTYPE, PRECISION)
    else:
        return mix(b_h, b_b, ACC, W_DTYPE, USE_DOT, DOT_DTYPE, PRECISION)


@triton.jit
def _active(tt, b_len, W_FIRST: tl.constexpr):
    """active() for (BN, BH) tiles, or for transposed (BH, BN) tiles (W_FIRST)."""
    if W_FIRST:
        return (tt < b_len)[None, :]
    else:
        return active(tt, b_len)


@triton.jit
def _later_gates_weights(p_b, s_bg, s_bk, s_bj, o_h, m_h, ACC: tl.constexpr,
                         USE_DOT: tl.constexpr, PRECISION: tl.constexpr,
                         W_FIRST: tl.constexpr):
    """_resident_weight of gates 1, 2 and 3 (f, g, o: W_hh's rows from H, 2H, 3H on, s_bg
    apart in B)."""
    return (_resident_weight(p_b + s_bg, s_bk, s_bj, o_h, m_h, ACC, USE_DOT, PRECISION,
                             W_FIRST),
            _resident_weight(p_b + 2 * s_bg, s_bk, s_bj, o_h, m_h, ACC, USE_DOT, PRECISION,
                             W_FIRST),
            _resident_weight(p_b + 3 * s_bg, s_bk, s_bj, o_h, m_h, ACC, USE_DOT, PRECISION,
                             W_FIRST))


@triton.jit
def _bias(p_bias, p_bias_r, i_d, o_h, HB, ACC: tl.constexpr, W_FIRST: tl.constexpr):
    """hidden_bias as a row (or, W_FIRST, a column) of the state tile's shape."""
    b_hb = hidden_bias(p_bias, p_bias_r, i_d, o_h, HB, ACC)
    if W_FIRST:  # the state tile's feature axis
        return b_hb[:, None]
    else:
        return b_hb[None, :]


@triton.jit(do_not_specialize=["T", "N", "HB", "HAS_LENGTHS"])
def rnn_forward_resident_kernel(
    p_proj, p_proj_r,    # each direction's P (T, N, G*H), features contiguous (same strides)
    p_h0,
    p_b, p_b_r,          # each direction's B = W_hhᵀ: element (k, j) (same strides)
    p_bias, p_bias_r,    # each direction's b_hh (G*H,), read where HB > 0
    p_out, p_len,
    p_c0, p_cell, p_gates,  # LSTM: c0 (D, N, H) as h0; c_t (T, N, D*H) as out; gates (T, N, D*4H)
    T, N, H, HB,
    s_pt, s_pn,          # P: time and batch strides
    s_hd, s_hn,          # h0 (D, N, H), and c0
    s_bk, s_bj,          # B
    s_ot, s_on,          # out (T, N, D*H), and the cell states
    s_bg,                # B's offset from one gate's H rows of W_hh to the next
    s_gt, s_gn,          # the gate activations (T, N, D*G*H)
    ACT: tl.constexpr, ACC: tl.constexpr, USE_DOT: tl.constexpr, DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr, BN: tl.constexpr, BH: tl.constexpr, HAS_LENGTHS,
    W_FIRST: tl.constexpr = False, CELL: tl.constexpr = 0,
):
    # W_FIRST: tiles of the state are transposed, (BH, BN), and W_hh is the product's first
    # operand (blocks.mix_w_first); else (BN, BH) tiles and h @ B (blocks.mix).
    # CELL (cells.py): RNN, one gate; LSTM, four (i, f, g, o), each with its own (BH, BH) tile
    # of B, bias and part of P, and the cell state c beside h.
    i_d, o_n, m_n = batch_tile(N, BN)
    o_h = tl.arange(0, BH).to(tl.int64)
    m_h = o_h < H
    m_nh = state_mask(m_n, m_h, W_FIRST)
    b_len = sequence_lengths(p_len, o_n, m_n, T, HAS_LENGTHS)

    p_b = direction_pointer(p_b, p_b_r, i_d)
    b_b = _resident_weight(p_b, s_bk, s_bj, o_h, m_h, ACC, USE_DOT, PRECISION, W_FIRST)
    b_hb = _bias(p_bias, p_bias_r, i_d, o_h, HB, ACC, W_FIRST)
    o_hd = i_d * s_hd + state_offsets(o_n, s_hn, o_h, W_FIRST)
    b_h = tl.load(p_h0 + o_hd, mask=m_nh, other=0.0).to(ACC)
    p_proj = direction_pointer(p_proj, p_proj_r, i_d)
    o_p = state_offsets(o_n, s_pn, o_h, W_FIRST)
    o_o = state_offsets(o_n, s_on, o_h, W_FIRST) + i_d * H
    # Software prefetch: P of the step after this one is loaded before this step's product,
    # so its memory latency hides behind the product instead of stalling the next step. The
    # last step re-reads its own P (an in-bounds load whose value is unused); T = 0 reads none.
    m_first = state_mask(m_n, o_h < tl.where(T > 0, H, 0), W_FIRST)
    p_p0 = p_proj + time_index(0, T, i_d, False) * s_pt + o_p
    b_p = tl.load(p_p0, mask=m_first, other=0.0)
    if CELL == LSTM:
        b_b1, b_b2, b_b3 = _later_gates_weights(p_b, s_bg, s_bk, s_bj, o_h, m_h, ACC, USE_DOT,
                                                PRECISION, W_FIRST)
        b_hb1 = _bias(p_bias + H, p_bias_r + H, i_d, o_h, HB, ACC, W_FIRST)
        b_hb2 = _bias(p_bias + 2 * H, p_bias_r + 2 * H, i_d, o_h, HB, ACC, W_FIRST)
        b_hb3 = _bias(p_bias + 3 * H, p_bias_r + 3 * H, i_d, o_h, HB, ACC, W_FIRST)
        b_c = tl.load(p_c0 + o_hd, mask=m_nh, other=0.0).to(ACC)
        b_p1 = tl.load(p_p0 + H, mask=m_first, other=0.0)
        b_p2 = tl.load(p_p0 + 2 * H, mask=m_first, other=0.0)
        b_p3 = tl.load(p_p0 + 3 * H, mask=m_first, other=0.0)
        o_g = state_offsets(o_n, s_gn, o_h, W_FIRST) + i_d * 4 * H
    if CELL == GRU:
        b_b1 = _resident_weight(p_b + s_bg, s_bk, s_bj, o_h, m_h, ACC, USE_DOT, PRECISION,
                                W_FIRST)
        b_b2 = _resident_weight(p_b + 2 * s_bg, s_bk, s_bj, o_h, m_h, ACC, USE_DOT, PRECISION,
                                W_FIRST)
        b_hb1 = _bias(p_bias + H, p_bias_r + H, i_d, o_h, HB, ACC, W_FIRST)
        b_hb2 = _bias(p_bias + 2 * H, p_bias_r + 2 * H, i_d, o_h, HB, ACC, W_FIRST)
        b_p1 = tl.load(p_p0 + H, mask=m_first, other=0.0)
        b_p2 = tl.load(p_p0 + 2 * H, mask=m_first, other=0.0)
        o_g = state_offsets(o_n, s_gn, o_h, W_FIRST) + i_d * 4 * H
    W_DTYPE: tl.constexpr = p_b.dtype.element_ty
    # The time loop is a `while`, not a `for`: Triton (3.6 and 3.9) sinks the conversion of a
    # loop-invariant tl.dot operand into the scf.for that uses it (ReorderInstructions, to
    # lower register pressure), so W_hh would be re-read from shared memory every step
    # (ldmatrix, behind bar.syncs). It does so for scf.for only: in a `while`, W_hh is
    # converted once and stays in registers in the MMA operand layout for the whole sequence
    # (the resource report's W_hh column reads it from the compiled code).
    t = T * 0
    while t < T:
        tt = time_index(t, T, i_d, False)
        tn = time_index(tl.minimum(t + 1, T - 1), T, i_d, False)
        p_pn = p_proj + tn * s_pt + o_p
        b_p_next = tl.load(p_pn, mask=m_nh, other=0.0)
        m_act = _active(tt, b_len, W_FIRST)
        if CELL == LSTM:
            b_p1_next = tl.load(p_pn + H, mask=m_nh, other=0.0)
            b_p2_next = tl.load(p_pn + 2 * H, mask=m_nh, other=0.0)
            b_p3_next = tl.load(p_pn + 3 * H, mask=m_nh, other=0.0)
            g_i, g_f, g_g, g_o, c_new, h_new = lstm_update(
                (b_p.to(ACC) + b_hb) + _product(b_h, b_b, ACC, W_DTYPE, USE_DOT, DOT_DTYPE,
                                                PRECISION, W_FIRST),
                (b_p1.to(ACC) + b_hb1) + _product(b_h, b_b1, ACC, W_DTYPE, USE_DOT, DOT_DTYPE,
                                                  PRECISION, W_FIRST),
                (b_p2.to(ACC) + b_hb2) + _product(b_h, b_b2, ACC, W_DTYPE, USE_DOT, DOT_DTYPE,
                                                  PRECISION, W_FIRST),
                (b_p3.to(ACC) + b_hb3) + _product(b_h, b_b3, ACC, W_DTYPE, USE_DOT, DOT_DTYPE,
                                                  PRECISION, W_FIRST), b_c)
            b_h = tl.where(m_act, h_new, b_h)
            b_c = tl.where(m_act, c_new, b_c)
            tl.store(p_cell + tt * s_ot + o_o, convert(b_c, p_cell.dtype.element_ty), mask=m_nh)
            p_g = p_gates + tt * s_gt + o_g
            GATE_DTYPE: tl.constexpr = p_gates.dtype.element_ty
            tl.store(p_g, convert(g_i, GATE_DTYPE), mask=m_nh)
            tl.store(p_g + H, convert(g_f, GATE_DTYPE), mask=m_nh)
            tl.store(p_g + 2 * H, convert(g_g, GATE_DTYPE), mask=m_nh)
            tl.store(p_g + 3 * H, convert(g_o, GATE_DTYPE), mask=m_nh)
            b_p1, b_p2, b_p3 = b_p1_next, b_p2_next, b_p3_next
        elif CELL == GRU:
            b_p1_next = tl.load(p_pn + H, mask=m_nh, other=0.0)
            b_p2_next = tl.load(p_pn + 2 * H, mask=m_nh, other=0.0)
            q_n = b_hb2 + _product(b_h, b_b2, ACC, W_DTYPE, USE_DOT, DOT_DTYPE, PRECISION,
                                   W_FIRST)
            g_r, g_z, g_n, h_new = gru_update(
                b_p.to(ACC), b_p1.to(ACC), b_p2.to(ACC),
                b_hb + _product(b_h, b_b, ACC, W_DTYPE, USE_DOT, DOT_DTYPE, PRECISION, W_FIRST),
                b_hb1 + _product(b_h, b_b1, ACC, W_DTYPE, USE_DOT, DOT_DTYPE, PRECISION,
                                 W_FIRST), q_n, b_h)
            b_h = tl.where(m_act, h_new, b_h)
            p_g = p_gates + tt * s_gt + o_g
            GATE_DTYPE: tl.constexpr = p_gates.dtype.element_ty
            tl.store(p_g, convert(g_r, GATE_DTYPE), mask=m_nh)
            tl.store(p_g + H, convert(g_z, GATE_DTYPE), mask=m_nh)
            tl.store(p_g + 2 * H, convert(g_n, GATE_DTYPE), mask=m_nh)
            tl.store(p_g + 3 * H, convert(q_n, GATE_DTYPE), mask=m_nh)
            b_p1, b_p2 = b_p1_next, b_p2_next
        else:
            b_new = activate((b_p.to(ACC) + b_hb) + _product(b_h, b_b, ACC, W_DTYPE, USE_DOT,
                                                             DOT_DTYPE, PRECISION, W_FIRST),
                             ACT)
            b_h = tl.where(m_act, b_new, b_h)
        tl.store(p_out + tt * s_ot + o_o, convert(b_h, p_out.dtype.element_ty), mask=m_nh)
        b_p = b_p_next
        t += 1


@triton.jit(do_not_specialize=["T", "N", "HAS_LENGTHS"])
def rnn_backward_resident_kernel(
    p_dout, p_out,
    p_b, p_b_r,          # each direction's B = W_hh: element (k, j) (same strides)
    p_dz, p_dh0, p_len,
    p_cell, p_dcell, p_c0, p_gates, p_dc0,  # LSTM: as the forward left them; dL/dc_t; dL/dc0
    T, N, H,
    s_t, s_n,            # dout, out (RNN: and dz; LSTM: and cell, dcell): (T, N, D*H)
    s_bk, s_bj,          # B
    s_hd, s_hn,          # dh0 (D, N, H), and c0, dc0
    s_bg,                # B's offset from one gate's H rows of W_hh to the next
    s_zt, s_zn,          # LSTM: dz and the gate activations (T, N, D*4H)
    ACT: tl.constexpr, ACC: tl.constexpr, USE_DOT: tl.constexpr, DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr, BN: tl.constexpr, BH: tl.constexpr, HAS_LENGTHS,
    W_FIRST: tl.constexpr = False, CELL: tl.constexpr = 0,
):
    # W_FIRST: transposed (BH, BN) state tiles and W_hhᵀ as the first operand (as forward).
    # LSTM: dL/dh_{t-1} = Σ over the four gates of dz_gate W_gate, and dL/dc is carried beside it.
    i_d, o_n, m_n = batch_tile(N, BN)
    o_h = tl.arange(0, BH).to(tl.int64)
    m_h = o_h < H
    m_nh = state_mask(m_n, m_h, W_FIRST)
    b_len = sequence_lengths(p_len, o_n, m_n, T, HAS_LENGTHS)

    p_b = direction_pointer(p_b, p_b_r, i_d)
    b_b = _resident_weight(p_b, s_bk, s_bj, o_h, m_h, ACC, USE_DOT, PRECISION, W_FIRST)
    b_c = tl.zeros(m_nh.shape, dtype=ACC)  # gradient carried into the step being visited
    o_x = state_offsets(o_n, s_n, o_h, W_FIRST) + i_d * H
    o_hd = i_d * s_hd + state_offsets(o_n, s_hn, o_h, W_FIRST)
    if CELL == LSTM:
        b_b1, b_b2, b_b3 = _later_gates_weights(p_b, s_bg, s_bk, s_bj, o_h, m_h, ACC, USE_DOT,
                                                PRECISION, W_FIRST)
        b_dc = tl.zeros(m_nh.shape, dtype=ACC)  # dL/dc carried into the step being visited
        b_c0 = tl.load(p_c0 + o_hd, mask=m_nh, other=0.0).to(ACC)
        o_z = state_offsets(o_n, s_zn, o_h, W_FIRST) + i_d * 4 * H
        b_cn = tl.load(p_cell + time_index(0, T, i_d, True) * s_t + o_x,  # c_t of visit 0
                       mask=tl.where(T > 0, m_nh, False), other=0.0).to(ACC)
    if CELL == GRU:
        b_b1 = _resident_weight(p_b + s_bg, s_bk, s_bj, o_h, m_h, ACC, USE_DOT, PRECISION,
                                W_FIRST)
        b_b2 = _resident_weight(p_b + 2 * s_bg, s_bk, s_bj, o_h, m_h, ACC, USE_DOT, PRECISION,
                                W_FIRST)
        b_h0 = tl.load(p_c0 + o_hd, mask=m_nh, other=0.0).to(ACC)  # (the launcher passes h0)
        o_z = state_offsets(o_n, s_zn, o_h, W_FIRST) + i_d * 4 * H
    W_DTYPE: tl.constexpr = p_b.dtype.element_ty
    t = T * 0
    while t < T:  # a `while`, so that W_hh stays in registers (see the forward)
        tt = time_index(t, T, i_d, True)
        b_g = tl.load(p_dout + tt * s_t + o_x, mask=m_nh, other=0.0).to(ACC) + b_c
        m_act = _active(tt, b_len, W_FIRST)
        if CELL == LSTM:
            # c_{t-1}: the state before step tt in this direction's order (visited next), c0
            # before its first step
            tb = time_index(t + 1, T, i_d, True)
            b_cp = tl.load(p_cell + tb * s_t + o_x, mask=tl.where(t + 1 < T, m_nh, False),
                           other=0.0).to(ACC)
            b_cp = tl.where(t + 1 < T, b_cp, b_c0)
            b_dct = b_dc + tl.load(p_dcell + tt * s_t + o_x, mask=m_nh, other=0.0).to(ACC)
            p_g = p_gates + tt * s_zt + o_z
            d_i, d_f, d_g, d_o, b_dcp = lstm_update_grad(
                b_g, b_dct, tl.load(p_g, mask=m_nh, other=0.0).to(ACC),
                tl.load(p_g + H, mask=m_nh, other=0.0).to(ACC),
                tl.load(p_g + 2 * H, mask=m_nh, other=0.0).to(ACC),
                tl.load(p_g + 3 * H, mask=m_nh, other=0.0).to(ACC), b_cn, b_cp)
            d_i = tl.where(m_act, d_i, 0.0)
            d_f = tl.where(m_act, d_f, 0.0)
            d_g = tl.where(m_act, d_g, 0.0)
            d_o = tl.where(m_act, d_o, 0.0)
            p_d = p_dz + tt * s_zt + o_z
            DZ_DTYPE: tl.constexpr = p_dz.dtype.element_ty
            tl.store(p_d, convert(d_i, DZ_DTYPE), mask=m_nh)
            tl.store(p_d + H, convert(d_f, DZ_DTYPE), mask=m_nh)
            tl.store(p_d + 2 * H, convert(d_g, DZ_DTYPE), mask=m_nh)
            tl.store(p_d + 3 * H, convert(d_o, DZ_DTYPE), mask=m_nh)
            b_flow = _product(d_i, b_b, ACC, W_DTYPE, USE_DOT, DOT_DTYPE, PRECISION, W_FIRST) \
                + _product(d_f, b_b1, ACC, W_DTYPE, USE_DOT, DOT_DTYPE, PRECISION, W_FIRST) \
                + _product(d_g, b_b2, ACC, W_DTYPE, USE_DOT, DOT_DTYPE, PRECISION, W_FIRST) \
                + _product(d_o, b_b3, ACC, W_DTYPE, USE_DOT, DOT_DTYPE, PRECISION, W_FIRST)
            # a held step passes both gradients through unchanged
            b_c = tl.where(m_act, b_flow, b_g)
            b_dc = tl.where(m_act, b_dcp, b_dct)
            b_cn = b_cp  # c_{t-1} of this visit is c_t of the next: loaded once
        elif CELL == GRU:
            # h_{t-1}: out of the step visited next, h0 before this direction's first step
            tb = time_index(t + 1, T, i_d, True)
            b_hp = tl.load(p_out + tb * s_t + o_x, mask=tl.where(t + 1 < T, m_nh, False),
                           other=0.0).to(ACC)
            b_hp = tl.where(t + 1 < T, b_hp, b_h0)
            p_g = p_gates + tt * s_zt + o_z
            d_r, d_z, dq_n, d_n, b_through = gru_update_grad(
                b_g, tl.load(p_g, mask=m_nh, other=0.0).to(ACC),
                tl.load(p_g + H, mask=m_nh, other=0.0).to(ACC),
                tl.load(p_g + 2 * H, mask=m_nh, other=0.0).to(ACC),
                tl.load(p_g + 3 * H, mask=m_nh, other=0.0).to(ACC), b_hp)
            d_r = tl.where(m_act, d_r, 0.0)
            d_z = tl.where(m_act, d_z, 0.0)
            dq_n = tl.where(m_act, dq_n, 0.0)
            p_d = p_dz + tt * s_zt + o_z
            DZ_DTYPE: tl.constexpr = p_dz.dtype.element_ty
            tl.store(p_d, convert(d_r, DZ_DTYPE), mask=m_nh)
            tl.store(p_d + H, convert(d_z, DZ_DTYPE), mask=m_nh)
            tl.store(p_d + 2 * H, convert(dq_n, DZ_DTYPE), mask=m_nh)
            tl.store(p_d + 3 * H, convert(tl.where(m_act, d_n, 0.0), DZ_DTYPE), mask=m_nh)
            b_flow = _product(d_r, b_b, ACC, W_DTYPE, USE_DOT, DOT_DTYPE, PRECISION, W_FIRST) \
                + _product(d_z, b_b1, ACC, W_DTYPE, USE_DOT, DOT_DTYPE, PRECISION, W_FIRST) \
                + _product(dq_n, b_b2, ACC, W_DTYPE, USE_DOT, DOT_DTYPE, PRECISION, W_FIRST)
            b_c = tl.where(m_act, b_flow + b_through, b_g)  # a held step passes dL/dh on
        else:
            b_y = tl.load(p_out + tt * s_t + o_x, mask=m_nh, other=0.0).to(ACC)
            b_dz = tl.where(m_act, activation_grad(b_g, b_y, ACT), 0.0)
            tl.store(p_dz + tt * s_t + o_x, convert(b_dz, p_dz.dtype.element_ty), mask=m_nh)
            b_c = _product(b_dz, b_b, ACC, W_DTYPE, USE_DOT, DOT_DTYPE, PRECISION, W_FIRST)
            b_c = tl.where(m_act, b_c, b_g)  # a held step passes its gradient through unchanged
        t += 1
    tl.store(p_dh0 + o_hd, convert(b_c, p_dh0.dtype.element_ty), mask=m_nh)
    if CELL == LSTM:
        tl.store(p_dc0 + o_hd, convert(b_dc, p_dc0.dtype.element_ty), mask=m_nh)
