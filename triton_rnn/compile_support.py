"""Let torch.compile trace triton_rnn.RNN, LSTM and GRU.

Dynamo refuses to wrap any instance of nn.RNN/GRU/LSTM unless the global
`torch._dynamo.config.allow_rnn` is set, and triton_rnn.RNN is an nn.RNN. Setting that flag
globally would also change how the user's other RNN/LSTM/GRU modules compile, so instead the
flag is raised only while Dynamo wraps one of our modules (the classes passed here). Our forward is plain PyTorch around
custom ops with fake implementations, so it traces without graph breaks.
"""
import functools


_TRACED = []  # our module classes


def allow_dynamo_to_trace(module_cls) -> None:
    try:
        from torch._dynamo import config
        from torch._dynamo.variables.builder import VariableBuilder
    except ImportError:  # a torch without Dynamo's builder: nothing to adjust
        return
    if module_cls not in _TRACED:
        _TRACED.append(module_cls)
    original = VariableBuilder.wrap_module
    if getattr(original, "_triton_rnn_patched", False):
        return

    @functools.wraps(original)
    def wrap_module(self, value):
        if isinstance(value, tuple(_TRACED)):
            with config.patch(allow_rnn=True):
                return original(self, value)
        return original(self, value)

    wrap_module._triton_rnn_patched = True
    VariableBuilder.wrap_module = wrap_module
