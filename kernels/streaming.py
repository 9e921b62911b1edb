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
"""
import triton
import triton.language as tl

from .blocks import (activate, activation_grad, active, batch_tile, chunk_product, convert,
                     direction_pointer, hidden_bias, sequence_lengths, time_index)


@triton.jit(do_not_specialize=["T", "N", "HB", "HAS_LENGTHS"])
def rnn_forward_streaming_kernel(
    p_proj, p_proj_r,    # each direction's P (T, N, H), features contiguous (same strides)
    p_b, p_b_r,          # each direction's B = W_hhᵀ: element (k, j) (same strides)
    p_bias, p_bias_r,    # each direction's b_hh (H,), read where HB > 0
    p_out, p_state, p_len,
    T, N, H, HB,
    s_pt, s_pn,          # P: time and batch strides
    s_bk, s_bj,          # B
    s_ot, s_on,          # out (T, N, D*H)
    s_sd, s_ss, s_sn,    # state (D, 2, N, H); slot 1 holds h0 on entry
    ACT: tl.constexpr, ACC: tl.constexpr, USE_DOT: tl.constexpr, DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr, BN: tl.constexpr, BJ: tl.constexpr, HAS_LENGTHS,
):
    i_d, o_n, m_n = batch_tile(N, BN)
    b_len = sequence_lengths(p_len, o_n, m_n, T, HAS_LENGTHS)
    p_b = direction_pointer(p_b, p_b_r, i_d)
    p_proj = direction_pointer(p_proj, p_proj_r, i_d)
    p_state = p_state + i_d * s_sd
    for t in range(T):
        tt = time_index(t, T, i_d, False)
        p_prev = p_state + ((t + 1) % 2) * s_ss
        p_next = p_state + (t % 2) * s_ss
        m_act = active(tt, b_len)
        for j0 in range(0, H, BJ):
            o_j = j0 + tl.arange(0, BJ).to(tl.int64)
            m_nj = m_n[:, None] & (o_j < H)[None, :]
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


@triton.jit(do_not_specialize=["T", "N", "HAS_LENGTHS"])
def rnn_backward_streaming_kernel(
    p_dout, p_out,
    p_b, p_b_r,          # each direction's B = W_hh: element (k, j) (same strides)
    p_dz, p_state, p_len,
    T, N, H,
    s_t, s_n,            # dout, out and dz share the contiguous (T, N, D*H) layout
    s_bk, s_bj,          # B
    s_sd, s_ss, s_sn,    # state (D, 2, N, H), zero on entry; slot (T - 1) % 2 holds dh0 on exit
    ACT: tl.constexpr, ACC: tl.constexpr, USE_DOT: tl.constexpr, DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr, BN: tl.constexpr, BJ: tl.constexpr, HAS_LENGTHS,
):
    i_d, o_n, m_n = batch_tile(N, BN)
    b_len = sequence_lengths(p_len, o_n, m_n, T, HAS_LENGTHS)
    p_b = direction_pointer(p_b, p_b_r, i_d)
    p_state = p_state + i_d * s_sd
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
            b_y = tl.load(p_out + o_x, mask=m_nj, other=0.0).to(ACC)
            b_dz = activation_grad(b_g, b_y, ACT)
            # A held step passes its gradient through unchanged: its carried gradient is
            # final here, and phase 2 writes only the rows inside their sequence.
            b_dz = tl.where(m_act, b_dz, 0.0)
            tl.store(p_next + o_n[:, None] * s_sn + o_j[None, :], b_g, mask=m_nj & ~m_act)
            tl.store(p_dz + o_x, convert(b_dz, p_dz.dtype.element_ty), mask=m_nj)
        tl.debug_barrier()
        # Phase 2: the gradient carried into the previous step, c = dz_t W_hh.
        p_dz_t = p_dz + tt * s_t + i_d * H
        for j0 in range(0, H, BJ):
            o_j = j0 + tl.arange(0, BJ).to(tl.int64)
            m_nj = m_n[:, None] & (o_j < H)[None, :] & m_act
            b_c = chunk_product(p_dz_t, s_n, p_b, o_n, m_n, j0, H, H, s_bk, s_bj,
                                 ACC, USE_DOT, DOT_DTYPE, PRECISION, BN, BJ, BJ)
            tl.store(p_next + o_n[:, None] * s_sn + o_j[None, :], b_c, mask=m_nj)
        tl.debug_barrier()
