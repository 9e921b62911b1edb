"""triton_rnn.RNN: torch.nn.RNN with its forward pass running our kernels."""
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from . import routing
from .nn_rules import autocast_cast, autocast_dtype, scalar_name, tf32_allowed
from .ops import run_recurrence

class PackedLayout:
    """Where the rows of a PackedSequence sit in the padded (T, N) grid, and each sequence's
    length. Packed rows are time-major over the sequences still running at each step, which
    is exactly the row-major order of the grid cells with batch index < batch_sizes[t]."""

    def __init__(self, batch_sizes: Tensor, device: torch.device):
        self.T, self.N = len(batch_sizes), int(batch_sizes[0])
        inside = torch.arange(self.N)[None, :] < batch_sizes[:, None]       # (T, N), on CPU
        index_and_lengths = torch.cat([inside.flatten().nonzero().squeeze(1), inside.sum(0)])
        if device.type == "cuda":
            # From pinned memory the copy is asynchronous; from pageable memory it would make
            # the host wait for all the GPU work queued before it.
            index_and_lengths = index_and_lengths.pin_memory().to(device, non_blocking=True)
        rows = index_and_lengths.numel() - self.N
        self.index = index_and_lengths[:rows]
        self.lengths = index_and_lengths[rows:].to(torch.int32)

    def pad(self, rows: Tensor) -> Tensor:
        """(P, C) packed rows -> (T, N, C), zeros outside the sequences."""
        grid = rows.new_zeros((self.T * self.N, rows.shape[1]))
        return grid.index_copy(0, self.index, rows).view(self.T, self.N, -1)

    def pack(self, grid: Tensor) -> Tensor:
        """(T, N, C) -> (P, C) packed rows."""
        return grid.reshape(self.T * self.N, grid.shape[2]).index_select(0, self.index)


class StackedLayers:
    """What triton_rnn's multi-layer modules share, over nn.RNNBase's parameter layout: the
    parameters by name, directions, each layer's weights, and the argument checks."""

    def stand_in(self):
        """A new module of this class and configuration holding a copy of the weights, read by
        the torch.nn class's own names (so parametrized weights give their computed values),
        with their requires_grad and this module's training mode: what routing's measurement
        times."""
        w = self.weight_ih_l0
        with torch.inference_mode(False):  # ordinary parameters, even inside inference_mode
            clone = type(self)(*self._constructor_args(), device=w.device, dtype=w.dtype)
        with torch.no_grad():
            for name in self._flat_weights_names:
                p, q = getattr(self, name), getattr(clone, name)
                q.copy_(p)
                q.requires_grad_(p.requires_grad)
        return clone.train(self.training)

    def _forward_packed(self, packed: PackedSequence, hx):
        """forward() of a PackedSequence: hx (LSTM: (h_0, c_0)) and the final states in the
        caller's order, the layers in the packed (sorted) one."""
        data, batch_sizes, sorted_indices, unsorted_indices = packed
        if hx is not None:  # the caller's order -> the packed (sorted) order
            hx = self.permute_hidden(hx, sorted_indices)
        params = self._params()
        self._check_args(data, hx, params, batch_sizes)
        layout = PackedLayout(batch_sizes, data.device)
        output, h_n = self._run(data, hx, params, layout.N, layout)
        return (PackedSequence(output, batch_sizes, sorted_indices, unsorted_indices),
                self.permute_hidden(h_n, unsorted_indices))

    def _params(self) -> list:
        # By name, not from nn.RNN's _flat_weights list: torch.func.functional_call swaps the
        # named parameters without updating that list (nn.RNN refreshes it in forward).
        return [getattr(self, name) for name in self._flat_weights_names]

    def _directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _check_args(self, input: Tensor, hx, params, batch_sizes) -> None:
        """nn.RNN's (nn.LSTM's) checks, with its exception types and messages; hx: None, the
        initial state, or LSTM's (h0, c0)."""
        if hx is not None:
            self.check_forward_args(input, hx, batch_sizes)
        else:
            self.check_input(input, batch_sizes)
        states = () if hx is None else hx if isinstance(hx, tuple) else (hx,)
        for state in states:
            if state.device != input.device:
                raise RuntimeError("Input and hidden tensors are not at the same device, found "
                                   f"input tensor at {input.device} and hidden tensor at "
                                   f"{state.device}")
        for w in params:
            if w.device != input.device:
                raise RuntimeError("Input and parameter tensors are not at the same device, "
                                   f"found input tensor at {input.device} and parameter tensor "
                                   f"at {w.device}")
        for state in states:
            if state.dtype != params[0].dtype and autocast_dtype(input.device.type) is None:
                raise RuntimeError(f"mat1 and mat2 must have the same dtype, but got "
                                   f"{scalar_name(state.dtype)} and "
                                   f"{scalar_name(params[0].dtype)}")

    def _layer_weights(self, params, layer: int, dtype) -> list:
        """Per direction of one layer, (W_ih, W_hh, b_ih, b_hh) (biases None without bias):
        the parameters themselves, read in place, or under autocast their casts made for
        this call."""
        per_dir = 4 if self.bias else 2
        D = self._directions()
        first = layer * D * per_dir
        groups = []
        for d in range(D):
            group = params[first + d * per_dir:first + (d + 1) * per_dir]
            if dtype is not None:
                group = autocast_cast(list(group), dtype)
            groups.append((*group, None, None)[:4])
        return groups


class OneStateLayers(StackedLayers):
    """What RNN and GRU share, whose only state is h: forward's argument handling (nn.RNN's
    and nn.GRU's, which are the same but for one message), autocast and the loop over layers.
    Each class gives its input projection's width (`gates` x H), the message and the
    recurrence of one layer (_recurrence)."""

    gates = 1

    def forward(self, input, hx=None):
        if routing.use_torch(self, input, hx):
            return super().forward(input, hx)  # torch.nn's own path is faster for this call
        if isinstance(input, PackedSequence):
            return self._forward_packed(input, hx)
        if input.dim() not in (2, 3):
            raise ValueError(self._input_dim_message(input.dim()))
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
        params = self._params()
        self._check_args(input, hx, params, None)
        if input.size(1 if self.batch_first else 0) == 0:
            raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
        x = input.transpose(0, 1) if self.batch_first else input  # (T, N, I)
        output, h_n = self._run(x, hx, params, x.shape[1], None)
        if self.batch_first:
            output = output.transpose(0, 1)
        if not is_batched:
            output, h_n = output.squeeze(batch_dim), h_n.squeeze(1)
        return output, h_n

    def _run(self, x: Tensor, hx, params, batch: int, layout, weight_dtype=None):
        """Autocast and the default h0, then the layers."""
        dtype = autocast_dtype(x.device.type)
        if dtype is not None:
            # Under autocast nn.RNN (nn.GRU) runs in the autocast dtype (it is on autocast's
            # lower-precision list): cast the input here and the weights as each layer reads
            # them (every call, as nn.RNN does), then run without autocast.
            x, hx = autocast_cast(x, dtype), autocast_cast(hx, dtype)
            with torch.autocast(x.device.type, enabled=False):
                return self._run(x, hx, params, batch, layout, dtype)
        if hx is None:
            hx = x.new_zeros((self.num_layers * self._directions(), batch, self.hidden_size))
        return self._run_layers(x, hx, params, layout, weight_dtype)

    def _run_layers(self, x: Tensor, hx: Tensor, params, layout, weight_dtype):
        """x: (T, N, I), or (P, I) packed rows when `layout` is given; weight_dtype: the
        autocast dtype, or None."""
        D, H = self._directions(), self.hidden_size
        allow_tf32 = tf32_allowed()
        lengths = None if layout is None else layout.lengths
        h_n = []
        for layer in range(self.num_layers):
            groups = self._layer_weights(params, layer, weight_dtype)
            # Input projection for all timesteps: one large GEMM per direction.
            if layout is None:
                T, N = x.shape[0], x.shape[1]
                rows = x.reshape(T * N, x.shape[2])
                projs = [F.linear(rows, w_ih, b_ih).view(T, N, self.gates * H)
                         for w_ih, _, b_ih, _ in groups]
            else:
                projs = [layout.pad(F.linear(x, w_ih, b_ih)) for w_ih, _, b_ih, _ in groups]
            out = self._recurrence(projs, hx[layer * D:(layer + 1) * D], groups, lengths,
                                   allow_tf32)
            # h_n: the state after each direction's last step. Sequences hold their state
            # outside their own steps, so that is out[T-1] forward and out[0] in reverse.
            h_n.append(out[-1, :, :H])
            if D == 2:
                h_n.append(out[0, :, H:])
            x = out if layout is None else layout.pack(out)
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)
        return x, torch.stack(h_n)


class RNN(OneStateLayers, nn.RNN):
    """Drop-in replacement for torch.nn.RNN: same constructor, parameters, initialisation,
    state_dict, shapes and errors. Only `forward` differs: each layer's input projection is one
    matrix multiply per direction over all timesteps, then one persistent kernel launch per
    layer (both directions together) runs the recurrence with W_hh held on-chip. Every call
    reads the parameters as they are then (nothing derived from them is kept between calls).
    PackedSequence input runs in the same kernels, which take per-sequence lengths."""

    cell = "rnn"  # routing's name for the cell (its shape classes)

    def _input_dim_message(self, dim: int) -> str:
        return f"RNN: Expected input to be 2D or 3D, got {dim}D tensor instead"

    def _constructor_args(self) -> tuple:
        return (self.input_size, self.hidden_size, self.num_layers, self.nonlinearity,
                self.bias, self.batch_first, self.dropout, self.bidirectional)

    def _recurrence(self, projs, h0, groups, lengths, allow_tf32):
        """One layer's h_t (T, N, D*H)."""
        reverse = groups[1] if len(groups) == 2 else (None,) * 4
        return run_recurrence(projs[0], projs[1] if len(groups) == 2 else None, h0,
                              groups[0][1], reverse[1], groups[0][3], reverse[3], lengths,
                              self.nonlinearity == "relu", allow_tf32)
