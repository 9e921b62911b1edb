"""Split variant in two dimensions, on tensor cores: W_hh divided by rows and by parts of the
reduction, for large batches (and the gated cells' long backward reductions), where
split_dot.py's every-program-reads-all-of-the-state costs most.

split_dot.py (read its docstring first) gives each program R whole rows of B, so every
program reads the group's whole state every step: S x N x H elements, H²·N/R in all. Here
the programs of a group form a grid of row blocks and KP parts of the reduction: program s
holds B[rows a*R .. a*R+R-1, k in b*BK .. b*BK+BK-1] (a = s // KP, b = s % KP, BK = BH/KP)
for the whole sequence, in shared memory (the row-tile loop is a `for`, in which Triton keeps
a loop-invariant tl.dot operand there), and reads only its part of the state: H²·N/R in all
again, but with R = KP times split_dot.py's rows for the same bytes of B per program, so KP
times less. Each step then has two phases, each ended by the group's barrier (barrier.py):

1. Partial products: for each row tile of BN batch rows, the program's (BN, R) part
   Σ_{k in part b} s[n, k] B[j, k] (TF32 or 16-bit tl.dot, the batch rows as the MMA's M, the
   state read from L2 (.cg) in KC chunks), stored in fp32 into the partial-sum buffer `part`
   (D, KP, N, H): part[d, b, n, j].
2. Finish: program s owns the RF = R/KP features s*RF .. s*RF+RF-1 (the b-th RF of its row
   block), sums their KP partials (.cg, split_dot._summed) and finishes them: forward
   h_t = act(Σ + P_t + b_hh) (a held row of a packed batch keeps h_{t-1}), stored in `out`,
   which the next step's partial products read; backward, the flow Σ (W_hhᵀ dz of the step
   visited before) goes into split_dot.py's own tile function for the cell (`_visit_tile`
   with KP > 0), which computes dz (dh0 after the last step) and keeps the carries of its
   features in the program's own fp32 buffers.

The cell is a constexpr in the backward (CELL, cells.py): the LSTM's and the GRU's reduce over
all gates' rows of W_hh, K = 4H and 3H (of dz's four slots), the GRU's dL/dh z carried as in
split_dot.py. The forward is the RNN's only (the gated cells' forward splits in one dimension).

The partial-sum buffer needs one copy: a step's partials are written only after the barrier
that ends the previous step's finishing phase, which every program reaches after its reads.
The forward's last step has no second barrier (no program reads its state); the backward's
first visit has no partial products and no first barrier (nothing flows into it). One counter
per group counts every arrival: the k-th wait waits for S*k.

Numerics: split_dot.py's. The exchanged state is rounded as the product's operand, B once
before the loop; partial sums are fp32, and the sum over the KP parts is in a fixed order.

Every wait is bounded (MAX_POLLS); a program whose wait runs out sets the failure flag and
writes NaN into every element it owns from the first step it could not compute (the step of
a failed first barrier; the one after a failed second barrier, whose step was finished from
complete sums), backward also into dh0 (and dc0), then leaves."""
import triton
import triton.language as tl

from .barrier import arrive_and_wait
from .blocks import (activate, aligned, convert, direction_pointer, sequence_lengths,
                     state_mask, state_offsets, state_operand, tf32_dot_operand, time_index,
                     weight_operand)
from .cells import GRU, LSTM, RNN
from .split import _poison
from .split_dot import _features, _summed, _tile, _visit_tile, backward_failed


@triton.jit
def _part_of_b(p_b, s_bk, s_bj, o_j, m_j, k0, K, c, PRECISION: tl.constexpr,
               DOT_DTYPE: tl.constexpr, BK: tl.constexpr, KC: tl.constexpr):
    """Chunk c of the program's block of B, transposed, as a (BK/KC, R) tile: element (i, r) is
    B[o_j[r], k0 + c*BK/KC + i], zero outside the rows' mask and the reduction length K,
    rounded for the product."""
    o_k = k0 + c * (BK // KC) + tl.arange(0, BK // KC)
    b_b = tl.load(p_b + o_j[None, :] * s_bj + o_k[:, None] * s_bk,
                  mask=m_j[None, :] & (o_k < K)[:, None], other=0.0)
    return weight_operand(b_b, tl.float32, True, PRECISION).to(DOT_DTYPE)


@triton.jit
def _program(p_b, p_b_r, p_sync, s_bk, s_bj, H, K, G, ROWS, i_d0, PRECISION: tl.constexpr,
             DOT_DTYPE: tl.constexpr, R: tl.constexpr, BK: tl.constexpr, KP: tl.constexpr,
             KC: tl.constexpr):
    """What program (s, g, d) works on: its direction; S; its rows o_j of B (below H) and
    their mask; its part of the reduction (of length K) from k0; its block of B in KC (1, 2,
    4 or 8) chunks, a tuple of 8 (unused chunks repeat the first); the RF = R/KP features it
    finishes (o_f); its group's counter and first row."""
    i_s = tl.program_id(0)
    i_g = tl.program_id(1)
    i_d = (tl.program_id(2) + i_d0).to(tl.int64)
    o_j = (i_s // KP) * R + tl.arange(0, R)
    m_j = o_j < H
    k0 = (i_s % KP) * BK
    p_b = direction_pointer(p_b, p_b_r, i_d)
    b_b0 = _part_of_b(p_b, s_bk, s_bj, o_j, m_j, k0, K, 0, PRECISION, DOT_DTYPE, BK, KC)
    b_b1, b_b2, b_b3, b_b4, b_b5, b_b6, b_b7 = b_b0, b_b0, b_b0, b_b0, b_b0, b_b0, b_b0
    if KC >= 2:
        b_b1 = _part_of_b(p_b, s_bk, s_bj, o_j, m_j, k0, K, 1, PRECISION, DOT_DTYPE, BK, KC)
    if KC >= 4:
        b_b2 = _part_of_b(p_b, s_bk, s_bj, o_j, m_j, k0, K, 2, PRECISION, DOT_DTYPE, BK, KC)
        b_b3 = _part_of_b(p_b, s_bk, s_bj, o_j, m_j, k0, K, 3, PRECISION, DOT_DTYPE, BK, KC)
    if KC == 8:
        b_b4 = _part_of_b(p_b, s_bk, s_bj, o_j, m_j, k0, K, 4, PRECISION, DOT_DTYPE, BK, KC)
        b_b5 = _part_of_b(p_b, s_bk, s_bj, o_j, m_j, k0, K, 5, PRECISION, DOT_DTYPE, BK, KC)
        b_b6 = _part_of_b(p_b, s_bk, s_bj, o_j, m_j, k0, K, 6, PRECISION, DOT_DTYPE, BK, KC)
        b_b7 = _part_of_b(p_b, s_bk, s_bj, o_j, m_j, k0, K, 7, PRECISION, DOT_DTYPE, BK, KC)
    RF: tl.constexpr = R // KP
    o_f = i_s * RF + tl.arange(0, RF)
    return (i_d, tl.num_programs(0), o_j, m_j, k0, (b_b0, b_b1, b_b2, b_b3, b_b4, b_b5, b_b6,
            b_b7), o_f, p_sync + 1 + i_d * G + i_g, i_g.to(tl.int64) * ROWS)


@triton.jit
def _partial_tile(b_bs, p_state, s_state, p_part, s_qn, o_j, m_j, k0, n0, i0,
                  ROWS, N, K, active, W_DTYPE: tl.constexpr, DOT_DTYPE: tl.constexpr,
                  PRECISION: tl.constexpr, R: tl.constexpr, BK: tl.constexpr,
                  KC: tl.constexpr, BN: tl.constexpr):
    """Phase 1 for the row tile from n0 + i0: part (BN, R) = Σ_{k in the program's part}
    s[n, k] B[j, k] for the state s at p_state (row stride s_state, read from L2), stored into
    the program's part of the partial-sum buffer (p_part, row stride s_qn); nothing read or
    stored where `active` is false."""
    o_n, m_n = _tile(n0, i0, ROWS, N, BN)
    m_n = tl.where(active, m_n, False)
    b_z = tl.zeros((BN, R), tl.float32)
    for c in tl.static_range(KC):
        o_k = k0 + c * (BK // KC) + tl.arange(0, BK // KC)
        b_s = tl.load(p_state + o_n[:, None] * s_state + o_k[None, :],
                      mask=m_n[:, None] & (o_k < K)[None, :], other=0.0, cache_modifier=".cg")
        if PRECISION == "tf32":  # as state_operand rounds it, in one instruction
            b_s = tf32_dot_operand(b_s)
        else:
            b_s = state_operand(b_s, W_DTYPE, PRECISION).to(DOT_DTYPE)
        b_z = tl.dot(b_s, b_bs[c], b_z, input_precision=PRECISION, out_dtype=tl.float32)
    tl.store(p_part + state_offsets(o_n, s_qn, o_j, False), b_z,
             mask=state_mask(m_n, m_j, False))


@triton.jit
def _forward_finish(p_part, s_qk, s_qn, b_hb, p_proj, s_pn, p_prev, s_prev, p_out, s_n, p_len,
                    o_f, m_f, n0, i0, tt, T, N, ROWS, ACT: tl.constexpr, ACC: tl.constexpr,
                    KP: tl.constexpr, BN: tl.constexpr, HAS_LENGTHS):
    """Phase 2 of forward step tt for the row tile from n0 + i0: h_tt = act(Σ partials + P_tt
    + b_hh) of the program's features o_f; a row past its sequence keeps h_{tt-1}."""
    o_n, m_n = _tile(n0, i0, ROWS, N, BN)
    held = (tt >= sequence_lengths(p_len, o_n, m_n, T, HAS_LENGTHS))[None, :]
    b_p = _features(p_proj, o_n, s_pn, o_f, m_n, m_f, True)
    b_old = _features(p_prev, o_n, s_prev, o_f, m_n, m_f, held, True)
    b_z = _summed(p_part, s_qk, s_qn, o_n, m_n, o_f, m_f, True, KP) + b_p.to(ACC) + b_hb
    b_h = tl.where(held, b_old.to(ACC), activate(b_z, ACT))
    tl.store(p_out + state_offsets(o_n, s_n, o_f, True), convert(b_h, p_out.dtype.element_ty),
             mask=state_mask(m_n, m_f, True))


@triton.jit(do_not_specialize=["T", "N", "HB", "ROWS", "i_d0", "G", "HAS_LENGTHS"])
def rnn_forward_split_2d_kernel(
    p_proj, p_proj_r,    # each direction's P (T, N, H), features contiguous (same strides)
    p_h0,
    p_b, p_b_r,          # each direction's B = W_hhᵀ: element (k, j) (same strides)
    p_bias, p_bias_r,    # each direction's b_hh (H,), read where HB > 0
    p_out, p_len,
    p_cell, p_gates, p_carry,  # split_dot.py's cell arguments (RNN here: unread)
    p_part,              # partial sums (D, KP, N, H) in fp32
    p_sync,
    T, N, H, HB,
    ROWS,                # batch rows per group
    i_d0, G,             # this launch's first direction; batch groups
    s_pt, s_pn,          # P: time and batch strides
    s_t, s_n,            # out (T, N, D*H)
    s_hd, s_hn,          # h0 (D, N, H)
    s_bk, s_bj,          # B
    s_gt, s_gn,          # (split_dot.py's gate strides: unread)
    s_qk, s_qn,          # part: part and batch strides (a direction's parts are KP*s_qk apart)
    ACT: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr, R: tl.constexpr,
    BK: tl.constexpr, KP: tl.constexpr, MAX_POLLS: tl.constexpr, HAS_LENGTHS,
    BN: tl.constexpr, KC: tl.constexpr, DOT_DTYPE: tl.constexpr, ALIGN: tl.constexpr = 1,
    ALIGN_BK: tl.constexpr = 1, ALIGN_BJ: tl.constexpr = 1,
):
    """h_t = act(P_t + b_hh + W_hh h_{t-1}) in two phases per step (the module docstring); the
    arguments are split_dot.py's forward's and the partial-sum buffer (RNN only)."""
    H, s_pt, s_pn, s_t, s_n = aligned(H, ALIGN), aligned(s_pt, ALIGN), aligned(s_pn, ALIGN), \
        aligned(s_t, ALIGN), aligned(s_n, ALIGN)
    s_hd, s_hn = aligned(s_hd, ALIGN), aligned(s_hn, ALIGN)
    s_bk, s_bj = aligned(s_bk, ALIGN_BK), aligned(s_bj, ALIGN_BJ)
    i_d, S, o_j, m_j, k0, b_bs, o_f, p_cnt, n0 = _program(
        p_b, p_b_r, p_sync, s_bk, s_bj, H, H, G, ROWS, i_d0, PRECISION, DOT_DTYPE, R, BK, KP,
        KC)
    m_f = o_f < H
    b_hb = tl.load(direction_pointer(p_bias, p_bias_r, i_d) + o_f, mask=o_f < HB,
                   other=0.0).to(ACC)[:, None]
    p_h0 = p_h0 + i_d * s_hd
    p_out = p_out + i_d * H  # this direction's features
    p_proj = direction_pointer(p_proj, p_proj_r, i_d)
    s_qk = s_qk + 0 * i_d  # int64: (KP - 1) N H may pass 2^31 (_summed's offsets too)
    p_part = p_part + i_d * KP * s_qk
    p_mine = p_part + (k0 // BK) * s_qk  # this program's part
    t = T * 0
    arrivals = t
    t_bad = t + T  # the first step whose state is not complete: none yet
    ok = t == 0
    while (t < T) & ok:
        tt = time_index(t, T, i_d, False)
        # h_{t-1}: h0 at the first step, else what every program finished last step
        p_prev = tl.where(t == 0, p_h0, p_out + time_index(t - 1, T, i_d, False) * s_t)
        s_prev = tl.where(t == 0, s_hn, s_n)
        for i0 in range(0, ROWS, BN):
            _partial_tile(b_bs, p_prev, s_prev, p_mine, s_qn, o_j, m_j, k0,
                          n0, i0, ROWS, N, H, True, p_b.dtype.element_ty, DOT_DTYPE,
                          PRECISION, R, BK, KC, BN)
        arrivals += 1
        ok = arrive_and_wait(p_cnt, S * arrivals, MAX_POLLS)
        t_bad = tl.where(ok, t_bad, t)  # (its partial sums are not all there)
        for i0 in range(0, ROWS, BN):
            _forward_finish(p_part, s_qk, s_qn, b_hb, p_proj + tt * s_pt, s_pn, p_prev, s_prev,
                            p_out + tt * s_t, s_n, p_len, o_f, m_f, n0, i0, tt, T, N, ROWS,
                            ACT, ACC, KP, BN, HAS_LENGTHS)
        if ok & (t < T - 1):  # the last step's state is read by no program
            arrivals += 1
            ok = arrive_and_wait(p_cnt, S * arrivals, MAX_POLLS)
            t_bad = tl.where(ok, t_bad, t + 1)  # (step t was finished from complete sums)
        t += 1
    if ok == 0:  # from the first step it could not compute, NaN
        tl.store(p_sync, 1)
        _poison(p_out, s_t, s_n, t_bad, T, N, H, n0, ROWS, i_d, o_f, False, R // KP)


@triton.jit(do_not_specialize=["T", "N", "ROWS", "i_d0", "G", "HAS_LENGTHS"])
def rnn_backward_split_2d_kernel(
    p_dout, p_out,
    p_b, p_b_r,          # each direction's B = W_hh: element (k, j) (same strides)
    p_dz, p_dh0, p_carry, p_len,
    p_cell, p_dcell,     # LSTM: c_t as the forward left it; dL/dc_t (T, N, D*H) as dout
    p_c0, p_gates,       # LSTM: c0 (D, N, H) as dh0; the gate activations (T, N, D*4H) as dz
    p_dc0, p_dc,         # LSTM: dL/dc0; dL/dc carried, in ACC (D, N, H) as dh0
    p_part,              # partial sums (D, KP, N, H) in fp32
    p_sync,
    T, N, H,
    ROWS,                # batch rows per group
    i_d0, G,             # this launch's first direction; batch groups
    s_t, s_n,            # dout, out (RNN: and dz) share the contiguous (T, N, D*H) layout
    s_bk, s_bj,          # B
    s_hd, s_hn,          # dh0 and carry (D, N, H)
    s_zt, s_zn,          # LSTM, GRU: dz and the gate activations
    s_qk, s_qn,          # part: part and batch strides
    ACT: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr, R: tl.constexpr,
    BK: tl.constexpr, KP: tl.constexpr, MAX_POLLS: tl.constexpr, HAS_LENGTHS,
    BN: tl.constexpr, KC: tl.constexpr, DOT_DTYPE: tl.constexpr, ALIGN: tl.constexpr = 1,
    ALIGN_BK: tl.constexpr = 1, ALIGN_BJ: tl.constexpr = 1, CELL: tl.constexpr = 0,
):
    """split_dot.py's backward (its arguments, and the partial-sum buffer) in two phases per
    visit: phase 1 multiplies the program's block of B with its part of every program's dz of
    the visit before (K = H; LSTM, GRU: all gates' rows of W_hh, K = 4H and 3H of dz's four
    slots), phase 2 is split_dot.py's tile function (`_visit_tile`) for the features the
    program finishes, its flow the sum of their partials. Visits 0..T; the first has no
    partial products (nothing flows into it) and no first barrier, the last no second."""
    H, s_t, s_n = aligned(H, ALIGN), aligned(s_t, ALIGN), aligned(s_n, ALIGN)
    s_hd, s_hn = aligned(s_hd, ALIGN), aligned(s_hn, ALIGN)
    s_bk, s_bj = aligned(s_bk, ALIGN_BK), aligned(s_bj, ALIGN_BJ)
    K_GATES: tl.constexpr = 4 if CELL == LSTM else 3 if CELL == GRU else 1
    i_d, S, o_j, m_j, k0, b_bs, o_f, p_cnt, n0 = _program(
        p_b, p_b_r, p_sync, s_bk, s_bj, H, K_GATES * H, G, ROWS, i_d0, PRECISION, DOT_DTYPE,
        R, BK, KP, KC)
    RF: tl.constexpr = R // KP
    m_f = o_f < H
    p_carry = p_carry + i_d * s_hd
    p_dh0 = p_dh0 + i_d * s_hd
    if CELL != RNN:  # (GRU: p_dc carries dL/dh z, p_c0 is h0)
        p_dc = p_dc + i_d * s_hd
        p_dc0 = p_dc0 + i_d * s_hd
        p_c0 = p_c0 + i_d * s_hd
        p_gates = p_gates + i_d * 4 * H
        p_dz = p_dz + i_d * 4 * H
    else:
        s_zt, s_zn = s_t, s_n  # (dz is out's layout)
    s_qk = s_qk + 0 * i_d  # int64: (KP - 1) N H may pass 2^31 (_summed's offsets too)
    p_part = p_part + i_d * KP * s_qk
    p_mine = p_part + (k0 // BK) * s_qk
    o_x = i_d * H  # this direction's features in the (T, N, D*H) layout
    v = T * 0
    arrivals = v
    v_bad = v + T + 1  # the first visit whose flow is not complete: none yet
    ok = v == 0
    while (v <= T) & ok:
        # dz of the visit before, every program's, multiplied by this program's block
        p_before = p_dz + time_index(v - 1, T, i_d, True) * s_zt + (o_x if CELL == RNN else 0)
        for i0 in range(0, ROWS, BN):
            _partial_tile(b_bs, p_before, s_zn, p_mine, s_qn, o_j, m_j, k0, n0, i0, ROWS, N,
                          K_GATES * H, v > 0, p_b.dtype.element_ty, DOT_DTYPE, PRECISION, R,
                          BK, KC, BN)
        if v > 0:  # (nothing flows into the first visit)
            arrivals += 1
            ok = arrive_and_wait(p_cnt, S * arrivals, MAX_POLLS)
            v_bad = tl.where(ok, v_bad, v)
        # (every tile loads its own dY_tt and y_tt with its sums: KP > 0; none a visit ahead,
        # which held them through the partial products, where the code then spilled)
        for i0 in range(0, ROWS, BN):
            _visit_tile(b_bs, b_bs[0], b_bs[0], p_dout, p_out, p_dz,
                        p_carry, p_dh0, p_dc, p_dc0, p_cell, p_c0, p_gates, p_dcell, s_t, s_n,
                        s_hn, s_zt, s_zn, p_len, o_x, o_f, m_f, n0, i0, v, T, N, H, ROWS, i_d,
                        p_b.dtype.element_ty, ACT, ACC, PRECISION, RF, 1, BK, KC, BN,
                        DOT_DTYPE, HAS_LENGTHS, CELL, p_part, s_qk, s_qn, KP)
        if ok & (v < T):  # this visit's dz, from every program, is what the next multiplies
            arrivals += 1
            ok = arrive_and_wait(p_cnt, S * arrivals, MAX_POLLS)
            v_bad = tl.where(ok, v_bad, v + 1)  # (visit v was finished from complete sums)
        v += 1
    if ok == 0:  # from the first visit it could not compute, NaN; and dh0 (dc0)
        backward_failed(p_sync, p_dz, p_dh0, p_dc0, s_t, s_n, s_zt, s_zn, s_hn, v_bad, T, N, H,
                        n0, ROWS, i_d, o_f, m_f, RF, BN, CELL)
