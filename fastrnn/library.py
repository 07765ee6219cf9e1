"""Registers fastrnn's torch.library custom ops (importing this module is enough).

Each op defines its schema, fake (meta) implementation and autograd formula beside its
kernels, in fastrnn/ops/<op>/op.py; this module gathers them so one import registers all.
It also makes the compiled extension's own backward ops (fastrnn::ext_<cell>_backward,
which the ext backend's layer ops call, and which can be called directly) differentiable
with the same formula as the cell's backward op (double backward, see
fastrnn/ops/layer_autograd.py).
"""
import torch

from fastrnn import backends
from fastrnn.ops.gru import op as gru_op
from fastrnn.ops.layer_autograd import register_double_backward
from fastrnn.ops.lstm import op as lstm_op
from fastrnn.ops.rnn import op as rnn_op

# cell -> (its op module, how many leading backward-op inputs are differentiable)
_CELLS = {"lstm": (lstm_op, 11), "gru": (gru_op, 8), "rnn": (rnn_op, 8)}


def _register_extension_double_backward() -> None:
    if backends.ext_module() is None:
        return
    for cell, (op_module, num_differentiable) in _CELLS.items():
        if hasattr(torch.ops.fastrnn, f"ext_{cell}_backward"):
            register_double_backward(f"fastrnn::ext_{cell}_backward",
                                     op_module.differentiable_backward, num_differentiable)


_register_extension_double_backward()
