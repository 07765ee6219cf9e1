"""torch's autocast policy for its recurrent layers, read from torch at run time.

Under autocast torch.nn's recurrent modules do not all follow one rule: on CPU in torch
2.13, nn.LSTM and nn.RNN run in the autocast dtype while nn.GRU stays in float32, and the
CUDA policy (cuDNN's RNN ops) differs again. Rather than copy those tables, fastrnn asks
torch: it runs torch's own op for the mode (torch.lstm, torch.gru, torch.rnn_tanh,
torch.rnn_relu, what nn.LSTM / GRU / RNN call) once on a 1x1x1 input under the active
autocast state and reads the dtype of its output. The answer is cached per mode, device
type, autocast dtype, input dtype and weight dtype, so each combination costs one tiny call.
"""
import contextlib
import functools
import warnings
from typing import Optional

import torch

from fastrnn.backends import assume_constant_result

# The function torch.nn.RNNBase subclasses call for each mode (nn.RNNBase.mode).
_TORCH_OPS = {"LSTM": torch.lstm, "GRU": torch.gru, "RNN_TANH": torch.rnn_tanh,
              "RNN_RELU": torch.rnn_relu}
_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


def autocast_dtype(mode: str, device: torch.device, input_dtype: torch.dtype,
                   weight_dtype: torch.dtype) -> Optional[torch.dtype]:
    """The dtype torch.nn's `mode` module ("LSTM", "GRU", "RNN_TANH", "RNN_RELU") computes and
    returns in for this input and weight dtype on `device` under the autocast state now
    active there, or None when autocast is off for that device type or does not exist for
    it (the meta device: torch asks is_autocast_enabled only of device types that have one)."""
    if not (_autocast_available(device.type) and torch.is_autocast_enabled(device.type)):
        return None
    return _policy(mode, device, torch.get_autocast_dtype(device.type), input_dtype, weight_dtype)


def disabled(device: torch.device):
    """A context that turns autocast off on `device`'s type (nothing to turn off on a type
    without autocast, such as meta, where torch.autocast itself would raise)."""
    if not _autocast_available(device.type):
        return contextlib.nullcontext()
    return torch.autocast(device.type, enabled=False)


@assume_constant_result
def _autocast_available(device_type: str) -> bool:
    """torch.amp.is_autocast_available, a constant of a traced graph: torch 2.11's
    torch.compile cannot trace the C function behind it (a graph break on CUDA)."""
    return torch.amp.is_autocast_available(device_type)


@assume_constant_result
def _policy(mode: str, device: torch.device, cast_to: torch.dtype, input_dtype: torch.dtype,
            weight_dtype: torch.dtype) -> torch.dtype:
    """_probe's answer; torch.compile takes it as a constant of the traced graph (the probe
    itself, with its warnings filter and eager op, is not traceable)."""
    return _probe(mode, device, cast_to, input_dtype, weight_dtype)


@functools.lru_cache(maxsize=None)
def _probe(mode: str, device: torch.device, cast_to: torch.dtype, input_dtype: torch.dtype,
           weight_dtype: torch.dtype) -> torch.dtype:
    """Output dtype of torch's op for `mode` under autocast to `cast_to` on `device`.

    `cast_to` is part of the cache key only: the caller's autocast state is the one used.
    """
    del cast_to
    x = torch.zeros(1, 1, 1, dtype=input_dtype, device=device)
    h = torch.zeros(1, 1, 1, dtype=input_dtype, device=device)
    weights = [torch.zeros(_GATES[mode], 1, dtype=weight_dtype, device=device) for _ in range(2)]
    hx = (h, h) if mode == "LSTM" else h
    # cuDNN warns that these weights are not one contiguous buffer: irrelevant to a probe.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        output = _TORCH_OPS[mode](x, hx, weights, False, 1, 0.0, False, False, False)[0]
    return output.dtype
