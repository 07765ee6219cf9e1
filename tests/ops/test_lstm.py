"""The Triton LSTM layer against torch.nn.LSTM and nn.LSTMCell: outputs and every gradient.

The unmarked tests run on the GPU when there is one (compiled kernels), else under the
Triton interpreter on CPU (tiny shapes); the cuda-marked ones need the GPU and compare
larger shapes with cuDNN.
"""
import functools

import pytest
import torch

from fastrnn import functional
from fastrnn.ops.lstm import reference
from fastrnn.ops.lstm.op import lstm_layer_op
from fastrnn.ops.recurrent.common import LSTM as LSTM_CELL
from fastrnn.ops.recurrent.forward import run_forward
from fastrnn.testing import assert_matches_torch, poisoned_empty, recurrent_reduction_length

from .layer_cases import LSTM, assert_lengths_match_reference, check_parity, torch_layer

SHAPES = [  # T, B, I, H: T=1, odd T, H not a power of two, batch 1
    pytest.param(1, 1, 3, 5, id="T1-B1-I3-H5"),
    pytest.param(7, 3, 4, 20, id="T7-B3-I4-H20"),
    pytest.param(4, 2, 16, 16, id="T4-B2-I16-H16"),
]


@pytest.mark.parametrize("T,B,I,H", SHAPES)
def test_matches_nn_lstm_fp32(triton_device, T, B, I, H):
    check_parity(LSTM, T, B, I, H, triton_device)


@pytest.mark.parametrize("with_states,bias,contiguous", [(False, True, True), (True, False, False)])
def test_matches_nn_lstm_options(triton_device, with_states, bias, contiguous):
    check_parity(LSTM, 5, 2, 6, 12, triton_device, bias=bias, with_states=with_states,
                 contiguous=contiguous)


def test_matches_nn_lstm_fp16(triton_device):
    check_parity(LSTM, 6, 2, 8, 16, triton_device, dtype=torch.float16)


def _lstm_args(T, B, I, H, device, dtype=torch.float32):
    scale = H ** -0.5
    return [torch.randn(T, B, I, device=device, dtype=dtype), torch.randn(B, H, device=device, dtype=dtype),
            torch.randn(B, H, device=device, dtype=dtype),
            scale * torch.randn(4 * H, I, device=device, dtype=dtype),
            scale * torch.randn(4 * H, H, device=device, dtype=dtype),
            torch.randn(4 * H, device=device, dtype=dtype), torch.randn(4 * H, device=device, dtype=dtype)]


def test_variable_lengths_match_reference(triton_device):
    """Against the reference and torch's own LSTM layer (PackedSequence) and cell (stepped
    per sequence), all in float64: outputs and every gradient."""
    T, B, I, H = 6, 4, 5, 12
    args = [a.requires_grad_() for a in _lstm_args(T, B, I, H, triton_device)]
    # The longest sequence ends before T: the kernels skip the last step entirely.
    lengths = torch.tensor([3, 5, 1, 4], device=triton_device)
    assert_lengths_match_reference(functools.partial(functional.lstm_layer, backend="triton"),
                                   reference.lstm_layer, args, lengths, ["y", "h_T", "c_T"])


@pytest.mark.parametrize("force_per_step,force_streamed", [(False, False), (True, False), (False, True)])
def test_every_output_written(triton_device, force_per_step, force_streamed):
    """NaN-poisoned buffers: every element of y, h_T, c_T and the workspace is written."""
    T, B, I, H = 3, 2, 4, 20   # H=20: two K chunks of 16 when streamed
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = _lstm_args(T, B, I, H, triton_device)
    with poisoned_empty():
        y, h_t, c_t, workspace = run_forward(LSTM_CELL, x, h0, c0, w_ih, w_hh, b_ih, b_hh, None,
                                             force_per_step, force_streamed)
    for t in (y, h_t, c_t, workspace):
        assert not t.isnan().any()
    assert_matches_torch(list((y, h_t, c_t)), lambda x, h0, c0, *w: torch_layer("LSTM", x, [h0, c0], w),
                         [x, h0, c0, w_ih, w_hh, b_ih, b_hh], ["y", "h_T", "c_T"],
                         recurrent_reduction_length(T, B, I, H, 4))



def test_steps_past_the_longest_sequence_are_not_computed(triton_device):
    """No compute on padding: the workspace of steps past every sequence's end is never
    written (it stays NaN-poisoned), while outputs there read zero."""
    T, B, I, H = 6, 2, 4, 20
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = _lstm_args(T, B, I, H, triton_device)
    lengths = torch.tensor([3, 2], device=triton_device)
    with poisoned_empty():
        y, h_t, c_t, workspace = run_forward(LSTM_CELL, x, h0, c0, w_ih, w_hh, b_ih, b_hh, lengths)
    assert workspace[3:].isnan().all()
    assert not workspace[:3].isnan().any()
    assert (y[3:] == 0).all()
    assert_matches_torch(list((y, h_t, c_t)), lambda x, h0, c0, *w: torch_layer("LSTM", x, [h0, c0], w, lengths),
                         [x, h0, c0, w_ih, w_hh, b_ih, b_hh], ["y", "h_T", "c_T"],
                         recurrent_reduction_length(T, B, I, H, 4))


def test_opcheck(triton_device):
    args = _lstm_args(2, 2, 3, 5, triton_device) + [None, None, "triton"]
    args[:7] = [a.requires_grad_() for a in args[:7]]
    result = torch.library.opcheck(lstm_layer_op, args)
    assert all(v == "SUCCESS" for v in result.values()), result


def test_torch_compile_fullgraph(triton_device):
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = [a.requires_grad_() for a in _lstm_args(3, 2, 4, 6, triton_device)]

    def loss_fn(x, w_ih, w_hh):
        y, h, c = functional.lstm_layer(x, h0, c0, w_ih, w_hh, b_ih, b_hh, backend="triton")
        return (y * y).sum() + h.sum() + c.sum()

    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    grads = torch.autograd.grad(compiled(x, w_ih, w_hh), [x, w_ih, w_hh])
    expected = torch.autograd.grad(loss_fn(x, w_ih, w_hh), [x, w_ih, w_hh])
    for a, e in zip(grads, expected):
        torch.testing.assert_close(a, e)


def test_projection_is_a_clear_error_when_forced(triton_device):
    x, h0, c0, w_ih, _, _, _ = _lstm_args(2, 2, 3, 6, triton_device)
    w_hh = torch.randn(24, 2, device=triton_device)
    w_hr = torch.randn(2, 6, device=triton_device)
    with pytest.raises(RuntimeError, match="does not support proj"):
        functional.lstm_layer(x, None, None, w_ih, w_hh, weight_hr=w_hr, backend="triton")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("T,B,I,H", [(33, 16, 64, 96), (64, 8, 768, 768), (16, 64, 256, 1024)])
def test_cuda_matches_cudnn(T, B, I, H, dtype):
    check_parity(LSTM, T, B, I, H, torch.device("cuda"), dtype=dtype)


@pytest.mark.cuda
def test_cuda_per_step_fallback_matches_persistent():
    x, h0, c0, w_ih, w_hh, b_ih, b_hh = _lstm_args(20, 8, 64, 320, torch.device("cuda"))
    persistent = run_forward(LSTM_CELL, x, h0, c0, w_ih, w_hh, b_ih, b_hh, None)
    per_step = run_forward(LSTM_CELL, x, h0, c0, w_ih, w_hh, b_ih, b_hh, None, True)
    for a, b in zip(persistent, per_step):
        torch.testing.assert_close(a, b)


@pytest.mark.cuda
def test_cuda_forward_is_deterministic():
    args = _lstm_args(50, 16, 128, 768, torch.device("cuda"), torch.bfloat16)
    first = functional.lstm_layer(*args, backend="triton")
    second = functional.lstm_layer(*args, backend="triton")
    for a, b in zip(first, second):
        assert torch.equal(a, b)
