"""RNNCell, LSTMCell and GRUCell forward in one fused kernel each call:
RNN: h' = act(x W_ihᵀ + b_ih + h W_hhᵀ + b_hh); LSTM (CELL, kernels/cells.py): the same sum
for each of the four gates' rows of the weights, then c' = σ(f) c + σ(i) tanh(g),
h' = σ(o) tanh(c'), and the gate activations kept for the backward; GRU: the sum for r and z,
the new gate's two products apart (n = tanh(x W_inᵀ + b_in + r (h W_hnᵀ + b_hn))), then
h' = (1 - z) n + z h, with r, z, n and h W_hnᵀ + b_hn kept for the backward.

Grid: (batch tiles, output-column tiles). Each program streams both weight matrices in
(BK, BJ) chunks (as W_ihᵀ / W_hhᵀ through swapped strides) and adds the biases before the
activation, so one launch does the whole cell."""
import triton
import triton.language as tl

from .blocks import activate, chunk_product, convert
from .cells import GRU, LSTM, gru_update, lstm_update


@triton.jit
def _preactivation(p_x, p_h, p_wih, p_whh, p_bih, p_bhh, o_n, m_n, o_j, m_j, j0, N, I, H,
                   s_xn, s_hn, s_ik, s_ij, s_hk, s_hj, ACC: tl.constexpr, USE_DOT: tl.constexpr,
                   DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, BN: tl.constexpr,
                   BJ: tl.constexpr, HAS_H: tl.constexpr, HAS_BIAS: tl.constexpr):
    """x W_ihᵀ + b_ih + h W_hhᵀ + b_hh at columns o_j of the weights' rows given (the pointers
    may start at a gate's rows)."""
    b_z = chunk_product(p_x, s_xn, p_wih, o_n, m_n, j0, I, H, s_ik, s_ij,
                        ACC, USE_DOT, DOT_DTYPE, PRECISION, BN, BJ, BJ)
    if HAS_H:
        b_z += chunk_product(p_h, s_hn, p_whh, o_n, m_n, j0, H, H, s_hk, s_hj,
                             ACC, USE_DOT, DOT_DTYPE, PRECISION, BN, BJ, BJ)
    if HAS_BIAS:
        b_z += tl.load(p_bih + o_j, mask=m_j, other=0.0).to(ACC)[None, :]
        b_z += tl.load(p_bhh + o_j, mask=m_j, other=0.0).to(ACC)[None, :]
    return b_z


@triton.jit(do_not_specialize=["N"])  # one compiled kernel for every batch size
def rnn_cell_forward_kernel(
    p_x, p_h, p_wih, p_whh, p_bih, p_bhh, p_out,
    p_c, p_cout, p_gates,      # LSTM: c (as h), c' (as out), gate activations (N, 4H); GRU:
                               # p_gates only (N, 4H: r, z, n, h W_hnᵀ + b_hn)
    N, I, H,
    s_xn, s_hn, s_on,          # row strides; features contiguous
    s_ik, s_ij, s_hk, s_hj,    # W_ihᵀ (k, j) and W_hhᵀ (k, j) strides
    ACT: tl.constexpr, ACC: tl.constexpr, USE_DOT: tl.constexpr, DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr, BN: tl.constexpr, BJ: tl.constexpr, HAS_H: tl.constexpr,
    HAS_BIAS: tl.constexpr, CELL: tl.constexpr = 0,
):
    i_n = tl.program_id(0).to(tl.int64)
    j0 = tl.program_id(1).to(tl.int64) * BJ
    o_n = i_n * BN + tl.arange(0, BN).to(tl.int64)
    o_j = j0 + tl.arange(0, BJ).to(tl.int64)
    m_n = o_n < N
    m_j = o_j < H
    m_nj = m_n[:, None] & m_j[None, :]
    o_out = o_n[:, None] * s_on + o_j[None, :]
    if CELL == LSTM:
        # gate g's rows of W_ih, W_hh (g*H on, s_ij / s_hj apart) and of the biases
        z_i = _preactivation(p_x, p_h, p_wih, p_whh, p_bih, p_bhh, o_n, m_n, o_j, m_j, j0, N,
                             I, H, s_xn, s_hn, s_ik, s_ij, s_hk, s_hj, ACC, USE_DOT, DOT_DTYPE,
                             PRECISION, BN, BJ, HAS_H, HAS_BIAS)
        z_f = _preactivation(p_x, p_h, p_wih + H * s_ij, p_whh + H * s_hj, p_bih + H,
                             p_bhh + H, o_n, m_n, o_j, m_j, j0, N, I, H, s_xn, s_hn, s_ik,
                             s_ij, s_hk, s_hj, ACC, USE_DOT, DOT_DTYPE, PRECISION, BN, BJ,
                             HAS_H, HAS_BIAS)
        z_g = _preactivation(p_x, p_h, p_wih + 2 * H * s_ij, p_whh + 2 * H * s_hj,
                             p_bih + 2 * H, p_bhh + 2 * H, o_n, m_n, o_j, m_j, j0, N, I, H,
                             s_xn, s_hn, s_ik, s_ij, s_hk, s_hj, ACC, USE_DOT, DOT_DTYPE,
                             PRECISION, BN, BJ, HAS_H, HAS_BIAS)
        z_o = _preactivation(p_x, p_h, p_wih + 3 * H * s_ij, p_whh + 3 * H * s_hj,
                             p_bih + 3 * H, p_bhh + 3 * H, o_n, m_n, o_j, m_j, j0, N, I, H,
                             s_xn, s_hn, s_ik, s_ij, s_hk, s_hj, ACC, USE_DOT, DOT_DTYPE,
                             PRECISION, BN, BJ, HAS_H, HAS_BIAS)
        b_c = tl.zeros((BN, BJ), ACC)
        if HAS_H:
            b_c = tl.load(p_c + o_n[:, None] * s_hn + o_j[None, :], mask=m_nj,
                          other=0.0).to(ACC)
        g_i, g_f, g_g, g_o, c_new, h_new = lstm_update(z_i, z_f, z_g, z_o, b_c)
        tl.store(p_out + o_out, convert(h_new, p_out.dtype.element_ty), mask=m_nj)
        tl.store(p_cout + o_out, convert(c_new, p_cout.dtype.element_ty), mask=m_nj)
        GATE_DTYPE: tl.constexpr = p_gates.dtype.element_ty
        o_g = o_n[:, None] * 4 * H + o_j[None, :]
        tl.store(p_gates + o_g, convert(g_i, GATE_DTYPE), mask=m_nj)
        tl.store(p_gates + o_g + H, convert(g_f, GATE_DTYPE), mask=m_nj)
        tl.store(p_gates + o_g + 2 * H, convert(g_g, GATE_DTYPE), mask=m_nj)
        tl.store(p_gates + o_g + 3 * H, convert(g_o, GATE_DTYPE), mask=m_nj)
    elif CELL == GRU:
        z_r = _preactivation(p_x, p_h, p_wih, p_whh, p_bih, p_bhh, o_n, m_n, o_j, m_j, j0, N,
                             I, H, s_xn, s_hn, s_ik, s_ij, s_hk, s_hj, ACC, USE_DOT, DOT_DTYPE,
                             PRECISION, BN, BJ, HAS_H, HAS_BIAS)
        z_z = _preactivation(p_x, p_h, p_wih + H * s_ij, p_whh + H * s_hj, p_bih + H,
                             p_bhh + H, o_n, m_n, o_j, m_j, j0, N, I, H, s_xn, s_hn, s_ik,
                             s_ij, s_hk, s_hj, ACC, USE_DOT, DOT_DTYPE, PRECISION, BN, BJ,
                             HAS_H, HAS_BIAS)
        # the new gate's products apart: r scales the hidden one, b_hn inside it
        a_n = chunk_product(p_x, s_xn, p_wih + 2 * H * s_ij, o_n, m_n, j0, I, H, s_ik, s_ij,
                            ACC, USE_DOT, DOT_DTYPE, PRECISION, BN, BJ, BJ)
        q_n = tl.zeros((BN, BJ), ACC)
        b_h = tl.zeros((BN, BJ), ACC)
        if HAS_H:
            q_n += chunk_product(p_h, s_hn, p_whh + 2 * H * s_hj, o_n, m_n, j0, H, H, s_hk,
                                 s_hj, ACC, USE_DOT, DOT_DTYPE, PRECISION, BN, BJ, BJ)
            b_h = tl.load(p_h + o_n[:, None] * s_hn + o_j[None, :], mask=m_nj,
                          other=0.0).to(ACC)
        if HAS_BIAS:
            a_n += tl.load(p_bih + 2 * H + o_j, mask=m_j, other=0.0).to(ACC)[None, :]
            q_n += tl.load(p_bhh + 2 * H + o_j, mask=m_j, other=0.0).to(ACC)[None, :]
        g_r, g_z, g_n, h_new = gru_update(z_r, z_z, a_n, 0.0, 0.0, q_n, b_h)
        tl.store(p_out + o_out, convert(h_new, p_out.dtype.element_ty), mask=m_nj)
        GATE_DTYPE: tl.constexpr = p_gates.dtype.element_ty
        o_g = o_n[:, None] * 4 * H + o_j[None, :]
        tl.store(p_gates + o_g, convert(g_r, GATE_DTYPE), mask=m_nj)
        tl.store(p_gates + o_g + H, convert(g_z, GATE_DTYPE), mask=m_nj)
        tl.store(p_gates + o_g + 2 * H, convert(g_n, GATE_DTYPE), mask=m_nj)
        tl.store(p_gates + o_g + 3 * H, convert(q_n, GATE_DTYPE), mask=m_nj)
    else:
        b_z = _preactivation(p_x, p_h, p_wih, p_whh, p_bih, p_bhh, o_n, m_n, o_j, m_j, j0, N,
                             I, H, s_xn, s_hn, s_ik, s_ij, s_hk, s_hj, ACC, USE_DOT, DOT_DTYPE,
                             PRECISION, BN, BJ, HAS_H, HAS_BIAS)
        tl.store(p_out + o_out, convert(activate(b_z, ACT), p_out.dtype.element_ty), mask=m_nj)
