"""triton_rnn.RNNCell: torch.nn.RNNCell whose step is one fused Triton kernel."""
import torch
from torch import nn

from .ops import rnn_cell
from .nn_rules import autocast_cast, autocast_dtype, scalar_name


class RNNCell(nn.RNNCell):
    """Drop-in replacement for torch.nn.RNNCell: only `forward` differs. Both projections,
    both biases and the activation run in one kernel launch per call."""

    def forward(self, input, hx=None):
        if input.dim() not in (1, 2):
            raise ValueError(
                f"RNNCell: Expected input to be 1D or 2D, got {input.dim()}D instead")
        if hx is not None and hx.dim() not in (1, 2):
            raise ValueError(
                f"RNNCell: Expected hidden to be 1D or 2D, got {hx.dim()}D instead")
        is_batched = input.dim() == 2
        if not is_batched:
            input = input.unsqueeze(0)
            hx = None if hx is None else hx.unsqueeze(0)
        self._check_args(input, hx)
        params = [self.weight_ih, self.weight_hh] + \
            ([self.bias_ih, self.bias_hh] if self.bias else [])
        dtype = autocast_dtype(input.device.type)
        if dtype is not None:  # nn.RNNCell runs in the autocast dtype
            input, hx = autocast_cast(input, dtype), autocast_cast(hx, dtype)
            params = autocast_cast(params, dtype)  # every call, as nn.RNNCell's own cast
        w_ih, w_hh, b_ih, b_hh = (*params, None, None)[:4]
        with torch.autocast(input.device.type, enabled=False):
            out = rnn_cell(input, hx, w_ih, w_hh, b_ih, b_hh, self.nonlinearity == "relu",
                           torch.backends.cuda.matmul.allow_tf32)
        return out if is_batched else out.squeeze(0)

    def _check_args(self, input, hx) -> None:
        """nn.RNNCell's checks, in its order, with its exception types and messages."""
        if input.size(1) != self.input_size:
            raise RuntimeError(f"input has inconsistent input_size: got {input.size(1)} "
                               f"expected {self.input_size}")
        if hx is not None:
            if input.size(0) != hx.size(0):
                raise RuntimeError(f"Input batch size {input.size(0)} doesn't match hidden0 "
                                   f"batch size {hx.size(0)}")
            if hx.size(1) != self.hidden_size:
                raise RuntimeError(f"hidden0 has inconsistent hidden_size: got {hx.size(1)}, "
                                   f"expected {self.hidden_size}")
        for tensor, kind in ((input, "Input"), (hx, "Hidden")):
            if tensor is not None and tensor.device != self.weight_ih.device:
                raise RuntimeError(f"{kind} and parameter tensors are not at the same device, "
                                   f"found {kind.lower()} tensor at {tensor.device} and "
                                   f"parameter tensor at {self.weight_ih.device}")
        if autocast_dtype(input.device.type) is not None:
            return  # autocast casts everything to one dtype
        for tensor, weight in ((input, self.weight_ih), (hx, self.weight_hh)):
            if tensor is not None and tensor.dtype != weight.dtype:
                raise RuntimeError(f"mat1 and mat2 must have the same dtype, but got "
                                   f"{scalar_name(tensor.dtype)} and {scalar_name(weight.dtype)}")
