"""triton-rnn: drop-in torch.nn.RNN (and nn.LSTM, nn.GRU) whose recurrence runs in persistent
Triton kernels."""
import torch

from .cell import GRUCell, LSTMCell, RNNCell
from .compile_support import allow_dynamo_to_trace
from .gru import GRU
from .lstm import LSTM
from .convert import convert
from .rnn import RNN
from .routing import backend, get_backend, set_backend, tune
from .version import __version__

allow_dynamo_to_trace(RNN)
allow_dynamo_to_trace(LSTM)
allow_dynamo_to_trace(GRU)
# What users save must load: torch.load's default (weights_only=True) unpickles only the
# classes it is told are safe. Ours hold nothing but their torch.nn class's own state.
torch.serialization.add_safe_globals([RNN, LSTM, GRU, RNNCell, LSTMCell, GRUCell])

__all__ = ["GRU", "GRUCell", "LSTM", "LSTMCell", "RNN", "RNNCell", "backend", "convert",
           "get_backend", "set_backend", "tune"]
