"""Persistent recurrence kernels: W_hh stays on-chip and one launch loops over all timesteps.

Forward:  h_t = act(P_t + h_{t-1} W_hhᵀ), P = X W_ihᵀ + b (precomputed by one GEMM).
Backward: dz_t = (dY_t + c_t) ⊙ act'(y_t),  c_{t-1} = dz_t W_hh,  dh_0 = c_0.

Both are "h ← f(h @ B)" with B = W_hhᵀ forward and B = W_hh backward; the launcher picks B by
passing W_hh's strides swapped, so no transposed copy exists. Grid: (batch tiles, directions).
Direction 1 walks time backwards through index arithmetic (no flipped copies).

Two variants share these helpers:
- resident (this file): the whole B tile is loaded once into registers before the time loop.
- streaming (streaming.py): B is re-read from L2 in chunks every step, for H too large to hold.
"""
import triton
import triton.language as tl

TANH = tl.constexpr(0)
RELU = tl.constexpr(1)


@triton.jit
def _tanh(x):
    # tanh(x) = 1 - 2 / (exp(2x) + 1): exact at both tails (exp overflow gives 1, underflow -1).
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def activate(b_z, ACT: tl.constexpr):
    if ACT == 0:
        return _tanh(b_z)
    else:
        return tl.maximum(b_z, 0.0)


@triton.jit
def activation_grad(b_g, b_y, ACT: tl.constexpr):
    """dz = g ⊙ act'(z), with act' written in terms of the saved output y = act(z)."""
    if ACT == 0:
        return b_g * (1.0 - b_y * b_y)
    else:
        return tl.where(b_y > 0.0, b_g, 0.0)


@triton.jit
def mix(b_h, b_b, ACC: tl.constexpr, USE_DOT: tl.constexpr, DOT_DTYPE: tl.constexpr,
        PRECISION: tl.constexpr):
    """(BN, BK) @ (BK, BJ) -> (BN, BJ) in the accumulator dtype.

    USE_DOT: tensor-core tl.dot (needs BN, BK, BJ >= 16 on the GPU). The h operand is rounded to
    the weight dtype first, as cuDNN does; DOT_DTYPE equals the weight dtype except under the
    interpreter, whose bfloat16 tl.dot is wrong, where the same bf16 values go through fp32.
    Otherwise an elementwise multiply-and-sum in ACC, which keeps batch tiles of 1 unpadded.
    """
    if USE_DOT:
        b_a = b_h.to(b_b.dtype).to(DOT_DTYPE)
        return tl.dot(b_a, b_b.to(DOT_DTYPE), input_precision=PRECISION, out_dtype=ACC)
    else:
        return tl.sum(b_h[:, :, None] * b_b.to(ACC)[None, :, :], axis=1)


@triton.jit
def time_index(t, T, i_d, BACKWARD_IN_TIME: tl.constexpr):
    """Timestep visited at loop iteration t: direction 0 runs forward in time, direction 1 in
    reverse; the backward pass visits each direction's steps in the opposite order."""
    if BACKWARD_IN_TIME:
        return t + (1 - i_d) * (T - 1 - 2 * t)
    else:
        return t + i_d * (T - 1 - 2 * t)


@triton.jit
def active(tt, b_len):
    """(BN, 1) mask of the rows for which step tt lies inside their sequence.

    Variable-length (packed) batches: a sequence holds its state outside its own steps, so
    forward it keeps its last state to the end, and in reverse it starts from h0 at its own
    last element; the backward pass passes gradients through held steps unchanged."""
    return (tt < b_len)[:, None]


@triton.jit(do_not_specialize=["T"])
def rnn_forward_resident_kernel(
    p_proj, p_h0, p_b, p_out, p_len,
    T, N, H,
    s_pt, s_pn,          # proj (T, N, D*H): time and batch strides, features contiguous
    s_hd, s_hn,          # h0 (D, N, H)
    s_bd, s_bk, s_bj,    # B = W_hhᵀ of direction d: element (k, j)
    s_ot, s_on,          # out (T, N, D*H)
    ACT: tl.constexpr, ACC: tl.constexpr, USE_DOT: tl.constexpr, DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr, BN: tl.constexpr, BH: tl.constexpr, HAS_LENGTHS: tl.constexpr,
):
    i_n = tl.program_id(0).to(tl.int64)
    i_d = tl.program_id(1).to(tl.int64)
    o_n = i_n * BN + tl.arange(0, BN).to(tl.int64)
    o_h = tl.arange(0, BH).to(tl.int64)
    m_n = o_n < N
    m_h = o_h < H
    m_nh = m_n[:, None] & m_h[None, :]
    if HAS_LENGTHS:
        b_len = tl.load(p_len + o_n, mask=m_n, other=0)

    # Padded rows/columns load as zero, so padded features of h stay act(0) = 0.
    b_b = tl.load(p_b + i_d * s_bd + o_h[:, None] * s_bk + o_h[None, :] * s_bj,
                  mask=m_h[:, None] & m_h[None, :], other=0.0)
    b_h = tl.load(p_h0 + i_d * s_hd + o_n[:, None] * s_hn + o_h[None, :],
                  mask=m_nh, other=0.0).to(ACC)
    o_p = o_n[:, None] * s_pn + i_d * H + o_h[None, :]
    o_o = o_n[:, None] * s_on + i_d * H + o_h[None, :]
    for t in range(T):
        tt = time_index(t, T, i_d, False)
        b_p = tl.load(p_proj + tt * s_pt + o_p, mask=m_nh, other=0.0).to(ACC)
        b_new = activate(b_p + mix(b_h, b_b, ACC, USE_DOT, DOT_DTYPE, PRECISION), ACT)
        if HAS_LENGTHS:
            b_h = tl.where(active(tt, b_len), b_new, b_h)
        else:
            b_h = b_new
        tl.store(p_out + tt * s_ot + o_o, b_h.to(p_out.dtype.element_ty), mask=m_nh)


@triton.jit(do_not_specialize=["T"])
def rnn_backward_resident_kernel(
    p_dout, p_out, p_b, p_dz, p_dh0, p_len,
    T, N, H,
    s_t, s_n,            # dout, out and dz share the contiguous (T, N, D*H) layout
    s_bd, s_bk, s_bj,    # B = W_hh of direction d: element (k, j)
    s_hd, s_hn,          # dh0 (D, N, H)
    ACT: tl.constexpr, ACC: tl.constexpr, USE_DOT: tl.constexpr, DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr, BN: tl.constexpr, BH: tl.constexpr, HAS_LENGTHS: tl.constexpr,
):
    i_n = tl.program_id(0).to(tl.int64)
    i_d = tl.program_id(1).to(tl.int64)
    o_n = i_n * BN + tl.arange(0, BN).to(tl.int64)
    o_h = tl.arange(0, BH).to(tl.int64)
    m_n = o_n < N
    m_h = o_h < H
    m_nh = m_n[:, None] & m_h[None, :]
    if HAS_LENGTHS:
        b_len = tl.load(p_len + o_n, mask=m_n, other=0)

    b_b = tl.load(p_b + i_d * s_bd + o_h[:, None] * s_bk + o_h[None, :] * s_bj,
                  mask=m_h[:, None] & m_h[None, :], other=0.0)
    b_c = tl.zeros((BN, BH), dtype=ACC)  # gradient carried into the step being visited
    o_x = o_n[:, None] * s_n + i_d * H + o_h[None, :]
    for t in range(T):
        tt = time_index(t, T, i_d, True)
        b_g = tl.load(p_dout + tt * s_t + o_x, mask=m_nh, other=0.0).to(ACC) + b_c
        b_y = tl.load(p_out + tt * s_t + o_x, mask=m_nh, other=0.0).to(ACC)
        b_dz = activation_grad(b_g, b_y, ACT)
        if HAS_LENGTHS:
            b_dz = tl.where(active(tt, b_len), b_dz, 0.0)
        tl.store(p_dz + tt * s_t + o_x, b_dz.to(p_dz.dtype.element_ty), mask=m_nh)
        b_c = mix(b_dz, b_b, ACC, USE_DOT, DOT_DTYPE, PRECISION)
        if HAS_LENGTHS:  # a held step passes its gradient through unchanged
            b_c = tl.where(active(tt, b_len), b_c, b_g)
    tl.store(p_dh0 + i_d * s_hd + o_n[:, None] * s_hn + o_h[None, :],
             b_c.to(p_dh0.dtype.element_ty), mask=m_nh)
