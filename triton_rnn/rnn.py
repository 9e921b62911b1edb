"""triton_rnn.RNN: torch.nn.RNN with its forward pass running our kernels."""
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from .ops import recurrence

_SCALAR_NAME = {torch.float64: "Double", torch.float32: "Float", torch.float16: "Half",
                torch.bfloat16: "BFloat16"}


def _autocast_dtype(device_type: str):
    """The autocast dtype if autocast is on for this device type, else None."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def _cast(t, dtype):
    """Autocast's rule: floating-point tensors other than float64 go to the autocast dtype."""
    if isinstance(t, list):
        return [_cast(w, dtype) for w in t]
    if t is None or not t.is_floating_point() or t.dtype == torch.float64:
        return t
    return t.to(dtype)


class RNN(nn.RNN):
    """Drop-in replacement for torch.nn.RNN: same constructor, parameters, initialisation,
    state_dict, shapes and errors. Only `forward` differs: each layer's input projection is one
    matrix multiply over all timesteps, then one persistent kernel launch per layer (both
    directions together) runs the recurrence with W_hh held on-chip."""

    def forward(self, input, hx=None):
        if isinstance(input, PackedSequence):
            # Not yet in our kernels: nn.RNN's own path gives the exact result meanwhile.
            return super().forward(input, hx)
        if input.dim() not in (2, 3):
            raise ValueError(
                f"RNN: Expected input to be 2D or 3D, got {input.dim()}D tensor instead")
        is_batched = input.dim() == 3
        batch_dim = 0 if self.batch_first else 1
        if not is_batched:
            input = input.unsqueeze(batch_dim)
            if hx is not None:
                if hx.dim() != 2:
                    raise RuntimeError("For unbatched 2-D input, hx should also be 2-D but got "
                                       f"{hx.dim()}-D tensor")
                hx = hx.unsqueeze(1)
        elif hx is not None and hx.dim() != 3:
            raise RuntimeError(
                f"For batched 3-D input, hx should also be 3-D but got {hx.dim()}-D tensor")

        weights = [getattr(self, name) for name in self._flat_weights_names]
        self._check_args(input, hx, weights)
        autocast_dtype = _autocast_dtype(input.device.type)
        if autocast_dtype is not None:
            # Under autocast nn.RNN runs in the autocast dtype (it is on autocast's
            # lower-precision list): cast once here, then run without autocast.
            input, hx, weights = (_cast(t, autocast_dtype) for t in (input, hx, weights))
            with torch.autocast(input.device.type, enabled=False):
                return self._forward_checked(input, hx, weights, is_batched, batch_dim)
        return self._forward_checked(input, hx, weights, is_batched, batch_dim)

    def _forward_checked(self, input, hx, weights, is_batched, batch_dim):
        x = input.transpose(0, 1) if self.batch_first else input  # (T, N, I)
        if hx is None:
            hx = x.new_zeros((self.num_layers * self._directions(), x.shape[1],
                              self.hidden_size))
        output, h_n = self._run_layers(x, hx, weights)
        if self.batch_first:
            output = output.transpose(0, 1)
        if not is_batched:
            output, h_n = output.squeeze(batch_dim), h_n.squeeze(1)
        return output, h_n

    def _directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _check_args(self, input: Tensor, hx, weights) -> None:
        """nn.RNN's checks, with nn.RNN's exception types and messages."""
        if hx is not None:
            self.check_forward_args(input, hx, None)
        else:
            self.check_input(input, None)
        if hx is not None and hx.device != input.device:
            raise RuntimeError("Input and hidden tensors are not at the same device, found "
                               f"input tensor at {input.device} and hidden tensor at {hx.device}")
        for w in weights:
            if w.device != input.device:
                raise RuntimeError("Input and parameter tensors are not at the same device, "
                                   f"found input tensor at {input.device} and parameter tensor "
                                   f"at {w.device}")
        if hx is not None and hx.dtype != weights[0].dtype and \
                _autocast_dtype(input.device.type) is None:
            raise RuntimeError(
                f"mat1 and mat2 must have the same dtype, but got "
                f"{_SCALAR_NAME.get(hx.dtype, hx.dtype)} and "
                f"{_SCALAR_NAME.get(weights[0].dtype, weights[0].dtype)}")
        if input.size(0 if not self.batch_first else 1) == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")

    def _layer_weights(self, weights, layer: int):
        """(W_ih (D*H, I), bias (D*H) or None, W_hh (D, H, H)) of one layer, directions stacked."""
        per_dir = 4 if self.bias else 2
        D = self._directions()
        groups = [weights[(layer * D + d) * per_dir:(layer * D + d + 1) * per_dir]
                  for d in range(D)]
        w_ih = torch.cat([g[0] for g in groups]) if D > 1 else groups[0][0]
        w_hh = torch.stack([g[1] for g in groups])
        bias = None
        if self.bias:
            bias = torch.cat([g[2] + g[3] for g in groups]) if D > 1 else groups[0][2] + groups[0][3]
        return w_ih, bias, w_hh

    def _run_layers(self, x: Tensor, hx: Tensor, weights):
        D, H = self._directions(), self.hidden_size
        T, N = x.shape[0], x.shape[1]
        allow_tf32 = torch.backends.cudnn.allow_tf32
        relu = self.nonlinearity == "relu"
        h_n = []
        for layer in range(self.num_layers):
            w_ih, bias, w_hh = self._layer_weights(weights, layer)
            # Input projection for all timesteps and both directions: one large GEMM.
            proj = F.linear(x.reshape(T * N, x.shape[-1]), w_ih, bias).view(T, N, D * H)
            out = recurrence(proj, hx[layer * D:(layer + 1) * D], w_hh, relu, allow_tf32)
            # h_n is the state after each direction's last step: out[T-1] forward, out[0] reverse.
            h_n.append(out[T - 1, :, :H])
            if D == 2:
                h_n.append(out[0, :, H:])
            if self.dropout and self.training and layer < self.num_layers - 1:
                out = F.dropout(out, self.dropout, training=True)
            x = out
        return x, torch.stack(h_n)


def convert(model: nn.Module) -> nn.Module:
    """Turn every torch.nn.RNN in `model` (`model` itself included) into a triton_rnn.RNN, in
    place, and return `model`.

    Each module is re-classed rather than copied, so it keeps its parameter objects, buffers,
    hooks and training mode, and optimizers already holding its parameters keep working."""
    for module in model.modules():
        if type(module) is nn.RNN:
            module.__class__ = RNN
    return model
