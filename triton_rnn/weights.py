"""Weights in the form the ops take, prepared once per weight version instead of every call.

An RNN layer's op takes W_ih of all its directions as one (D*H, I) matrix, the bias sums
b_ih + b_hh of all directions as one (D*H) vector and W_hh as (D, H, H); under autocast all in
the autocast dtype. Where that form is a view of the parameters it is only a view (one direction
without autocast: W_ih and W_hh; W_hh of two directions whose parameters lie evenly spaced in
one storage, as nn.RNN's flattened cuDNN buffer puts them on a GPU). The rest needs a copy
(concatenation, bias sum, autocast cast): it is built once from the parameters' data and kept
per (module, layer, dtype), under a key of every parameter's data pointer, `_version`, dtype
and shape. An in-place update (optimizer step, load_state_dict, any in-place op on a parameter)
bumps `_version` and so rebuilds it; the entry keeps the parameters' storages alive, so a data
pointer cannot be reused by another storage while its entry exists.

Gradients: a cached tensor holds no autograd graph. When gradients are wanted, `_Attach` gives
this call views of the cached tensors whose backward sends each gradient to the parameters it
came from (split by direction, cast back to each parameter's dtype), as cat/stack/add/to would.

Computed per call, uncached: under torch.compile tracing (the graph holds the ops), under
functorch transforms, for tensor subclasses (DTensor, fake tensors), for a module under FSDP
(which refills parameter storage without bumping `_version`), and while `enabled` is False.
Writes that bypass the version counter (`param.data.add_(...)`, a collective on `param.data`)
are invisible to the key: call `drop(module)` after them, or set `enabled = False`.
"""
import weakref

import torch
from torch import Tensor, nn

from .nn_rules import autocast_cast

enabled = True
_entries = weakref.WeakKeyDictionary()  # module -> {(part, dtype): _Entry}; never pickled


def drop(module: nn.Module) -> None:
    """Forget `module`'s prepared weights (they are rebuilt on its next call)."""
    _entries.pop(module, None)


class _Entry:
    __slots__ = ("key", "tensors", "storages")

    def __init__(self, key, tensors, storages):
        self.key, self.tensors, self.storages = key, tensors, storages


def _key(params):
    """The parameters' identity and version, or None where they are not all the module's own
    nn.Parameters: a subclass (DTensor, fake tensor) whose data pointer may mean nothing, or a
    plain tensor put in their place (torch.func.functional_call, gradcheck, which perturbs it
    in place through .data, unseen by its version counter)."""
    key = []
    for p in params:
        if type(p) is not nn.Parameter:
            return None
        key.append((p.data_ptr(), p._version, p.dtype, p.shape))
    return key


def _cacheable(module: nn.Module) -> bool:
    return enabled and not torch.compiler.is_compiling() and \
        torch._C._functorch.peek_interpreter_stack() is None and not _is_fsdp(type(module))


_fsdp_classes = {}  # module class -> whether FSDP manages it (fully_shard makes a subclass)


def _is_fsdp(cls) -> bool:
    managed = _fsdp_classes.get(cls)
    if managed is None:
        fsdp = getattr(torch.distributed, "fsdp", None) \
            if torch.distributed.is_available() else None
        fsdp_module = getattr(fsdp, "FSDPModule", None)
        managed = _fsdp_classes[cls] = fsdp_module is not None and issubclass(cls, fsdp_module)
    return managed


def prepare(module: nn.Module, part, params, spec) -> tuple:
    """`spec.build(params)`, cached for `module` under `part` while the parameters are
    unchanged, and attached to autograd when gradients are wanted."""
    key = _key(params) if spec.copies and _cacheable(module) else None
    if key is None:
        return spec.build(params, shared_views=False)
    entries = _entries.get(module)
    if entries is None:
        entries = _entries[module] = {}
    entry = entries.get((part, spec.dtype))
    if entry is None or entry.key != key:
        entry = entries[(part, spec.dtype)] = _build_entry(params, spec, key)
    if torch.is_grad_enabled() and any(p.requires_grad for p in params):
        return _Attach.apply(entry.tensors, spec, *params)
    return entry.tensors


def _build_entry(params, spec, key) -> _Entry:
    # Built from the parameters' data, outside autograd; normal tensors even when the first
    # call runs under inference_mode, so that later training calls may save them for backward.
    with torch.inference_mode(False), torch.no_grad():
        data = [p.detach() for p in params]
        return _Entry(key, spec.build(data, shared_views=True), data)


class _Attach(torch.autograd.Function):
    """Identity on the prepared tensors whose gradients go to the parameters they came from."""

    @staticmethod
    def forward(ctx, prepared, spec, *params):
        ctx.spec, ctx.dtypes = spec, [p.dtype for p in params]
        ctx.set_materialize_grads(False)
        # Views made here, so this call's graph attaches to them and never to the cache.
        return tuple(None if t is None else t.view_as(t) for t in prepared)

    @staticmethod
    def backward(ctx, *grads):
        routed = ctx.spec.route(grads)
        return (None, None, *(None if g is None or not need else g.to(dtype)
                              for g, dtype, need in zip(routed, ctx.dtypes,
                                                        ctx.needs_input_grad[2:])))


_specs = {}  # one spec object per kind, made once (a plain dict: Dynamo traces it as is)


def layer_spec(directions: int, has_bias: bool, dtype) -> "LayerSpec":
    key = ("layer", directions, has_bias, dtype)
    spec = _specs.get(key)
    if spec is None:
        spec = _specs[key] = LayerSpec(directions, has_bias, dtype)
    return spec


class LayerSpec:
    """One RNN layer: params per direction (W_ih, W_hh[, b_ih, b_hh]) in nn.RNN's order, to
    (W_ih (D*H, I), bias (D*H) or None, W_hh (D, H, H)) in `dtype` (None: the params' own)."""

    def __init__(self, directions: int, has_bias: bool, dtype):
        self.D, self.has_bias, self.dtype = directions, has_bias, dtype
        self.per_dir = 4 if has_bias else 2
        # One direction, no bias, no cast: the form is views of the parameters, nothing to keep.
        self.copies = directions > 1 or has_bias or dtype is not None

    def _cast(self, t: Tensor) -> Tensor:
        return t if self.dtype is None else autocast_cast(t, self.dtype)

    def build(self, params, shared_views: bool) -> tuple:
        groups = [[self._cast(p) for p in params[d * self.per_dir:(d + 1) * self.per_dir]]
                  for d in range(self.D)]
        if self.D == 1:
            w_ih, w_hh = groups[0][0], groups[0][1].unsqueeze(0)
        else:
            w_ih = torch.cat([g[0] for g in groups])
            w_hh = evenly_spaced_view([g[1] for g in groups]) if shared_views else None
            if w_hh is None:
                w_hh = torch.stack([g[1] for g in groups])
        bias = torch.cat([g[2] + g[3] for g in groups]) if self.has_bias else None
        return w_ih, bias, w_hh

    def route(self, grads) -> list:
        return [g for d in range(self.D) for g in self._direction_grads(grads, d)]

    def _direction_grads(self, grads, d: int) -> list:
        g_ih, g_bias, g_hh = grads
        rows = lambda g: g[d * (g.shape[0] // self.D):(d + 1) * (g.shape[0] // self.D)]
        out = [None if g_ih is None else rows(g_ih), None if g_hh is None else g_hh[d]]
        if self.has_bias:
            g_b = None if g_bias is None else rows(g_bias)
            out += [g_b, g_b]  # b_ih and b_hh enter only through their sum
        return out


def cell_spec(dtype) -> "CellSpec":
    spec = _specs.get(("cell", dtype))
    if spec is None:
        spec = _specs[("cell", dtype)] = CellSpec(dtype)
    return spec


class CellSpec:
    """RNNCell under autocast: (W_ih, W_hh[, b_ih, b_hh]) cast to `dtype`."""

    def __init__(self, dtype):
        self.dtype, self.copies = dtype, True

    def build(self, params, shared_views: bool) -> tuple:
        return tuple(autocast_cast(p, self.dtype) for p in params)

    def route(self, grads) -> list:
        return list(grads)


def evenly_spaced_view(tensors):
    """One (D, *shape) view of D same-shaped tensors lying at equal, increasing distances in
    one storage, or None if they do not."""
    first = tensors[0]
    offsets = [t.storage_offset() for t in tensors]
    step = offsets[1] - offsets[0] if len(tensors) > 1 else 0
    if step <= 0 or any(t.shape != first.shape or t.stride() != first.stride() or
                        t.dtype != first.dtype or
                        t.untyped_storage().data_ptr() != first.untyped_storage().data_ptr()
                        for t in tensors[1:]) or \
            any(b - a != step for a, b in zip(offsets, offsets[1:])):
        return None
    return first.as_strided((len(tensors), *first.shape), (step, *first.stride()), offsets[0])
