"""Triton softmax / log-softmax with temperature: one program per row.

Forward reads the row once for the normaliser (an online max and sum kept per lane and
merged at the end) and once more to write the output. The row statistics helper
(row_stats) and the probability formula (probs) are shared with the sampling kernels, so
both see bit-identical probabilities.
"""
import torch
import triton
import triton.language as tl

from fastrnn.backends import interpreter_enabled


def block_size(V: int) -> int:
    """Tile width along the vocabulary; the sampling kernels must use the same one."""
    cap = 1024 if interpreter_enabled() else 4096
    return min(cap, triton.next_power_of_2(V))


@triton.jit
def row_stats(row_ptr, V, t, BLOCK: tl.constexpr):
    """Max M and normaliser S of z = x / t over one row; NaN count; first argmax of z."""
    lanes = tl.arange(0, BLOCK)
    m = tl.full([BLOCK], float("-inf"), tl.float32)
    s = tl.zeros([BLOCK], tl.float32)
    best_i = tl.full([BLOCK], 2147483647, tl.int32)
    nans = tl.zeros([BLOCK], tl.int32)
    for start in range(0, V, BLOCK):
        offs = start + lanes
        z = tl.load(row_ptr + offs, mask=offs < V, other=float("-inf")).to(tl.float32) / t
        is_nan = z != z
        nans += is_nan.to(tl.int32)
        z = tl.where(is_nan, float("-inf"), z)
        m_new = tl.maximum(m, z)
        # A lane that has seen only -inf keeps s = 0: shift by 0 there, not by -inf.
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - shift) + tl.exp(z - shift)
        best_i = tl.where(z > m, offs, best_i)
        m = m_new
    M = tl.max(m, axis=0)
    S = tl.sum(s * tl.exp(m - tl.where(M == float("-inf"), 0.0, M)), axis=0)
    argmax = tl.min(tl.where(m == M, best_i, 2147483647), axis=0)
    return M, S, tl.sum(nans, axis=0), argmax


@triton.jit
def probs(x, t, M, S):
    return tl.exp(x.to(tl.float32) / t - M) / S


@triton.jit
def _softmax_fwd_kernel(x_ptr, t_ptr, y_ptr, V, stride_x, stride_y, LOG: tl.constexpr,
                        BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x
    t = tl.load(t_ptr + row)
    M, S, _, _ = row_stats(x_row, V, t, BLOCK)
    log_S = tl.log(S)
    for start in range(0, V, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(x_row + offs, mask=offs < V, other=0.0)
        if LOG:
            y = x.to(tl.float32) / t - M - log_S
        else:
            y = probs(x, t, M, S)
        tl.store(y_ptr + row * stride_y + offs, y.to(y_ptr.dtype.element_ty), mask=offs < V)


@triton.jit
def _softmax_bwd_kernel(dy_ptr, y_ptr, t_ptr, dx_ptr, V, LOG: tl.constexpr, BLOCK: tl.constexpr):
    # softmax:      dx = y * (dy - sum(dy * y)) / t
    # log-softmax:  dx = (dy - exp(y) * sum(dy)) / t
    row = tl.program_id(0).to(tl.int64)
    base = row * V
    t = tl.load(t_ptr + row)
    acc = tl.zeros([BLOCK], tl.float32)
    for start in range(0, V, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        dy = tl.load(dy_ptr + base + offs, mask=offs < V, other=0.0).to(tl.float32)
        if LOG:
            acc += dy
        else:
            acc += dy * tl.load(y_ptr + base + offs, mask=offs < V, other=0.0).to(tl.float32)
    total = tl.sum(acc, axis=0)
    for start in range(0, V, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        dy = tl.load(dy_ptr + base + offs, mask=offs < V, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + base + offs, mask=offs < V, other=0.0).to(tl.float32)
        if LOG:
            dx = (dy - tl.exp(y) * total) / t
        else:
            dx = y * (dy - total) / t
        tl.store(dx_ptr + base + offs, dx.to(dx_ptr.dtype.element_ty), mask=offs < V)


def forward(x: torch.Tensor, temperature: torch.Tensor, log: bool) -> torch.Tensor:
    """x (R, V) with unit stride along V; temperature (R,) float32 > 0."""
    R, V = x.shape
    y = torch.empty_like(x, memory_format=torch.contiguous_format)
    if R:
        _softmax_fwd_kernel[(R,)](x, temperature, y, V, x.stride(0), y.stride(0), LOG=log,
                                  BLOCK=block_size(V))
    return y


def backward(grad: torch.Tensor, y: torch.Tensor, temperature: torch.Tensor, log: bool) -> torch.Tensor:
    """grad, y (R, V) contiguous."""
    R, V = y.shape
    dx = torch.empty_like(y)
    if R:
        _softmax_bwd_kernel[(R,)](grad, y, temperature, dx, V, LOG=log, BLOCK=block_size(V))
    return dx
