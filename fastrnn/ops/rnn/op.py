"""The Elman RNN layer as torch.library custom ops: fastrnn::rnn_layer and its backward.

The ops take the backend name chosen by fastrnn.backends and run that backend's
implementation. Every backend module (reference_backend below, .triton, .ext) provides

    forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, nonlinearity) -> (y, h_T, workspace)
    backward(grad_y, grad_hT, x, h0, w_ih, w_hh, b_ih, b_hh, y, workspace, lengths,
             nonlinearity) -> (dx, dh0, dw_ih, dw_hh, dbias)

Shapes: x (T, B, I); h0 (B, H); w_ih (H, I); w_hh (H, H); biases (H,) or None; lengths
(B,) int64 on x's device or None; nonlinearity "tanh" or "relu". workspace is (T, B, H) in
float32 (float64 for float64 inputs): the h state after every step, which is all backward
needs (act' is written with the activation's output). dbias is the gradient of b_ih and of
b_hh alike (both enter the pre-activation the same way); zeros when the layer has no bias.
Outputs at padded steps (t >= lengths[b]) are zero, and backends ignore grad_y there.
"""
import importlib
from typing import Optional, Tuple

import torch
from torch import Tensor

from fastrnn import errors
from fastrnn.ops.layer_autograd import (first_derivatives, register_double_backward, register_flops,
                                       run_composable, transform_active, variables)
from fastrnn.ops.rnn import reference


def workspace_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


class reference_backend:
    """The reference layer behind the op interface (CPU fallback, and a test oracle)."""

    @staticmethod
    def forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, nonlinearity):
        T, B, H = x.shape[0], x.shape[1], w_hh.shape[0]
        workspace = x.new_empty(T, B, H, dtype=workspace_dtype(x.dtype))
        with torch.no_grad():
            y, h_t = reference.rnn_layer(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, nonlinearity,
                                         workspace=workspace)
        return y, h_t, workspace

    @staticmethod
    def backward(grad_y, grad_hT, x, h0, w_ih, w_hh, b_ih, b_hh, y, workspace, lengths,
                 nonlinearity):
        return reference.rnn_layer_backward(grad_y, grad_hT, x, h0, w_ih, w_hh, workspace,
                                            lengths, nonlinearity)


def backend_module(name: str):
    if name == "reference":
        return reference_backend
    return importlib.import_module(f"fastrnn.ops.rnn.{name}")


@torch.library.custom_op("fastrnn::rnn_layer", mutates_args=())
def rnn_layer_op(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
                 b_hh: Optional[Tensor], lengths: Optional[Tensor], nonlinearity: str,
                 backend: str) -> Tuple[Tensor, Tensor, Tensor]:
    errors.check_lengths(lengths, x.shape[0], "fastrnn::rnn_layer")   # also under torch.compile
    return backend_module(backend).forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, nonlinearity)


@rnn_layer_op.register_fake
def _(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, nonlinearity, backend):
    T, B, H = x.shape[0], x.shape[1], w_hh.shape[0]
    return (x.new_empty(T, B, H), h0.new_empty(h0.shape),
            x.new_empty(T, B, H, dtype=workspace_dtype(x.dtype)))


def rnn_layer(x: Tensor, h0: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Optional[Tensor],
              b_hh: Optional[Tensor], lengths: Optional[Tensor], nonlinearity: str, backend: str
              ) -> Tuple[Tensor, Tensor]:
    """(y, h_T) of the layer: rnn_layer_op on `backend`, or, under a torch.func transform or
    forward-mode AD, the reference in the workspace precision (layer_autograd.transform_active)."""
    if transform_active(x, h0, w_ih, w_hh, b_ih, b_hh):
        return run_composable(reference.rnn_layer, (x, h0, w_ih, w_hh, b_ih, b_hh), lengths,
                              nonlinearity, workspace_dtype=workspace_dtype(x.dtype))
    y, h_t, _ = rnn_layer_op(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, nonlinearity, backend)
    return y, h_t


@torch.library.custom_op("fastrnn::rnn_layer_backward", mutates_args=())
def rnn_layer_backward_op(grad_y: Tensor, grad_hT: Tensor, x: Tensor, h0: Tensor, w_ih: Tensor,
                          w_hh: Tensor, b_ih: Optional[Tensor], b_hh: Optional[Tensor], y: Tensor,
                          workspace: Tensor, lengths: Optional[Tensor], nonlinearity: str,
                          backend: str) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    return backend_module(backend).backward(grad_y, grad_hT, x, h0, w_ih, w_hh, b_ih, b_hh, y,
                                            workspace, lengths, nonlinearity)


@rnn_layer_backward_op.register_fake
def _(grad_y, grad_hT, x, h0, w_ih, w_hh, b_ih, b_hh, y, workspace, lengths, nonlinearity,
      backend):
    return (x.new_empty(x.shape), h0.new_empty(h0.shape), w_ih.new_empty(w_ih.shape),
            w_hh.new_empty(w_hh.shape), w_hh.new_empty(w_hh.shape[0]))


def setup_context(ctx, inputs, output):
    """Autograd context of an RNN layer op: this module's (whose last input is the backend
    name) and the extension's fastrnn::ext_rnn_forward (same inputs, no backend)."""
    x, h0, w_ih, w_hh, b_ih, b_hh, lengths, nonlinearity = inputs[:8]
    y, _, workspace = output
    ctx.nonlinearity = nonlinearity
    ctx.backend = inputs[8] if len(inputs) > 8 else None
    ctx.has_bias = (b_ih is not None, b_hh is not None)
    ctx.mark_non_differentiable(workspace)
    # Unused output gradients arrive as None (handled in backward), so autograd does not
    # fill a zero gradient as large as the workspace on every call.
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, y, workspace)


def input_gradients(ctx, run_backward, grad_y, grad_hT):
    """Gradients of (x, h0, w_ih, w_hh, b_ih, b_hh, lengths, nonlinearity) from a backward op
    with this module's backward interface (run_backward takes its arguments)."""
    x, h0, w_ih, w_hh, b_ih, b_hh, lengths, y, workspace = ctx.saved_tensors
    grad_y = torch.zeros_like(y) if grad_y is None else grad_y.contiguous()
    grad_hT = torch.zeros_like(h0) if grad_hT is None else grad_hT.contiguous()
    dx, dh0, dw_ih, dw_hh, dbias = run_backward(grad_y, grad_hT, x, h0, w_ih, w_hh, b_ih, b_hh,
                                                y, workspace, lengths, ctx.nonlinearity)
    has_b_ih, has_b_hh = ctx.has_bias
    return (dx, dh0, dw_ih, dw_hh, dbias if has_b_ih else None, dbias if has_b_hh else None,
            None, None)


def _backward(ctx, grad_y, grad_hT, _grad_workspace):
    def run_backward(*args):
        return rnn_layer_backward_op(*args, ctx.backend)
    return input_gradients(ctx, run_backward, grad_y, grad_hT) + (None,)


rnn_layer_op.register_autograd(_backward, setup_context=setup_context)


def differentiable_backward(grad_y, grad_hT, x, h0, w_ih, w_hh, b_ih, b_hh, y, workspace, lengths,
                            nonlinearity, *_backend):
    """The outputs of rnn_layer_backward_op, computed by differentiating the reference layer
    (y and workspace are recomputed, not read), so that they can be differentiated again
    (double backward, fastrnn/ops/layer_autograd.py)."""
    acc = workspace_dtype(x.dtype)
    cotangents = variables(acc, grad_y, grad_hT)
    x_, h0_, w_ih_, w_hh_, b_ih_, b_hh_ = variables(acc, x, h0, w_ih, w_hh, b_ih, b_hh)
    # dbias is the gradient of the summed bias: that of a zero bias added to it.
    bias = torch.zeros(w_hh.shape[0], dtype=acc, device=x.device, requires_grad=True)
    outputs = reference.rnn_layer(x_, h0_, w_ih_, w_hh_, bias if b_ih_ is None else b_ih_ + bias,
                                  b_hh_, lengths, nonlinearity)
    grads = first_derivatives(outputs, cotangents, [x_, h0_, w_ih_, w_hh_, bias])
    dtypes = (x.dtype, h0.dtype, w_ih.dtype, w_hh.dtype, w_hh.dtype)
    return tuple(g.to(dtype) for g, dtype in zip(grads, dtypes))


register_double_backward(rnn_layer_backward_op, differentiable_backward, num_differentiable=8)
# FLOPs for torch.utils.flop_counter: x and the weight matrices (w_ih, w_hh).
register_flops("fastrnn::rnn_layer", x_index=0, weight_indices=(2, 3), passes=1)
register_flops("fastrnn::rnn_layer_backward", x_index=2, weight_indices=(4, 5), passes=2)
