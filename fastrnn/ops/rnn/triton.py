"""The "triton" backend of the Elman RNN layer op (interface in op.py).

The kernels are shared with the LSTM and GRU in fastrnn/ops/recurrent/ (one persistent
mechanism, the cell a constexpr: RNN_TANH or RNN_RELU); this module adapts them to the RNN's
op interface. The workspace they save is (T, B, H) fp32, the h state of every step, as the
other backends'.
"""
from fastrnn.ops.recurrent import backward as recurrent_backward
from fastrnn.ops.recurrent.common import RNN_RELU, RNN_TANH
from fastrnn.ops.recurrent.forward import run_forward

CELLS = {"tanh": RNN_TANH, "relu": RNN_RELU}


def forward(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, nonlinearity):
    y, h_t, _, workspace = run_forward(CELLS[nonlinearity], x, h0, None, w_ih, w_hh, b_ih, b_hh,
                                       lengths)
    return y, h_t, workspace


def backward(grad_y, grad_hT, x, h0, w_ih, w_hh, b_ih, b_hh, y, workspace, lengths, nonlinearity):
    return recurrent_backward.rnn_backward(CELLS[nonlinearity], grad_y, grad_hT, x, h0, w_ih,
                                           w_hh, y, workspace, lengths)
