"""One GRU layer's recurrence, and one GRUCell step, as torch.library custom ops, with autograd
(lstm_ops.py's pattern, for the GRU cell).

`gru_recurrence(proj, proj_r, h0, w_hh, w_hh_r, b_hh, b_hh_r, lengths, allow_tf32)
-> (out, gates)` runs D directions of one layer, each from its own tensors (the `_r` ones: the
reverse direction's, None for one direction), read in place: proj (T, N, 3H) = X W_ihᵀ + b_ih
of that direction (gates r, z, n), h0 (D, N, H), w_hh (3H, H), b_hh (3H,) or None; out
(T, N, D*H) is h_t of every step, gates (T, N, D*4H) r, z, n and q_n = W_hn h_{t-1} + b_hn
of every step, which the backward reads (not differentiable). lengths as ops.py takes them.
CUDA tensors, and CPU tensors under TRITON_INTERPRET=1, run the Triton kernels; other CPU
tensors run triton_rnn.reference.

The backward kernel gives, per direction, the hidden products' gradients dq (3H: dL/dq_r,
dL/dq_z, dL/dq_n) and dL/dP_n: the projection's gradient is (dq_r, dq_z, dL/dP_n) (r scales
the new gate's hidden product, not its input part), dW_hh = Σ_t dq_tᵀ h_{t-1} is one large
matrix multiply per direction and db_hh = Σ dq.
"""
from typing import Optional

import torch
from torch import Tensor

from . import reference
from .kernels import gru_backward as kernel_backward
from .kernels import gru_cell_forward as kernel_cell
from .kernels import gru_forward as kernel_forward
from .kernels.cells import GRU_SAVED
from .ops import _directions, _plain_eager, eager_function, hidden_weight_grad, uses_kernels


def _gru_impl(proj, proj_r, h0, w_hh, w_hh_r, b_hh, b_hh_r, lengths, allow_tf32):
    projs, weights = _directions(proj, proj_r), _directions(w_hh, w_hh_r)
    biases = _directions(b_hh, b_hh_r)
    if uses_kernels(proj):
        return kernel_forward(projs, h0, weights, lengths, allow_tf32, b_hh=biases)
    return reference.gru_forward(projs, h0, weights, lengths, b_hh=biases)


@torch.library.custom_op("triton_rnn::gru_recurrence", mutates_args=())
def gru_recurrence(proj: Tensor, proj_r: Optional[Tensor], h0: Tensor, w_hh: Tensor,
                   w_hh_r: Optional[Tensor], b_hh: Optional[Tensor], b_hh_r: Optional[Tensor],
                   lengths: Optional[Tensor], allow_tf32: bool) -> tuple[Tensor, Tensor]:
    return _gru_impl(proj, proj_r, h0, w_hh, w_hh_r, b_hh, b_hh_r, lengths, allow_tf32)


@gru_recurrence.register_fake
def _(proj, proj_r, h0, w_hh, w_hh_r, b_hh, b_hh_r, lengths, allow_tf32):
    D, N, H = h0.shape
    T = proj.shape[0]
    return proj.new_empty((T, N, D * H)), proj.new_empty((T, N, D * GRU_SAVED * H))


@torch.library.custom_op("triton_rnn::gru_recurrence_backward", mutates_args=())
def gru_recurrence_backward(dout: Tensor, out: Tensor, gates: Tensor, h0: Tensor, w_hh: Tensor,
                            w_hh_r: Optional[Tensor], lengths: Optional[Tensor],
                            allow_tf32: bool) -> tuple[Tensor, Tensor]:
    """(dz, dh0): dz (T, N, D*4H) per direction dq_r, dq_z, dq_n, dL/dP_n; dh0 (D, N, H)."""
    weights = _directions(w_hh, w_hh_r)
    if uses_kernels(out):
        return kernel_backward(dout, out, gates, h0, weights, lengths, allow_tf32)
    return reference.gru_backward(dout, out, gates, h0, weights, lengths)


@gru_recurrence_backward.register_fake
def _(dout, out, gates, h0, w_hh, w_hh_r, lengths, allow_tf32):
    return (torch.empty_like(gates, memory_format=torch.contiguous_format),
            torch.empty_like(h0, memory_format=torch.contiguous_format))


def _setup_context(ctx, inputs, output):
    proj, proj_r, h0, w_hh, w_hh_r, b_hh, b_hh_r, lengths, allow_tf32 = inputs
    out, gates = output
    ctx.save_for_backward(out, gates, h0, w_hh, w_hh_r, lengths)
    ctx.allow_tf32 = allow_tf32
    ctx.mark_non_differentiable(gates)


def _backward(ctx, dout, dgates):
    out, gates, h0, w_hh, w_hh_r, lengths = ctx.saved_tensors
    dout = torch.zeros_like(out) if dout is None else dout.contiguous()
    dz, dh0 = gru_recurrence_backward(dout, out, gates, h0, w_hh, w_hh_r, lengths,
                                      ctx.allow_tf32)
    need = ctx.needs_input_grad  # proj, proj_r, h0, w_hh, w_hh_r, b_hh, b_hh_r, ...
    D, H = h0.shape[0], h0.shape[2]
    parts = dz.split(GRU_SAVED * H, dim=-1)  # each direction's dq_r, dq_z, dq_n, dP_n
    dq = [p[..., :3 * H] for p in parts]
    dproj = [torch.cat([p[..., :2 * H], p[..., 3 * H:]], dim=-1) for p in parts]
    dw = hidden_weight_grad(torch.cat(dq, dim=-1), out, h0, gates=3) \
        if need[3] or need[4] else [None, None]
    # b_hh is inside each step's hidden products once: its gradient is dq summed over steps and
    # batch (zero at held steps of a packed batch, as dz is there)
    db = [g.sum((0, 1)) if need[5 + d] else None for d, g in enumerate(dq)]
    reverse = (lambda items: items[1] if D == 2 else None)
    return (dproj[0], reverse(dproj), dh0 if need[2] else None, dw[0], reverse(dw), db[0],
            reverse(db), None, None)


def _no_double_backward(ctx, ddz, ddh0):
    raise RuntimeError("triton_rnn: double backward (gradients of gradients) through "
                       "triton_rnn.GRU is not supported")


gru_recurrence.register_autograd(_backward, setup_context=_setup_context)
gru_recurrence_backward.register_autograd(_no_double_backward,
                                          setup_context=lambda ctx, inputs, output: None)


_EagerGRU = eager_function("_EagerGRU", _gru_impl, _setup_context, _backward,
                           lengths_at=7, saved_at=(1,))


def run_gru(proj: Tensor, proj_r: Optional[Tensor], h0: Tensor, w_hh: Tensor,
            w_hh_r: Optional[Tensor], b_hh: Optional[Tensor], b_hh_r: Optional[Tensor],
            lengths: Optional[Tensor], allow_tf32: bool):
    """`gru_recurrence`, called the cheapest way that keeps its meaning (ops.run_recurrence)."""
    args = (proj, proj_r, h0, w_hh, w_hh_r, b_hh, b_hh_r, lengths, allow_tf32)
    if _plain_eager(proj, proj_r, h0, w_hh, w_hh_r, b_hh, b_hh_r):
        return _EagerGRU.apply(*args)
    return gru_recurrence(*args)


# ----- GRUCell: one step, both projections and the update fused ------------------------------

@torch.library.custom_op("triton_rnn::gru_cell", mutates_args=())
def gru_cell(x: Tensor, h: Optional[Tensor], w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
             b_hh: Optional[Tensor], allow_tf32: bool) -> tuple[Tensor, Tensor]:
    """(h', gates) of one GRU step; h None means zeros, biases None none; gates (N, 4H): r, z,
    n and h W_hnᵀ + b_hn (not differentiable)."""
    if uses_kernels(x):
        return kernel_cell(x, h, w_ih, w_hh, b_ih, b_hh, allow_tf32)
    return reference.gru_cell(x, h, w_ih, w_hh, b_ih, b_hh)


@gru_cell.register_fake
def _(x, h, w_ih, w_hh, b_ih, b_hh, allow_tf32):
    N, H = x.shape[0], w_hh.shape[1]
    return x.new_empty((N, H)), x.new_empty((N, GRU_SAVED * H))


def _cell_setup_context(ctx, inputs, output):
    x, h, w_ih, w_hh, b_ih, b_hh, allow_tf32 = inputs
    ctx.save_for_backward(x, h, w_ih, w_hh, output[1])
    ctx.mark_non_differentiable(output[1])


def _cell_backward(ctx, dh_new, dgates):
    """The gates' gradients elementwise, then the products as large-batch GEMMs: the input
    side's gradient is (dr, dz, dn), the hidden side's (dr, dz, r dn)."""
    x, h, w_ih, w_hh, gates = ctx.saved_tensors
    r, z, n, q_n = gates.chunk(GRU_SAVED, dim=1)
    dh_new = torch.zeros_like(n) if dh_new is None else dh_new
    h_prev = torch.zeros_like(n) if h is None else h
    d_n = dh_new * (1 - z) * (1 - n * n)
    d_z = dh_new * (h_prev - n) * z * (1 - z)
    d_r = d_n * q_n * r * (1 - r)
    d_in, d_hid = torch.cat([d_r, d_z, d_n], dim=1), torch.cat([d_r, d_z, d_n * r], dim=1)
    need = ctx.needs_input_grad
    dx = d_in @ w_ih if need[0] else None
    dh = d_hid @ w_hh + dh_new * z if need[1] else None
    dw_ih = d_in.T @ x if need[2] else None
    dw_hh = (d_hid.T @ h if h is not None else torch.zeros_like(w_hh)) if need[3] else None
    return (dx, dh, dw_ih, dw_hh, d_in.sum(0) if need[4] else None,
            d_hid.sum(0) if need[5] else None, None)


gru_cell.register_autograd(_cell_backward, setup_context=_cell_setup_context)
