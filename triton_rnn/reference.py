"""Plain PyTorch recurrences: what CPU tensors run when the Triton interpreter is off, and the
readable statement of what the kernels compute. Same tensor contract as kernels/launch.py."""
import torch

from .kernels.launch import per_direction


def _steps(T: int, direction: int):
    """Timesteps in the order direction `direction` visits them in the forward pass."""
    return range(T) if direction == 0 else range(T - 1, -1, -1)


def _inside(lengths, t: int):
    """(N, 1) mask of the sequences that step t belongs to, or None for equal lengths."""
    return None if lengths is None else (t < lengths)[:, None]


def recurrence_forward(proj, h0, w_hh, lengths, relu: bool, b_hh=None) -> torch.Tensor:
    """out_t = act(proj_t + b_hh + out_{t-1} W_hhᵀ) per direction; direction 1 runs backwards
    in time. proj: each direction's (T, N, H) (a sequence, or one (T, N, D*H) tensor); w_hh,
    b_hh: each direction's (a sequence, or one (D, ...) tensor; b_hh may be None). With
    per-sequence `lengths`, a sequence holds its state at steps outside it."""
    act = torch.relu if relu else torch.tanh
    D, N, H = h0.shape
    projs = per_direction(proj, H)
    weights, biases = per_direction(w_hh), per_direction(b_hh)
    T = projs[0].shape[0]
    out = projs[0].new_empty((T, N, D * H))
    for d in range(D):
        cols = slice(d * H, (d + 1) * H)
        h = h0[d]
        for t in _steps(T, d):
            z = projs[d][t] + h @ weights[d].T
            new = act(z if biases is None else z + biases[d])
            inside = _inside(lengths, t)
            h = new if inside is None else torch.where(inside, new, h)
            out[t, :, cols] = h
    return out


def activation_grad(g, y, relu: bool):
    """dz = g ⊙ act'(z), from the output y = act(z); relu' as torch's threshold_backward (a NaN
    output passes its gradient)."""
    return torch.where(y <= 0, 0, g) if relu else g * (1 - y * y)


def recurrence_backward(dout, out, w_hh, lengths, relu: bool):
    """Returns (dz, dh0): dz_t = (dout_t + dz_{t+1} W_hh) ⊙ act'(out_t), walking time backwards;
    a held step (outside its sequence) has dz = 0 and passes its gradient through."""
    weights = per_direction(w_hh)
    D, H = len(weights), weights[0].shape[0]
    dz = torch.empty_like(out, memory_format=torch.contiguous_format)
    dh0 = out.new_empty((D, out.shape[1], H))
    for d in range(D):
        cols = slice(d * H, (d + 1) * H)
        carried = torch.zeros_like(dh0[d])
        for t in reversed(_steps(out.shape[0], d)):
            y = out[t, :, cols]
            g = dout[t, :, cols] + carried
            dz_t = activation_grad(g, y, relu)
            inside = _inside(lengths, t)
            if inside is not None:
                dz_t = torch.where(inside, dz_t, 0)
            dz[t, :, cols] = dz_t
            carried = dz_t @ weights[d]
            if inside is not None:
                carried = torch.where(inside, carried, g)
        dh0[d] = carried
    return dz, dh0


def rnn_cell(x, h, w_ih, w_hh, b_ih, b_hh, relu: bool) -> torch.Tensor:
    """One step: act(x W_ihᵀ + b_ih + h W_hhᵀ + b_hh); h None means zeros."""
    z = x @ w_ih.T
    if h is not None:
        z = z + h @ w_hh.T
    if b_ih is not None:
        z = z + b_ih + b_hh
    return torch.relu(z) if relu else torch.tanh(z)
