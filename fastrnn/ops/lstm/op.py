"""The LSTM layer as torch.library custom ops: fastrnn::lstm_layer and its backward.

The ops take the backend name chosen by fastrnn.backends and run that backend's
implementation. Every backend module (reference_backend below, .triton, .ext) provides

    forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths) -> (y, h_T, c_T, workspace)
    backward(grad_y, grad_hT, grad_cT, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, y, workspace,
             lengths) -> (dx, dh0, dc0, dw_ih, dw_hh, dbias, dw_hr)

Shapes: x (T, B, I); h0 (B, P); c0 (B, H); w_ih (4H, I); w_hh (4H, P); biases (4H,);
w_hr (P, H) or None, where P = proj_size or H; lengths (B,) int64 on x's device or None.
workspace is (T, B, 5H) in float32 (float64 for float64 inputs): the activations
i, f, g, o and the cell state c_t of every step, which is all backward needs.
dbias is the gradient of the summed gate bias (b_ih and b_hh receive the same gradient);
dw_hr is an empty tensor when w_hr is None. Outputs at padded steps (t >= lengths[b]) are
zero, and backends ignore grad_y there.

The backward op is differentiable too (double backward, on every backend): see
fastrnn/ops/layer_autograd.py.
"""
import importlib
from typing import Optional, Tuple

import torch
from torch import Tensor

from fastrnn import errors
from fastrnn.ops.layer_autograd import (first_derivatives, register_double_backward, register_flops,
                                       run_composable, transform_active, variables)
from fastrnn.ops.lstm import reference

GATES = 4


def workspace_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class reference_backend:
    """The reference layer behind the op interface (CPU fallback, and a test oracle)."""

    @staticmethod
    def forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths):
        T, B, H = x.shape[0], x.shape[1], w_hh.shape[0] // GATES
        workspace = x.new_empty(T, B, 5 * H, dtype=workspace_dtype(x.dtype))
        with torch.no_grad():
            y, h_t, c_t = reference.lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths,
                                               workspace=workspace)
        return y, h_t, c_t, workspace

    @staticmethod
    def backward(grad_y, grad_hT, grad_cT, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, y, workspace,
                 lengths):
        dx, dh0, dc0, dw_ih, dw_hh, dbias, dw_hr = reference.lstm_layer_backward(
            grad_y, grad_hT, grad_cT, x, h0, c0, w_ih, w_hh, w_hr, y, workspace, lengths)
        return dx, dh0, dc0, dw_ih, dw_hh, dbias, (dw_hr if dw_hr is not None else x.new_empty(0))


def backend_module(name: str):
    if name == "reference":
        return reference_backend
    return importlib.import_module(f"fastrnn.ops.lstm.{name}")


@torch.library.custom_op("fastrnn::lstm_layer", mutates_args=())
def lstm_layer_op(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor,
                  b_ih: Optional[Tensor], b_hh: Optional[Tensor], w_hr: Optional[Tensor],
                  lengths: Optional[Tensor], backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    errors.check_lengths(lengths, x.shape[0], "fastrnn::lstm_layer")   # also under torch.compile
    return backend_module(backend).forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths)


@lstm_layer_op.register_fake
def _(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, backend):
    T, B, H = x.shape[0], x.shape[1], w_hh.shape[0] // GATES
    P = h0.shape[-1]
    return (x.new_empty(T, B, P), h0.new_empty(h0.shape), c0.new_empty(c0.shape),
            x.new_empty(T, B, 5 * H, dtype=workspace_dtype(x.dtype)))


def lstm_layer(x: Tensor, h0: Tensor, c0: Tensor, w_ih: Tensor, w_hh: Tensor,
               b_ih: Optional[Tensor], b_hh: Optional[Tensor], w_hr: Optional[Tensor],
               lengths: Optional[Tensor], backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    """(y, h_T, c_T) of the layer: lstm_layer_op on `backend`, or, under a torch.func
    transform or forward-mode AD, the reference in the workspace precision
    (layer_autograd.transform_active)."""
    tensors = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)
    if transform_active(*tensors):
        return run_composable(reference.lstm_layer, tensors, lengths,
                              workspace_dtype=workspace_dtype(x.dtype))
    y, h_t, c_t, _ = lstm_layer_op(*tensors, lengths, backend)
    return y, h_t, c_t


@torch.library.custom_op("fastrnn::lstm_layer_backward", mutates_args=())
def lstm_layer_backward_op(grad_y: Tensor, grad_hT: Tensor, grad_cT: Tensor, x: Tensor, h0: Tensor,
                           c0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                           b_hh: Optional[Tensor], w_hr: Optional[Tensor], y: Tensor,
                           workspace: Tensor, lengths: Optional[Tensor], backend: str
                           ) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    return backend_module(backend).backward(grad_y, grad_hT, grad_cT, x, h0, c0, w_ih, w_hh, b_ih,
                                            b_hh, w_hr, y, workspace, lengths)


@lstm_layer_backward_op.register_fake
def _(grad_y, grad_hT, grad_cT, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, y, workspace, lengths,
      backend):
    dw_hr = w_hr.new_empty(w_hr.shape) if w_hr is not None else x.new_empty(0)
    return (x.new_empty(x.shape), h0.new_empty(h0.shape), c0.new_empty(c0.shape),
            w_ih.new_empty(w_ih.shape), w_hh.new_empty(w_hh.shape), w_hh.new_empty(w_hh.shape[0]),
            dw_hr)


def setup_context(ctx, inputs, output):
    """Autograd context of an LSTM layer op: this module's (whose last input is the backend
    name) and the extension's fastrnn::ext_lstm_forward (same inputs, no backend)."""
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths = inputs[:9]
    y, _, _, workspace = output
    ctx.backend = inputs[9] if len(inputs) > 9 else None
    ctx.has = (b_ih is not None, b_hh is not None, w_hr is not None)
    ctx.mark_non_differentiable(workspace)
    # Unused output gradients arrive as None (handled in backward), so autograd does not
    # fill a zero gradient as large as the workspace on every call.
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, y, workspace)


def input_gradients(ctx, run_backward, grad_y, grad_hT, grad_cT):
    """Gradients of (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths) from a backward op
    with this module's backward interface (run_backward takes its arguments)."""
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths, y, workspace = ctx.saved_tensors
    grad_y = torch.zeros_like(y) if grad_y is None else grad_y.contiguous()
    grad_hT = torch.zeros_like(h0) if grad_hT is None else grad_hT.contiguous()
    grad_cT = torch.zeros_like(c0) if grad_cT is None else grad_cT.contiguous()
    dx, dh0, dc0, dw_ih, dw_hh, dbias, dw_hr = run_backward(
        grad_y, grad_hT, grad_cT, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, y, workspace, lengths)
    has_b_ih, has_b_hh, has_w_hr = ctx.has
    return (dx, dh0, dc0, dw_ih, dw_hh, dbias if has_b_ih else None, dbias if has_b_hh else None,
            dw_hr if has_w_hr else None, None)


def _backward(ctx, grad_y, grad_hT, grad_cT, _grad_workspace):
    def run_backward(*args):
        return lstm_layer_backward_op(*args, ctx.backend)
    return input_gradients(ctx, run_backward, grad_y, grad_hT, grad_cT) + (None,)


lstm_layer_op.register_autograd(_backward, setup_context=setup_context)


def differentiable_backward(grad_y, grad_hT, grad_cT, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                            y, workspace, lengths, *_backend):
    """The outputs of lstm_layer_backward_op, computed by differentiating the reference layer
    (y and workspace are recomputed, not read), so that they can be differentiated again."""
    acc = workspace_dtype(x.dtype)
    cotangents = variables(acc, grad_y, grad_hT, grad_cT)
    x_, h0_, c0_, w_ih_, w_hh_, b_ih_, b_hh_, w_hr_ = variables(acc, x, h0, c0, w_ih, w_hh, b_ih,
                                                                b_hh, w_hr)
    # dbias is the gradient of the summed gate bias: that of a zero bias added to it.
    bias = torch.zeros(w_hh.shape[0], dtype=acc, device=x.device, requires_grad=True)
    outputs = reference.lstm_layer(x_, h0_, c0_, w_ih_, w_hh_, bias if b_ih_ is None else b_ih_ + bias,
                                   b_hh_, w_hr_, lengths)
    wrt = [x_, h0_, c0_, w_ih_, w_hh_, bias] + ([w_hr_] if w_hr is not None else [])
    grads = first_derivatives(outputs, cotangents, wrt)
    dtypes = (x.dtype, h0.dtype, c0.dtype, w_ih.dtype, w_hh.dtype, w_hh.dtype, w_hh.dtype)
    grads = [g.to(dtype) for g, dtype in zip(grads, dtypes)]
    return tuple(grads) + (() if w_hr is not None else (x.new_zeros(0),))


register_double_backward(lstm_layer_backward_op, differentiable_backward, num_differentiable=11)
# FLOPs for torch.utils.flop_counter: x and the weight matrices (w_ih, w_hh, w_hr).
register_flops("fastrnn::lstm_layer", x_index=0, weight_indices=(3, 4, 7), passes=1)
register_flops("fastrnn::lstm_layer_backward", x_index=3, weight_indices=(6, 7, 10), passes=2)
