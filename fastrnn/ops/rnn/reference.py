"""Reference Elman RNN layer in plain PyTorch: the exact math of torch.nn.RNN, written for
clarity.

Tests and benchmarks import it; the "reference" backend runs it. One layer, one direction,
time-major input, nonlinearity "tanh" or "relu":

    h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh)

With `lengths`, sequence b runs only its first lengths[b] steps: later outputs are zero
and its final state is the state after its own last step.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

NONLINEARITIES = ("tanh", "relu")


def activation(nonlinearity: str):
    """The elementwise function of `nonlinearity`; ValueError for any other name."""
    if nonlinearity == "tanh":
        return torch.tanh
    if nonlinearity == "relu":
        return torch.relu
    raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")


def activation_grad(h: Tensor, nonlinearity: str) -> Tensor:
    """d act / d pre-activation written with the output h = act(pre): 1 - h^2 for tanh;
    for relu 1 where h > 0, else 0 (torch's relu backward also gives 0 at pre = 0)."""
    if nonlinearity == "tanh":
        return 1 - h * h
    activation(nonlinearity)  # raises for an unknown name
    return (h > 0).to(h.dtype)


def rnn_cell(x_proj: Tensor, h: Tensor, w_hh: Tensor, b_hh: Optional[Tensor],
             nonlinearity: str) -> Tensor:
    """One step. x_proj (B, H) already holds x W_ih^T + b_ih; h (B, H). Returns h'."""
    pre = x_proj + h @ w_hh.t()
    if b_hh is not None:
        pre = pre + b_hh
    return activation(nonlinearity)(pre)


def rnn_layer(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor,
              b_ih: Optional[Tensor] = None, b_hh: Optional[Tensor] = None,
              lengths: Optional[Tensor] = None, nonlinearity: str = "tanh",
              workspace: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
    """x (T, B, I), h0 (B, H), w_ih (H, I), w_hh (H, H), biases (H,) -> y (T, B, H), h_T (B, H).

    Differentiable with torch.autograd. If `workspace` (T, B, H) is given, the h state
    after every step is written into it (h_t at active steps: the layout the fused kernels
    save, in their fp32/fp64 accumulation dtype).
    """
    T = x.shape[0]
    x_proj = torch.nn.functional.linear(x, w_ih, b_ih)
    h = h0
    outputs = []
    for t in range(T):
        h_new = rnn_cell(x_proj[t], h, w_hh, b_hh, nonlinearity)
        if lengths is not None:
            active = (lengths > t).unsqueeze(-1)
            h = torch.where(active, h_new, h)
            h_new = h_new * active
        else:
            h = h_new
        if workspace is not None:
            workspace[t] = h
        outputs.append(h_new)
    return torch.stack(outputs), h


def rnn_layer_backward(grad_y: Tensor, grad_hT: Tensor, x: Tensor, h0: Tensor, w_ih: Tensor,
                       w_hh: Tensor, workspace: Tensor, lengths: Optional[Tensor] = None,
                       nonlinearity: str = "tanh"):
    """Backward through time from the saved states: the formulas the kernels implement.

    With d_t the gradient of step t's pre-activation (zero at padded steps):
        d_t = (dh_t + grad_y_t) * act'(h_t),  dh_{t-1} = d_t W_hh  (dh_T = grad_hT)
        dx = d W_ih, dW_ih = d^T x, dW_hh = d^T h_{t-1}, dbias = sum of d
    dbias is the gradient of b_ih and of b_hh alike. Computed in the workspace dtype (fp32,
    or fp64); returns dx, dh0, dw_ih, dw_hh, dbias in the input dtypes.
    """
    T, B, I = x.shape
    H = w_hh.shape[0]
    acc = workspace.dtype
    w_hh_a = w_hh.to(acc)
    dh_state = grad_hT.to(acc)   # gradient flowing into the state h_t from later steps
    d_pre = workspace.new_zeros(workspace.shape)
    for t in range(T - 1, -1, -1):
        active = (lengths > t).unsqueeze(-1) if lengths is not None else torch.ones(
            B, 1, dtype=torch.bool, device=x.device)
        dh = dh_state + grad_y[t].to(acc) * active
        d_pre[t] = dh * activation_grad(workspace[t], nonlinearity) * active
        dh_state = torch.where(active, d_pre[t] @ w_hh_a, dh_state)
    # h_{t-1} of every step from the saved fp32/fp64 states (only read where d_t != 0, that
    # is at active steps, whose previous step is active too).
    h_prev_all = torch.cat([h0.to(acc).unsqueeze(0), workspace[:-1]], dim=0)
    d = d_pre.reshape(T * B, H)
    dx = (d @ w_ih.to(acc)).reshape(T, B, I)
    dw_ih = d.t() @ x.reshape(T * B, I).to(acc)
    dw_hh = d.t() @ h_prev_all.reshape(T * B, H)
    return (dx.to(x.dtype), dh_state.to(h0.dtype), dw_ih.to(w_ih.dtype), dw_hh.to(w_hh.dtype),
            d.sum(0).to(w_hh.dtype))
