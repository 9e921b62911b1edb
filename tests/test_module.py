"""triton_rnn.RNN is an nn.RNN: constructor, parameters, state_dict, errors, convert."""
import pickle

import pytest
import torch
from torch import nn

import triton_rnn
from conftest import CUDA, DEVICE
from helpers import rel_err


def test_is_an_nn_rnn_with_identical_parameters_and_repr():
    torch.manual_seed(0)
    ref = nn.RNN(10, 20, 2, "relu", False, True, 0.1, True)  # positional order of nn.RNN
    torch.manual_seed(0)
    ours = triton_rnn.RNN(10, 20, 2, "relu", False, True, 0.1, True)
    assert isinstance(ours, nn.RNN)
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    for (_, a), (_, b) in zip(ours.named_parameters(), ref.named_parameters()):
        assert torch.equal(a, b)  # same initialisation order under the same seed
    assert repr(ours).replace("RNN", "") == repr(ref).replace("RNN", "")


def test_state_dict_loads_both_ways_strictly():
    ours, ref = triton_rnn.RNN(3, 4, 2, bidirectional=True), nn.RNN(3, 4, 2, bidirectional=True)
    ref.load_state_dict(ours.state_dict(), strict=True)
    ours.load_state_dict(ref.state_dict(), strict=True)
    for k, v in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v)


def test_pickle_and_dtype_conversions():
    ours = triton_rnn.RNN(3, 4, 2)
    again = pickle.loads(pickle.dumps(ours))
    assert type(again) is triton_rnn.RNN
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), again.parameters()))
    assert ours.double().weight_hh_l0.dtype == torch.float64
    assert ours.half().weight_hh_l0.dtype == torch.float16


def test_constructor_validation_is_nn_rnns():
    for kwargs in (dict(nonlinearity="gelu"), dict(proj_size=2)):
        with pytest.raises(ValueError) as expected:
            nn.RNN(3, 4, **kwargs)
        with pytest.raises(ValueError) as got:
            triton_rnn.RNN(3, 4, **kwargs)
        assert str(got.value) == str(expected.value)


# (description, module kwargs, input shape, h0 shape or None, input dtype, h0 dtype)
BAD_INPUTS = [
    ("input-rank-4", {}, (5, 2, 4, 1), None, torch.float32, None),
    ("input-rank-1", {}, (5,), None, torch.float32, None),
    ("input-size", {}, (5, 2, 3), None, torch.float32, None),
    ("h0-shape", {}, (5, 2, 4), (1, 2, 6), torch.float32, torch.float32),
    ("h0-batch", {}, (5, 2, 4), (2, 3, 6), torch.float32, torch.float32),
    ("h0-rank-batched", {}, (5, 2, 4), (2, 6), torch.float32, torch.float32),
    ("h0-rank-unbatched", {}, (5, 4), (2, 1, 6), torch.float32, torch.float32),
    ("input-dtype", {}, (5, 2, 4), None, torch.float64, None),
    ("input-int", {}, (5, 2, 4), None, torch.int64, None),
    ("h0-dtype", {}, (5, 2, 4), (2, 2, 6), torch.float32, torch.float64),
    ("seq-len-0", {}, (0, 2, 4), None, torch.float32, None),
    ("seq-len-0-batch-first", dict(batch_first=True), (2, 0, 4), None, torch.float32, None),
    ("seq-len-0-unbatched", {}, (0, 4), None, torch.float32, None),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_raises_what_nn_rnn_raises(case):
    _, kwargs, shape, h_shape, dtype, h_dtype = case
    x = torch.zeros(shape, dtype=dtype)
    h0 = None if h_shape is None else torch.zeros(h_shape, dtype=h_dtype)
    with pytest.raises(Exception) as expected:
        nn.RNN(4, 6, 2, **kwargs)(x, h0)  # nn.RNN on the CPU states the expected error
    ours = triton_rnn.RNN(4, 6, 2, **kwargs).to(DEVICE)
    with pytest.raises(type(expected.value)) as got:
        ours(x.to(DEVICE), None if h0 is None else h0.to(DEVICE))
    assert str(got.value) == str(expected.value)


@pytest.mark.gpu  # mixes CUDA and CPU tensors
def test_device_mismatch_raises():
    ours = triton_rnn.RNN(4, 6).cuda()
    with pytest.raises(RuntimeError, match="Input and hidden tensors are not at the same device"):
        ours(torch.randn(3, 2, 4, device="cuda"), torch.randn(1, 2, 6))
    with pytest.raises(RuntimeError, match="Input and parameter tensors are not at the same"):
        ours(torch.randn(3, 2, 4))


def test_convert_replaces_nested_rnns_in_place():
    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = nn.RNN(3, 8, 2, bidirectional=True)
            self.head = nn.Sequential(nn.Linear(16, 4), nn.RNN(4, 5))

        def forward(self, x):
            y, _ = self.encoder(x)
            return self.head(y)[0]

    torch.manual_seed(0)
    model = Model().double()
    x = torch.randn(6, 2, 3, dtype=torch.float64)
    expected = model(x)
    params_before = [id(p) for p in model.parameters()]
    converted = triton_rnn.convert(model.to(DEVICE))
    assert converted is model
    assert type(model.encoder) is triton_rnn.RNN and type(model.head[1]) is triton_rnn.RNN
    assert [id(p) for p in model.parameters()] == params_before
    assert rel_err(model(x.to(DEVICE)), expected) < 1e-9
    single = nn.RNN(2, 3)
    assert type(triton_rnn.convert(single)) is triton_rnn.RNN
