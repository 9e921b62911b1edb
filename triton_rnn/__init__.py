"""triton-rnn: drop-in torch.nn.RNN whose recurrence runs in persistent Triton kernels."""
import torch

from .cell import RNNCell
from .compile_support import allow_dynamo_to_trace
from .rnn import RNN, convert
from .routing import backend, get_backend, set_backend, tune
from .version import __version__

allow_dynamo_to_trace(RNN)
# What users save must load: torch.load's default (weights_only=True) unpickles only the
# classes it is told are safe. Ours hold nothing but nn.RNN's (nn.RNNCell's) own state.
torch.serialization.add_safe_globals([RNN, RNNCell])

__all__ = ["RNN", "RNNCell", "backend", "convert", "get_backend", "set_backend", "tune"]
