"""triton_rnn.GRU: torch.nn.GRU with its recurrence running our kernels."""
from torch import nn

from .gru_ops import run_gru
from .rnn import OneStateLayers


class GRU(OneStateLayers, nn.GRU):
    """Drop-in replacement for torch.nn.GRU: same constructor, parameters (gates r, z, n),
    initialisation, state_dict, shapes and errors; only `forward` differs. Each layer's input
    projection is one matrix multiply per direction over all timesteps, then one persistent
    kernel launch per layer (both directions together) runs the recurrence, reading the
    parameters as they are at each call; b_hn stays inside the new gate's hidden product,
    n = tanh(W_in x + b_in + r (W_hn h + b_hn)). On a GPU, under the "auto" backend, shape
    classes where nn.GRU was measured faster, where our values differed from its own (the
    first-use check), and classes never measured run nn.GRU's own forward."""

    cell = "gru"  # routing's name for the cell (its shape classes)
    gates = 3

    def _input_dim_message(self, dim: int) -> str:
        return f"GRU: Expected input to be 2D or 3D, got {dim}D instead"

    def _constructor_args(self) -> tuple:
        return (self.input_size, self.hidden_size, self.num_layers, self.bias,
                self.batch_first, self.dropout, self.bidirectional)

    def _recurrence(self, projs, h0, groups, lengths, allow_tf32):
        """One layer's h_t (T, N, D*H)."""
        reverse = groups[1] if len(groups) == 2 else (None,) * 4
        out, _ = run_gru(projs[0], projs[1] if len(groups) == 2 else None, h0, groups[0][1],
                         reverse[1], groups[0][3], reverse[3], lengths, allow_tf32)
        return out
