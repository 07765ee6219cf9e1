"""The "triton" backend of the LSTM layer op (interface in op.py).

The kernels are shared with the GRU in fastrnn/ops/recurrent/ (one persistent mechanism,
two cells); this module adapts them to the LSTM's op interface. No projection (proj_size)
support yet: fastrnn.backends routes such layers to another backend.
"""
from fastrnn.ops.recurrent import backward as recurrent_backward
from fastrnn.ops.recurrent.common import LSTM
from fastrnn.ops.recurrent.forward import run_forward


def _check_no_projection(w_hr):
    if w_hr is not None:
        raise NotImplementedError("fastrnn: the Triton LSTM kernels do not support proj_size yet")


def forward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths):
    _check_no_projection(w_hr)
    y, h_t, c_t, workspace = run_forward(LSTM, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths)
    return y, h_t, c_t, workspace


def backward(grad_y, grad_hT, grad_cT, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, y, workspace,
             lengths):
    _check_no_projection(w_hr)
    dx, dh0, dc0, dw_ih, dw_hh, dbias = recurrent_backward.lstm_backward(
        grad_y, grad_hT, grad_cT, x, h0, c0, w_ih, w_hh, y, workspace, lengths)
    return dx, dh0, dc0, dw_ih, dw_hh, dbias, x.new_empty(0)
