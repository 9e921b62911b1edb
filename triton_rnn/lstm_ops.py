"""One LSTM layer's recurrence as torch.library custom ops, with autograd (ops.py's pattern,
for the LSTM cell).

`lstm_recurrence(proj, proj_r, h0, c0, w_hh, w_hh_r, b_hh, b_hh_r, lengths, allow_tf32)
-> (out, cells, gates)` runs D directions of one layer, each from its own tensors (the `_r`
ones: the reverse direction's, None for one direction), read in place: proj (T, N, 4H) =
X W_ihᵀ + b_ih of that direction, h0 and c0 (D, N, H), w_hh (4H, H), b_hh (4H,) or None;
out and cells (T, N, D*H) are h_t and c_t of every step, gates (T, N, D*4H) the gate
activations the backward reads (not differentiable). lengths as ops.py takes them.
CUDA tensors, and CPU tensors under TRITON_INTERPRET=1, run the Triton kernels; other CPU
tensors run triton_rnn.reference.

Backward saves out, cells, gates, h0, c0 and the W_hh parameters: dz (every gate's dL/dP_t)
comes from the backward kernel, then dW_hh = Σ_t dz_tᵀ h_{t-1} is one large matrix multiply
per direction and db_hh = Σ dz.
"""
from typing import Optional

import torch
from torch import Tensor

from . import reference
from .kernels import lstm_backward as kernel_backward
from .kernels import lstm_cell_forward as kernel_cell
from .kernels import lstm_forward as kernel_forward
from .ops import _directions, _plain_eager, eager_function, hidden_weight_grad, uses_kernels


def _lstm_impl(proj, proj_r, h0, c0, w_hh, w_hh_r, b_hh, b_hh_r, lengths, allow_tf32):
    projs, weights = _directions(proj, proj_r), _directions(w_hh, w_hh_r)
    biases = _directions(b_hh, b_hh_r)
    if uses_kernels(proj):
        return kernel_forward(projs, h0, c0, weights, lengths, allow_tf32, b_hh=biases)
    return reference.lstm_forward(projs, h0, c0, weights, lengths, b_hh=biases)


@torch.library.custom_op("triton_rnn::lstm_recurrence", mutates_args=())
def lstm_recurrence(proj: Tensor, proj_r: Optional[Tensor], h0: Tensor, c0: Tensor,
                    w_hh: Tensor, w_hh_r: Optional[Tensor], b_hh: Optional[Tensor],
                    b_hh_r: Optional[Tensor], lengths: Optional[Tensor],
                    allow_tf32: bool) -> tuple[Tensor, Tensor, Tensor]:
    return _lstm_impl(proj, proj_r, h0, c0, w_hh, w_hh_r, b_hh, b_hh_r, lengths, allow_tf32)


@lstm_recurrence.register_fake
def _(proj, proj_r, h0, c0, w_hh, w_hh_r, b_hh, b_hh_r, lengths, allow_tf32):
    D, N, H = h0.shape
    T = proj.shape[0]
    return (proj.new_empty((T, N, D * H)), proj.new_empty((T, N, D * H)),
            proj.new_empty((T, N, D * 4 * H)))


@torch.library.custom_op("triton_rnn::lstm_recurrence_backward", mutates_args=())
def lstm_recurrence_backward(dout: Tensor, dcells: Tensor, out: Tensor, cells: Tensor,
                             gates: Tensor, c0: Tensor, w_hh: Tensor, w_hh_r: Optional[Tensor],
                             lengths: Optional[Tensor],
                             allow_tf32: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(dz, dh0, dc0): gradients with respect to the projections (dz (T, N, D*4H), direction
    d's in its features 4H*d..), h0 and c0."""
    weights = _directions(w_hh, w_hh_r)
    if uses_kernels(out):
        return kernel_backward(dout, dcells, out, cells, gates, c0, weights, lengths,
                               allow_tf32)
    return reference.lstm_backward(dout, dcells, out, cells, gates, c0, weights, lengths)


@lstm_recurrence_backward.register_fake
def _(dout, dcells, out, cells, gates, c0, w_hh, w_hh_r, lengths, allow_tf32):
    return (torch.empty_like(gates, memory_format=torch.contiguous_format),
            torch.empty_like(c0, memory_format=torch.contiguous_format),
            torch.empty_like(c0, memory_format=torch.contiguous_format))


def _setup_context(ctx, inputs, output):
    proj, proj_r, h0, c0, w_hh, w_hh_r, b_hh, b_hh_r, lengths, allow_tf32 = inputs
    out, cells, gates = output
    ctx.save_for_backward(out, cells, gates, h0, c0, w_hh, w_hh_r, lengths)
    ctx.allow_tf32 = allow_tf32
    ctx.mark_non_differentiable(gates)


def _backward(ctx, dout, dcells, dgates):
    out, cells, gates, h0, c0, w_hh, w_hh_r, lengths = ctx.saved_tensors
    dout = torch.zeros_like(out) if dout is None else dout.contiguous()
    dcells = torch.zeros_like(cells) if dcells is None else dcells.contiguous()
    dz, dh0, dc0 = lstm_recurrence_backward(dout, dcells, out, cells, gates, c0, w_hh, w_hh_r,
                                            lengths, ctx.allow_tf32)
    need = ctx.needs_input_grad  # proj, proj_r, h0, c0, w_hh, w_hh_r, b_hh, b_hh_r, ...
    D, H = h0.shape[0], h0.shape[2]
    dz_parts = dz.split(4 * H, dim=-1)  # each direction's gradient of its projection
    dw = hidden_weight_grad(dz, out, h0, gates=4) if need[4] or need[5] else [None, None]
    # b_hh enters every step's pre-activations once: its gradient is dz summed over steps and
    # batch (zero at held steps of a packed batch, as dz is there).
    db = [g.sum((0, 1)) if need[6 + d] else None for d, g in enumerate(dz_parts)]
    reverse = (lambda parts: parts[1] if D == 2 else None)
    return (dz_parts[0], reverse(dz_parts), dh0 if need[2] else None, dc0 if need[3] else None,
            dw[0], reverse(dw), db[0], reverse(db), None, None)


def _no_double_backward(ctx, ddz, ddh0, ddc0):
    raise RuntimeError("triton_rnn: double backward (gradients of gradients) through "
                       "triton_rnn.LSTM is not supported")


lstm_recurrence.register_autograd(_backward, setup_context=_setup_context)
lstm_recurrence_backward.register_autograd(_no_double_backward,
                                           setup_context=lambda ctx, inputs, output: None)


_EagerLSTM = eager_function("_EagerLSTM", _lstm_impl, _setup_context, _backward,
                            lengths_at=8, saved_at=(2,))


def run_lstm(proj: Tensor, proj_r: Optional[Tensor], h0: Tensor, c0: Tensor, w_hh: Tensor,
             w_hh_r: Optional[Tensor], b_hh: Optional[Tensor], b_hh_r: Optional[Tensor],
             lengths: Optional[Tensor], allow_tf32: bool):
    """`lstm_recurrence`, called the cheapest way that keeps its meaning (ops.run_recurrence)."""
    args = (proj, proj_r, h0, c0, w_hh, w_hh_r, b_hh, b_hh_r, lengths, allow_tf32)
    if _plain_eager(proj, proj_r, h0, c0, w_hh, w_hh_r, b_hh, b_hh_r):
        return _EagerLSTM.apply(*args)
    return lstm_recurrence(*args)


# ----- LSTMCell: one step, both projections and the state update fused ----------------------

@torch.library.custom_op("triton_rnn::lstm_cell", mutates_args=())
def lstm_cell(x: Tensor, h: Optional[Tensor], c: Optional[Tensor], w_ih: Tensor, w_hh: Tensor,
              b_ih: Optional[Tensor], b_hh: Optional[Tensor],
              allow_tf32: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(h', c', gates) of one LSTM step; h, c None mean zeros, biases None none; gates (N, 4H)
    the activations i, f, g, o (not differentiable)."""
    if uses_kernels(x):
        return kernel_cell(x, h, c, w_ih, w_hh, b_ih, b_hh, allow_tf32)
    return reference.lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh)


@lstm_cell.register_fake
def _(x, h, c, w_ih, w_hh, b_ih, b_hh, allow_tf32):
    N, H = x.shape[0], w_hh.shape[1]
    return x.new_empty((N, H)), x.new_empty((N, H)), x.new_empty((N, 4 * H))


def _cell_setup_context(ctx, inputs, output):
    x, h, c, w_ih, w_hh, b_ih, b_hh, allow_tf32 = inputs
    h_new, c_new, gates = output
    ctx.save_for_backward(x, h, c, w_ih, w_hh, c_new, gates)
    ctx.mark_non_differentiable(gates)


def _cell_backward(ctx, dh_new, dc_new, dgates):
    """The gates' gradients elementwise, then the four products as large-batch GEMMs."""
    x, h, c, w_ih, w_hh, c_new, gates = ctx.saved_tensors
    g_i, g_f, g_g, g_o = gates.chunk(4, dim=1)
    dh_new = torch.zeros_like(c_new) if dh_new is None else dh_new
    dc = torch.zeros_like(c_new) if dc_new is None else dc_new
    tc = torch.tanh(c_new)
    dc = dc + dh_new * g_o * (1 - tc * tc)
    c_prev = torch.zeros_like(c_new) if c is None else c
    dz = torch.cat([dc * g_g * g_i * (1 - g_i), dc * c_prev * g_f * (1 - g_f),
                    dc * g_i * (1 - g_g * g_g), dh_new * tc * g_o * (1 - g_o)], dim=1)
    need = ctx.needs_input_grad
    dx = dz @ w_ih if need[0] else None
    dh = dz @ w_hh if need[1] else None
    dc_prev = dc * g_f if need[2] else None
    dw_ih = dz.T @ x if need[3] else None
    dw_hh = (dz.T @ h if h is not None else torch.zeros_like(w_hh)) if need[4] else None
    db = dz.sum(0)
    return (dx, dh, dc_prev, dw_ih, dw_hh, db if need[5] else None, db if need[6] else None,
            None)


lstm_cell.register_autograd(_cell_backward, setup_context=_cell_setup_context)
