"""Functional API: one recurrent layer, one direction, weights in torch.nn's layout.

Inputs are checked here, with errors that name the problem and have the type torch's own
recurrent ops (torch.lstm, nn.LSTMCell, ...) raise for the same mistake: RuntimeError for
wrong shapes, dtypes, devices and values, TypeError for non-tensors, ValueError for a
wrong rank. The ops behind these functions (fastrnn/ops/*/op.py) assume valid inputs.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from fastrnn import backends
from fastrnn.ops.gru import op as gru_op
from fastrnn.ops.lstm import op as lstm_op
from fastrnn.ops.rnn import op as rnn_op
from fastrnn.ops.rnn.reference import NONLINEARITIES

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _fail(fn: str, message: str, exc=RuntimeError):
    raise exc(f"fastrnn.functional.{fn}: {message}")


def _check_tensor(fn: str, name: str, t: Tensor, shape: Tuple[int, ...], x: Tensor):
    if not isinstance(t, Tensor):
        _fail(fn, f"{name} must be a Tensor, got {type(t).__name__}", TypeError)
    if tuple(t.shape) != tuple(shape):
        _fail(fn, f"{name} must have shape {tuple(shape)}, got {tuple(t.shape)}")
    if t.dtype != x.dtype:
        _fail(fn, f"{name} has dtype {t.dtype} but x has dtype {x.dtype}; all tensors must share one dtype")
    if t.device != x.device:
        _fail(fn, f"{name} is on {t.device} but x is on {x.device}; all tensors must be on one device")


def _check_x(fn: str, x: Tensor, input_size: int) -> Tuple[int, int]:
    if not isinstance(x, Tensor):
        _fail(fn, f"x must be a Tensor, got {type(x).__name__}", TypeError)
    if x.dim() != 3:
        _fail(fn, f"x must be 3-D (T, B, input_size), got {x.dim()}-D", ValueError)
    if x.dtype not in FLOAT_DTYPES:
        _fail(fn, f"x must be float16, bfloat16, float32 or float64, got {x.dtype}")
    T, B, I = x.shape
    if T == 0:
        # Same type and message as torch.nn's RNN layers.
        raise RuntimeError("Expected sequence length to be larger than 0 in RNN")
    if I != input_size:
        _fail(fn, f"x.size(-1) must equal input_size {input_size} (from weight_ih), got {I}")
    return T, B


def _check_lengths(fn: str, lengths: Optional[Tensor], T: int, B: int, x: Tensor) -> Optional[Tensor]:
    if lengths is None:
        return None
    if not isinstance(lengths, Tensor):
        lengths = torch.as_tensor(lengths)
    if lengths.dim() != 1 or lengths.shape[0] != B:
        _fail(fn, f"lengths must have shape ({B},), got {tuple(lengths.shape)}")
    if lengths.dtype.is_floating_point or lengths.dtype == torch.bool or lengths.is_complex():
        _fail(fn, f"lengths must be an integer tensor, got {lengths.dtype}", TypeError)
    if B > 0 and not torch.compiler.is_compiling():
        low, high = int(lengths.min()), int(lengths.max())
        if low < 1 or high > T:
            _fail(fn, f"lengths must lie in [1, T={T}], got values in [{low}, {high}]")
    return lengths.to(device=x.device, dtype=torch.int64)


def _check_weights(fn: str, gates: int, weight_ih, weight_hh, bias_ih, bias_hh):
    for name, w in (("weight_ih", weight_ih), ("weight_hh", weight_hh)):
        if not isinstance(w, Tensor):
            _fail(fn, f"{name} must be a Tensor, got {type(w).__name__}", TypeError)
        if w.dim() != 2:
            _fail(fn, f"{name} must be 2-D, got {w.dim()}-D")
    if weight_hh.shape[0] % gates != 0 or weight_ih.shape[0] != weight_hh.shape[0]:
        _fail(fn, f"weight_ih and weight_hh must both have {gates}*hidden_size rows, got "
                  f"{weight_ih.shape[0]} and {weight_hh.shape[0]}")
    if (bias_ih is None) != (bias_hh is None):
        _fail(fn, "give both bias_ih and bias_hh, or neither")
    return weight_hh.shape[0] // gates


def _backend(x: Tensor, op: str, needs: tuple, backend: Optional[str]) -> str:
    return backends.choose(x.device.type, op, needs, backend)


def lstm_layer(x: Tensor, h0: Optional[Tensor], c0: Optional[Tensor], weight_ih: Tensor,
               weight_hh: Tensor, bias_ih: Optional[Tensor] = None, bias_hh: Optional[Tensor] = None,
               weight_hr: Optional[Tensor] = None, lengths: Optional[Tensor] = None,
               backend: Optional[str] = None) -> Tuple[Tensor, Tensor, Tensor]:
    """One LSTM layer, one direction, as torch.nn.LSTM computes it.

    Args:
        x: (T, B, input_size), time-major.
        h0: (B, P) or None for zeros, where P is proj_size if weight_hr is given, else H.
        c0: (B, H) or None for zeros.
        weight_ih: (4H, input_size); weight_hh: (4H, P); gate rows in order i, f, g, o.
        bias_ih, bias_hh: (4H,) or both None.
        weight_hr: (P, H) projection of h (nn.LSTM's proj_size), or None.
        lengths: (B,) integers in [1, T]: sequence b uses its first lengths[b] steps; its
            later outputs are zero and its final state is taken at its own last step.
        backend: "triton", "ext", "reference" or None for the automatic choice
            (see fastrnn.backends).

    Returns:
        output (T, B, P), h_T (B, P), c_T (B, H).
    """
    fn = "lstm_layer"
    H = _check_weights(fn, 4, weight_ih, weight_hh, bias_ih, bias_hh)
    T, B = _check_x(fn, x, weight_ih.shape[1])
    P = H if weight_hr is None else weight_hr.shape[0]
    _check_tensor(fn, "weight_ih", weight_ih, (4 * H, x.shape[2]), x)
    _check_tensor(fn, "weight_hh", weight_hh, (4 * H, P), x)
    if bias_ih is not None:
        _check_tensor(fn, "bias_ih", bias_ih, (4 * H,), x)
        _check_tensor(fn, "bias_hh", bias_hh, (4 * H,), x)
    if weight_hr is not None:
        _check_tensor(fn, "weight_hr", weight_hr, (P, H), x)
    h0 = x.new_zeros(B, P) if h0 is None else h0
    c0 = x.new_zeros(B, H) if c0 is None else c0
    _check_tensor(fn, "h0", h0, (B, P), x)
    _check_tensor(fn, "c0", c0, (B, H), x)
    lengths = _check_lengths(fn, lengths, T, B, x)
    needs = tuple(name for name, used in (("proj", weight_hr is not None),
                                          ("lengths", lengths is not None),
                                          ("fp64", x.dtype == torch.float64)) if used)
    chosen = _backend(x, "lstm", needs, backend)
    return lstm_op.lstm_layer(x, h0, c0, weight_ih, weight_hh, bias_ih, bias_hh, weight_hr,
                              lengths, chosen)


def gru_layer(x: Tensor, h0: Optional[Tensor], weight_ih: Tensor, weight_hh: Tensor,
              bias_ih: Optional[Tensor] = None, bias_hh: Optional[Tensor] = None,
              lengths: Optional[Tensor] = None,
              backend: Optional[str] = None) -> Tuple[Tensor, Tensor]:
    """One GRU layer, one direction, as torch.nn.GRU computes it.

    Args:
        x: (T, B, input_size), time-major.
        h0: (B, H) or None for zeros.
        weight_ih: (3H, input_size); weight_hh: (3H, H); gate rows in order r, z, n.
        bias_ih, bias_hh: (3H,) or both None (b_hn sits inside the reset product).
        lengths: (B,) integers in [1, T], as for lstm_layer.
        backend: "triton", "ext", "reference" or None for the automatic choice.

    Returns:
        output (T, B, H), h_T (B, H).
    """
    fn = "gru_layer"
    H = _check_weights(fn, 3, weight_ih, weight_hh, bias_ih, bias_hh)
    T, B = _check_x(fn, x, weight_ih.shape[1])
    _check_tensor(fn, "weight_ih", weight_ih, (3 * H, x.shape[2]), x)
    _check_tensor(fn, "weight_hh", weight_hh, (3 * H, H), x)
    if bias_ih is not None:
        _check_tensor(fn, "bias_ih", bias_ih, (3 * H,), x)
        _check_tensor(fn, "bias_hh", bias_hh, (3 * H,), x)
    h0 = x.new_zeros(B, H) if h0 is None else h0
    _check_tensor(fn, "h0", h0, (B, H), x)
    lengths = _check_lengths(fn, lengths, T, B, x)
    needs = tuple(name for name, used in (("lengths", lengths is not None),
                                          ("fp64", x.dtype == torch.float64)) if used)
    chosen = _backend(x, "gru", needs, backend)
    return gru_op.gru_layer(x, h0, weight_ih, weight_hh, bias_ih, bias_hh, lengths, chosen)


def rnn_layer(x: Tensor, h0: Optional[Tensor], weight_ih: Tensor, weight_hh: Tensor,
              bias_ih: Optional[Tensor] = None, bias_hh: Optional[Tensor] = None,
              nonlinearity: str = "tanh", lengths: Optional[Tensor] = None,
              backend: Optional[str] = None) -> Tuple[Tensor, Tensor]:
    """One Elman RNN layer, one direction, as torch.nn.RNN computes it:
    h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh).

    Args:
        x: (T, B, input_size), time-major.
        h0: (B, H) or None for zeros.
        weight_ih: (H, input_size); weight_hh: (H, H).
        bias_ih, bias_hh: (H,) or both None.
        nonlinearity: "tanh" or "relu" (ValueError otherwise, as nn.RNN).
        lengths: (B,) integers in [1, T], as for lstm_layer.
        backend: "triton", "ext", "reference" or None for the automatic choice.

    Returns:
        output (T, B, H), h_T (B, H).
    """
    fn = "rnn_layer"
    if nonlinearity not in NONLINEARITIES:
        raise ValueError(f"Unknown nonlinearity '{nonlinearity}'. Select from 'tanh' or 'relu'.")
    H = _check_weights(fn, 1, weight_ih, weight_hh, bias_ih, bias_hh)
    T, B = _check_x(fn, x, weight_ih.shape[1])
    _check_tensor(fn, "weight_ih", weight_ih, (H, x.shape[2]), x)
    _check_tensor(fn, "weight_hh", weight_hh, (H, H), x)
    if bias_ih is not None:
        _check_tensor(fn, "bias_ih", bias_ih, (H,), x)
        _check_tensor(fn, "bias_hh", bias_hh, (H,), x)
    h0 = x.new_zeros(B, H) if h0 is None else h0
    _check_tensor(fn, "h0", h0, (B, H), x)
    lengths = _check_lengths(fn, lengths, T, B, x)
    needs = tuple(name for name, used in (("lengths", lengths is not None),
                                          ("fp64", x.dtype == torch.float64)) if used)
    chosen = _backend(x, "rnn", needs, backend)
    return rnn_op.rnn_layer(x, h0, weight_ih, weight_hh, bias_ih, bias_hh, lengths, nonlinearity,
                            chosen)
