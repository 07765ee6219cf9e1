"""Every CPU backend of every cell against torch's own layer and cell, float64 and float32.

check_parity compares outputs and every gradient (x, states, each weight and bias) with
nn.LSTM / nn.GRU / nn.RNN and with nn.LSTMCell / nn.GRUCell / nn.RNNCell stepped over time,
both in float64; assert_lengths_match_reference adds variable lengths (torch's layer on a
PackedSequence, its cell stepped per sequence). The shapes are those the backends' own
tests cover (tests/ops/test_ext.py, test_lstm.py, test_gru.py): T=1, odd T, hidden sizes
not a power of two, batch 1, one input feature, no initial state, no bias, non-contiguous x.
The Triton backend runs the same checks in tests/ops/test_lstm.py and test_gru.py (float32
only: the kernels have no float64).
"""
import functools

import pytest
import torch

from fastrnn import backends, functional
from fastrnn.ops.gru import reference as gru_reference
from fastrnn.ops.lstm import reference as lstm_reference

from .layer_cases import GRU, LSTM, RNN_RELU, RNN_TANH, assert_lengths_match_reference, check_parity

CELLS = {"lstm": LSTM, "gru": GRU, "rnn_tanh": RNN_TANH, "rnn_relu": RNN_RELU}
SHAPES = [(1, 1, 3, 5), (7, 3, 5, 13), (4, 2, 1, 33), (7, 3, 4, 20), (4, 2, 16, 16)]
OPTIONS = [(False, True, True), (True, False, True), (True, True, False)]


def op_of(cell_name: str) -> str:
    return cell_name.split("_")[0]


def backend_cases():
    """(cell name, backend, dtype) for every CPU backend that can run the cell: float64 on
    every backend (its own tests cover float32 for the extension), float32 on the reference."""
    cases = []
    for name in CELLS:
        for backend in ("reference", "ext"):
            if backends._why_unavailable(backend, "cpu", op_of(name)) is not None:
                continue
            cases.append(pytest.param(name, backend, torch.float64, id=f"{name}-{backend}-fp64"))
            if backend == "reference":
                cases.append(pytest.param(name, backend, torch.float32, id=f"{name}-{backend}-fp32"))
    return cases


@pytest.mark.parametrize("T,B,I,H", SHAPES)
@pytest.mark.parametrize("cell,backend,dtype", backend_cases())
def test_matches_torch_layer_and_cell(cell, backend, dtype, T, B, I, H):
    check_parity(CELLS[cell], T, B, I, H, "cpu", dtype=dtype, backend=backend)


@pytest.mark.parametrize("with_states,bias,contiguous", OPTIONS)
@pytest.mark.parametrize("cell,backend,dtype", backend_cases())
def test_options_match_torch_layer_and_cell(cell, backend, dtype, with_states, bias, contiguous):
    check_parity(CELLS[cell], 6, 3, 4, 7, "cpu", dtype=dtype, bias=bias, with_states=with_states,
                 contiguous=contiguous, backend=backend)


def _layer_args(cell: str, T, B, I, H, dtype, proj=None):
    """x, states, then w_ih, w_hh, b_ih, b_hh (and w_hr), at nn's initial weight scale."""
    gates = {"lstm": 4, "gru": 3, "rnn": 1}[op_of(cell)]
    out = proj or H
    scale = H ** -0.5
    tensors = [torch.randn(T, B, I, dtype=dtype), torch.randn(B, out, dtype=dtype)]
    if cell == "lstm":
        tensors.append(torch.randn(B, H, dtype=dtype))
    tensors += [scale * torch.randn(gates * H, I, dtype=dtype),
                scale * torch.randn(gates * H, out, dtype=dtype),
                scale * torch.randn(gates * H, dtype=dtype), scale * torch.randn(gates * H, dtype=dtype)]
    if proj:
        tensors.append(scale * torch.randn(proj, H, dtype=dtype))
    return [t.requires_grad_() for t in tensors]


def _run_and_reference(cell: str, backend: str):
    op = op_of(cell)
    if op == "lstm":
        return (functools.partial(functional.lstm_layer, backend=backend),
                lstm_reference.lstm_layer, ["y", "h_T", "c_T"], {})
    if op == "gru":
        return (functools.partial(functional.gru_layer, backend=backend),
                gru_reference.gru_layer, ["y", "h_T"], {})
    from fastrnn.ops.rnn import reference as rnn_reference
    nonlinearity = cell.split("_")[1]
    return (functools.partial(functional.rnn_layer, nonlinearity=nonlinearity, backend=backend),
            functools.partial(rnn_reference.rnn_layer, nonlinearity=nonlinearity), ["y", "h_T"],
            {"kind": "RNN", "nonlinearity": nonlinearity})


@pytest.mark.parametrize("cell,backend,dtype", backend_cases())
def test_lengths_match_torch_layer_and_cell(cell, backend, dtype):
    """Unsorted lengths, one shorter than T everywhere, every gradient."""
    run, reference, names, kind = _run_and_reference(cell, backend)
    args = _layer_args(cell, 6, 4, 5, 9, dtype)
    assert_lengths_match_reference(run, reference, args, torch.tensor([3, 6, 1, 4]), names, **kind)


@pytest.mark.parametrize("cell,backend,dtype", [c for c in backend_cases() if c.values[0] == "lstm"])
def test_lstm_projection_with_lengths_matches_torch_layer(cell, backend, dtype):
    """proj_size: torch's LSTM layer is the oracle (its LSTMCell has no projection)."""
    run, reference, names, _ = _run_and_reference("lstm", backend)
    args = _layer_args("lstm", 5, 3, 4, 7, dtype, proj=3)
    assert_lengths_match_reference(run, reference, args, torch.tensor([5, 2, 4]), names)
