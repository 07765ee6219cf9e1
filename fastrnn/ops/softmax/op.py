"""Softmax / log-softmax with temperature as torch.library custom ops, and the public
functions fastrnn.softmax and fastrnn.log_softmax.

fastrnn::softmax(x (R, V), temperature (R,) float32, log, backend) -> y (R, V) and its
backward op take the backend chosen by fastrnn.backends ("triton" or "reference"); both
backend modules provide forward(x, temperature, log) and backward(grad, y, temperature,
log). Gradients flow to x only; temperature is treated as a constant.
"""
import importlib
from typing import Optional, Union

import torch
from torch import Tensor

from fastrnn import backends, errors

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def backend_module(name: str):
    return importlib.import_module(f"fastrnn.ops.softmax.{name}")


@torch.library.custom_op("fastrnn::softmax", mutates_args=())
def softmax_op(x: Tensor, temperature: Tensor, log: bool, backend: str) -> Tensor:
    return backend_module(backend).forward(x, temperature, log)


@softmax_op.register_fake
def _(x, temperature, log, backend):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("fastrnn::softmax_backward", mutates_args=())
def softmax_backward_op(grad: Tensor, y: Tensor, temperature: Tensor, log: bool,
                        backend: str) -> Tensor:
    return backend_module(backend).backward(grad, y, temperature, log)


@softmax_backward_op.register_fake
def _(grad, y, temperature, log, backend):
    return torch.empty_like(y)


def _setup_context(ctx, inputs, output):
    _, temperature, log, backend = inputs
    ctx.log, ctx.backend = log, backend
    ctx.save_for_backward(output, temperature)


def _backward(ctx, grad):
    y, temperature = ctx.saved_tensors
    dx = softmax_backward_op(grad.contiguous(), y, temperature, ctx.log, ctx.backend)
    return dx, None, None, None


softmax_op.register_autograd(_backward, setup_context=_setup_context)


def _fail(fn: str, message: str, exc=ValueError):
    raise exc(f"fastrnn.{fn}: {message}")


def _row_temperature(fn: str, temperature: Union[float, Tensor], rows_shape, device) -> Tensor:
    """temperature as a (R,) float32 tensor, R = prod(rows_shape); must be > 0 (+inf is
    the uniform limit). A number is checked here; a tensor on its device, the error
    reported through fastrnn.errors (at once on CPU, deferred on CUDA: no host sync)."""
    R = 1
    for n in rows_shape:
        R *= n
    rule = "temperature must be > 0 (greedy decoding, T = 0, belongs to fastrnn.sample)"
    if isinstance(temperature, Tensor):
        if temperature.dim() != 0 and tuple(temperature.shape) != tuple(rows_shape):
            _fail(fn, f"temperature must be a number, a 0-d tensor or shaped like the rows "
                      f"{tuple(rows_shape)}, got {tuple(temperature.shape)}")
        if not temperature.dtype.is_floating_point:
            temperature = temperature.float()
        t = temperature.detach().to(device=device, dtype=torch.float32).expand(rows_shape).reshape(R)
        errors.report_first_row(~(t > 0), t,
                                lambda row, value: f"fastrnn.{fn}: {rule}, got {value:g} (row {row})")
    elif isinstance(temperature, (int, float)) and not isinstance(temperature, bool):
        if not temperature > 0:  # NaN fails too
            _fail(fn, f"{rule}, got {temperature}")
        t = torch.full((R,), float(temperature), dtype=torch.float32, device=device)
    else:
        _fail(fn, f"temperature must be a number or a Tensor, got {type(temperature).__name__}",
              TypeError)
    return t.contiguous()


def _softmax(fn: str, x: Tensor, temperature, dim: int, log: bool, backend: Optional[str]) -> Tensor:
    if not isinstance(x, Tensor):
        _fail(fn, f"x must be a Tensor, got {type(x).__name__}", TypeError)
    if x.dtype not in FLOAT_DTYPES:
        _fail(fn, f"x must be float16, bfloat16, float32 or float64, got {x.dtype}", TypeError)
    if x.dim() == 0:
        _fail(fn, "x must have at least one dimension")
    moved = x.movedim(dim, -1)
    rows_shape, V = moved.shape[:-1], moved.shape[-1]
    t = _row_temperature(fn, temperature, rows_shape, x.device)
    rows = moved.reshape(-1, V)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    needs = ("fp64",) if x.dtype == torch.float64 else ()
    chosen = backends.choose(x.device.type, "softmax", needs, backend)
    y = softmax_op(rows, t, log, chosen)
    return y.reshape(moved.shape).movedim(-1, dim)


def softmax(x: Tensor, temperature: Union[float, Tensor] = 1.0, dim: int = -1,
            backend: Optional[str] = None) -> Tensor:
    """softmax(x / temperature) along `dim`, fused; differentiable in x, works under
    torch.compile.

    Args:
        x: float tensor of any shape.
        temperature: > 0 (+inf: uniform over the finite entries): a number, or one value
            per row (x's shape without `dim`).
        dim: the dimension normalised.
        backend: "triton", "reference" or None (automatic: Triton for CUDA tensors).

    Example:
        >>> probs = fastrnn.softmax(torch.randn(8, 32000), temperature=0.7)
    """
    return _softmax("softmax", x, temperature, dim, False, backend)


def log_softmax(x: Tensor, temperature: Union[float, Tensor] = 1.0, dim: int = -1,
                backend: Optional[str] = None) -> Tensor:
    """log_softmax(x / temperature) along `dim`; same arguments as fastrnn.softmax.

    Example:
        >>> logp = fastrnn.log_softmax(torch.randn(8, 32000), temperature=2.0)
    """
    return _softmax("log_softmax", x, temperature, dim, True, backend)
