"""Streaming variant: for H too large to hold B = W_hh(ᵀ) in one program's registers.

Same recurrences as recurrence.py, but every step re-reads B from L2 in (BK, BJ) chunks, and
the state lives in a small fp32 (fp64) scratch buffer (D, 2, N, H) used as a ping-pong pair:
step t reads slot (t + 1) % 2 and writes slot t % 2. The whole state must be visible to every
warp of the program before the next step, hence the barrier at the end of each phase.

Numerics as in blocks.py. The state (h forward, the carried gradient c backward) stays in the
accumulator dtype in the scratch buffer. The backward's phase 2 reads dz_t back from the dz
output, stored in the layer's dtype: that is the product operand's rounding every path applies
(state_operand rounds dz to the weight dtype, the layer's dtype; float32 is stored exactly and
then TF32-rounded), so streaming, resident and split compute the same c
(tests/test_numerics.py).

The cell is a constexpr (CELL, kernels/cells.py). LSTM: each output chunk takes the four
gates' products (W_hh's rows g*H + j, s_bg apart in B) and c rides beside h in a second
ping-pong buffer (cstate, (D, 2, N, H), c0 in slot 1); the backward's phase 1 computes the
four gates' dz of every feature from dL/dh and dL/dc (their own ping-pong pairs), phase 2 sums
the four gates' products for dL/dh_{t-1}. GRU: three gates' products per chunk, kept apart from
P (cells.gru_update), r, z, n and q_n stored; the backward's phase 1 stores dq_r, dq_z, dq_n
and dL/dP_n, and its direct term dL/dh_t z into the carry's slot, to which phase 2 adds the
three gates' products.
"""
import triton
import triton.language as tl

from .blocks import (activate, activation_grad, active, batch_tile, chunk_product, convert,
                     direction_pointer, hidden_bias, sequence_lengths, time_index)
from .cells import GRU, LSTM, gru_update, gru_update_grad, lstm_update, lstm_update_grad


@triton.jit
def _gate_product(p_src, s_src, p_b, s_bk, s_bj, o_n, m_n, j0, H, ACC: tl.constexpr,
                  USE_DOT: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
                  BN: tl.constexpr, BJ: tl.constexpr):
    """One gate's (BN, BJ) chunk of src @ B over K = H (chunk_product)."""
    return chunk_product(p_src, s_src, p_b, o_n, m_n, j0, H, H, s_bk, s_bj, ACC, USE_DOT,
                         DOT_DTYPE, PRECISION, BN, BJ, BJ)


@triton.jit
def _lstm_forward_chunk(p_p, s_pn, p_b, p_bias, p_bias_r, p_prev, p_cprev, p_cnext, p_next,
                        p_out, p_cell, s_on, p_gates, s_gn, s_sn, s_bk, s_bj, s_bg, o_n, m_n,
                        o_j, m_nj, m_act, j0, i_d, H, HB, ACC: tl.constexpr,
                        USE_DOT: tl.constexpr, DOT_DTYPE: tl.constexpr,
                        PRECISION: tl.constexpr, BN: tl.constexpr, BJ: tl.constexpr):
    """Features j0..j0+BJ of one LSTM step: the four gates' products of h_{t-1} (p_prev), P_t
    (p_p) and b_hh, c from its ping-pong slot (p_cprev -> p_cnext), h, c and the gates stored;
    rows outside their sequence keep h and c."""
    o_s = o_n[:, None] * s_sn + o_j[None, :]
    o_p = o_n[:, None] * s_pn + o_j[None, :]
    b_z_i = tl.load(p_p + o_p, mask=m_nj, other=0.0).to(ACC) + hidden_bias(
        p_bias, p_bias_r, i_d, o_j, HB, ACC)[None, :] + _gate_product(
        p_prev, s_sn, p_b, s_bk, s_bj, o_n, m_n, j0, H, ACC, USE_DOT, DOT_DTYPE, PRECISION,
        BN, BJ)
    b_z_f = tl.load(p_p + H + o_p, mask=m_nj, other=0.0).to(ACC) + hidden_bias(
        p_bias + H, p_bias_r + H, i_d, o_j, HB, ACC)[None, :] + _gate_product(
        p_prev, s_sn, p_b + s_bg, s_bk, s_bj, o_n, m_n, j0, H, ACC, USE_DOT, DOT_DTYPE,
        PRECISION, BN, BJ)
    b_z_g = tl.load(p_p + 2 * H + o_p, mask=m_nj, other=0.0).to(ACC) + hidden_bias(
        p_bias + 2 * H, p_bias_r + 2 * H, i_d, o_j, HB, ACC)[None, :] + _gate_product(
        p_prev, s_sn, p_b + 2 * s_bg, s_bk, s_bj, o_n, m_n, j0, H, ACC, USE_DOT, DOT_DTYPE,
        PRECISION, BN, BJ)
    b_z_o = tl.load(p_p + 3 * H + o_p, mask=m_nj, other=0.0).to(ACC) + hidden_bias(
        p_bias + 3 * H, p_bias_r + 3 * H, i_d, o_j, HB, ACC)[None, :] + _gate_product(
        p_prev, s_sn, p_b + 3 * s_bg, s_bk, s_bj, o_n, m_n, j0, H, ACC, USE_DOT, DOT_DTYPE,
        PRECISION, BN, BJ)
    b_c = tl.load(p_cprev + o_s, mask=m_nj, other=0.0)
    g_i, g_f, g_g, g_o, c_new, h_new = lstm_update(b_z_i, b_z_f, b_z_g, b_z_o, b_c)
    b_h = tl.where(m_act, h_new, tl.load(p_prev + o_s, mask=m_nj & ~m_act, other=0.0))
    b_c = tl.where(m_act, c_new, b_c)
    tl.store(p_next + o_s, b_h, mask=m_nj)
    tl.store(p_cnext + o_s, b_c, mask=m_nj)
    o_o = o_n[:, None] * s_on + i_d * H + o_j[None, :]
    tl.store(p_out + o_o, convert(b_h, p_out.dtype.element_ty), mask=m_nj)
    tl.store(p_cell + o_o, convert(b_c, p_cell.dtype.element_ty), mask=m_nj)
    o_g = o_n[:, None] * s_gn + i_d * 4 * H + o_j[None, :]
    GATE_DTYPE: tl.constexpr = p_gates.dtype.element_ty
    tl.store(p_gates + o_g, convert(g_i, GATE_DTYPE), mask=m_nj)
    tl.store(p_gates + H + o_g, convert(g_f, GATE_DTYPE), mask=m_nj)
    tl.store(p_gates + 2 * H + o_g, convert(g_g, GATE_DTYPE), mask=m_nj)
    tl.store(p_gates + 3 * H + o_g, convert(g_o, GATE_DTYPE), mask=m_nj)


@triton.jit
def _gru_forward_chunk(p_p, s_pn, p_b, p_bias, p_bias_r, p_prev, p_next, p_out, s_on, p_gates,
                       s_gn, s_sn, s_bk, s_bj, s_bg, o_n, m_n, o_j, m_nj, m_act, j0, i_d, H, HB,
                       ACC: tl.constexpr, USE_DOT: tl.constexpr, DOT_DTYPE: tl.constexpr,
                       PRECISION: tl.constexpr, BN: tl.constexpr, BJ: tl.constexpr):
    """Features j0..j0+BJ of one GRU step: the three gates' hidden products of h_{t-1}
    (p_prev) with b_hh, P_t (p_p) apart, h stored with r, z, n and q_n; rows outside their
    sequence keep h."""
    o_s = o_n[:, None] * s_sn + o_j[None, :]
    o_p = o_n[:, None] * s_pn + o_j[None, :]
    q_r = hidden_bias(p_bias, p_bias_r, i_d, o_j, HB, ACC)[None, :] + _gate_product(
        p_prev, s_sn, p_b, s_bk, s_bj, o_n, m_n, j0, H, ACC, USE_DOT, DOT_DTYPE, PRECISION,
        BN, BJ)
    q_z = hidden_bias(p_bias + H, p_bias_r + H, i_d, o_j, HB, ACC)[None, :] + _gate_product(
        p_prev, s_sn, p_b + s_bg, s_bk, s_bj, o_n, m_n, j0, H, ACC, USE_DOT, DOT_DTYPE,
        PRECISION, BN, BJ)
    q_n = hidden_bias(p_bias + 2 * H, p_bias_r + 2 * H, i_d, o_j, HB, ACC)[None, :] + \
        _gate_product(p_prev, s_sn, p_b + 2 * s_bg, s_bk, s_bj, o_n, m_n, j0, H, ACC, USE_DOT,
                      DOT_DTYPE, PRECISION, BN, BJ)
    b_h = tl.load(p_prev + o_s, mask=m_nj, other=0.0)
    g_r, g_z, g_n, h_new = gru_update(
        tl.load(p_p + o_p, mask=m_nj, other=0.0).to(ACC),
        tl.load(p_p + H + o_p, mask=m_nj, other=0.0).to(ACC),
        tl.load(p_p + 2 * H + o_p, mask=m_nj, other=0.0).to(ACC), q_r, q_z, q_n, b_h)
    b_h = tl.where(m_act, h_new, b_h)
    tl.store(p_next + o_s, b_h, mask=m_nj)
    tl.store(p_out + o_n[:, None] * s_on + i_d * H + o_j[None, :],
             convert(b_h, p_out.dtype.element_ty), mask=m_nj)
    o_g = o_n[:, None] * s_gn + i_d * 4 * H + o_j[None, :]
    GATE_DTYPE: tl.constexpr = p_gates.dtype.element_ty
    tl.store(p_gates + o_g, convert(g_r, GATE_DTYPE), mask=m_nj)
    tl.store(p_gates + H + o_g, convert(g_z, GATE_DTYPE), mask=m_nj)
    tl.store(p_gates + 2 * H + o_g, convert(g_n, GATE_DTYPE), mask=m_nj)
    tl.store(p_gates + 3 * H + o_g, convert(q_n, GATE_DTYPE), mask=m_nj)


@triton.jit(do_not_specialize=["T", "N", "HB", "HAS_LENGTHS"])
def rnn_forward_streaming_kernel(
    p_proj, p_proj_r,    # each direction's P (T, N, H), features contiguous (same strides)
    p_b, p_b_r,          # each direction's B = W_hhᵀ: element (k, j) (same strides)
    p_bias, p_bias_r,    # each direction's b_hh (H,), read where HB > 0
    p_out, p_state, p_len,
    p_cell, p_gates,     # LSTM: c_t (T, N, D*H) as out; the gate activations (T, N, D*4H)
    p_cstate,            # LSTM: c as state (D, 2, N, H); slot 1 holds c0 on entry
    T, N, H, HB,
    s_pt, s_pn,          # P: time and batch strides
    s_bk, s_bj,          # B
    s_ot, s_on,          # out (T, N, D*H), and the cell states
    s_sd, s_ss, s_sn,    # state (D, 2, N, H); slot 1 holds h0 on entry; and cstate
    s_bg,                # LSTM: B's offset from one gate's H rows of W_hh to the next
    s_gt, s_gn,          # LSTM: the gate activations
    ACT: tl.constexpr, ACC: tl.constexpr, USE_DOT: tl.constexpr, DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr, BN: tl.constexpr, BJ: tl.constexpr, HAS_LENGTHS,
    CELL: tl.constexpr = 0,
):
    i_d, o_n, m_n = batch_tile(N, BN)
    b_len = sequence_lengths(p_len, o_n, m_n, T, HAS_LENGTHS)
    p_b = direction_pointer(p_b, p_b_r, i_d)
    p_proj = direction_pointer(p_proj, p_proj_r, i_d)
    p_state = p_state + i_d * s_sd
    p_cstate = p_cstate + i_d * s_sd
    for t in range(T):
        tt = time_index(t, T, i_d, False)
        p_prev = p_state + ((t + 1) % 2) * s_ss
        p_next = p_state + (t % 2) * s_ss
        m_act = active(tt, b_len)
        for j0 in range(0, H, BJ):
            o_j = j0 + tl.arange(0, BJ).to(tl.int64)
            m_nj = m_n[:, None] & (o_j < H)[None, :]
            if CELL == LSTM:
                _lstm_forward_chunk(p_proj + tt * s_pt, s_pn, p_b, p_bias, p_bias_r, p_prev,
                                    p_cstate + ((t + 1) % 2) * s_ss,
                                    p_cstate + (t % 2) * s_ss, p_next, p_out + tt * s_ot,
                                    p_cell + tt * s_ot, s_on, p_gates + tt * s_gt, s_gn,
                                    s_sn, s_bk, s_bj, s_bg, o_n, m_n, o_j, m_nj, m_act, j0,
                                    i_d, H, HB, ACC, USE_DOT, DOT_DTYPE, PRECISION, BN, BJ)
            elif CELL == GRU:
                _gru_forward_chunk(p_proj + tt * s_pt, s_pn, p_b, p_bias, p_bias_r, p_prev,
                                   p_next, p_out + tt * s_ot, s_on, p_gates + tt * s_gt, s_gn,
                                   s_sn, s_bk, s_bj, s_bg, o_n, m_n, o_j, m_nj, m_act, j0, i_d,
                                   H, HB, ACC, USE_DOT, DOT_DTYPE, PRECISION, BN, BJ)
            else:
                b_z = tl.load(p_proj + tt * s_pt + o_n[:, None] * s_pn + o_j[None, :],
                              mask=m_nj, other=0.0).to(ACC)
                b_z += hidden_bias(p_bias, p_bias_r, i_d, o_j, HB, ACC)[None, :]
                b_z += chunk_product(p_prev, s_sn, p_b, o_n, m_n, j0, H, H, s_bk, s_bj,
                                      ACC, USE_DOT, DOT_DTYPE, PRECISION, BN, BJ, BJ)
                b_h = activate(b_z, ACT)
                # Rows outside their sequence hold the previous state (read only for them).
                b_prev = tl.load(p_prev + o_n[:, None] * s_sn + o_j[None, :], mask=m_nj & ~m_act,
                                 other=0.0)
                b_h = tl.where(m_act, b_h, b_prev)
                tl.store(p_next + o_n[:, None] * s_sn + o_j[None, :], b_h, mask=m_nj)
                tl.store(p_out + tt * s_ot + o_n[:, None] * s_on + i_d * H + o_j[None, :],
                         convert(b_h, p_out.dtype.element_ty), mask=m_nj)
        tl.debug_barrier()


@triton.jit
def _lstm_backward_chunk(b_dh, p_dcell, p_cell, p_c0, s_hn, p_gates, p_dz, p_dcprev, p_dcnext,
                         s_sn, s_t, s_n, s_zt, s_zn, o_n, o_j, m_nj, m_act, t, tt, T, i_d, H,
                         ACC: tl.constexpr):
    """Phase 1 of the LSTM backward for features o_j: from dL/dh_tt (b_dh), dL/dc carried in
    (p_dcprev -> p_dcnext), dL/dc_tt, c_tt, c_{tt-1} (c0 before the first step) and the saved
    gates, the four gates' dz (zero where a row is held, which passes dL/dc on)."""
    o_x = o_n[:, None] * s_n + i_d * H + o_j[None, :]
    o_z = tt * s_zt + o_n[:, None] * s_zn + i_d * 4 * H + o_j[None, :]
    tb = time_index(t + 1, T, i_d, True)  # the step before tt in time, visited next
    b_dc = tl.load(p_dcprev + o_n[:, None] * s_sn + o_j[None, :], mask=m_nj, other=0.0) + \
        tl.load(p_dcell + tt * s_t + o_x, mask=m_nj, other=0.0).to(ACC)
    b_cn = tl.load(p_cell + tt * s_t + o_x, mask=m_nj, other=0.0).to(ACC)
    b_cp = tl.where(t + 1 < T,
                    tl.load(p_cell + tb * s_t + o_x, mask=tl.where(t + 1 < T, m_nj, False),
                            other=0.0),
                    tl.load(p_c0 + o_n[:, None] * s_hn + o_j[None, :],
                            mask=tl.where(t + 1 < T, False, m_nj), other=0.0)).to(ACC)
    d_i, d_f, d_g, d_o, b_dcp = lstm_update_grad(
        b_dh, b_dc, tl.load(p_gates + o_z, mask=m_nj, other=0.0).to(ACC),
        tl.load(p_gates + H + o_z, mask=m_nj, other=0.0).to(ACC),
        tl.load(p_gates + 2 * H + o_z, mask=m_nj, other=0.0).to(ACC),
        tl.load(p_gates + 3 * H + o_z, mask=m_nj, other=0.0).to(ACC), b_cn, b_cp)
    tl.store(p_dcnext + o_n[:, None] * s_sn + o_j[None, :], tl.where(m_act, b_dcp, b_dc),
             mask=m_nj)
    DZ_DTYPE: tl.constexpr = p_dz.dtype.element_ty
    tl.store(p_dz + o_z, convert(tl.where(m_act, d_i, 0.0), DZ_DTYPE), mask=m_nj)
    tl.store(p_dz + H + o_z, convert(tl.where(m_act, d_f, 0.0), DZ_DTYPE), mask=m_nj)
    tl.store(p_dz + 2 * H + o_z, convert(tl.where(m_act, d_g, 0.0), DZ_DTYPE), mask=m_nj)
    tl.store(p_dz + 3 * H + o_z, convert(tl.where(m_act, d_o, 0.0), DZ_DTYPE), mask=m_nj)


@triton.jit
def _gru_backward_chunk(b_dh, p_out, p_h0, s_hn, p_gates, p_dz, p_next, s_sn, s_t, s_n, s_zt,
                        s_zn, o_n, o_j, m_nj, m_act, t, tt, T, i_d, H, ACC: tl.constexpr):
    """Phase 1 of the GRU backward for features o_j: from dL/dh_tt (b_dh), h_{tt-1} (out of
    the step visited next, h0 before the first) and the saved r, z, n, q_n: dq_r, dq_z, dq_n
    and dL/dP_n (zero where a row is held), and dL/dh_tt z, the part of dL/dh_{tt-1} that
    does not pass W_hh, into the carry's slot (p_next) for phase 2 to add to."""
    o_z = tt * s_zt + o_n[:, None] * s_zn + i_d * 4 * H + o_j[None, :]
    tb = time_index(t + 1, T, i_d, True)  # the step before tt in time, visited next
    b_hp = tl.where(t + 1 < T,
                    tl.load(p_out + tb * s_t + o_n[:, None] * s_n + i_d * H + o_j[None, :],
                            mask=tl.where(t + 1 < T, m_nj, False), other=0.0),
                    tl.load(p_h0 + o_n[:, None] * s_hn + o_j[None, :],
                            mask=tl.where(t + 1 < T, False, m_nj), other=0.0)).to(ACC)
    d_r, d_z, dq_n, d_n, b_through = gru_update_grad(
        b_dh, tl.load(p_gates + o_z, mask=m_nj, other=0.0).to(ACC),
        tl.load(p_gates + H + o_z, mask=m_nj, other=0.0).to(ACC),
        tl.load(p_gates + 2 * H + o_z, mask=m_nj, other=0.0).to(ACC),
        tl.load(p_gates + 3 * H + o_z, mask=m_nj, other=0.0).to(ACC), b_hp)
    tl.store(p_next + o_n[:, None] * s_sn + o_j[None, :], b_through, mask=m_nj & m_act)
    DZ_DTYPE: tl.constexpr = p_dz.dtype.element_ty
    tl.store(p_dz + o_z, convert(tl.where(m_act, d_r, 0.0), DZ_DTYPE), mask=m_nj)
    tl.store(p_dz + H + o_z, convert(tl.where(m_act, d_z, 0.0), DZ_DTYPE), mask=m_nj)
    tl.store(p_dz + 2 * H + o_z, convert(tl.where(m_act, dq_n, 0.0), DZ_DTYPE), mask=m_nj)
    tl.store(p_dz + 3 * H + o_z, convert(tl.where(m_act, d_n, 0.0), DZ_DTYPE), mask=m_nj)


@triton.jit(do_not_specialize=["T", "N", "HAS_LENGTHS"])
def rnn_backward_streaming_kernel(
    p_dout, p_out,
    p_b, p_b_r,          # each direction's B = W_hh: element (k, j) (same strides)
    p_dz, p_state, p_len,
    p_cell, p_dcell,     # LSTM: c_t as the forward left it; dL/dc_t (T, N, D*H) as dout
    p_c0, p_gates,       # LSTM: c0 (D, N, H); the gate activations (T, N, D*4H) as dz
    p_dcstate,           # LSTM: dL/dc as state, zero on entry; slot (T - 1) % 2 holds dc0
    T, N, H,
    s_t, s_n,            # dout, out (RNN: and dz) share the contiguous (T, N, D*H) layout
    s_bk, s_bj,          # B
    s_sd, s_ss, s_sn,    # state (D, 2, N, H), zero on entry; slot (T - 1) % 2 holds dh0 on exit
    s_hd, s_hn,          # LSTM: c0
    s_bg,                # LSTM: B's offset from one gate's H rows of W_hh to the next
    s_zt, s_zn,          # LSTM: dz and the gate activations
    ACT: tl.constexpr, ACC: tl.constexpr, USE_DOT: tl.constexpr, DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr, BN: tl.constexpr, BJ: tl.constexpr, HAS_LENGTHS,
    CELL: tl.constexpr = 0,
):
    i_d, o_n, m_n = batch_tile(N, BN)
    b_len = sequence_lengths(p_len, o_n, m_n, T, HAS_LENGTHS)
    p_b = direction_pointer(p_b, p_b_r, i_d)
    p_state = p_state + i_d * s_sd
    p_dcstate = p_dcstate + i_d * s_sd
    for t in range(T):
        tt = time_index(t, T, i_d, True)
        p_prev = p_state + ((t + 1) % 2) * s_ss
        p_next = p_state + (t % 2) * s_ss
        m_act = active(tt, b_len)
        # Phase 1: dz_t for every feature, written where phase 2 can read all of it.
        for j0 in range(0, H, BJ):
            o_j = j0 + tl.arange(0, BJ).to(tl.int64)
            m_nj = m_n[:, None] & (o_j < H)[None, :]
            o_x = tt * s_t + o_n[:, None] * s_n + i_d * H + o_j[None, :]
            b_g = tl.load(p_dout + o_x, mask=m_nj, other=0.0).to(ACC)
            b_g += tl.load(p_prev + o_n[:, None] * s_sn + o_j[None, :], mask=m_nj, other=0.0)
            if CELL == LSTM:
                _lstm_backward_chunk(b_g, p_dcell, p_cell, p_c0 + i_d * s_hd, s_hn, p_gates,
                                     p_dz, p_dcstate + ((t + 1) % 2) * s_ss,
                                     p_dcstate + (t % 2) * s_ss, s_sn, s_t, s_n, s_zt, s_zn,
                                     o_n, o_j, m_nj, m_act, t, tt, T, i_d, H, ACC)
            elif CELL == GRU:
                _gru_backward_chunk(b_g, p_out, p_c0 + i_d * s_hd, s_hn, p_gates, p_dz, p_next,
                                    s_sn, s_t, s_n, s_zt, s_zn, o_n, o_j, m_nj, m_act, t, tt,
                                    T, i_d, H, ACC)
            else:
                b_y = tl.load(p_out + o_x, mask=m_nj, other=0.0).to(ACC)
                b_dz = activation_grad(b_g, b_y, ACT)
                # A held step passes its gradient through unchanged: its carried gradient is
                # final here, and phase 2 writes only the rows inside their sequence.
                b_dz = tl.where(m_act, b_dz, 0.0)
                tl.store(p_dz + o_x, convert(b_dz, p_dz.dtype.element_ty), mask=m_nj)
            tl.store(p_next + o_n[:, None] * s_sn + o_j[None, :], b_g, mask=m_nj & ~m_act)
        tl.debug_barrier()
        # Phase 2: the gradient carried into the previous step, c = dz_t W_hh (LSTM: summed
        # over the four gates' dz and rows of W_hh).
        for j0 in range(0, H, BJ):
            o_j = j0 + tl.arange(0, BJ).to(tl.int64)
            m_nj = m_n[:, None] & (o_j < H)[None, :] & m_act
            if CELL == LSTM:
                p_dz_t = p_dz + tt * s_zt + i_d * 4 * H
                b_c = _gate_product(p_dz_t, s_zn, p_b, s_bk, s_bj, o_n, m_n, j0, H, ACC,
                                    USE_DOT, DOT_DTYPE, PRECISION, BN, BJ)
                for g in tl.static_range(1, 4):
                    b_c += _gate_product(p_dz_t + g * H, s_zn, p_b + g * s_bg, s_bk, s_bj,
                                         o_n, m_n, j0, H, ACC, USE_DOT, DOT_DTYPE, PRECISION,
                                         BN, BJ)
            elif CELL == GRU:  # dq_r, dq_z, dq_n through W_hh, plus phase 1's direct term
                p_dz_t = p_dz + tt * s_zt + i_d * 4 * H
                b_c = tl.load(p_next + o_n[:, None] * s_sn + o_j[None, :], mask=m_nj, other=0.0)
                for g in tl.static_range(0, 3):
                    b_c += _gate_product(p_dz_t + g * H, s_zn, p_b + g * s_bg, s_bk, s_bj,
                                         o_n, m_n, j0, H, ACC, USE_DOT, DOT_DTYPE, PRECISION,
                                         BN, BJ)
            else:
                b_c = chunk_product(p_dz + tt * s_t + i_d * H, s_n, p_b, o_n, m_n, j0, H, H,
                                    s_bk, s_bj, ACC, USE_DOT, DOT_DTYPE, PRECISION, BN, BJ, BJ)
            tl.store(p_next + o_n[:, None] * s_sn + o_j[None, :], b_c, mask=m_nj)
        tl.debug_barrier()
