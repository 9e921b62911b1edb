"""triton_rnn.LSTM: torch.nn.LSTM with its recurrence running our kernels where they exist."""
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import routing
from .lstm_ops import run_lstm
from .nn_rules import autocast_cast, autocast_dtype, tf32_allowed
from .rnn import StackedLayers


class LSTM(StackedLayers, nn.LSTM):
    """Drop-in replacement for torch.nn.LSTM: same constructor, parameters, initialisation,
    state_dict, shapes and errors; only `forward` differs. Each layer's input projection is
    one matrix multiply per direction over all timesteps, then one persistent kernel launch
    per layer (both directions together) runs the recurrence with W_hh on-chip, reading the
    parameters as they are at each call. Layers with proj_size, which our kernels do not
    run yet (routing.lstm_uses_torch), run nn.LSTM's own forward; on a GPU, under the "auto" backend, so do shape classes where nn.LSTM was measured
    faster, or where our values differed from its own (the first-use check), and classes never
    measured."""

    cell = "lstm"  # routing's name for the cell (its shape classes)

    def forward(self, input, hx=None):
        if routing.lstm_uses_torch(self, input, hx):
            return super().forward(input, hx)
        if isinstance(input, PackedSequence):
            return self._forward_packed(input, hx)
        if input.dim() not in (2, 3):
            raise ValueError(f"LSTM: Expected input to be 2D or 3D, got {input.dim()}D instead")
        is_batched = input.dim() == 3
        batch_dim = 0 if self.batch_first else 1
        if not is_batched:
            input = input.unsqueeze(batch_dim)
        if hx is not None:
            rank = 3 if is_batched else 2
            if hx[0].dim() != rank or hx[1].dim() != rank:
                raise RuntimeError(
                    f"For {'batched 3' if is_batched else 'unbatched 2'}-D input, hx and cx "
                    f"should also be {rank}-D but got ({hx[0].dim()}-D, {hx[1].dim()}-D) "
                    "tensors")
            if not is_batched:
                hx = (hx[0].unsqueeze(1), hx[1].unsqueeze(1))
        params = self._params()
        self._check_args(input, hx, params, None)
        if input.size(1 if self.batch_first else 0) == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        x = input.transpose(0, 1) if self.batch_first else input  # (T, N, I)
        output, (h_n, c_n) = self._run(x, hx, params, x.shape[1], None)
        if self.batch_first:
            output = output.transpose(0, 1)
        if not is_batched:
            output, h_n, c_n = output.squeeze(batch_dim), h_n.squeeze(1), c_n.squeeze(1)
        return output, (h_n, c_n)

    def _constructor_args(self) -> tuple:
        return (self.input_size, self.hidden_size, self.num_layers, self.bias,
                self.batch_first, self.dropout, self.bidirectional, self.proj_size)

    def _run(self, x: Tensor, hx, params, batch: int, layout, weight_dtype=None):
        """Autocast (as nn.LSTM: the input, states and weights in the autocast dtype, cast at
        every call) and the default (h0, c0), then the layers."""
        dtype = autocast_dtype(x.device.type)
        if dtype is not None:
            x = autocast_cast(x, dtype)
            hx = None if hx is None else tuple(autocast_cast(t, dtype) for t in hx)
            with torch.autocast(x.device.type, enabled=False):
                return self._run(x, hx, params, batch, layout, dtype)
        if hx is None:
            zeros = x.new_zeros((self.num_layers * self._directions(), batch, self.hidden_size))
            hx = (zeros, zeros)
        return self._run_layers(x, hx, params, layout, weight_dtype)

    def _run_layers(self, x: Tensor, hx, params, layout, weight_dtype):
        """x: (T, N, I), or (P, I) packed rows when `layout` is given; hx: (h0, c0)."""
        D, H = self._directions(), self.hidden_size
        allow_tf32 = tf32_allowed()
        lengths = None if layout is None else layout.lengths
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            groups = self._layer_weights(params, layer, weight_dtype)
            if layout is None:  # the input projection of every step: one GEMM per direction
                T, N = x.shape[0], x.shape[1]
                rows = x.reshape(T * N, x.shape[2])
                projs = [F.linear(rows, w_ih, b_ih).view(T, N, 4 * H)
                         for w_ih, _, b_ih, _ in groups]
            else:
                projs = [layout.pad(F.linear(x, w_ih, b_ih)) for w_ih, _, b_ih, _ in groups]
            reverse = groups[1] if D == 2 else (None,) * 4
            states = slice(layer * D, (layer + 1) * D)
            out, cells, _ = run_lstm(projs[0], projs[1] if D == 2 else None, hx[0][states],
                                     hx[1][states], groups[0][1], reverse[1], groups[0][3],
                                     reverse[3], lengths, allow_tf32)
            # Sequences hold h and c outside their own steps: the last states are at T-1
            # forward and at 0 in reverse.
            h_n.append(out[-1, :, :H])
            c_n.append(cells[-1, :, :H])
            if D == 2:
                h_n.append(out[0, :, H:])
                c_n.append(cells[0, :, H:])
            x = out if layout is None else layout.pack(out)
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)
        return x, (torch.stack(h_n), torch.stack(c_n))
