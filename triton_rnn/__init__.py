"""triton-rnn: drop-in torch.nn.RNN whose recurrence runs in persistent Triton kernels."""
from .cell import RNNCell
from .compile_support import allow_dynamo_to_trace
from .rnn import RNN, convert
from .routing import backend, get_backend, set_backend, tune
from .version import __version__

allow_dynamo_to_trace(RNN)

__all__ = ["RNN", "RNNCell", "backend", "convert", "get_backend", "set_backend", "tune"]
