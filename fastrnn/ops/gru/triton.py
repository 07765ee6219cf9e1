"""The "triton" backend of the GRU layer op (interface in op.py).

The kernels are shared with the LSTM in fastrnn/ops/recurrent/ (one persistent mechanism,
two cells); this module adapts them to the GRU's op interface.
"""
from fastrnn.ops.recurrent import backward as recurrent_backward
from fastrnn.ops.recurrent.common import GRU
from fastrnn.ops.recurrent.forward import run_forward


def forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths):
    y, h_t, _, workspace = run_forward(GRU, x, h0, None, w_ih, w_hh, b_ih, b_hh, lengths)
    return y, h_t, workspace


def backward(grad_y, grad_hT, x, h0, w_ih, w_hh, b_ih, b_hh, y, workspace, lengths):
    return recurrent_backward.gru_backward(grad_y, grad_hT, x, h0, w_ih, w_hh, y, workspace, lengths)
