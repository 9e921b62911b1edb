"""Launchers: allocate outputs, choose the variant, compute the grid, launch.

Tensors (one layer, D directions, T steps, N batch, H hidden): each direction's projection
P (T, N, H), W_hh (H, H) and b_hh (H,) as its own tensor (the parameters themselves, read in
place: the kernels take a pointer per direction); h0 (D, N, H); out, dout, dz (T, N, D*H).
"""
import contextlib
import math
import os
import warnings

import torch
import triton
import triton.language as tl

from . import concurrent_interpreter, failures, occupancy
from .cell import rnn_cell_forward_kernel
from .cells import GATES, GRU, GRU_SAVED, LSTM, RNN
from .dispatch import (SPLIT_MAX_REGISTERS, Config, choose, choose_cell, split_plan,
                       split_with_fewer_programs)
from .recurrence import rnn_backward_resident_kernel, rnn_forward_resident_kernel
from .split import rnn_backward_split_kernel, rnn_forward_split_kernel
from .split_2d import rnn_backward_split_2d_kernel, rnn_forward_split_2d_kernel
from .split_dot import rnn_backward_split_dot_kernel, rnn_forward_split_dot_kernel
from .streaming import rnn_backward_streaming_kernel, rnn_forward_streaming_kernel

_TL_DTYPE = {torch.float64: tl.float64, torch.float32: tl.float32,
             torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


# Tests set this so every buffer a kernel must write starts as NaN: an element the kernel
# forgets to write then fails the comparison instead of passing on leftover memory.
poison_outputs = False

# Split variant: polls a barrier wait makes before it gives up. On a GPU each poll is an L2
# round trip and two CTA barriers (~0.5-1 µs): 2^22 polls are seconds, far beyond any step.
# Under the interpreter a waiting program polls when another arrives or every 10 ms
# (concurrent_interpreter.py): 2^13 polls are at least ~80 s, beyond the slowest step there
# (seconds at H = 2048) and within the concurrent launch's 300 s stall deadline, so a missing
# arrival ends as the kernel's own failure (NaN and SplitBarrierTimeout), not a stopped launch.
MAX_POLLS = 1 << 22
MAX_POLLS_INTERPRETED = 1 << 13
# Programs an interpreted split launch may run at once (one thread each): an H100's SM count,
# so that every slice count an H100 holds runs under the interpreter too. Batch groups there
# are at most INTERPRETER_MAX_GROUPS: each program is a thread polling under one interpreter
# lock, so more groups only make the same work slower.
INTERPRETER_CAPACITY = 132
INTERPRETER_MAX_GROUPS = 2


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _empty(*args, like=None, **kwargs) -> torch.Tensor:
    t = torch.empty_like(like, memory_format=torch.contiguous_format) if like is not None \
        else torch.empty(*args, **kwargs)
    return t.fill_(float("nan")) if poison_outputs else t


# Every kernel this module launches, by its name here (tools swap them for stand-ins).
KERNEL_NAMES = ("rnn_forward_resident_kernel", "rnn_forward_streaming_kernel",
                "rnn_forward_split_kernel", "rnn_forward_split_dot_kernel",
                "rnn_backward_resident_kernel", "rnn_backward_streaming_kernel",
                "rnn_backward_split_kernel", "rnn_backward_split_dot_kernel",
                "rnn_forward_split_2d_kernel", "rnn_backward_split_2d_kernel",
                "rnn_cell_forward_kernel")


def kernel_for(pass_: str, variant: str, use_dot: bool = False, k_parts: int = 1):
    """The recurrence's @triton.jit kernel for "forward"/"backward" and a dispatch variant
    (split: on tensor cores with use_dot, in two dimensions with k_parts > 1)."""
    if variant == "split" and k_parts > 1:
        return {"forward": rnn_forward_split_2d_kernel,
                "backward": rnn_backward_split_2d_kernel}[pass_]
    if variant == "split" and use_dot:
        return {"forward": rnn_forward_split_dot_kernel,
                "backward": rnn_backward_split_dot_kernel}[pass_]
    return {("forward", "resident"): rnn_forward_resident_kernel,
            ("forward", "streaming"): rnn_forward_streaming_kernel,
            ("forward", "split"): rnn_forward_split_kernel,
            ("backward", "split"): rnn_backward_split_kernel,
            ("backward", "resident"): rnn_backward_resident_kernel,
            ("backward", "streaming"): rnn_backward_streaming_kernel}[(pass_, variant)]


def compile_options(cfg: Config, dtype: torch.dtype, relu: bool, allow_tf32: bool,
                    **flags) -> dict:
    """Constexpr arguments and launch options of a launch. `flags`: the kernel's own flags
    (HAS_LENGTHS for the recurrences, a run-time 0/1 so that padded and packed batches share
    one compiled kernel; the constexprs HAS_H, HAS_BIAS for the cell)."""
    dot_dtype = _TL_DTYPE[dtype]
    if interpreting() and dtype == torch.bfloat16:
        # The interpreter's bf16 tl.dot is wrong; bf16 values are exact in fp32.
        dot_dtype = tl.float32
    if cfg.variant == "split":
        if cfg.use_dot and dtype == torch.float64:
            raise ValueError("the tensor-core split takes 16-bit and float32 layers only: "
                             "float64 runs split.py (dispatch.choose_split)")
        # On tensor cores the row tile, the warps' parts of K and the state's chunks; ptxas
        # may then use every register a thread can have at one program per SM.
        # In two dimensions: the reduction's parts (KP), BK = BH / KP wide.
        dot = dict(BN=cfg.BN, KW=cfg.num_warps, KC=cfg.k_chunks, DOT_DTYPE=dot_dtype,
                   B_SHARED=cfg.b_shared) if cfg.use_dot else {}
        if cfg.k_parts > 1:
            dot = dict(BN=cfg.BN, KC=cfg.k_chunks, DOT_DTYPE=dot_dtype, KP=cfg.k_parts)
        return dict(
            ACT=int(relu), ACC=_TL_DTYPE[acc_dtype(dtype)],
            PRECISION=_precision(dtype, allow_tf32), R=cfg.R, BK=cfg.BH // cfg.k_parts,
            **flags, **dot,
            MAX_POLLS=MAX_POLLS_INTERPRETED if interpreting() else MAX_POLLS,
            num_warps=cfg.num_warps, num_stages=cfg.num_stages, enable_fp_fusion=True,
            # (split.py's LSTM rows hold nine inputs and their addresses at once: uncapped)
            maxnreg=min(255, 65536 // (32 * cfg.num_warps))
            if cfg.use_dot or flags.get("CELL", RNN.value) != RNN.value else SPLIT_MAX_REGISTERS,
            # An oversize grid then fails at launch instead of waiting at its first barrier.
            launch_cooperative_grid=True)
    block = {"BH": cfg.BH, "W_FIRST": cfg.w_first} if cfg.variant == "resident" else {
        "BJ": cfg.BH}
    return dict(
        ACT=int(relu), USE_DOT=cfg.use_dot, BN=cfg.BN, **block, **flags,
        ACC=_TL_DTYPE[acc_dtype(dtype)],
        DOT_DTYPE=dot_dtype,
        PRECISION=_precision(dtype, allow_tf32),
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
        # FMA contraction is set explicitly: Triton's default is changing, and results must not.
        enable_fp_fusion=True,
    )


def device_arch():
    """The current CUDA device's compute capability as 90 for sm_90; None under the
    interpreter or without CUDA."""
    if interpreting() or not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return 10 * major + minor


def _precision(dtype: torch.dtype, allow_tf32: bool) -> str:
    """The kernels' PRECISION: "tf32" for float32 with TF32 allowed (every path then rounds the
    product's operands to TF32, round to nearest, ties away from zero: blocks.round_tf32),
    else "ieee"."""
    return "tf32" if dtype == torch.float32 and allow_tf32 else "ieee"


def _on_device(t: torch.Tensor):
    """Triton launches on the current CUDA device: make it the tensors' own (cuda:1, say)."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The kernels' accumulator and state dtype: fp64 for fp64, fp32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _weight_operand(w_hh: torch.Tensor, transpose: bool):
    """Strides (k, j) that read B = W_hhᵀ (transpose) or B = W_hh without copying."""
    s_row, s_col = w_hh.stride()
    return (s_col, s_row) if transpose else (s_row, s_col)


def _alignment(*values: int) -> int:
    """The largest power of two below 16 that divides every value (blocks.aligned's ALIGN), or
    1 where 16 does: the JIT marks multiples of 16 itself."""
    common = math.gcd(*values)
    align = 1
    while align < 16 and common % (2 * align) == 0:
        align *= 2
    return 1 if align == 16 else align


def _aligned(options: dict, cfg: Config, H: int, row_strides, w_strides) -> dict:
    """A split launch's options with the alignment of its hidden size and row strides (ALIGN)
    and of each stride of B (ALIGN_BK, ALIGN_BJ), which it tells the compiler: at a hidden
    size that is not a multiple of 16 its rows then still load in vectors."""
    if cfg.variant != "split":
        return options
    return dict(options, ALIGN=_alignment(H, *row_strides), ALIGN_BK=_alignment(w_strides[0]),
                ALIGN_BJ=_alignment(w_strides[1]))


def per_direction(t, H: int = None) -> tuple:
    """One tensor per direction: `t` itself when it is a sequence of them; else the parts of
    one tensor, along its last dimension (D*H features, when H is given) or its first."""
    if t is None or not isinstance(t, torch.Tensor):
        return t if t is None else tuple(t)
    return t.split(H, dim=-1) if H is not None else t.unbind(0)


def _one_layout(parts, unit_last_stride: bool = False) -> tuple:
    """The directions' tensors with one set of strides, which the kernels take once: as they
    are when they share it; else each made contiguous (a copy, only for a tensor laid out
    unlike its other direction, e.g. a parameter replaced by a transposed view)."""
    first = parts[0]
    if all(p.stride() == first.stride() for p in parts) and \
            (not unit_last_stride or first.stride(-1) == 1):
        return tuple(parts)
    return tuple(p.contiguous() for p in parts)


def _pair(parts) -> tuple:
    """(forward, reverse) pointer arguments: one direction passes its tensor twice."""
    return (parts[0], parts[-1])


def _plan(pass_: str, H: int, N: int, D: int, dtype, lengths, relu: bool, allow_tf32: bool,
          cfg: Config = None, split: bool = True, cell: int = RNN.value):
    """(config, kernel, grid, constexprs and launch options) of one layer's recurrence: `cfg`,
    or the dispatcher's choice (split=False: its fallback where split does not fit) for the
    current device: callers plan inside _on_device(their output). cell: the CELL of cells.py."""
    cfg = cfg or choose(H, N, dtype, allow_tf32, split, arch=device_arch(), gates=GATES[cell],
                        pass_=pass_, directions=D)
    flags = {"CELL": cell} if cell != RNN.value else {}
    options = compile_options(cfg, dtype, relu, allow_tf32,
                              HAS_LENGTHS=int(lengths is not None), **flags)
    return cfg, kernel_for(pass_, cfg.variant, cfg.use_dot, cfg.k_parts), \
        (triton.cdiv(N, cfg.BN), D), options


def _fewer_programs(pass_: str, cfg: Config, H: int, N: int, D: int, dtype, lengths,
                    relu: bool, allow_tf32: bool, cell: int = RNN.value):
    """The plan a launcher tries next where the device cannot hold one group of `cfg`'s
    programs: a split of fewer programs (split_with_fewer_programs), else streaming."""
    fewer = split_with_fewer_programs(cfg, H, dtype, allow_tf32, device_arch())
    return _plan(pass_, H, N, D, dtype, lengths, relu, allow_tf32, fewer,
                 split=fewer is not None, cell=cell)


def split_max_groups(cfg: Config, N: int):
    """At most as many batch groups as a tensor-core split has row tiles of BN (more groups
    would each pad a tile of their own), and INTERPRETER_MAX_GROUPS under the interpreter."""
    limits = [triton.cdiv(N, cfg.BN)] if cfg.use_dot else []
    if interpreting():
        limits.append(INTERPRETER_MAX_GROUPS)
    return min(limits) if limits else None


# What an RNN passes for the resident kernels' gate arguments (B's gate offset, the gate
# buffers' strides), which only other cells read.
_NO_GATES = (0, 0, 0)

def _with_partial_sums(cfg: Config, D: int, N: int, H: int, tensors, strides, sizes) -> tuple:
    """(tensors, sizes, strides) of a split launch: in two dimensions (split_2d.py) its
    partial-sum buffer (D, KP, N, H) in fp32 after the tensors, and its part and batch strides
    after the strides."""
    if cfg.k_parts == 1:
        return tensors, sizes, strides
    part = _empty((D, cfg.k_parts, N, H), dtype=torch.float32, device=tensors[0].device)
    return (*tensors, part), sizes, (*strides, *part.stride()[1:3])


_no_lengths = {}  # device -> an int32 tensor a padded batch passes for the lengths, never read


def lengths_argument(lengths, device) -> torch.Tensor:
    """The kernels' p_len: the lengths of a packed batch; for a padded one an int32 tensor of
    the device that the kernel never reads (HAS_LENGTHS = 0), so that both batch kinds bind
    the same pointer type and share one compiled kernel."""
    if lengths is not None:
        return lengths
    if device not in _no_lengths:
        _no_lengths[device] = torch.empty(1, dtype=torch.int32, device=device)
    return _no_lengths[device]


_capacities = {}  # (compiled kernel, device) -> co-resident programs


def _split_capacity(kernel, args, options, device) -> int:
    """Programs of this launch's compiled kernel that the device holds at once."""
    if interpreting():
        return INTERPRETER_CAPACITY
    compiled = kernel.warmup(*args, grid=(1,), **options)
    key = (compiled, device)
    if key not in _capacities:
        _capacities[key] = occupancy.device_capacity(compiled, device)
    return _capacities[key]


_refused = {}  # (kernel, device) -> programs a cooperative launch was refused at; stay below


def refused_launch(exc: Exception) -> bool:
    """Whether `exc` is the driver refusing a cooperative grid it cannot hold at once."""
    return "too many blocks in cooperative launch" in str(exc) or \
        "COOPERATIVE_LAUNCH_TOO_LARGE" in str(exc)


def _launch_split(pass_, kernel, cfg, options, tensors, sizes, strides, D) -> bool:
    """Launch a split kernel (tensors, sizes and strides: its arguments before p_sync, from
    T up to ROWS, and after G) as planned for this device; False if the device cannot hold
    one group of its slices. A launch the driver refuses (it holds fewer programs than the
    occupancy said: MPS, a partition) is planned again for half as many programs, and
    remembered for this kernel and device; warned of once."""
    failures.check_earlier()
    device = tensors[0].device
    T, N, H = sizes[:3]
    S = cfg.slices(H)
    key = (kernel, str(device))
    # [failure flag, one barrier counter per (direction, group)], zero on entry.
    sync = torch.zeros(1 + D * N, dtype=torch.int32, device=device)
    capacity = _split_capacity(kernel, (*tensors, sync, *sizes, N, 0, 1, *strides), options,
                               device)
    capacity = min(capacity, _refused.get(key, capacity))
    while True:
        plan = split_plan(S, N, D, capacity, split_max_groups(cfg, N))
        if plan is None:
            return False
        G, rows, per_launch = plan
        try:
            for d0 in range(0, D, per_launch):
                args = (*tensors, sync, *sizes, rows, d0, G, *strides)
                if interpreting():  # programs that wait for each other need one thread each
                    concurrent_interpreter.launch(kernel, (S, G, per_launch), *args, **options)
                else:
                    kernel[(S, G, per_launch)](*args, **options)
            break
        except RuntimeError as exc:
            if not refused_launch(exc):
                raise
            capacity = _refused[key] = S * G * per_launch // 2
            _warn_refused(pass_, S * G * per_launch, H, N)
            sync.zero_()  # a launch that ran before the refused one counted at its barriers
    failures.watch(sync, f"{pass_}, H={H}, batch {N}, T={T}, {S} slices x {G} groups x "
                         f"{D} directions, {cfg.describe()}")
    return True


_warned_refusal = set()


def _warn_refused(pass_: str, programs: int, H: int, N: int) -> None:
    if pass_ not in _warned_refusal:
        _warned_refusal.add(pass_)
        warnings.warn(f"triton_rnn: the driver refused a cooperative launch of {programs} "
                      f"programs (split {pass_}, H={H}, batch {N}): it holds fewer at once "
                      "than the occupancy query said. Planning again with fewer programs, "
                      "else running the layer on the streaming variant.")


def recurrence_forward(proj, h0, w_hh, lengths, relu: bool, allow_tf32: bool,
                       config: Config = None, b_hh=None) -> torch.Tensor:
    """out (T, N, D*H) = the layer's states: h_t = act(P_t + b_hh + h_{t-1} W_hhᵀ) per direction.

    proj: each direction's P = X W_ihᵀ + b_ih, (T, N, H) each (a sequence of D tensors, or one
    (T, N, D*H) tensor); w_hh: each direction's (H, H) W_hh (a sequence, or one (D, H, H)
    tensor), any strides; b_hh: None or each direction's (H,) b_hh. Every tensor is read where
    it lies. lengths: None, or (N,) int32 per-sequence lengths on the device (variable-length
    batch). config: the dispatcher's choice unless given (tests force variants with it)."""
    D, N, H = h0.shape
    projs = _one_layout(per_direction(proj, H), unit_last_stride=True)
    weights = _one_layout(per_direction(w_hh))
    assert len(projs) == len(weights) == D, "one projection and one W_hh per direction"
    T = projs[0].shape[0]
    out = _empty((T, N, D * H), dtype=projs[0].dtype, device=projs[0].device)
    if N == 0:
        return out
    h0 = h0.contiguous()
    biases = weights if b_hh is None else \
        _one_layout(per_direction(b_hh), unit_last_stride=True)
    HB = 0 if b_hh is None else H  # bias features the kernel reads: none without a bias
    p_len = lengths_argument(lengths, out.device)
    s_pt, s_pn = projs[0].stride(0), projs[0].stride(1)
    w_strides = _weight_operand(weights[0], transpose=True)
    row_strides = (s_pt, s_pn, *out.stride()[:2], *h0.stride()[:2])
    with _on_device(out):
        cfg, kernel, grid, options = _plan("forward", H, N, D, out.dtype, lengths, relu,
                                           allow_tf32, config)
        while cfg.variant == "split":
            options = _aligned(options, cfg, H, row_strides, w_strides)
            # the split kernels' LSTM arguments (cell states, gates, carry), unread
            lstm = ((out,) * 3, _NO_GATES[:2])
            if _launch_split("forward", kernel, cfg, options,
                             *_with_partial_sums(
                                 cfg, D, N, H,
                                 (*_pair(projs), h0, *_pair(weights), *_pair(biases), out,
                                  p_len, *lstm[0]),
                                 (*row_strides, *w_strides, *lstm[1]), (T, N, H, HB)), D):
                return out
            # the device cannot hold one group: a split of fewer programs, else streaming
            cfg, kernel, grid, options = _fewer_programs("forward", cfg, H, N, D, out.dtype,
                                                         lengths, relu, allow_tf32)
        if cfg.variant == "resident":
            kernel[grid](
                *_pair(projs), h0, *_pair(weights), *_pair(biases), out, p_len, *(out,) * 3,
                T, N, H, HB, s_pt, s_pn, h0.stride(0), h0.stride(1), *w_strides, out.stride(0),
                out.stride(1), *_NO_GATES, **options)
        else:
            state = _empty((D, 2, N, H), dtype=acc_dtype(out.dtype), device=out.device)
            state[:, 1] = h0
            kernel[grid](
                *_pair(projs), *_pair(weights), *_pair(biases), out, state, p_len,
                out, out, state, T, N, H, HB,  # (the LSTM's cell states, gates, c: unread)
                s_pt, s_pn, *w_strides, out.stride(0), out.stride(1), *state.stride()[:3],
                *_NO_GATES, **options)
    return out


def recurrence_backward(dout, out, w_hh, lengths, relu: bool, allow_tf32: bool,
                        config: Config = None):
    """Returns (dz, dh0): dz_t = dL/d(P_t) (= dL/d(b_hh) summed over t and the batch) for every
    step, dh0 = dL/dh0. w_hh as recurrence_forward takes it."""
    T, N, _ = out.shape
    weights = _one_layout(per_direction(w_hh))
    D, H = len(weights), weights[0].shape[0]
    dout, out = dout.contiguous(), out.contiguous()
    dz = _empty(like=out)
    dh0 = _empty((D, N, H), dtype=out.dtype, device=out.device)
    if N == 0:
        return dz, dh0
    p_len = lengths_argument(lengths, out.device)
    w_strides = _weight_operand(weights[0], transpose=False)
    row_strides = (*out.stride()[:2], *dh0.stride()[:2])
    with _on_device(out):
        cfg, kernel, grid, options = _plan("backward", H, N, D, out.dtype, lengths, relu,
                                           allow_tf32, config)
        while cfg.variant == "split":
            options = _aligned(options, cfg, H, row_strides, w_strides)
            carry = _empty((D, N, H), dtype=acc_dtype(out.dtype), device=out.device)
            lstm = ((out,) * 6, _NO_GATES[:2])  # the split kernels' LSTM arguments, unread
            strides = (out.stride(0), out.stride(1), *w_strides, dh0.stride(0), dh0.stride(1),
                       *lstm[1])
            if _launch_split("backward", kernel, cfg, options, *_with_partial_sums(
                    cfg, D, N, H, (dout, out, *_pair(weights), dz, dh0, carry, p_len, *lstm[0]),
                    strides, (T, N, H)), D):
                return dz, dh0
            cfg, kernel, grid, options = _fewer_programs("backward", cfg, H, N, D, out.dtype,
                                                         lengths, relu, allow_tf32)
        if cfg.variant == "resident":
            kernel[grid](
                dout, out, *_pair(weights), dz, dh0, p_len, *(out,) * 5, T, N, H,
                out.stride(0), out.stride(1), *w_strides, dh0.stride(0), dh0.stride(1),
                *_NO_GATES, **options)
        else:
            state = torch.zeros((D, 2, N, H), dtype=acc_dtype(out.dtype), device=out.device)
            kernel[grid](
                dout, out, *_pair(weights), dz, state, p_len,
                out, out, out, out, state, T, N, H,  # (the LSTM's tensors: unread)
                out.stride(0), out.stride(1), *w_strides, *state.stride()[:3], 0, 0, *_NO_GATES,
                **options)
            dh0.copy_(state[:, (T - 1) % 2])
    return dz, dh0


def rnn_cell_forward(x, h, w_ih, w_hh, b_ih, b_hh, relu: bool, allow_tf32: bool):
    """act(x W_ihᵀ + b_ih + h W_hhᵀ + b_hh) for x (N, I), h (N, H) or None (zeros), biases or
    None, in one launch."""
    N, I = x.shape
    H = w_ih.shape[0]
    out = _empty((N, H), dtype=x.dtype, device=x.device)
    if N == 0:
        return out
    # The kernel reads rows of x and h and the biases with unit feature stride.
    x = x.contiguous()
    h, b_ih, b_hh = (None if t is None else t.contiguous() for t in (h, b_ih, b_hh))
    cfg = choose_cell(N, x.dtype)
    options = compile_options(cfg, x.dtype, relu, allow_tf32, HAS_H=h is not None,
                              HAS_BIAS=b_ih is not None)
    grid = (triton.cdiv(N, cfg.BN), triton.cdiv(H, cfg.BH))
    unused = x  # stands in for absent optional tensors; their constexpr flag keeps it unread
    with _on_device(x):
        rnn_cell_forward_kernel[grid](
            x, unused if h is None else h, w_ih, w_hh, unused if b_ih is None else b_ih,
            unused if b_hh is None else b_hh, out, *(unused,) * 3, N, I, H,
            x.stride(0), 0 if h is None else h.stride(0), out.stride(0),
            w_ih.stride(1), w_ih.stride(0), w_hh.stride(1), w_hh.stride(0), **options)
    return out


def lstm_cell_forward(x, h, c, w_ih, w_hh, b_ih, b_hh, allow_tf32: bool):
    """(h', c', gates) of one LSTMCell step for x (N, I), h and c (N, H) or None (zeros),
    w_ih (4H, I), w_hh (4H, H), biases (4H,) or None, in one launch: gates (N, 4H) are the
    activations i, f, g, o, which the backward reads."""
    return _gated_cell_forward(x, h, c, w_ih, w_hh, b_ih, b_hh, allow_tf32, LSTM.value)


def gru_cell_forward(x, h, w_ih, w_hh, b_ih, b_hh, allow_tf32: bool):
    """(h', gates) of one GRUCell step for x (N, I), h (N, H) or None (zeros), w_ih (3H, I),
    w_hh (3H, H), biases (3H,) or None, in one launch: gates (N, 4H) are r, z, n and
    h W_hnᵀ + b_hn, which the backward reads."""
    out, _, gates = _gated_cell_forward(x, h, None, w_ih, w_hh, b_ih, b_hh, allow_tf32,
                                        GRU.value)
    return out, gates


def _gated_cell_forward(x, h, c, w_ih, w_hh, b_ih, b_hh, allow_tf32: bool, cell: int):
    """(h', c' (the LSTM's; h' for the GRU), gates (N, 4H)) of one step of a gated cell in one
    launch of the cell kernel."""
    N, I = x.shape
    H = w_hh.shape[1]
    out = _empty((N, H), dtype=x.dtype, device=x.device)
    c_out = _empty(like=out) if cell == LSTM.value else out
    gates = _empty((N, 4 * H), dtype=x.dtype, device=x.device)  # (GRU_SAVED is 4 too)
    if N == 0:
        return out, c_out, gates
    # Rows of x, h, c and the biases with unit feature stride; h and c with one row stride.
    x = x.contiguous()
    h, c, b_ih, b_hh = (None if t is None else t.contiguous() for t in (h, c, b_ih, b_hh))
    cfg = choose_cell(N, x.dtype)
    options = compile_options(cfg, x.dtype, False, allow_tf32, HAS_H=h is not None,
                              HAS_BIAS=b_ih is not None, CELL=cell)
    grid = (triton.cdiv(N, cfg.BN), triton.cdiv(H, cfg.BH))
    unused = x  # stands in for absent optional tensors; their constexpr flag keeps it unread
    with _on_device(x):
        rnn_cell_forward_kernel[grid](
            x, unused if h is None else h, w_ih, w_hh, unused if b_ih is None else b_ih,
            unused if b_hh is None else b_hh, out, unused if c is None else c, c_out, gates,
            N, I, H, x.stride(0), 0 if h is None else h.stride(0), out.stride(0),
            w_ih.stride(1), w_ih.stride(0), w_hh.stride(1), w_hh.stride(0), **options)
    return out, c_out, gates


def lstm_forward(proj, h0, c0, w_hh, lengths, allow_tf32: bool, config: Config = None,
                 b_hh=None):
    """(out, cells, gates) of one LSTM layer (D directions): h_t and c_t (T, N, D*H) and the
    gate activations i, f, g, o (T, N, D*4H; direction d's at 4H*d) of every step, which the
    backward reads. proj: each direction's (T, N, 4H) = X W_ihᵀ + b_ih; h0, c0 (D, N, H);
    w_hh: each direction's (4H, H); b_hh: None or each direction's (4H,). Arguments as
    recurrence_forward takes them. The variant dispatch rule 4 gives; a split layer whose
    programs the device cannot hold at once streams instead, as an RNN layer does."""
    return _gated_forward(proj, h0, c0, w_hh, lengths, allow_tf32, config, b_hh, LSTM.value)


def gru_forward(proj, h0, w_hh, lengths, allow_tf32: bool, config: Config = None, b_hh=None):
    """(out, gates) of one GRU layer (D directions): h_t (T, N, D*H) and r, z, n and q_n (the
    new gate's hidden product, b_hn in it) of every step (T, N, D*4H; direction d's at 4H*d),
    which the backward reads. proj: each direction's (T, N, 3H) = X W_ihᵀ + b_ih; h0 (D, N, H);
    w_hh: each direction's (3H, H); b_hh: None or each direction's (3H,). As lstm_forward."""
    out, _, gates = _gated_forward(proj, h0, None, w_hh, lengths, allow_tf32, config, b_hh,
                                   GRU.value)
    return out, gates


def _gated_forward(proj, h0, c0, w_hh, lengths, allow_tf32: bool, config, b_hh, cell: int):
    """lstm_forward's (out, cells, gates) for a gated cell; the GRU has no c (c0 None): out,
    h0 and the state buffer stand in for the kernels' cell-state arguments, which it leaves
    unread, and cells is out. gates (T, N, D*4H): four values a feature for either cell."""
    D, N, H = h0.shape
    lstm = cell == LSTM.value
    projs = _one_layout(per_direction(proj, GATES[cell] * H), unit_last_stride=True)
    weights = _one_layout(per_direction(w_hh))
    assert len(projs) == len(weights) == D, "one projection and one W_hh per direction"
    T, dtype, device = projs[0].shape[0], projs[0].dtype, projs[0].device
    out = _empty((T, N, D * H), dtype=dtype, device=device)
    cells = _empty(like=out) if lstm else out
    gates = _empty((T, N, D * GRU_SAVED * H), dtype=dtype, device=device)  # (LSTM: 4 gates)
    if N == 0:
        return out, cells, gates
    h0 = h0.contiguous()
    c0 = c0.contiguous() if lstm else h0
    biases = weights if b_hh is None else \
        _one_layout(per_direction(b_hh), unit_last_stride=True)
    HB, w_strides = 0 if b_hh is None else H, _weight_operand(weights[0], transpose=True)
    p_len = lengths_argument(lengths, device)
    gate_strides = (H * weights[0].stride(0), *gates.stride()[:2])
    with _on_device(out):
        cfg, kernel, grid, options = _plan("forward", H, N, D, dtype, lengths, False,
                                           allow_tf32, config, cell=cell)
        if cfg.k_parts > 1:
            raise ValueError("the split in two dimensions (split_2d.py) runs the RNN's forward "
                             "and every cell's backward, not a gated forward")
        while cfg.variant == "split":
            strides = (*projs[0].stride()[:2], *out.stride()[:2], *h0.stride()[:2])
            options = _aligned(options, cfg, H, (*strides, *gates.stride()[:2]), w_strides)
            # c_{t-1} in ACC, c0 before the first step (the GRU's: h0, unread)
            carry = c0.to(acc_dtype(dtype), copy=True) if lstm else h0
            if _launch_split("forward", kernel, cfg, options,
                             (*_pair(projs), h0, *_pair(weights), *_pair(biases), out, p_len,
                              cells, gates, carry), (T, N, H, HB),
                             (*strides, *w_strides, *gates.stride()[:2]), D):
                return out, cells, gates
            # the device cannot hold one group: a split of fewer programs, else streaming
            cfg, kernel, grid, options = _fewer_programs("forward", cfg, H, N, D, dtype,
                                                         lengths, False, allow_tf32, cell)
        if cfg.variant == "streaming":
            acc = acc_dtype(dtype)
            state = _empty((D, 2, N, H), dtype=acc, device=device)
            cstate = _empty(like=state) if lstm else state
            state[:, 1], cstate[:, 1] = h0, c0
            kernel[grid](
                *_pair(projs), *_pair(weights), *_pair(biases), out, state, p_len, cells, gates,
                cstate, T, N, H, HB, *projs[0].stride()[:2], *w_strides, *out.stride()[:2],
                *state.stride()[:3], *gate_strides, **options)
        else:
            kernel[grid](
                *_pair(projs), h0, *_pair(weights), *_pair(biases), out, p_len, c0, cells, gates,
                T, N, H, HB, *projs[0].stride()[:2], *h0.stride()[:2], *w_strides,
                *out.stride()[:2], *gate_strides, **options)
    return out, cells, gates


def lstm_backward(dout, dcells, out, cells, gates, c0, w_hh, lengths, allow_tf32: bool,
                  config: Config = None):
    """(dz, dh0, dc0) of one LSTM layer: dz (T, N, D*4H) = dL/d(P_t) of every gate and step
    (= dL/d(b_hh) summed over t and the batch), dh0 and dc0 (D, N, H). dout, dcells: the
    gradients of out and cells; the rest as lstm_forward took and left them."""
    return _gated_backward(dout, dcells, out, cells, gates, c0, w_hh, lengths, allow_tf32,
                           config, LSTM.value)


def gru_backward(dout, out, gates, h0, w_hh, lengths, allow_tf32: bool, config: Config = None):
    """(dz, dh0) of one GRU layer: dz (T, N, D*4H) holds, per direction, the hidden products'
    gradients dq_r, dq_z, dq_n (= dL/d(b_hh) summed over t and the batch) and dL/dP_n
    (dL/dP_r = dq_r, dL/dP_z = dq_z); dh0 (D, N, H). The rest as gru_forward took and left
    them."""
    dz, dh0, _ = _gated_backward(dout, dout, out, out, gates, h0, w_hh, lengths, allow_tf32,
                                 config, GRU.value)
    return dz, dh0


def _gated_backward(dout, dcells, out, cells, gates, c0, w_hh, lengths, allow_tf32: bool,
                    config, cell: int):
    """lstm_backward's (dz, dh0, dc0) for a gated cell. The GRU passes dout and out for the
    cell states' gradient and values and h0 as c0, which its kernels read as h0; its dc0 is
    dh0, and the carried dL/dc buffer carries its dL/dh z."""
    T, N, _ = out.shape
    lstm = cell == LSTM.value
    weights = _one_layout(per_direction(w_hh))
    D, H = len(weights), weights[0].shape[1]
    dout, dcells, out, cells = (t.contiguous() for t in (dout, dcells, out, cells))
    gates, c0 = gates.contiguous(), c0.contiguous()
    dz = _empty(like=gates)
    dh0 = _empty(like=c0)
    dc0 = _empty(like=c0) if lstm else dh0
    if N == 0:
        return dz, dh0, dc0
    p_len, w_strides = lengths_argument(lengths, out.device), \
        _weight_operand(weights[0], transpose=False)
    gate_strides = (H * weights[0].stride(0), *dz.stride()[:2])
    with _on_device(out):
        cfg, kernel, grid, options = _plan("backward", H, N, D, out.dtype, lengths, False,
                                           allow_tf32, config, cell=cell)
        if cfg.variant == "split":
            options = _aligned(options, cfg, H, (*out.stride()[:2], *dh0.stride()[:2],
                                                 *dz.stride()[:2]), w_strides)
            acc = acc_dtype(out.dtype)
            carry = _empty((D, N, H), dtype=acc, device=out.device)
            dc = torch.zeros((D, N, H), dtype=acc, device=out.device)  # dL/dc (dL/dh z)
            if _launch_split("backward", kernel, cfg, options, *_with_partial_sums(
                    cfg, D, N, H, (dout, out, *_pair(weights), dz, dh0, carry, p_len, cells,
                                   dcells, c0, gates, dc0, dc),
                    (*out.stride()[:2], *w_strides, *dh0.stride()[:2], *dz.stride()[:2]),
                    (T, N, H)), D):
                return dz, dh0, dc0
            cfg, kernel, grid, options = _plan("backward", H, N, D, out.dtype, lengths, False,
                                               allow_tf32, split=False, cell=cell)
        if cfg.variant == "streaming":
            state = torch.zeros((D, 2, N, H), dtype=acc_dtype(out.dtype), device=out.device)
            dcstate = torch.zeros_like(state) if lstm else state
            kernel[grid](
                dout, out, *_pair(weights), dz, state, p_len, cells, dcells, c0, gates, dcstate,
                T, N, H, *out.stride()[:2], *w_strides, *state.stride()[:3], *c0.stride()[:2],
                *gate_strides, **options)
            dh0.copy_(state[:, (T - 1) % 2])
            if lstm:
                dc0.copy_(dcstate[:, (T - 1) % 2])
        else:
            kernel[grid](
                dout, out, *_pair(weights), dz, dh0, p_len, cells, dcells, c0, gates, dc0, T, N, H,
                *out.stride()[:2], *w_strides, *dh0.stride()[:2], *gate_strides, **options)
    return dz, dh0, dc0
