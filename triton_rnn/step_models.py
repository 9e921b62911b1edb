"""Two models of one time step of one layer and direction, in µs, on an H100 (sm_90): ours, read
from the compiled code, and cuDNN's, from the algorithm PyTorch picks. Models, not
measurements: the static routing rule (routing.py) uses them for shape classes never measured
on the user's GPU, and perf/latency.py draws them where no GPU is.

Ours: the resource report's cost model (kernels/cost_model.py, its constants there) for the
configuration the dispatcher picks, forward and backward, at each hidden size and batch bucket
(powers of two, H 16-4096, batch 1-256), shipped in step_model.json (perf/step_model_table.py
writes it, with the Triton version it compiled with). A batch past the table scales the
largest batch's step by the batch ratio.

cuDNN: the algorithm aten/src/ATen/native/cudnn/RNN.cpp's get_algo picks for tanh/relu, in its
order: packed input -> standard; not float64 and H <= 384 forward (<= 256 backward) ->
persistent small-H, CUDNN_SMALL_H_US per step; fp16, one layer, unidirectional, H <= 1024, H
and the input size multiples of 128 (an unknown input size is taken to be one), batch a
multiple of 8 up to 128 and below 96 when H >= 896 -> persistent-static, CUDNN_PERSISTENT_US;
else standard: a GEMM reading W_hh from L2 plus an elementwise kernel per step, W_hh bytes / L2
bandwidth + CUDNN_STANDARD_OVERHEAD_US. Training adds the backward step, by the same rule.

The rule: our kernels where ours x MODEL_MARGIN <= cuDNN's, else nn.RNN.
"""
import functools
import json
from pathlib import Path

import torch
import triton

from .kernels.cost_model import L2_BYTES_PER_S
from .kernels.dispatch import choose

CUDNN_SMALL_H_US = 0.7
CUDNN_PERSISTENT_US = 2.0
CUDNN_STANDARD_OVERHEAD_US = 5.0
MODEL_MARGIN = 1.5
TABLE = Path(__file__).with_name("step_model.json")
# Shape-class dtype names (routing's, perf/bench.py's) -> (torch dtype, TF32 allowed).
DTYPES = {"fp32": (torch.float32, False), "tf32": (torch.float32, True),
          "bf16": (torch.bfloat16, False), "fp16": (torch.float16, False),
          "fp64": (torch.float64, False)}


def cudnn_algorithm(dtype: str, hidden: int, batch: int, backward: bool = False,
                    packed: bool = False, layers: int = 1, directions: int = 1,
                    input_size: int = None) -> str:
    """"small-h", "persistent-static" or "standard": what PyTorch has cuDNN run."""
    if packed:
        return "standard"
    if dtype != "fp64" and hidden <= (256 if backward else 384):
        return "small-h"
    multiple = hidden % 128 == 0 and (input_size is None or input_size % 128 == 0)
    if (dtype == "fp16" and layers == 1 and directions == 1 and hidden <= 1024 and multiple
            and batch % 8 == 0 and batch <= 128 and (batch < 96 or hidden < 896)):
        return "persistent-static"
    return "standard"


def cudnn_us(dtype: str, hidden: int, batch: int, training: bool, **call) -> float:
    """cuDNN's modeled µs per step (forward, plus backward when training)."""
    def one(backward):
        algorithm = cudnn_algorithm(dtype, hidden, batch, backward, **call)
        if algorithm == "small-h":
            return CUDNN_SMALL_H_US
        if algorithm == "persistent-static":
            return CUDNN_PERSISTENT_US
        w_hh = hidden * hidden * DTYPES[dtype][0].itemsize
        return w_hh / L2_BYTES_PER_S * 1e6 + CUDNN_STANDARD_OVERHEAD_US
    return one(False) + (one(True) if training else 0.0)


@functools.lru_cache(maxsize=None)
def _table(path: Path = TABLE) -> dict:
    """{(dtype, hidden, batch): {"forward": µs, "backward": µs}} from the shipped table."""
    if not path.exists():
        return {}
    rows = json.loads(path.read_text())["rows"]
    return {(r["dtype"], r["hidden"], r["batch"]): r for r in rows}


def bucket(n: int) -> int:
    """A size's shape-class bucket (routing's, and this table's key): the power of two at or
    above it."""
    return triton.next_power_of_2(max(int(n), 1))


def ours_us(dtype: str, hidden: int, batch: int, training: bool, arch: int = 90):
    """Our modeled µs per step (forward, plus backward when training) for the hidden size's
    and batch's buckets, or None where the table has no row for them, or its row models
    another configuration than the dispatcher picks for `arch` (the table is sm_90's: another
    GPU's dispatcher may pick another configuration; or the table was not written again after
    the dispatcher changed; or the call's own hidden size and batch get another configuration
    than their buckets: the split in two dimensions starts at a number of rows a group,
    dispatch.SPLIT_2D_MIN_ROWS, and is not taken at a ragged hidden size past 1024)."""
    table = _table()
    exact_hidden, exact_batch = hidden, batch
    hidden, batch = max(16, bucket(hidden)), bucket(batch)
    batches = [n for (d, h, n) in table if d == dtype and h == hidden]
    if not batches:
        return None
    largest = max(batches)
    row = table[(dtype, hidden, min(batch, largest))]
    config = choose(exact_hidden, max(1, exact_batch), *DTYPES[dtype], arch=arch).describe()
    modeled = row.get("forward_config", "")  # the report adds the split plan: " S=..."
    if modeled != config and not modeled.startswith(config + " S="):
        return None
    scale = max(1.0, batch / largest)
    us = [row["forward"]] + ([row["backward"]] if training else [])
    return None if None in us else scale * sum(us)


def kernels_win(dtype: str, hidden: int, batch: int, training: bool, arch: int = 90,
                **call) -> bool:
    """The static rule: ours beats cuDNN's model by MODEL_MARGIN (False without a model)."""
    ours = ours_us(dtype, hidden, batch, training, arch)
    return ours is not None and ours * MODEL_MARGIN <= cudnn_us(dtype, hidden, batch,
                                                                training, **call)
