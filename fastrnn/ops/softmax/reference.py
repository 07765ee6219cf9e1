"""Softmax and log-softmax with temperature in plain PyTorch (the CPU path and the oracle).

Rows are the last dimension; temperature is one positive value per row. Computed in
float32 (float64 for float64 inputs) and returned in the input dtype.
"""
import torch
from torch import Tensor


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def forward(x: Tensor, temperature: Tensor, log: bool) -> Tensor:
    z = x.to(_compute_dtype(x)) / temperature.to(_compute_dtype(x))[:, None]
    y = torch.log_softmax(z, dim=-1) if log else torch.softmax(z, dim=-1)
    return y.to(x.dtype)


def backward(grad: Tensor, y: Tensor, temperature: Tensor, log: bool) -> Tensor:
    dtype = _compute_dtype(y)
    g, out, t = grad.to(dtype), y.to(dtype), temperature.to(dtype)[:, None]
    if log:
        dx = (g - out.exp() * g.sum(-1, keepdim=True)) / t
    else:
        dx = out * (g - (g * out).sum(-1, keepdim=True)) / t
    return dx.to(y.dtype)
