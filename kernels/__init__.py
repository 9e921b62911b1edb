"""Triton kernels of triton-rnn (installed as triton_rnn.kernels). Nothing here imports the
module layer: the flow is module -> op -> launcher (launch.py) -> @triton.jit kernel."""
from .launch import (gru_backward, gru_cell_forward, gru_forward, interpreting, lstm_backward,
                     lstm_cell_forward, lstm_forward, recurrence_backward, recurrence_forward,
                     rnn_cell_forward)

__all__ = ["gru_backward", "gru_cell_forward", "gru_forward", "interpreting", "lstm_backward",
           "lstm_cell_forward", "lstm_forward", "recurrence_forward", "recurrence_backward",
           "rnn_cell_forward"]
