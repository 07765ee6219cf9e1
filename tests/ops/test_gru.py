"""The Triton GRU layer against torch.nn.GRU and nn.GRUCell: outputs and every gradient.

The unmarked tests run on the GPU when there is one (compiled kernels), else under the
Triton interpreter on CPU (tiny shapes); the cuda-marked ones need the GPU and compare
larger shapes with cuDNN.
"""
import functools

import pytest
import torch

from fastrnn import functional
from fastrnn.ops.gru import reference
from fastrnn.ops.gru.op import gru_layer_op
from fastrnn.ops.recurrent.common import GRU as GRU_CELL
from fastrnn.ops.recurrent.forward import run_forward
from fastrnn.testing import assert_matches_torch, poisoned_empty, recurrent_reduction_length

from .layer_cases import GRU, assert_lengths_match_reference, check_parity, torch_layer

SHAPES = [  # T, B, I, H: T=1, odd T, H not a power of two, batch 1
    pytest.param(1, 1, 3, 5, id="T1-B1-I3-H5"),
    pytest.param(7, 3, 4, 20, id="T7-B3-I4-H20"),
    pytest.param(4, 2, 16, 16, id="T4-B2-I16-H16"),
]


@pytest.mark.parametrize("T,B,I,H", SHAPES)
def test_matches_nn_gru_fp32(triton_device, T, B, I, H):
    check_parity(GRU, T, B, I, H, triton_device)


@pytest.mark.parametrize("with_states,bias,contiguous", [(False, True, True), (True, False, False)])
def test_matches_nn_gru_options(triton_device, with_states, bias, contiguous):
    check_parity(GRU, 5, 2, 6, 12, triton_device, bias=bias, with_states=with_states,
                 contiguous=contiguous)


def test_matches_nn_gru_fp16(triton_device):
    check_parity(GRU, 6, 2, 8, 16, triton_device, dtype=torch.float16)


def _gru_args(T, B, I, H, device, dtype=torch.float32):
    scale = H ** -0.5
    return [torch.randn(T, B, I, device=device, dtype=dtype), torch.randn(B, H, device=device, dtype=dtype),
            scale * torch.randn(3 * H, I, device=device, dtype=dtype),
            scale * torch.randn(3 * H, H, device=device, dtype=dtype),
            torch.randn(3 * H, device=device, dtype=dtype), torch.randn(3 * H, device=device, dtype=dtype)]


def test_variable_lengths_match_reference(triton_device):
    """Against the reference and torch's own GRU layer (PackedSequence) and cell (stepped
    per sequence), all in float64: outputs and every gradient."""
    T, B, I, H = 6, 4, 5, 12
    args = [a.requires_grad_() for a in _gru_args(T, B, I, H, triton_device)]
    # The longest sequence ends before T: the kernels skip the last step entirely.
    lengths = torch.tensor([3, 5, 1, 4], device=triton_device)
    assert_lengths_match_reference(functools.partial(functional.gru_layer, backend="triton"),
                                   reference.gru_layer, args, lengths, ["y", "h_T"])


@pytest.mark.parametrize("force_per_step,force_streamed", [(False, False), (True, False), (False, True)])
def test_every_output_written(triton_device, force_per_step, force_streamed):
    """NaN-poisoned buffers: every element of y, h_T and the workspace is written."""
    T, B, I, H = 3, 2, 4, 20   # H=20: two K chunks of 16 when streamed
    x, h0, w_ih, w_hh, b_ih, b_hh = _gru_args(T, B, I, H, triton_device)
    with poisoned_empty():
        y, h_t, _, workspace = run_forward(GRU_CELL, x, h0, None, w_ih, w_hh, b_ih, b_hh, None,
                                           force_per_step, force_streamed)
    for t in (y, h_t, workspace):
        assert not t.isnan().any()
    assert_matches_torch(list((y, h_t)), lambda x, h0, *w: torch_layer("GRU", x, [h0], w),
                         [x, h0, w_ih, w_hh, b_ih, b_hh], ["y", "h_T"],
                         recurrent_reduction_length(T, B, I, H, 3))



def test_steps_past_the_longest_sequence_are_not_computed(triton_device):
    """No compute on padding: the workspace of steps past every sequence's end is never
    written (it stays NaN-poisoned), while outputs there read zero."""
    T, B, I, H = 6, 2, 4, 20
    x, h0, w_ih, w_hh, b_ih, b_hh = _gru_args(T, B, I, H, triton_device)
    lengths = torch.tensor([3, 2], device=triton_device)
    with poisoned_empty():
        y, h_t, _, workspace = run_forward(GRU_CELL, x, h0, None, w_ih, w_hh, b_ih, b_hh, lengths)
    assert workspace[3:].isnan().all()
    assert not workspace[:3].isnan().any()
    assert (y[3:] == 0).all()
    assert_matches_torch(list((y, h_t)), lambda x, h0, *w: torch_layer("GRU", x, [h0], w, lengths),
                         [x, h0, w_ih, w_hh, b_ih, b_hh], ["y", "h_T"],
                         recurrent_reduction_length(T, B, I, H, 3))


def test_opcheck(triton_device):
    args = [a.requires_grad_() for a in _gru_args(2, 2, 3, 5, triton_device)] + [None, "triton"]
    result = torch.library.opcheck(gru_layer_op, args)
    assert all(v == "SUCCESS" for v in result.values()), result


def test_torch_compile_fullgraph(triton_device):
    x, h0, w_ih, w_hh, b_ih, b_hh = [a.requires_grad_() for a in _gru_args(3, 2, 4, 6, triton_device)]

    def loss_fn(x, w_ih, w_hh):
        y, h = functional.gru_layer(x, h0, w_ih, w_hh, b_ih, b_hh, backend="triton")
        return (y * y).sum() + h.sum()

    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    grads = torch.autograd.grad(compiled(x, w_ih, w_hh), [x, w_ih, w_hh])
    expected = torch.autograd.grad(loss_fn(x, w_ih, w_hh), [x, w_ih, w_hh])
    for a, e in zip(grads, expected):
        torch.testing.assert_close(a, e)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("T,B,I,H", [(33, 16, 64, 96), (64, 8, 768, 768), (16, 64, 256, 1024)])
def test_cuda_matches_cudnn(T, B, I, H, dtype):
    check_parity(GRU, T, B, I, H, torch.device("cuda"), dtype=dtype)


@pytest.mark.cuda
def test_cuda_per_step_fallback_matches_persistent():
    x, h0, w_ih, w_hh, b_ih, b_hh = _gru_args(20, 8, 64, 320, torch.device("cuda"))
    persistent = run_forward(GRU_CELL, x, h0, None, w_ih, w_hh, b_ih, b_hh, None)
    per_step = run_forward(GRU_CELL, x, h0, None, w_ih, w_hh, b_ih, b_hh, None, True)
    for a, b in (pair for pair in zip(persistent, per_step) if pair[0] is not None):
        torch.testing.assert_close(a, b)
