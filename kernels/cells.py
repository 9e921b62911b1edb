"""The recurrent cells the kernels take as a compile-time choice (CELL), and their pointwise
updates and derivatives: the only per-cell code of the recurrence skeleton.

- RNN (CELL = 0): one gate, h_t = act(z) (blocks.activate / blocks.activation_grad).
- LSTM (CELL = 1): four gates in nn.LSTM's order i, f, g, o, each z = P + b_hh + h_{t-1} W_hhᵀ
  over its own H rows of W_hh: c_t = σ(f) c_{t-1} + σ(i) tanh(g), h_t = σ(o) tanh(c_t). The
  forward saves the gates' activations and c_t of every step, which the backward reads (no
  product is recomputed).
- GRU (CELL = 2): three gates in nn.GRU's order r, z, n, with the hidden product kept apart
  from P (q = h_{t-1} W_hhᵀ + b_hh, per gate): r = σ(P_r + q_r), z = σ(P_z + q_z),
  n = tanh(P_n + r q_n), h_t = (1 - z) n + z h_{t-1}. The forward saves r, z, n and q_n
  (GRU_SAVED slots a feature); the backward's dz holds the products' operands dq_r, dq_z,
  dq_n and, in a fourth slot, dL/dP_n (= dq_n / r: kept, not divided).

Every function works elementwise on tiles of any layout, in the accumulator dtype."""
import triton
import triton.language as tl

from .blocks import _tanh

RNN = tl.constexpr(0)
LSTM = tl.constexpr(1)
GRU = tl.constexpr(2)
# Rows of W_hh (and columns of P) per hidden feature, by cell (its CELL value): the launcher
# sizes buffers and the dispatcher sizes tiles with these.
GATES = {RNN.value: 1, LSTM.value: 4, GRU.value: 3}
# Values per feature the GRU's forward saves (r, z, n, q_n) and its backward's dz holds
GRU_SAVED = 4


@triton.jit
def sigmoid(x):
    """1 / (1 + exp(-x)), with exp's argument clamped at 80 (σ(-80) is 0 to fp32 and 1.8e-35 in
    fp64, so nothing is lost that the fp64 comparisons see): no Inf / Inf. NaN propagates."""
    return 1.0 / (1.0 + tl.exp(tl.minimum(-x, 80.0, propagate_nan=tl.PropagateNan.ALL)))


@triton.jit
def lstm_update(z_i, z_f, z_g, z_o, b_c):
    """(i, f, g, o, c_t, h_t) from the four gates' pre-activations and c_{t-1}."""
    g_i = sigmoid(z_i)
    g_f = sigmoid(z_f)
    g_g = _tanh(z_g)
    g_o = sigmoid(z_o)
    c_new = g_f * b_c + g_i * g_g
    return g_i, g_f, g_g, g_o, c_new, g_o * _tanh(c_new)


@triton.jit
def lstm_update_grad(b_dh, b_dc, g_i, g_f, g_g, g_o, b_c, b_c_prev):
    """The pre-activations' gradients (di, df, dg, do) and dL/dc_{t-1}, from dL/dh_t (b_dh),
    dL/dc_t from later steps (b_dc), the step's gate activations and c_t, c_{t-1}."""
    tc = _tanh(b_c)
    dc = b_dc + b_dh * g_o * (1.0 - tc * tc)
    d_o = b_dh * tc * g_o * (1.0 - g_o)
    d_i = dc * g_g * g_i * (1.0 - g_i)
    d_g = dc * g_i * (1.0 - g_g * g_g)
    d_f = dc * b_c_prev * g_f * (1.0 - g_f)
    return d_i, d_f, d_g, d_o, dc * g_f


@triton.jit
def gru_update(p_r, p_z, p_n, q_r, q_z, q_n, b_h):
    """(r, z, n, h_t) from the three gates' parts of P, of the hidden product q (b_hh in it)
    and h_{t-1}."""
    g_r = sigmoid(p_r + q_r)
    g_z = sigmoid(p_z + q_z)
    g_n = _tanh(p_n + g_r * q_n)
    return g_r, g_z, g_n, g_n + g_z * (b_h - g_n)


@triton.jit
def gru_update_grad(b_dh, g_r, g_z, g_n, q_n, b_h_prev):
    """(dq_r, dq_z, dq_n, dP_n, dL/dh_{t-1} through z) from dL/dh_t (b_dh), the step's saved
    r, z, n, q_n and h_{t-1}: dq are the hidden products' gradients (dP_r = dq_r, dP_z = dq_z)."""
    d_n = b_dh * (1.0 - g_z) * (1.0 - g_n * g_n)
    d_z = b_dh * (b_h_prev - g_n) * g_z * (1.0 - g_z)
    d_r = d_n * q_n * g_r * (1.0 - g_r)
    return d_r, d_z, d_n * g_r, d_n, b_dh * g_z
