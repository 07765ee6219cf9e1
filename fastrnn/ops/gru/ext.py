"""The GRU layer on the compiled extension fastrnn._C (csrc/gru.cpp, csrc/cuda/gru.cu).

On CUDA the recurrences run as one persistent kernel each way when W_hh fits on chip,
else per step; FASTRNN_CUDA_PERSISTENT=0 forces the per-step kernels.

Provides the backend interface of fastrnn/ops/gru/op.py (`forward`, `backward`) on the
C++ ops fastrnn::ext_gru_forward / fastrnn::ext_gru_backward, and registers their fake
(meta) implementations so they trace under torch.compile and pass torch.library.opcheck;
their autograd formula is registered in C++ (csrc/autograd.cpp), so calls that need no
gradient never enter Python. Importing this module loads the extension; it raises ImportError
when the extension was not built.
"""
import torch

from fastrnn import backends
from fastrnn.ops.gru.op import GATES, workspace_dtype

if backends.ext_module() is None:
    raise ImportError("fastrnn.ops.gru.ext needs the compiled extension fastrnn._C "
                      "(pip install --no-build-isolation -e .)")

forward_op = torch.ops.fastrnn.ext_gru_forward.default
backward_op = torch.ops.fastrnn.ext_gru_backward.default


def forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths):
    return forward_op(x, h0, w_ih, w_hh, b_ih, b_hh, lengths)


def backward(grad_y, grad_hT, x, h0, w_ih, w_hh, b_ih, b_hh, y, workspace, lengths):
    return backward_op(grad_y, grad_hT, x, h0, w_ih, w_hh, b_ih, b_hh, y, workspace, lengths)


@torch.library.register_fake("fastrnn::ext_gru_forward")
def _forward_fake(x, h0, w_ih, w_hh, b_ih, b_hh, lengths):
    T, B, H = x.shape[0], x.shape[1], w_hh.shape[0] // GATES
    return (x.new_empty(T, B, H), x.new_empty(B, H),
            x.new_empty(T, B, 4 * H, dtype=workspace_dtype(x.dtype)))


@torch.library.register_fake("fastrnn::ext_gru_backward")
def _backward_fake(grad_y, grad_hT, x, h0, w_ih, w_hh, b_ih, b_hh, y, workspace, lengths):
    G = w_hh.shape[0]
    return (x.new_empty(x.shape), x.new_empty(h0.shape), x.new_empty(w_ih.shape),
            x.new_empty(w_hh.shape), x.new_empty(G), x.new_empty(G))
