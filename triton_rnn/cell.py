"""triton_rnn.RNNCell, LSTMCell and GRUCell: torch.nn.RNNCell, nn.LSTMCell and nn.GRUCell whose
step is one fused Triton kernel."""
import torch
from torch import nn

from . import routing
from .gru_ops import gru_cell
from .lstm_ops import lstm_cell
from .ops import rnn_cell
from .nn_rules import autocast_cast, autocast_dtype, scalar_name


class RNNCell(nn.RNNCell):
    """Drop-in replacement for torch.nn.RNNCell: only `forward` differs. Both projections,
    both biases and the activation run in one kernel launch per call."""

    def forward(self, input, hx=None):
        input, hx, is_batched, params = _one_state_cell_args(self, "RNNCell", input, hx)
        w_ih, w_hh, b_ih, b_hh = (*params, None, None)[:4]
        with torch.autocast(input.device.type, enabled=False):
            out = rnn_cell(input, hx, w_ih, w_hh, b_ih, b_hh, self.nonlinearity == "relu",
                           torch.backends.cuda.matmul.allow_tf32)
        return out if is_batched else out.squeeze(0)


class GRUCell(nn.GRUCell):
    """Drop-in replacement for torch.nn.GRUCell: only `forward` differs. Both projections,
    both biases, the three gates and the update run in one kernel launch per call (b_hn
    inside the new gate's hidden product); the backward is elementwise work and four
    large-batch GEMMs."""

    def forward(self, input, hx=None):
        input, hx, is_batched, params = _one_state_cell_args(self, "GRUCell", input, hx)
        w_ih, w_hh, b_ih, b_hh = (*params, None, None)[:4]
        with torch.autocast(input.device.type, enabled=False):
            out, _ = gru_cell(input, hx, w_ih, w_hh, b_ih, b_hh,
                              torch.backends.cuda.matmul.allow_tf32)
        return out if is_batched else out.squeeze(0)


def _one_state_cell_args(cell, name: str, input, hx):
    """nn.RNNCell's and nn.GRUCell's argument handling: (input, hx, batched, parameters), the
    input and hx with a batch dimension, all of them cast under autocast (every call, as the
    torch.nn cell's own cast)."""
    if input.dim() not in (1, 2):
        raise ValueError(f"{name}: Expected input to be 1D or 2D, got {input.dim()}D instead")
    if hx is not None and hx.dim() not in (1, 2):
        raise ValueError(f"{name}: Expected hidden to be 1D or 2D, got {hx.dim()}D instead")
    is_batched = input.dim() == 2
    if not is_batched:
        input = input.unsqueeze(0)
        hx = None if hx is None else hx.unsqueeze(0)
    check_cell_args(cell, input, () if hx is None else (hx,))
    params = [cell.weight_ih, cell.weight_hh] + ([cell.bias_ih, cell.bias_hh] if cell.bias
                                                 else [])
    dtype = autocast_dtype(input.device.type)
    if dtype is not None:  # the torch.nn cell runs in the autocast dtype
        input, hx = autocast_cast(input, dtype), autocast_cast(hx, dtype)
        params = autocast_cast(params, dtype)
    return input, hx, is_batched, params


def check_cell_args(cell, input, states) -> None:
    """nn.RNNCell's (nn.LSTMCell's) checks, in its order, with its exception types and
    messages; states: (h,), or LSTM's (h, c), or () for none."""
    if input.size(1) != cell.input_size:
        raise RuntimeError(f"input has inconsistent input_size: got {input.size(1)} "
                           f"expected {cell.input_size}")
    for i, state in enumerate(states):
        if input.size(0) != state.size(0):
            raise RuntimeError(f"Input batch size {input.size(0)} doesn't match hidden{i} "
                               f"batch size {state.size(0)}")
        if state.size(1) != cell.hidden_size:
            raise RuntimeError(f"hidden{i} has inconsistent hidden_size: got {state.size(1)}, "
                               f"expected {cell.hidden_size}")
    for tensor, kind in ((input, "Input"), *((state, "Hidden") for state in states)):
        if tensor.device != cell.weight_ih.device:
            raise RuntimeError(f"{kind} and parameter tensors are not at the same device, "
                               f"found {kind.lower()} tensor at {tensor.device} and "
                               f"parameter tensor at {cell.weight_ih.device}")
    if autocast_dtype(input.device.type) is not None:
        return  # autocast casts everything to one dtype
    for tensor, weight in ((input, cell.weight_ih), *((state, cell.weight_hh)
                                                      for state in states[:1])):
        if tensor.dtype != weight.dtype:
            raise RuntimeError(f"mat1 and mat2 must have the same dtype, but got "
                               f"{scalar_name(tensor.dtype)} and {scalar_name(weight.dtype)}")


class LSTMCell(nn.LSTMCell):
    """Drop-in replacement for torch.nn.LSTMCell: only `forward` differs. Both projections,
    both biases, the four gates and the state update run in one kernel launch per call; the
    backward is elementwise work and four large-batch GEMMs. A c of another dtype than the
    weights (which nn.LSTMCell promotes) runs nn.LSTMCell's own forward."""

    def forward(self, input, hx=None):
        if input.dim() not in (1, 2):
            raise ValueError(
                f"LSTMCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None:
            for i, value in enumerate(hx):
                if value.dim() not in (1, 2):
                    raise ValueError(f"LSTMCell: Expected hx[{i}] to be 1D or 2D, got "
                                     f"{value.dim()}D instead")
        if routing.get_backend() == "torch" or \
                hx is not None and hx[1].dtype != self.weight_hh.dtype and \
                autocast_dtype(input.device.type) is None:
            return super().forward(input, hx)
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
            hx = None if hx is None else (hx[0].unsqueeze(0), hx[1].unsqueeze(0))
        check_cell_args(self, input, () if hx is None else tuple(hx))
        params = [self.weight_ih, self.weight_hh] + \
            ([self.bias_ih, self.bias_hh] if self.bias else [])
        dtype = autocast_dtype(input.device.type)
        if dtype is not None:  # nn.LSTMCell runs in the autocast dtype
            input = autocast_cast(input, dtype)
            hx = None if hx is None else tuple(autocast_cast(t, dtype) for t in hx)
            params = autocast_cast(params, dtype)  # every call, as nn.LSTMCell's own cast
        w_ih, w_hh, b_ih, b_hh = (*params, None, None)[:4]
        h, c = (None, None) if hx is None else hx
        with torch.autocast(input.device.type, enabled=False):
            h_new, c_new, _ = lstm_cell(input, h, c, w_ih, w_hh, b_ih, b_hh,
                                        torch.backends.cuda.matmul.allow_tf32)
        return (h_new, c_new) if is_batched else (h_new.squeeze(0), c_new.squeeze(0))
