"""The Elman RNN layer on the compiled extension fastrnn._C (csrc/rnn.cpp, csrc/cuda/rnn.cu).

On CPU the recurrences run on W_hh packed into column panels, split over a thread team
(csrc/include/fastrnn/rnn_cpu.h). On CUDA they run as one persistent kernel each way when
W_hh fits on chip, else per step; FASTRNN_CUDA_PERSISTENT=0 forces the per-step kernels.

Provides the backend interface of fastrnn/ops/rnn/op.py (`forward`, `backward`) on the
C++ ops fastrnn::ext_rnn_forward / fastrnn::ext_rnn_backward, and registers their fake
(meta) implementations so they trace under torch.compile and pass torch.library.opcheck;
their autograd formula is registered in C++ (csrc/autograd.cpp), so calls that need no
gradient never enter Python. Importing this module loads the extension; it raises ImportError
when the extension was not built.
"""
import torch

from fastrnn import backends
from fastrnn.ops.rnn.op import workspace_dtype

if backends.ext_module() is None:
    raise ImportError("fastrnn.ops.rnn.ext needs the compiled extension fastrnn._C "
                      "(pip install --no-build-isolation -e .)")

forward_op = torch.ops.fastrnn.ext_rnn_forward.default
backward_op = torch.ops.fastrnn.ext_rnn_backward.default


def forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, nonlinearity):
    return forward_op(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, nonlinearity)


def backward(grad_y, grad_hT, x, h0, w_ih, w_hh, b_ih, b_hh, y, workspace, lengths, nonlinearity):
    return backward_op(grad_y, grad_hT, x, h0, w_ih, w_hh, b_ih, b_hh, y, workspace, lengths,
                       nonlinearity)


@torch.library.register_fake("fastrnn::ext_rnn_forward")
def _forward_fake(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, nonlinearity):
    T, B, H = x.shape[0], x.shape[1], w_hh.shape[0]
    return (x.new_empty(T, B, H), x.new_empty(B, H),
            x.new_empty(T, B, H, dtype=workspace_dtype(x.dtype)))


@torch.library.register_fake("fastrnn::ext_rnn_backward")
def _backward_fake(grad_y, grad_hT, x, h0, w_ih, w_hh, b_ih, b_hh, y, workspace, lengths,
                   nonlinearity):
    return (x.new_empty(x.shape), x.new_empty(h0.shape), x.new_empty(w_ih.shape),
            x.new_empty(w_hh.shape), x.new_empty(w_hh.shape[0]))
