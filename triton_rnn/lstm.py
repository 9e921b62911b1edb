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
    parameters as they are at each call. With proj_size, h_t = W_hr m_t for m_t = o_t
    tanh(c_t), and the kernels run the layer as an LSTM of m (_fold_projection). On a GPU,
    under the "auto" backend, shape classes where nn.LSTM was measured faster, or where our
    values differed from its own (the first-use check), and classes never measured run
    nn.LSTM's own forward."""

    @property
    def cell(self) -> str:
        """routing's name for the cell (its shape classes): layers with a projection apart."""
        return "lstm-proj" if self.proj_size else "lstm"

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
            layers = self.num_layers * self._directions()
            hx = (x.new_zeros((layers, batch, self.proj_size or self.hidden_size)),
                  x.new_zeros((layers, batch, self.hidden_size)))
        return self._run_layers(x, hx, params, layout, weight_dtype)

    def _layer_weights(self, params, layer: int, dtype) -> list:
        """Per direction of one layer, (W_ih, W_hh, b_ih, b_hh, W_hr) (biases None without
        bias, W_hr without proj_size), as StackedLayers._layer_weights reads them."""
        per_dir = (4 if self.bias else 2) + (1 if self.proj_size else 0)
        D = self._directions()
        first = layer * D * per_dir
        groups = []
        for d in range(D):
            group = list(params[first + d * per_dir:first + (d + 1) * per_dir])
            if dtype is not None:
                group = autocast_cast(group, dtype)
            w_hr = group.pop() if self.proj_size else None
            groups.append((*group, None, None)[:4] + (w_hr,))
        return groups

    def _run_layers(self, x: Tensor, hx, params, layout, weight_dtype):
        """x: (T, N, I), or (P, I) packed rows when `layout` is given; hx: (h0, c0)."""
        D, H = self._directions(), self.hidden_size
        P = self.proj_size or H  # h's features
        allow_tf32 = tf32_allowed()
        lengths = None if layout is None else layout.lengths
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            groups = self._layer_weights(params, layer, weight_dtype)
            if layout is None:  # the input projection of every step: one GEMM per direction
                T, N = x.shape[0], x.shape[1]
                rows = x.reshape(T * N, x.shape[2])
                projs = [F.linear(rows, g[0], g[2]).view(T, N, 4 * H) for g in groups]
            else:
                projs = [layout.pad(F.linear(x, g[0], g[2])) for g in groups]
            states = slice(layer * D, (layer + 1) * D)
            h0, w_hh = hx[0][states], [g[1] for g in groups]
            if self.proj_size:
                projs, w_hh, h0 = _fold_projection(projs, groups, h0, lengths)
            b_hh = [g[3] for g in groups]
            out, cells, _ = run_lstm(projs[0], projs[1] if D == 2 else None, h0,
                                     hx[1][states], w_hh[0], w_hh[1] if D == 2 else None,
                                     b_hh[0], b_hh[1] if D == 2 else None, lengths, allow_tf32)
            if self.proj_size:  # out holds every step's m_t: h_t = W_hr m_t
                out = torch.cat([F.linear(m, g[4]) for m, g in zip(out.split(H, -1), groups)],
                                -1)
            # Sequences hold h and c outside their own steps: the last states are at T-1
            # forward and at 0 in reverse.
            h_n.append(out[-1, :, :P])
            c_n.append(cells[-1, :, :H])
            if D == 2:
                h_n.append(out[0, :, P:])
                c_n.append(cells[0, :, H:])
            x = out if layout is None else layout.pack(out)
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)
        return x, (torch.stack(h_n), torch.stack(c_n))


def _fold_projection(projs, groups, h0, lengths):
    """(projections, W_hh, h0) that run an LSTM layer with a projection as one without: with
    h_t = W_hr m_t, every step's W_hh h_{t-1} is (W_hh W_hr) m_{t-1}, a (4H, H) matrix made
    for this call from the parameters as they are, except at each sequence's first step (t = 0
    forward; its last, T - 1 or length - 1, in reverse), where W_hh h_0 joins the step's
    projection and the recurrence starts from m = 0. Outside its steps a packed row holds m
    (h = W_hr m) and c, as the kernels hold h and c."""
    T, N = projs[0].shape[:2]
    H = groups[0][1].shape[0] // 4
    rows = torch.arange(N, device=h0.device)
    last = torch.full((N,), T - 1, device=h0.device) if lengths is None else \
        lengths.to(h0.device, torch.long) - 1
    firsts = (torch.zeros_like(rows), last)
    projs = [p.index_put((firsts[d], rows), F.linear(h0[d], g[1]), accumulate=True)
             for d, (p, g) in enumerate(zip(projs, groups))]
    return projs, [g[1] @ g[4] for g in groups], h0.new_zeros((h0.shape[0], N, H))
