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


def lstm_forward(proj, h0, c0, w_hh, lengths, b_hh=None):
    """(out, cells, gates) as kernels/launch.py's lstm_forward computes them: per direction,
    [i f g o] = proj_t + b_hh + h_{t-1} W_hhᵀ, c_t = σ(f) c_{t-1} + σ(i) tanh(g),
    h_t = σ(o) tanh(c_t); gates holds the four activations. Sequences hold h and c outside
    their own steps."""
    D, N, H = h0.shape
    projs = per_direction(proj, 4 * H)
    weights, biases = per_direction(w_hh), per_direction(b_hh)
    T = projs[0].shape[0]
    out, cells = projs[0].new_empty((T, N, D * H)), projs[0].new_empty((T, N, D * H))
    gates = projs[0].new_empty((T, N, D * 4 * H))
    for d in range(D):
        cols, gate_cols = slice(d * H, (d + 1) * H), slice(4 * d * H, 4 * (d + 1) * H)
        h, c = h0[d], c0[d]
        for t in _steps(T, d):
            z = projs[d][t] + h @ weights[d].T
            if biases is not None:
                z = z + biases[d]
            z_i, z_f, z_g, z_o = z.chunk(4, dim=1)
            acts = torch.cat([torch.sigmoid(z_i), torch.sigmoid(z_f), torch.tanh(z_g),
                              torch.sigmoid(z_o)], dim=1)
            g_i, g_f, g_g, g_o = acts.chunk(4, dim=1)
            c_new = g_f * c + g_i * g_g
            h_new = g_o * torch.tanh(c_new)
            inside = _inside(lengths, t)
            h = h_new if inside is None else torch.where(inside, h_new, h)
            c = c_new if inside is None else torch.where(inside, c_new, c)
            out[t, :, cols], cells[t, :, cols], gates[t, :, gate_cols] = h, c, acts
    return out, cells, gates


def lstm_backward(dout, dcells, out, cells, gates, c0, w_hh, lengths):
    """(dz, dh0, dc0) as kernels/launch.py's lstm_backward computes them, walking time
    backwards: a held step (outside its sequence) has dz = 0 and passes dL/dh and dL/dc
    through."""
    weights = per_direction(w_hh)
    D, H = len(weights), weights[0].shape[1]
    T = out.shape[0]
    dz = gates.new_empty(gates.shape)
    dh0, dc0 = c0.new_empty(c0.shape), c0.new_empty(c0.shape)
    for d in range(D):
        cols, gate_cols = slice(d * H, (d + 1) * H), slice(4 * d * H, 4 * (d + 1) * H)
        dh, dc = torch.zeros_like(c0[d]), torch.zeros_like(c0[d])
        steps = list(_steps(T, d))
        for k in reversed(range(T)):
            t = steps[k]
            c_prev = cells[steps[k - 1], :, cols] if k > 0 else c0[d]
            g_i, g_f, g_g, g_o = gates[t, :, gate_cols].chunk(4, dim=1)
            g = dout[t, :, cols] + dh
            dc_t = dc + dcells[t, :, cols]
            tc = torch.tanh(cells[t, :, cols])
            dc_in = dc_t + g * g_o * (1 - tc * tc)
            dz_t = torch.cat([dc_in * g_g * g_i * (1 - g_i), dc_in * c_prev * g_f * (1 - g_f),
                              dc_in * g_i * (1 - g_g * g_g), g * tc * g_o * (1 - g_o)], dim=1)
            inside = _inside(lengths, t)
            if inside is not None:
                dz_t = torch.where(inside, dz_t, 0)
            dz[t, :, gate_cols] = dz_t
            dh, dc = dz_t @ weights[d], dc_in * g_f
            if inside is not None:
                dh, dc = torch.where(inside, dh, g), torch.where(inside, dc, dc_t)
        dh0[d], dc0[d] = dh, dc
    return dz, dh0, dc0


def lstm_cell(x, h, c, w_ih, w_hh, b_ih, b_hh):
    """One LSTM step as kernels/launch.py's lstm_cell_forward: (h', c', gates); h and c None
    mean zeros."""
    z = x @ w_ih.T
    if h is not None:
        z = z + h @ w_hh.T
    if b_ih is not None:
        z = z + b_ih + b_hh
    z_i, z_f, z_g, z_o = z.chunk(4, dim=1)
    gates = torch.cat([torch.sigmoid(z_i), torch.sigmoid(z_f), torch.tanh(z_g),
                       torch.sigmoid(z_o)], dim=1)
    g_i, g_f, g_g, g_o = gates.chunk(4, dim=1)
    c_new = g_i * g_g if c is None else g_f * c + g_i * g_g
    return g_o * torch.tanh(c_new), c_new, gates


def gru_forward(proj, h0, w_hh, lengths, b_hh=None):
    """(out, gates) as kernels/launch.py's gru_forward computes them: per direction,
    q = h_{t-1} W_hhᵀ + b_hh, r = σ(P_r + q_r), z = σ(P_z + q_z), n = tanh(P_n + r q_n),
    h_t = (1 - z) n + z h_{t-1}; gates holds r, z, n and q_n. Sequences hold h outside their
    own steps."""
    D, N, H = h0.shape
    projs = per_direction(proj, 3 * H)
    weights, biases = per_direction(w_hh), per_direction(b_hh)
    T = projs[0].shape[0]
    out = projs[0].new_empty((T, N, D * H))
    gates = projs[0].new_empty((T, N, D * 4 * H))
    for d in range(D):
        cols, gate_cols = slice(d * H, (d + 1) * H), slice(4 * d * H, 4 * (d + 1) * H)
        h = h0[d]
        for t in _steps(T, d):
            q = h @ weights[d].T
            if biases is not None:
                q = q + biases[d]
            p_r, p_z, p_n = projs[d][t].chunk(3, dim=1)
            q_r, q_z, q_n = q.chunk(3, dim=1)
            r, z = torch.sigmoid(p_r + q_r), torch.sigmoid(p_z + q_z)
            n = torch.tanh(p_n + r * q_n)
            h_new = (1 - z) * n + z * h
            inside = _inside(lengths, t)
            h = h_new if inside is None else torch.where(inside, h_new, h)
            out[t, :, cols], gates[t, :, gate_cols] = h, torch.cat([r, z, n, q_n], dim=1)
    return out, gates


def gru_backward(dout, out, gates, h0, w_hh, lengths):
    """(dz, dh0) as kernels/launch.py's gru_backward computes them: dz (T, N, D*4H) holds per
    direction dq_r, dq_z, dq_n (the hidden products' gradients) and dL/dP_n; a held step has
    dz = 0 and passes dL/dh through."""
    weights = per_direction(w_hh)
    D, H = len(weights), weights[0].shape[1]
    T = out.shape[0]
    dz = gates.new_empty(gates.shape)
    dh0 = h0.new_empty(h0.shape)
    for d in range(D):
        cols, gate_cols = slice(d * H, (d + 1) * H), slice(4 * d * H, 4 * (d + 1) * H)
        dh = torch.zeros_like(h0[d])
        steps = list(_steps(T, d))
        for k in reversed(range(T)):
            t = steps[k]
            h_prev = out[steps[k - 1], :, cols] if k > 0 else h0[d]
            r, z, n, q_n = gates[t, :, gate_cols].chunk(4, dim=1)
            g = dout[t, :, cols] + dh
            d_n = g * (1 - z) * (1 - n * n)
            d_z = g * (h_prev - n) * z * (1 - z)
            d_r = d_n * q_n * r * (1 - r)
            dz_t = torch.cat([d_r, d_z, d_n * r, d_n], dim=1)
            inside = _inside(lengths, t)
            if inside is not None:
                dz_t = torch.where(inside, dz_t, 0)
            dz[t, :, gate_cols] = dz_t
            dh_new = dz_t[:, :3 * H] @ weights[d] + g * z
            dh = dh_new if inside is None else torch.where(inside, dh_new, g)
        dh0[d] = dh
    return dz, dh0


def gru_cell(x, h, w_ih, w_hh, b_ih, b_hh):
    """One GRU step as kernels/launch.py's gru_cell_forward: (h', gates); h None means zeros."""
    a = x @ w_ih.T
    q = torch.zeros_like(a) if h is None else h @ w_hh.T
    if b_ih is not None:
        a, q = a + b_ih, q + b_hh
    a_r, a_z, a_n = a.chunk(3, dim=1)
    q_r, q_z, q_n = q.chunk(3, dim=1)
    r, z = torch.sigmoid(a_r + q_r), torch.sigmoid(a_z + q_z)
    n = torch.tanh(a_n + r * q_n)
    h_prev = torch.zeros_like(n) if h is None else h
    return (1 - z) * n + z * h_prev, torch.cat([r, z, n, q_n], dim=1)
