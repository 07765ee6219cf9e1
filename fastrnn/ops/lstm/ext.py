"""The LSTM layer on the compiled extension fastrnn._C (csrc/lstm.cpp, csrc/cuda/lstm.cu).

On CUDA the recurrences run as one persistent kernel each way when W_hh fits on chip
(no projection), else per step; FASTRNN_CUDA_PERSISTENT=0 forces the per-step kernels.

Provides the backend interface of fastrnn/ops/lstm/op.py (`forward`, `backward`) on the
C++ ops fastrnn::ext_lstm_forward / fastrnn::ext_lstm_backward, and registers their fake
(meta) implementations so they trace under torch.compile and pass torch.library.opcheck;
their autograd formula is registered in C++ (csrc/autograd.cpp), so calls that need no
gradient never enter Python. Importing this module loads the extension; it raises ImportError
when the extension was not built.
"""
import torch

from fastrnn import backends
from fastrnn.ops.lstm.op import GATES, workspace_dtype

if backends.ext_module() is None:
    raise ImportError("fastrnn.ops.lstm.ext needs the compiled extension fastrnn._C "
                      "(pip install --no-build-isolation -e .)")

forward_op = torch.ops.fastrnn.ext_lstm_forward.default
backward_op = torch.ops.fastrnn.ext_lstm_backward.default


def forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths):
    return forward_op(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths)


def backward(grad_y, grad_hT, grad_cT, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, y, workspace,
             lengths):
    return backward_op(grad_y, grad_hT, grad_cT, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, y,
                       workspace, lengths)


@torch.library.register_fake("fastrnn::ext_lstm_forward")
def _forward_fake(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths):
    T, B, H = x.shape[0], x.shape[1], w_hh.shape[0] // GATES
    P = h0.shape[-1]
    return (x.new_empty(T, B, P), x.new_empty(B, P), x.new_empty(B, H),
            x.new_empty(T, B, 5 * H, dtype=workspace_dtype(x.dtype)))


@torch.library.register_fake("fastrnn::ext_lstm_inference")
def _inference_fake(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths):
    y, h_n, c_n, _ = _forward_fake(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths)
    return y, h_n, c_n


@torch.library.register_fake("fastrnn::ext_lstm_backward")
def _backward_fake(grad_y, grad_hT, grad_cT, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, y,
                   workspace, lengths):
    dw_hr = x.new_empty(w_hr.shape) if w_hr is not None else x.new_empty(0)
    return (x.new_empty(x.shape), x.new_empty(h0.shape), x.new_empty(c0.shape),
            x.new_empty(w_ih.shape), x.new_empty(w_hh.shape), x.new_empty(w_hh.shape[0]), dw_hr)
