"""Routing to nn.RNN's own path where recorded GPU results show it faster."""
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import triton_rnn
from conftest import CUDA
from triton_rnn import routing

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "perf"))
import routing_table  # noqa: E402


def _rows(dtype, batch, hidden, mode, ours_ms, ref_ms, seq=128, matches=True):
    base = dict(dtype=dtype, batch=batch, hidden=hidden, seq=seq, layers=1, directions=1,
                mode=mode, matches=matches)
    return [dict(base, impl="triton_rnn", ms=ours_ms), dict(base, impl="nn.RNN", ms=ref_ms)]


def test_table_lists_the_classes_where_nn_rnn_is_faster_or_we_are_wrong():
    rows = (_rows("bf16", 16, 512, "inference", 1.0, 3.0)          # we win
            + _rows("bf16", 16, 512, "training", 3.0, 1.0)        # we lose
            + _rows("tf32", 3, 2048, "inference", 2.0, 1.0, seq=16)   # lose at T=16 ...
            + _rows("tf32", 3, 2048, "inference", 1.0, 4.0, seq=1024)  # ... win more at 1024
            + _rows("fp16", 64, 128, "inference", 1.0, 9.0, matches=False))  # fast but wrong
    listed = {(c["dtype"], c["hidden"], c["batch"], c["mode"])
              for c in routing_table.slower_classes({"rows": rows})}
    assert listed == {("bf16", 512, 16, "training"), ("fp16", 128, 64, "inference")}


def test_lookup_buckets_shapes_like_the_table(tmp_path):
    table = {"cudnn_faster": {"sm_90": [
        {"dtype": "bf16", "hidden": 512, "batch": 16, "mode": "training"}]}}
    path = tmp_path / "t.json"
    path.write_text(json.dumps(table))
    classes = routing._classes(path)
    assert routing.shape_class(torch.bfloat16, False, 300, 9, True) in classes["sm_90"]
    assert routing.shape_class(torch.bfloat16, False, 300, 9, False) not in classes["sm_90"]
    assert routing.shape_class(torch.float32, False, 300, 9, True)[0] == "fp32"
    assert routing.shape_class(torch.float32, True, 300, 9, True)[0] == "tf32"


def test_shipped_table_loads_and_cpu_never_routes():
    assert isinstance(routing._classes(), dict)
    assert not routing.classes_for(torch.device("cpu"))


@pytest.mark.skipif(not CUDA, reason="routing applies to CUDA tensors")
def test_listed_class_runs_nn_rnns_path_and_kernels_always_overrides(monkeypatch):
    from triton_rnn import ops
    from triton_rnn.rnn import tf32_allowed
    major, minor = torch.cuda.get_device_capability()
    listed = {f"sm_{major}{minor}": {
        routing.shape_class(torch.float32, tf32_allowed(), 64, 4, False)}}
    monkeypatch.setattr(routing, "_classes", lambda: listed)
    launches, launch = [], ops.kernel_forward
    monkeypatch.setattr(ops, "kernel_forward", lambda *a: launches.append(1) or launch(*a))
    torch.manual_seed(0)
    ours = triton_rnn.RNN(8, 64).cuda()
    ref = nn.RNN(8, 64).cuda()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(5, 4, 8, device="cuda")
    with torch.no_grad():
        assert torch.equal(ours(x)[0], ref(x)[0]) and not launches  # nn.RNN's own path
        with routing.kernels_always():
            ours(x)
        assert launches == [1]
        ours(torch.randn(5, 40, 8, device="cuda"))  # batch 40 is not a listed class
        assert launches == [1, 1]
