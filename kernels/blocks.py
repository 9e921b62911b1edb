"""Building blocks shared by the kernels: activations, the h @ B product and the rounding of
its operands, time indexing, variable-length masks, and a K-chunked product streamed from
memory.

Numerics, the same in every kernel path (batch tile, variant, forward and backward): the state
(h forward, the carried gradient backward) stays in the accumulator dtype ACC inside a kernel
and is rounded only where it is stored as an output; the product's operands are rounded as the
tensor-core path must take them (weight_operand, state_operand): to the weight dtype for 16-bit
layers, to TF32 with round-to-nearest, ties away from zero, for float32 with TF32 allowed, not
at all for IEEE float32 and float64. Every path then multiplies the same values and differs
only in the order of fp32 (fp64) accumulation."""
import os

import triton
import triton.language as tl

# The interpreter converts float32 to bfloat16 by truncation (Triton 3.6 and 3.9; its "rtne"
# mode adds the rounding bit without carrying it into the exponent); the GPU rounds to nearest
# even. Under the interpreter, `convert` rounds first, so both compute the same values.
INTERPRETED = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") == "1")


@triton.jit
def _tanh(x):
    """tanh to a few ulp in fp32 and fp64 without libdevice (the interpreter has none).

    |x| >= 0.3: 1 - 2 / (exp(2|x|) + 1), with |x| clamped at 20 (tanh(20) rounds to 1 even in
    fp64) so exp stays finite. |x| < 0.3, where that formula cancels: the odd Taylor series
    through x^19, truncation error 3e-15 relative. NaN propagates."""
    a = tl.abs(x)
    e = tl.exp(2.0 * tl.minimum(a, 20.0, propagate_nan=tl.PropagateNan.ALL))
    big = 1.0 - 2.0 / (e + 1.0)
    s = tl.where(a < 0.3, x, 0.0)  # the series only where it is used: no overflow elsewhere
    s2 = s * s
    p = -0.00023912911424355248 * s2 + 0.000590027440945586
    p = p * s2 - 0.0014558343870513183
    p = p * s2 + 0.003592128036572481
    p = p * s2 - 0.008863235529902197
    p = p * s2 + 0.021869488536155203
    p = p * s2 - 0.05396825396825397
    p = p * s2 + 0.13333333333333333
    p = p * s2 - 0.3333333333333333
    return tl.where(a < 0.3, s + s * s2 * p, tl.where(x < 0, -big, big))


@triton.jit
def activate(b_z, ACT: tl.constexpr):
    if ACT == 0:
        return _tanh(b_z)
    else:
        return tl.maximum(b_z, 0.0, propagate_nan=tl.PropagateNan.ALL)  # NaN stays NaN


@triton.jit
def activation_grad(b_g, b_y, ACT: tl.constexpr):
    """dz = g ⊙ act'(z), with act' written in terms of the saved output y = act(z)."""
    if ACT == 0:
        return b_g * (1.0 - b_y * b_y)
    else:
        return tl.where(b_y <= 0.0, 0.0, b_g)  # as torch's threshold_backward: NaN y passes g


@triton.jit
def round_tf32(x):
    """float32 -> the nearest TF32 value (8-bit exponent, 10 explicit mantissa bits), ties away
    from zero: what PTX's cvt.rna.tf32.f32 computes, in integer arithmetic so that the
    interpreter runs it too. Half a TF32 ulp (bit 12) is added to the magnitude bits and the
    low 13 bits are cleared: a mantissa that overflows carries into the exponent, which is the
    correctly rounded result (Inf past the largest TF32 value, Inf stays Inf). The sign bit is
    never reached, since only NaN magnitudes (above 0x7F800000) can carry into it, and NaN is
    returned unchanged. The result's low 13 bits are zero, so a tensor core's truncation of a
    TF32 operand (what tl.dot's input_precision="tf32" feeds it: the compiled code has no
    cvt.rna) leaves it exact, and the product of two rounded operands (11 x 11 significant
    bits) is exact in fp32: the interpreter's fp32 product of rounded operands is the GPU's,
    up to the order of accumulation."""
    bits = x.to(tl.int32, bitcast=True)
    rounded = ((bits + 0x1000) & -0x2000).to(tl.float32, bitcast=True)
    return tl.where((bits & 0x7FFFFFFF) > 0x7F800000, x, rounded)


@triton.jit
def tf32_dot_operand(x):
    """float32 -> TF32 for a tensor-core tl.dot operand and nothing else: round_tf32 under
    the interpreter; compiled, PTX's cvt.rna.tf32.f32 (the same rounding, ties away from zero,
    in one instruction where round_tf32 takes four per element). Its result is meant for a TF32
    MMA, which reads only the top 19 bits, so it must never be used as a float32 value."""
    if INTERPRETED:
        return round_tf32(x)
    else:
        return tl.inline_asm_elementwise("cvt.rna.tf32.f32 $0, $1;", "=r,f", [x],
                                         dtype=tl.int32, is_pure=True,
                                         pack=1).to(tl.float32, bitcast=True)


@triton.jit
def convert(x, DTYPE: tl.constexpr):
    """x.to(DTYPE), rounded to nearest even as the GPU rounds. Under the interpreter a float32
    -> bfloat16 conversion is rounded first in integer arithmetic (NaN kept), so that its
    truncation is exact; compiled, this is x.to(DTYPE)."""
    if INTERPRETED:
        if DTYPE == tl.bfloat16 and x.dtype == tl.float32:
            bits = x.to(tl.int32, bitcast=True)
            rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) & -0x10000).to(tl.float32,
                                                                           bitcast=True)
            x = tl.where((bits & 0x7FFFFFFF) > 0x7F800000, x, rounded)
    return x.to(DTYPE)


@triton.jit
def weight_operand(b_w, ACC: tl.constexpr, USE_DOT: tl.constexpr,
                   PRECISION: tl.constexpr):
    """A tile of a weight matrix as the product takes it: TF32-rounded (float32 with TF32
    allowed), in its own dtype for tl.dot, in ACC for the elementwise product. Resident and
    split kernels call this once, before the time loop."""
    if PRECISION == "tf32":
        return round_tf32(b_w)
    elif USE_DOT:
        return b_w
    else:
        return b_w.to(ACC)


@triton.jit
def state_operand(b_h, W_DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """The state (h forward, dz backward) as the product's operand, rounded exactly as a
    tensor-core product must take it, in every path (tl.dot or elementwise, any batch tile or
    variant), so that they all compute the same products: TF32-rounded (rna) for float32 with
    TF32 allowed, else rounded to the weight dtype W_DTYPE (16-bit), else unchanged (IEEE
    float32, float64). The state itself stays in the accumulator dtype; only this copy is
    rounded. Returned in W_DTYPE."""
    if PRECISION == "tf32":
        return round_tf32(b_h.to(tl.float32))
    else:
        return convert(b_h, W_DTYPE)


@triton.jit
def mix(b_h, b_b, ACC: tl.constexpr, W_DTYPE: tl.constexpr, USE_DOT: tl.constexpr,
        DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """(BN, BK) @ (BK, BJ) -> (BN, BJ) in the accumulator dtype, for b_b from weight_operand
    and the state b_h in any dtype (it is rounded here by state_operand).

    USE_DOT: tensor-core tl.dot (needs BN, BK, BJ >= 16 on the GPU). DOT_DTYPE equals the
    weight dtype except under the interpreter, whose bfloat16 tl.dot is wrong, where the same
    bf16 values go through fp32. Otherwise an elementwise multiply-and-sum in ACC, which keeps
    batch tiles of 1 unpadded; its operands are rounded the same way, so it computes the same
    products as tl.dot.
    """
    b_a = state_operand(b_h, W_DTYPE, PRECISION)
    if USE_DOT:
        return tl.dot(b_a.to(DOT_DTYPE), b_b.to(DOT_DTYPE), input_precision=PRECISION,
                      out_dtype=ACC)
    else:
        return tl.sum(b_a.to(ACC)[:, :, None] * b_b.to(ACC)[None, :, :], axis=1)


@triton.jit
def mix_w_first(b_b, b_h, ACC: tl.constexpr, W_DTYPE: tl.constexpr, DOT_DTYPE: tl.constexpr,
                PRECISION: tl.constexpr):
    """(BJ, BK) @ (BK, BN) -> (BJ, BN) in the accumulator dtype: the product of mix()
    transposed, zᵀ = A hᵀ with A = Bᵀ (W_hh forward, W_hhᵀ backward) as tl.dot's FIRST operand
    and the transposed state second, rounded the same way (the same products). On sm_90 with
    BJ >= 64 Triton compiles it to a warpgroup MMA whose first operand comes from registers
    (when A is computed, not loaded as it is: see w_first_operand) and whose second, the small
    state tile, from shared memory; the weight is then never re-read during the loop."""
    b_a = state_operand(b_h, W_DTYPE, PRECISION)
    return tl.dot(b_b.to(DOT_DTYPE), b_a.to(DOT_DTYPE), input_precision=PRECISION,
                  out_dtype=ACC)


@triton.jit
def w_first_operand(b_w, m_w, PRECISION: tl.constexpr):
    """The (BJ, BK) weight tile as mix_w_first's first operand: TF32-rounded for float32 with
    TF32 allowed, else as loaded, through a select on its own mask (a value, zero where masked
    already): Triton keeps a warpgroup MMA's first operand in registers only when it is
    computed, and stages a tile used as loaded in shared memory, re-read every step."""
    if PRECISION == "tf32":
        return round_tf32(b_w)
    else:
        return tl.where(m_w, b_w, 0.0)


@triton.jit
def state_offsets(o_n, s_n, o_h, W_FIRST: tl.constexpr):
    """Offsets of this program's (BN, BH) state tile in a (.., N, H)-like layout with row
    stride s_n, or of its transpose (BH, BN) when W_FIRST."""
    if W_FIRST:
        return o_n[None, :] * s_n + o_h[:, None]
    else:
        return o_n[:, None] * s_n + o_h[None, :]


@triton.jit
def state_mask(m_n, m_h, W_FIRST: tl.constexpr):
    if W_FIRST:
        return m_h[:, None] & m_n[None, :]
    else:
        return m_n[:, None] & m_h[None, :]


@triton.jit
def program_rows(H, R: tl.constexpr, GATE_ROWS: tl.constexpr):
    """A split program's R rows of B and the hidden feature of each: R / GATE_ROWS features
    (program_id(0)'s slice); with several gates (the LSTM forward) gate-major, gate g's rows
    g*H + feature. Offsets within a row of H (< 2^13) stay int32."""
    if GATE_ROWS == 1:
        o_j = tl.program_id(0) * R + tl.arange(0, R)
        return o_j, o_j
    else:
        RF: tl.constexpr = R // GATE_ROWS
        o_r = tl.arange(0, R)
        o_f = tl.program_id(0) * RF + o_r % RF
        return (o_r // RF) * H + o_f, o_f


@triton.jit
def batch_tile(N, BN: tl.constexpr):
    """This program's direction (grid axis 1) and batch rows (axis 0): (i_d, o_n, m_n), with
    int64 offsets so that T·N·H may pass 2³¹."""
    i_d = tl.program_id(1).to(tl.int64)
    o_n = tl.program_id(0).to(tl.int64) * BN + tl.arange(0, BN).to(tl.int64)
    return i_d, o_n, o_n < N


@triton.jit
def aligned(x, ALIGN: tl.constexpr):
    """x, which the launcher checked is a multiple of ALIGN, so marked for the compiler: a
    hidden size or stride that is not a multiple of 16 (which Triton's JIT marks by itself)
    still lets the rows it addresses load in vectors of ALIGN elements, not one at a time
    (tf32 and bf16 split layers at H = 1100 spilled 64-464 B from the scalar loads' addresses)."""
    return (x // ALIGN) * ALIGN


@triton.jit
def direction_pointer(p_forward, p_reverse, i_d):
    """Direction i_d's tensor, by its own pointer: each direction's parameters (and its part
    of the projection) are read where they lie, never gathered into one stacked copy."""
    return tl.where(i_d == 0, p_forward, p_reverse)


@triton.jit
def hidden_bias(p_bias, p_bias_r, i_d, o_h, HB, ACC: tl.constexpr):
    """b_hh of direction i_d at features o_h, in ACC; zero where o_h >= HB (HB = H with a bias,
    0 without: one compiled kernel serves both, and without a bias nothing is read)."""
    return tl.load(direction_pointer(p_bias, p_bias_r, i_d) + o_h, mask=o_h < HB,
                   other=0.0).to(ACC)


@triton.jit
def load_square_tile(p_b, s_bk, s_bj, o_h, m_h):
    """The (BH, BH) tile B[k, j] of an H x H matrix; zero outside H, so padded features of the
    state stay act(0) = 0."""
    return tl.load(p_b + o_h[:, None] * s_bk + o_h[None, :] * s_bj,
                   mask=m_h[:, None] & m_h[None, :], other=0.0)


@triton.jit
def time_index(t, T, i_d, BACKWARD_IN_TIME: tl.constexpr):
    """Timestep visited at loop iteration t: direction 0 runs forward in time, direction 1 in
    reverse; the backward pass visits each direction's steps in the opposite order."""
    if BACKWARD_IN_TIME:
        return t + (1 - i_d) * (T - 1 - 2 * t)
    else:
        return t + i_d * (T - 1 - 2 * t)


@triton.jit
def sequence_lengths(p_len, o_n, m_n, T, HAS_LENGTHS):
    """The sequence length of each row o_n (a tensor of rows, or one row): read from p_len in
    a packed batch (HAS_LENGTHS = 1), T for every row of a padded one (p_len is then never
    read). HAS_LENGTHS is a run-time flag, not a constexpr, so that padded and packed batches
    run one compiled kernel: a padded batch takes the packed path with every row active, at
    the cost of one select per element and step (half the compilations, at first use and in
    the compile gate). Rows past the batch get T too: every store masks them out.
    (A where, not m_n & (HAS_LENGTHS != 0): Triton's interpreter rejects that mask's dtype.)"""
    return tl.load(p_len + o_n, mask=tl.where(HAS_LENGTHS != 0, m_n, False), other=T)


@triton.jit
def active(tt, b_len):
    """(BN, 1) mask of the rows for which step tt lies inside their sequence.

    Variable-length (packed) batches: a sequence holds its state outside its own steps, so
    forward it keeps its last state to the end, and in reverse it starts from h0 at its own
    last element; the backward pass passes gradients through held steps unchanged."""
    return (tt < b_len)[:, None]


@triton.jit
def chunk_product(p_src, s_src_n, p_b, o_n, m_n, j0, K, J, s_bk, s_bj,
                  ACC: tl.constexpr, USE_DOT: tl.constexpr, DOT_DTYPE: tl.constexpr,
                  PRECISION: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                  BJ: tl.constexpr):
    """src[o_n, :K] @ B[:K, j0:j0+BJ] for a (K, J) matrix B, streaming both operands from
    memory in chunks of BK (src rows are contiguous in K). Both operands are rounded as
    weight_operand and state_operand say: each chunk of B as it is loaded."""
    o_j = j0 + tl.arange(0, BJ).to(tl.int64)
    m_j = o_j < J
    b_acc = tl.zeros((BN, BJ), dtype=ACC)
    for k0 in range(0, K, BK):
        o_k = k0 + tl.arange(0, BK).to(tl.int64)
        m_k = o_k < K
        b_src = tl.load(p_src + o_n[:, None] * s_src_n + o_k[None, :],
                        mask=m_n[:, None] & m_k[None, :], other=0.0).to(ACC)
        b_b = tl.load(p_b + o_k[:, None] * s_bk + o_j[None, :] * s_bj,
                      mask=m_k[:, None] & m_j[None, :], other=0.0)
        b_acc += mix(b_src, weight_operand(b_b, ACC, USE_DOT, PRECISION), ACC,
                     p_b.dtype.element_ty, USE_DOT, DOT_DTYPE, PRECISION)
    return b_acc
