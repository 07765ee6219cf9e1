"""Reference LSTM layer in plain PyTorch: the exact math of torch.nn.LSTM, written for clarity.

Tests and benchmarks import it; the "reference" backend runs it. One layer, one direction,
time-major input.

    gates = x W_ih^T + b_ih + h W_hh^T + b_hh      split into i, f, g, o
    i, f, o = sigmoid(.), g = tanh(.)
    c' = f * c + i * g
    h' = o * tanh(c')            (then h' = h' W_hr^T when a projection is given)

With `lengths`, sequence b runs only its first lengths[b] steps: later outputs are zero
and its final state is the state after its own last step.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor


def lstm_cell(x_proj: Tensor, h: Tensor, c: Tensor, w_hh: Tensor, b_hh: Optional[Tensor],
              w_hr: Optional[Tensor]) -> Tuple[Tensor, Tensor, Tuple[Tensor, ...]]:
    """One step. x_proj already holds x W_ih^T + b_ih. Returns h', c' and the activations."""
    gates = x_proj + h @ w_hh.t()
    if b_hh is not None:
        gates = gates + b_hh
    i, f, g, o = gates.chunk(4, dim=-1)
    i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
    c_new = f * c + i * g
    h_new = o * torch.tanh(c_new)
    if w_hr is not None:
        h_new = h_new @ w_hr.t()
    return h_new, c_new, (i, f, g, o)


def lstm_layer(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor,
               b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None,
               w_hr: Optional[Tensor] = None, lengths: Optional[Tensor] = None,
               workspace: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """x (T, B, I), h0 (B, P or H), c0 (B, H) -> y (T, B, P or H), h_T, c_T.

    Differentiable with torch.autograd. If `workspace` (T, B, 5H) is given, the activations
    i, f, g, o and c_t of every step are written into it (the layout the fused kernels save).
    """
    T = x.shape[0]
    x_proj = torch.nn.functional.linear(x, w_ih, b_ih)
    h, c = h0, c0
    outputs = []
    for t in range(T):
        h_new, c_new, acts = lstm_cell(x_proj[t], h, c, w_hh, b_hh, w_hr)
        if workspace is not None:
            workspace[t] = torch.cat([*acts, c_new], dim=-1)
        if lengths is not None:
            active = (lengths > t).unsqueeze(-1)
            h = torch.where(active, h_new, h)
            c = torch.where(active, c_new, c)
            h_new = h_new * active
        else:
            h, c = h_new, c_new
        outputs.append(h_new)
    return torch.stack(outputs), h, c


def lstm_layer_backward(grad_y: Tensor, grad_hT: Tensor, grad_cT: Tensor, x: Tensor, h0: Tensor,
                        c0: Tensor, w_ih: Tensor, w_hh: Tensor, w_hr: Optional[Tensor], y: Tensor,
                        workspace: Tensor, lengths: Optional[Tensor] = None):
    """Backward through time from the saved activations: the formulas the kernels implement.

    Returns dx, dh0, dc0, dw_ih, dw_hh, dbias (of the summed gate bias), dw_hr (or None).
    State and gate gradients are computed in the workspace dtype (fp32, or fp64).
    """
    T, B = x.shape[0], x.shape[1]
    H = w_hh.shape[0] // 4
    acc = workspace.dtype
    w_hh_a = w_hh.to(acc)
    w_hr_a = w_hr.to(acc) if w_hr is not None else None
    dh_state = grad_hT.to(acc)   # gradient flowing into the state h_t from later steps
    dc_state = grad_cT.to(acc)
    dgates = workspace.new_zeros(T, B, 4 * H)
    dw_hr = torch.zeros_like(w_hr_a) if w_hr is not None else None
    for t in range(T - 1, -1, -1):
        active = (lengths > t).unsqueeze(-1) if lengths is not None else torch.ones(
            B, 1, dtype=torch.bool, device=x.device)
        i, f, g, o, c = workspace[t].split(H, dim=-1)
        c_prev = workspace[t - 1, :, 4 * H:] if t > 0 else c0.to(acc)
        dh = dh_state + grad_y[t].to(acc) * active
        tanh_c = torch.tanh(c)
        if w_hr is not None:
            dw_hr += (dh * active).t() @ (o * tanh_c)
            dh = dh @ w_hr_a
        dc = dc_state + dh * o * (1 - tanh_c * tanh_c)
        d_pre = torch.cat([dc * g * i * (1 - i), dc * c_prev * f * (1 - f),
                           dc * i * (1 - g * g), dh * tanh_c * o * (1 - o)], dim=-1)
        dgates[t] = d_pre * active
        dh_state = torch.where(active, dgates[t] @ w_hh_a, dh_state)
        dc_state = torch.where(active, dc * f, dc_state)
    h_prev = torch.cat([h0.unsqueeze(0), y[:-1]], dim=0).to(acc)
    flat = dgates.reshape(T * B, 4 * H)
    dx = (flat @ w_ih.to(acc)).reshape(T, B, -1)
    dw_ih = flat.t() @ x.reshape(T * B, -1).to(acc)
    dw_hh = flat.t() @ h_prev.reshape(T * B, -1)
    dbias = flat.sum(0)
    out = (dx.to(x.dtype), dh_state.to(h0.dtype), dc_state.to(c0.dtype), dw_ih.to(w_ih.dtype),
           dw_hh.to(w_hh.dtype), dbias.to(w_hh.dtype))
    return out + ((dw_hr.to(w_hr.dtype) if w_hr is not None else None),)
