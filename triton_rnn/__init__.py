"""triton-rnn: drop-in torch.nn.RNN whose recurrence runs in persistent Triton kernels."""
from .rnn import RNN, convert

__all__ = ["RNN", "convert"]
__version__ = "0.1.0"
