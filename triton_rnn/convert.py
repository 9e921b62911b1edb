"""convert(): turn a model's torch.nn recurrent modules into ours, in place."""
from torch import nn

from .cell import GRUCell, LSTMCell, RNNCell
from .gru import GRU
from .lstm import LSTM
from .rnn import RNN


def convert(model: nn.Module) -> nn.Module:
    """Turn every torch.nn.RNN, nn.LSTM, nn.GRU, nn.RNNCell, nn.LSTMCell and nn.GRUCell in
    `model`, `model` itself included, into triton_rnn's class of that name, in place, and
    return `model`.

    Each module is re-classed rather than copied, so it keeps its parameter objects, buffers,
    hooks and training mode, and optimizers already holding its parameters keep working."""
    replacements = {nn.RNN: RNN, nn.LSTM: LSTM, nn.GRU: GRU, nn.RNNCell: RNNCell,
                    nn.LSTMCell: LSTMCell, nn.GRUCell: GRUCell}
    for module in model.modules():
        if type(module) in replacements:
            module.__class__ = replacements[type(module)]
    return model
