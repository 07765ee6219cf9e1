"""Reference GRU layer in plain PyTorch: the exact math of torch.nn.GRU, written for clarity.

Tests and benchmarks import it; the "reference" backend runs it. One layer, one direction,
time-major input. Gate order r, z, n; b_hn sits inside the reset product:

    r = sigmoid(x W_ir + b_ir + h W_hr + b_hr)
    z = sigmoid(x W_iz + b_iz + h W_hz + b_hz)
    n = tanh(x W_in + b_in + r * (h W_hn + b_hn))
    h' = (1 - z) * n + z * h

With `lengths`, sequence b runs only its first lengths[b] steps: later outputs are zero
and its final state is the state after its own last step.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor


def gru_cell(x_proj: Tensor, h: Tensor, w_hh: Tensor,
             b_hh: Optional[Tensor]) -> Tuple[Tensor, Tuple[Tensor, ...]]:
    """One step. x_proj already holds x W_ih^T + b_ih. Returns h' and (r, z, n, h W_hn + b_hn)."""
    h_proj = h @ w_hh.t()
    if b_hh is not None:
        h_proj = h_proj + b_hh
    xr, xz, xn = x_proj.chunk(3, dim=-1)
    hr, hz, hn = h_proj.chunk(3, dim=-1)
    r = torch.sigmoid(xr + hr)
    z = torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    h_new = (1 - z) * n + z * h
    return h_new, (r, z, n, hn)


def gru_layer(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor,
              b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None,
              lengths: Optional[Tensor] = None,
              workspace: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """x (T, B, I), h0 (B, H) -> y (T, B, H), h_T.

    Differentiable with torch.autograd. If `workspace` (T, B, 4H) is given, r, z, n and
    h W_hn + b_hn of every step are written into it (the layout the fused kernels save).
    """
    T = x.shape[0]
    x_proj = torch.nn.functional.linear(x, w_ih, b_ih)
    h = h0
    outputs = []
    for t in range(T):
        h_new, acts = gru_cell(x_proj[t], h, w_hh, b_hh)
        if workspace is not None:
            workspace[t] = torch.cat(acts, dim=-1)
        if lengths is not None:
            active = (lengths > t).unsqueeze(-1)
            h = torch.where(active, h_new, h)
            h_new = h_new * active
        else:
            h = h_new
        outputs.append(h_new)
    return torch.stack(outputs), h


def gru_layer_backward(grad_y: Tensor, grad_hT: Tensor, x: Tensor, h0: Tensor, w_ih: Tensor,
                       w_hh: Tensor, y: Tensor, workspace: Tensor,
                       lengths: Optional[Tensor] = None):
    """Backward through time from the saved activations: the formulas the kernels implement.

    Returns dx, dh0, dw_ih, dw_hh, db_ih, db_hh. State and gate gradients are computed in
    the workspace dtype (fp32, or fp64).
    """
    T, B = x.shape[0], x.shape[1]
    H = w_hh.shape[1]
    acc = workspace.dtype
    w_hh_a = w_hh.to(acc)
    dh_state = grad_hT.to(acc)   # gradient flowing into the state h_t from later steps
    d_input_gates = workspace.new_zeros(T, B, 3 * H)    # d(x W_ih^T + b_ih)
    d_hidden_gates = workspace.new_zeros(T, B, 3 * H)   # d(h W_hh^T + b_hh)
    for t in range(T - 1, -1, -1):
        active = (lengths > t).unsqueeze(-1) if lengths is not None else torch.ones(
            B, 1, dtype=torch.bool, device=x.device)
        r, z, n, hn = workspace[t].split(H, dim=-1)
        h_prev = (y[t - 1] if t > 0 else h0).to(acc)
        dh = dh_state + grad_y[t].to(acc) * active
        dn_pre = dh * (1 - z) * (1 - n * n)
        dr_pre = dn_pre * hn * r * (1 - r)
        dz_pre = dh * (h_prev - n) * z * (1 - z)
        d_input_gates[t] = torch.cat([dr_pre, dz_pre, dn_pre], dim=-1) * active
        d_hidden_gates[t] = torch.cat([dr_pre, dz_pre, dn_pre * r], dim=-1) * active
        dh_prev = dh * z + d_hidden_gates[t] @ w_hh_a
        dh_state = torch.where(active, dh_prev, dh_state)
    h_prev_all = torch.cat([h0.unsqueeze(0), y[:-1]], dim=0).to(acc)
    gi = d_input_gates.reshape(T * B, 3 * H)
    gh = d_hidden_gates.reshape(T * B, 3 * H)
    dx = (gi @ w_ih.to(acc)).reshape(T, B, -1)
    dw_ih = gi.t() @ x.reshape(T * B, -1).to(acc)
    dw_hh = gh.t() @ h_prev_all.reshape(T * B, -1)
    return (dx.to(x.dtype), dh_state.to(h0.dtype), dw_ih.to(w_ih.dtype), dw_hh.to(w_hh.dtype),
            gi.sum(0).to(w_hh.dtype), gh.sum(0).to(w_hh.dtype))
