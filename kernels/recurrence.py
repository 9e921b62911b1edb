"""Persistent recurrence kernels: W_hh stays on-chip and one launch loops over all timesteps.

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


@triton.jit(do_not_specialize=["T", "N", "HB", "HAS_LENGTHS"])
def rnn_forward_resident_kernel(
    p_proj, p_proj_r,    # each direction's P (T, N, H), features contiguous (same strides)
    p_h0,
    p_b, p_b_r,          # each direction's B = W_hhᵀ: element (k, j) (same strides)
    p_bias, p_bias_r,    # each direction's b_hh (H,), read where HB > 0
    p_out, p_len,
    T, N, H, HB,
    s_pt, s_pn,          # P: time and batch strides
    s_hd, s_hn,          # h0 (D, N, H)
    s_bk, s_bj,          # B
    s_ot, s_on,          # out (T, N, D*H)
    ACT: tl.constexpr, ACC: tl.constexpr, USE_DOT: tl.constexpr, DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr, BN: tl.constexpr, BH: tl.constexpr, HAS_LENGTHS,
    W_FIRST: tl.constexpr = False,
):
    # W_FIRST: tiles of the state are transposed, (BH, BN), and W_hh is the product's first
    # operand (blocks.mix_w_first); else (BN, BH) tiles and h @ B (blocks.mix).
    i_d, o_n, m_n = batch_tile(N, BN)
    o_h = tl.arange(0, BH).to(tl.int64)
    m_h = o_h < H
    m_nh = state_mask(m_n, m_h, W_FIRST)
    b_len = sequence_lengths(p_len, o_n, m_n, T, HAS_LENGTHS)

    b_b = _resident_weight(direction_pointer(p_b, p_b_r, i_d), s_bk, s_bj, o_h, m_h, ACC,
                           USE_DOT, PRECISION, W_FIRST)
    b_hb = hidden_bias(p_bias, p_bias_r, i_d, o_h, HB, ACC)
    if W_FIRST:  # the state tile's feature axis
        b_hb = b_hb[:, None]
    else:
        b_hb = b_hb[None, :]
    b_h = tl.load(p_h0 + i_d * s_hd + state_offsets(o_n, s_hn, o_h, W_FIRST),
                  mask=m_nh, other=0.0).to(ACC)
    p_proj = direction_pointer(p_proj, p_proj_r, i_d)
    o_p = state_offsets(o_n, s_pn, o_h, W_FIRST)
    o_o = state_offsets(o_n, s_on, o_h, W_FIRST) + i_d * H
    # Software prefetch: P of the step after this one is loaded before this step's product,
    # so its memory latency hides behind the product instead of stalling the next step. The
    # last step re-reads its own P (an in-bounds load whose value is unused); T = 0 reads none.
    b_p = tl.load(p_proj + time_index(0, T, i_d, False) * s_pt + o_p,
                  mask=state_mask(m_n, o_h < tl.where(T > 0, H, 0), W_FIRST), other=0.0)
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
        b_p_next = tl.load(p_proj + tn * s_pt + o_p, mask=m_nh, other=0.0)
        b_new = activate((b_p.to(ACC) + b_hb) + _product(b_h, b_b, ACC, p_b.dtype.element_ty,
                                                         USE_DOT, DOT_DTYPE, PRECISION,
                                                         W_FIRST), ACT)
        b_h = tl.where(_active(tt, b_len, W_FIRST), b_new, b_h)
        tl.store(p_out + tt * s_ot + o_o, convert(b_h, p_out.dtype.element_ty), mask=m_nh)
        b_p = b_p_next
        t += 1


@triton.jit(do_not_specialize=["T", "N", "HAS_LENGTHS"])
def rnn_backward_resident_kernel(
    p_dout, p_out,
    p_b, p_b_r,          # each direction's B = W_hh: element (k, j) (same strides)
    p_dz, p_dh0, p_len,
    T, N, H,
    s_t, s_n,            # dout, out and dz share the contiguous (T, N, D*H) layout
    s_bk, s_bj,          # B
    s_hd, s_hn,          # dh0 (D, N, H)
    ACT: tl.constexpr, ACC: tl.constexpr, USE_DOT: tl.constexpr, DOT_DTYPE: tl.constexpr,
    PRECISION: tl.constexpr, BN: tl.constexpr, BH: tl.constexpr, HAS_LENGTHS,
    W_FIRST: tl.constexpr = False,
):
    # W_FIRST: transposed (BH, BN) state tiles and W_hhᵀ as the first operand (as forward).
    i_d, o_n, m_n = batch_tile(N, BN)
    o_h = tl.arange(0, BH).to(tl.int64)
    m_h = o_h < H
    m_nh = state_mask(m_n, m_h, W_FIRST)
    b_len = sequence_lengths(p_len, o_n, m_n, T, HAS_LENGTHS)

    b_b = _resident_weight(direction_pointer(p_b, p_b_r, i_d), s_bk, s_bj, o_h, m_h, ACC,
                           USE_DOT, PRECISION, W_FIRST)
    b_c = tl.zeros(m_nh.shape, dtype=ACC)  # gradient carried into the step being visited
    o_x = state_offsets(o_n, s_n, o_h, W_FIRST) + i_d * H
    t = T * 0
    while t < T:  # a `while`, so that W_hh stays in registers (see the forward)
        tt = time_index(t, T, i_d, True)
        b_g = tl.load(p_dout + tt * s_t + o_x, mask=m_nh, other=0.0).to(ACC) + b_c
        b_y = tl.load(p_out + tt * s_t + o_x, mask=m_nh, other=0.0).to(ACC)
        b_dz = activation_grad(b_g, b_y, ACT)
        m_act = _active(tt, b_len, W_FIRST)
        b_dz = tl.where(m_act, b_dz, 0.0)
        tl.store(p_dz + tt * s_t + o_x, convert(b_dz, p_dz.dtype.element_ty), mask=m_nh)
        b_c = _product(b_dz, b_b, ACC, p_b.dtype.element_ty, USE_DOT, DOT_DTYPE, PRECISION,
                       W_FIRST)
        b_c = tl.where(m_act, b_c, b_g)  # a held step passes its gradient through unchanged
        t += 1
    tl.store(p_dh0 + i_d * s_hd + state_offsets(o_n, s_hn, o_h, W_FIRST),
             convert(b_c, p_dh0.dtype.element_ty), mask=m_nh)
