"""Registers fastrnn's torch.library custom ops (importing this module is enough).

Each op defines its schema, fake (meta) implementation and autograd formula beside its
kernels, in fastrnn/ops/<op>/op.py; this module gathers them so one import registers all.
"""
from fastrnn.ops.gru import op as gru_op  # noqa: F401
from fastrnn.ops.lstm import op as lstm_op  # noqa: F401
from fastrnn.ops.rnn import op as rnn_op  # noqa: F401
