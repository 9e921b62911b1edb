"""One RNN layer's recurrence as torch.library custom ops, with autograd.

`recurrence(proj, proj_r, h0, w_hh, w_hh_r, b_hh, b_hh_r, lengths, relu, allow_tf32) -> out`
runs D directions of one layer, each from its own tensors (the `_r` ones: the reverse
direction's, None for one direction), read in place:
  proj (T, N, H) = X W_ihᵀ + b_ih of that direction, h0 (D, N, H), w_hh (H, H), b_hh (H,) or
  None, out (T, N, D*H); lengths: None, or (N,) int32 per-sequence lengths for a
  variable-length (packed) batch, in which case a sequence holds its state outside its own
  steps (`active` in kernels/blocks.py).
CUDA tensors, and CPU tensors under TRITON_INTERPRET=1, run the Triton kernels; other CPU
tensors run triton_rnn.reference. Being custom ops with fake implementations, both trace
under torch.compile without a graph break.

Backward saves only out, h0 and the W_hh parameters (the layer input is saved by the
projection's own autograd): dz comes from the backward kernel, then per direction
dW_hh = Σ_t dz_tᵀ h_{t-1} is one large matrix multiply over all timesteps and db_hh = Σ dz.
"""
from typing import Optional

import torch
from torch import Tensor
from torch.utils._python_dispatch import _get_current_dispatch_mode

from . import reference
from .kernels import interpreting, recurrence_backward as kernel_backward
from .kernels import recurrence_forward as kernel_forward
from .kernels import rnn_cell_forward as kernel_cell


# Read once, as Triton reads TRITON_INTERPRET once when it decorates the kernels at import.
_INTERPRETED = interpreting()


def uses_kernels(t: Tensor) -> bool:
    return t.is_cuda or (_INTERPRETED and t.device.type == "cpu")


def _directions(forward: Optional[Tensor], reverse: Optional[Tensor]):
    """The per-direction tensors the launcher and the reference take, or None."""
    if forward is None:
        return None
    return (forward,) if reverse is None else (forward, reverse)


def _recurrence_impl(proj, proj_r, h0, w_hh, w_hh_r, b_hh, b_hh_r, lengths, relu, allow_tf32):
    projs, weights = _directions(proj, proj_r), _directions(w_hh, w_hh_r)
    biases = _directions(b_hh, b_hh_r)
    if uses_kernels(proj):
        return kernel_forward(projs, h0, weights, lengths, relu, allow_tf32, b_hh=biases)
    return reference.recurrence_forward(projs, h0, weights, lengths, relu, b_hh=biases)


@torch.library.custom_op("triton_rnn::recurrence", mutates_args=())
def recurrence(proj: Tensor, proj_r: Optional[Tensor], h0: Tensor, w_hh: Tensor,
               w_hh_r: Optional[Tensor], b_hh: Optional[Tensor], b_hh_r: Optional[Tensor],
               lengths: Optional[Tensor], relu: bool, allow_tf32: bool) -> Tensor:
    return _recurrence_impl(proj, proj_r, h0, w_hh, w_hh_r, b_hh, b_hh_r, lengths, relu,
                            allow_tf32)


@recurrence.register_fake
def _(proj, proj_r, h0, w_hh, w_hh_r, b_hh, b_hh_r, lengths, relu, allow_tf32):
    D, N, H = h0.shape
    return proj.new_empty((proj.shape[0], N, D * H))


@torch.library.custom_op("triton_rnn::recurrence_backward", mutates_args=())
def recurrence_backward(dout: Tensor, out: Tensor, w_hh: Tensor, w_hh_r: Optional[Tensor],
                        lengths: Optional[Tensor], relu: bool,
                        allow_tf32: bool) -> tuple[Tensor, Tensor]:
    """(dz, dh0): gradients with respect to the projections (dz (T, N, D*H), direction d's in
    its features d*H..) and h0."""
    weights = _directions(w_hh, w_hh_r)
    if uses_kernels(out):
        return kernel_backward(dout, out, weights, lengths, relu, allow_tf32)
    return reference.recurrence_backward(dout, out, weights, lengths, relu)


@recurrence_backward.register_fake
def _(dout, out, w_hh, w_hh_r, lengths, relu, allow_tf32):
    D, N, H = 1 if w_hh_r is None else 2, out.shape[1], w_hh.shape[0]
    return (torch.empty_like(out, memory_format=torch.contiguous_format),
            out.new_empty((D, N, H)))


def hidden_weight_grad(dz: Tensor, out: Tensor, h0: Tensor, gates: int = 1) -> list:
    """Per direction d, dW_hh = Σ_t dz_t[d]ᵀ h_{t-1}[d], where h_{t-1} is the state before step
    t in that direction's order: out[t-1] forward (h0 at t=0), out[t+1] reverse (h0 at
    t=T-1). With per-sequence lengths the formula is unchanged: held steps have dz = 0, and in
    reverse the held steps after a sequence's end hold exactly h0. gates: dz's features per
    hidden feature and direction (LSTM: 4, and dW_hh is (4H, H))."""
    T, N, _ = out.shape
    D, _, H = h0.shape
    G = gates * H
    grads = []
    for d in range(D):
        dz_d = dz[..., d * G:(d + 1) * G]
        out_d = out[..., d * H:(d + 1) * H]
        first, rest, prev = (0, slice(1, T), slice(0, T - 1)) if d == 0 else \
            (T - 1, slice(0, T - 1), slice(1, T))
        g = dz_d[first].T @ h0[d]
        if T > 1:
            g = g + dz_d[rest].reshape(-1, G).T @ out_d[prev].reshape(-1, H)
        grads.append(g)
    return grads


def _setup_context(ctx, inputs, output):
    proj, proj_r, h0, w_hh, w_hh_r, b_hh, b_hh_r, lengths, relu, allow_tf32 = inputs
    ctx.save_for_backward(output, h0, w_hh, w_hh_r, lengths)
    ctx.relu, ctx.allow_tf32 = relu, allow_tf32


def _backward(ctx, dout):
    out, h0, w_hh, w_hh_r, lengths = ctx.saved_tensors
    dz, dh0 = recurrence_backward(dout.contiguous(), out, w_hh, w_hh_r, lengths, ctx.relu,
                                  ctx.allow_tf32)
    need = ctx.needs_input_grad  # proj, proj_r, h0, w_hh, w_hh_r, b_hh, b_hh_r, ...
    D, H = h0.shape[0], h0.shape[2]
    dz_parts = dz.split(H, dim=-1)  # each direction's gradient of its projection
    dw = hidden_weight_grad(dz, out, h0) if need[3] or need[4] else [None, None]
    # b_hh enters every step's pre-activation once: its gradient is dz summed over steps and
    # batch (zero at held steps of a packed batch, as dz is there).
    db = [g.sum((0, 1)) if need[5 + d] else None for d, g in enumerate(dz_parts)]
    reverse = (lambda parts: parts[1] if D == 2 else None)
    return (dz_parts[0], reverse(dz_parts), dh0 if need[2] else None, dw[0], reverse(dw),
            db[0], reverse(db), None, None, None)


def _no_double_backward(ctx, ddz, ddh0):
    raise RuntimeError("triton_rnn: double backward (gradients of gradients) through "
                       "triton_rnn.RNN is not supported")


recurrence.register_autograd(_backward, setup_context=_setup_context)


def eager_function(name: str, impl, setup_context, backward, lengths_at: int,
                   saved_at: tuple = ()) -> type:
    """A custom op's implementation and autograd formula (setup_context, backward) as an
    autograd.Function, without the op's Python dispatch layers (schema handling, autograd
    wrapper, Dynamo-disabled frames: about half of our host cost per layer in eager mode). Its
    backward runs through the registered backward op, so double backward raises the same
    error either way. Not differentiable: inputs[lengths_at] (the lengths) and the outputs at
    saved_at (what only the backward reads; one mark_non_differentiable call names them all,
    as a second call replaces the first)."""
    def forward(ctx, *inputs):
        output = impl(*inputs)
        setup_context(ctx, inputs, output)
        lengths = inputs[lengths_at]
        ctx.mark_non_differentiable(*(output[i] for i in saved_at),
                                    *(() if lengths is None else (lengths,)))
        return output

    return type(name, (torch.autograd.Function,),
                {"__doc__": eager_function.__doc__, "forward": staticmethod(forward),
                 "backward": staticmethod(lambda ctx, *grads: backward(ctx, *grads))})


_EagerRecurrence = eager_function("_EagerRecurrence", _recurrence_impl, _setup_context,
                                  _backward, lengths_at=7)


def run_recurrence(proj: Tensor, proj_r: Optional[Tensor], h0: Tensor, w_hh: Tensor,
                   w_hh_r: Optional[Tensor], b_hh: Optional[Tensor], b_hh_r: Optional[Tensor],
                   lengths: Optional[Tensor], relu: bool, allow_tf32: bool) -> Tensor:
    """`recurrence`, called the cheapest way that keeps its meaning: the registered custom op
    wherever something may rely on the registration (torch.compile tracing, a Python dispatch
    or function mode, functorch transforms, tensor subclasses); else the same implementation
    and backward through a plain autograd.Function."""
    args = (proj, proj_r, h0, w_hh, w_hh_r, b_hh, b_hh_r, lengths, relu, allow_tf32)
    if _plain_eager(proj, proj_r, h0, w_hh, w_hh_r, b_hh, b_hh_r):
        return _EagerRecurrence.apply(*args)
    return recurrence(*args)


def _plain_eager(*tensors) -> bool:
    return not (torch.compiler.is_compiling()
                or torch._C._is_torch_function_mode_enabled()
                or _get_current_dispatch_mode() is not None
                or torch._C._functorch.peek_interpreter_stack() is not None
                or any(t is not None and type(t) is not Tensor and
                       type(t) is not torch.nn.Parameter for t in tensors))
recurrence_backward.register_autograd(_no_double_backward,
                                      setup_context=lambda ctx, inputs, output: None)


# ----- RNNCell: one step, both projections fused -------------------------------------------

@torch.library.custom_op("triton_rnn::rnn_cell", mutates_args=())
def rnn_cell(x: Tensor, h: Optional[Tensor], w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
             b_hh: Optional[Tensor], relu: bool, allow_tf32: bool) -> Tensor:
    """act(x W_ihᵀ + b_ih + h W_hhᵀ + b_hh); h None means zeros, biases None means none."""
    if uses_kernels(x):
        return kernel_cell(x, h, w_ih, w_hh, b_ih, b_hh, relu, allow_tf32)
    return reference.rnn_cell(x, h, w_ih, w_hh, b_ih, b_hh, relu)


@rnn_cell.register_fake
def _(x, h, w_ih, w_hh, b_ih, b_hh, relu, allow_tf32):
    return x.new_empty((x.shape[0], w_ih.shape[0]))


def _cell_setup_context(ctx, inputs, output):
    x, h, w_ih, w_hh, b_ih, b_hh, relu, allow_tf32 = inputs
    ctx.save_for_backward(x, h, w_ih, w_hh, output)
    ctx.relu = relu


def _cell_backward(ctx, dout):
    """Elementwise dz, then the four products: large-batch GEMMs, nothing per element."""
    x, h, w_ih, w_hh, out = ctx.saved_tensors
    dz = reference.activation_grad(dout, out, ctx.relu)
    need = ctx.needs_input_grad
    dx = dz @ w_ih if need[0] else None
    dh = dz @ w_hh if need[1] else None
    dw_ih = dz.T @ x if need[2] else None
    dw_hh = (dz.T @ h if h is not None else torch.zeros_like(w_hh)) if need[3] else None
    db = dz.sum(0)
    return (dx, dh, dw_ih, dw_hh, db if need[4] else None, db if need[5] else None,
            None, None)


rnn_cell.register_autograd(_cell_backward, setup_context=_cell_setup_context)
