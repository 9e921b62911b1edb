"""RNNCell forward in one fused kernel: h' = act(x W_ihᵀ + b_ih + h W_hhᵀ + b_hh).

Grid: (batch tiles, output-column tiles). Each program streams both weight matrices in
(BK, BJ) chunks (as W_ihᵀ / W_hhᵀ through swapped strides) and adds the biases before the
activation, so one launch does the whole cell."""
import triton
import triton.language as tl

from .blocks import activate, chunk_product, convert


@triton.jit(do_not_specialize=["N"])  # one compiled kernel for every batch size
def rnn_cell_forward_kernel(
    p_x, p_h, p_wih, p_whh, p_bih, p_bhh, p_out,
    N, I, H,
    s_xn, s_hn, s_on,          # row strides; features contiguous
    s_ik, s_ij, s_hk, s_hj,    # W_ihᵀ (k, j) and W_hhᵀ (k, j) strides
    ACT: tl.constexpr, ACC: tl.constexpr, USE_DOT: tl.constexpr, DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr, BN: tl.constexpr, BJ: tl.constexpr, HAS_H: tl.constexpr,
    HAS_BIAS: tl.constexpr,
):
    i_n = tl.program_id(0).to(tl.int64)
    j0 = tl.program_id(1).to(tl.int64) * BJ
    o_n = i_n * BN + tl.arange(0, BN).to(tl.int64)
    o_j = j0 + tl.arange(0, BJ).to(tl.int64)
    m_n = o_n < N
    m_j = o_j < H
    b_z = chunk_product(p_x, s_xn, p_wih, o_n, m_n, j0, I, H, s_ik, s_ij,
                        ACC, USE_DOT, DOT_DTYPE, PRECISION, BN, BJ, BJ)
    if HAS_H:
        b_z += chunk_product(p_h, s_hn, p_whh, o_n, m_n, j0, H, H, s_hk, s_hj,
                             ACC, USE_DOT, DOT_DTYPE, PRECISION, BN, BJ, BJ)
    if HAS_BIAS:
        b_z += tl.load(p_bih + o_j, mask=m_j, other=0.0).to(ACC)[None, :]
        b_z += tl.load(p_bhh + o_j, mask=m_j, other=0.0).to(ACC)[None, :]
    b_out = activate(b_z, ACT)
    tl.store(p_out + o_n[:, None] * s_on + o_j[None, :], convert(b_out, p_out.dtype.element_ty),
             mask=m_n[:, None] & m_j[None, :])
