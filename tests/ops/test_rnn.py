"""The Elman RNN layer (fastrnn.functional.rnn_layer, fastrnn::rnn_layer) on every backend
against torch.nn.RNN and torch.nn.RNNCell: outputs and every gradient (x, h0, weights,
biases), tanh and relu, lengths, gradcheck, the op's torch.library checks and errors.

Backends: "reference" and "ext" run here on CPU; "triton" runs on the GPU when there is one,
else under the Triton interpreter on CPU (tiny shapes); cuda-marked tests need the GPU.
"""
import dataclasses

import pytest
import torch

from fastrnn import functional
from fastrnn.ops.rnn import reference
from fastrnn.ops.rnn.op import rnn_layer_op
from fastrnn.testing import assert_matches_torch, assert_within_baseline, poisoned_empty

from .layer_cases import Cell, assert_lengths_match_reference, check_parity, torch_layer, with_grads

ext = pytest.mark.ext
cuda = pytest.mark.cuda
NONLINEARITIES = ["tanh", "relu"]


@dataclasses.dataclass(frozen=True)
class RnnCell(Cell):
    """torch.nn.RNN with a nonlinearity, run through fastrnn.functional.rnn_layer."""
    nonlinearity: str = "tanh"

    def make(self, input_size, hidden, bias=True, dtype=torch.float32, device="cpu"):
        return torch.nn.RNN(input_size, hidden, nonlinearity=self.nonlinearity, bias=bias,
                            dtype=dtype, device=device)

    def run_fastrnn(self, module, x, states, lengths=None, backend=None):
        weights = [getattr(module, n, None)
                   for n in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")]
        return functional.rnn_layer(x, states[0], *weights, nonlinearity=self.nonlinearity,
                                    lengths=lengths, backend=backend)


CELLS = {n: RnnCell("rnn", torch.nn.RNN, False, 1, n) for n in NONLINEARITIES}

CPU_BACKENDS = ["reference", pytest.param("ext", marks=ext)]
SHAPES = [  # T, B, I, H: T=1, odd T, H not a power of two, batch 1, H beyond one CPU panel
    pytest.param(1, 1, 3, 5, id="T1-B1-I3-H5"),
    pytest.param(7, 3, 4, 20, id="T7-B3-I4-H20"),
    pytest.param(5, 4, 16, 64, id="T5-B4-I16-H64"),
    pytest.param(6, 5, 8, 130, id="T6-B5-I8-H130"),
]


def rnn_args(T=5, B=3, I=4, H=6, dtype=torch.float64, bias=True, device="cpu"):
    """x, h0, w_ih, w_hh, b_ih, b_hh requiring grad (biases None without bias)."""
    scale = H ** -0.5
    args = [torch.randn(T, B, I, dtype=dtype, device=device),
            torch.randn(B, H, dtype=dtype, device=device),
            scale * torch.randn(H, I, dtype=dtype, device=device),
            scale * torch.randn(H, H, dtype=dtype, device=device)]
    args += ([torch.randn(H, dtype=dtype, device=device) for _ in range(2)] if bias
             else [None, None])
    return [a.requires_grad_() if a is not None else None for a in args]


def rnn_cell_loop(x, h0, w_ih, w_hh, b_ih, b_hh, nonlinearity, lengths=None):
    """torch.nn.RNNCell stepped over time (a second oracle beside nn.RNN); with lengths, a
    sequence's state stops changing after its last step and its later outputs are zero."""
    cell = torch.nn.RNNCell(x.shape[2], h0.shape[1], bias=b_ih is not None,
                            nonlinearity=nonlinearity, dtype=x.dtype)
    params = {"weight_ih": w_ih, "weight_hh": w_hh}
    if b_ih is not None:
        params.update(bias_ih=b_ih, bias_hh=b_hh)
    h, outputs = h0, []
    for t in range(x.shape[0]):
        h_new = torch.func.functional_call(cell, params, (x[t], h))
        active = (torch.ones(x.shape[1], 1, dtype=torch.bool) if lengths is None
                  else (lengths > t)[:, None])
        h = torch.where(active, h_new, h)
        outputs.append(h_new * active)
    return torch.stack(outputs), h


# ---- parity with torch.nn -------------------------------------------------------------

@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("T,B,I,H", SHAPES)
def test_matches_nn_rnn_fp32(backend, nonlinearity, T, B, I, H):
    check_parity(CELLS[nonlinearity], T, B, I, H, "cpu", backend=backend)


@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("with_states,bias,contiguous", [(False, True, True), (True, False, False)])
def test_matches_nn_rnn_options(backend, nonlinearity, with_states, bias, contiguous):
    check_parity(CELLS[nonlinearity], 5, 2, 6, 12, "cpu", bias=bias, with_states=with_states,
                 contiguous=contiguous, backend=backend)


@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_lengths_match_rnn_cell_stepped(backend, nonlinearity, dtype):
    """Variable lengths, every gradient, against nn.RNNCell stepped in float64."""
    T, B, I, H = 6, 4, 5, 70
    args = rnn_args(T, B, I, H, dtype=dtype)
    lengths = torch.tensor([3, 6, 1, 4])

    def ours(*a, lengths):
        return functional.rnn_layer(*a, nonlinearity=nonlinearity, lengths=lengths, backend=backend)

    def cell_loop(*a, lengths):
        return rnn_cell_loop(*a, nonlinearity, lengths)

    assert_lengths_match_reference(ours, cell_loop, args, lengths, ["y", "h_T"])


@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_long_sequence_fp32(backend, nonlinearity):
    """T=200: the fp32 error stays within twice torch.nn's own (errors grow with T for both)."""
    T, B, I, H = 200, 3, 8, 64
    weights = [p.detach() for p in CELLS[nonlinearity].make(I, H).parameters()]
    x = torch.randn(T, B, I)
    y, h = functional.rnn_layer(x, None, *weights, nonlinearity=nonlinearity, backend=backend)
    assert_matches_torch([y, h], lambda x, *w: torch_layer("RNN", x, [None], w, nonlinearity=nonlinearity),
                         [x, *weights], ["y", "h_T"], reduction_length=max(I + H, T * B))


# ---- gradcheck (float64) ----------------------------------------------------------------

@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
@pytest.mark.parametrize("lengths", [None, [3, 1, 2]], ids=["full", "lengths"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradcheck(backend, bias, lengths, nonlinearity):
    args = [a for a in rnn_args(T=3, B=3, I=2, H=4, bias=bias) if a is not None]
    lens = None if lengths is None else torch.tensor(lengths)

    def layer(x, h0, w_ih, w_hh, *biases):
        return functional.rnn_layer(x, h0, w_ih, w_hh, *biases, nonlinearity=nonlinearity,
                                    lengths=lens, backend=backend)

    assert torch.autograd.gradcheck(layer, args)


@ext
@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
def test_ext_gradcheck_on_full_panels(nonlinearity):
    """H = 2 panels of the CPU kernels (32 fp64 units each) with a partial third."""
    args = [a for a in rnn_args(T=3, B=2, I=3, H=70) if a is not None]

    def layer(*a):
        return functional.rnn_layer(*a, nonlinearity=nonlinearity, backend="ext")

    assert torch.autograd.gradcheck(layer, args, fast_mode=True)


# ---- the CPU kernels ------------------------------------------------------------------

@ext
@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
def test_ext_thread_team_matches_one_thread(nonlinearity):
    """Panels split over a team of two threads give one thread's result (up to rounding:
    the library GEMMs and sums around the recurrences may split their work differently)."""
    args = [a.detach().float() for a in rnn_args(T=9, B=8, I=16, H=256) if a is not None]
    lengths = torch.tensor([9, 3, 5, 9, 1, 7, 2, 8])
    old = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            leaves = [a.clone().requires_grad_() for a in args]
            y, h = functional.rnn_layer(*leaves, nonlinearity=nonlinearity, lengths=lengths,
                                        backend="ext")
            grads = torch.autograd.grad((y * 0.5).sum() + h.sum(), leaves)
            results.append([y, h, *grads])
    finally:
        torch.set_num_threads(old)
    for a, b in zip(results[1], results[0]):
        torch.testing.assert_close(a, b)


@ext
def test_ext_writes_every_output():
    """NaN-poisoned allocations: y, h_T, the workspace and every gradient are written."""
    args = [a.detach().float() for a in rnn_args(T=4, B=3, I=5, H=70) if a is not None]
    lengths = torch.tensor([4, 2, 1])
    from fastrnn.ops.rnn import ext as rnn_ext
    with poisoned_empty():
        y, h, ws = rnn_ext.forward(*args, lengths, "tanh")
        grads = rnn_ext.backward(torch.randn_like(y), torch.randn_like(h), *args, y, ws, lengths,
                                 "tanh")
    for t in (y, h, ws, *grads):
        assert not t.isnan().any()


@ext
def test_fp16_inputs_give_fp16_outputs():
    args = [a.detach().half() for a in rnn_args(T=6, B=2, I=8, H=16)]
    y, h = functional.rnn_layer(*args, backend="ext")
    assert y.dtype == h.dtype == torch.float16
    expected = reference.rnn_layer(*[a.double() for a in args])
    baseline = reference.rnn_layer(*args)
    assert_within_baseline(y, baseline[0], expected[0], "y")
    assert_within_baseline(h, baseline[1], expected[1], "h_T")


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_lengths_ignore_grad_at_padded_steps(backend):
    """Outputs at padded steps are zero, and gradients given there change nothing."""
    args = rnn_args(T=5, B=3, I=4, H=6, dtype=torch.float32)
    lengths = torch.tensor([5, 2, 3])
    y, h = functional.rnn_layer(*args, lengths=lengths, backend=backend)
    padded = torch.arange(5)[:, None] >= lengths[None, :]
    assert (y[padded] == 0).all()
    g = torch.randn_like(y)
    clean = torch.autograd.grad((y * g.masked_fill(padded[..., None], 0)).sum(), args[0],
                                retain_graph=True)[0]
    noisy = torch.autograd.grad((y * g).sum(), args[0])[0]
    torch.testing.assert_close(clean, noisy, rtol=0, atol=0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_empty_batch(backend):
    """B = 0 runs and gives empty outputs and zero weight gradients, as torch.nn does."""
    args = rnn_args(B=0)
    y, h = functional.rnn_layer(*args, backend=backend)
    assert y.shape == (5, 0, 6) and h.shape == (0, 6)
    grads = torch.autograd.grad(y.sum() + h.sum(), args)
    assert grads[0].shape == args[0].shape
    assert all((g == 0).all() for g in grads)


# ---- errors -----------------------------------------------------------------------------

def test_unknown_nonlinearity_is_a_value_error():
    args = rnn_args()
    with pytest.raises(ValueError, match="Unknown nonlinearity 'sigmoid'"):
        functional.rnn_layer(*args, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="Unknown nonlinearity"):
        reference.rnn_layer(*args, nonlinearity="gelu")


@ext
def test_ext_bad_input_is_a_clear_error():
    x, h0, w_ih, w_hh, b_ih, b_hh = [a.detach() for a in rnn_args()]
    forward = torch.ops.fastrnn.ext_rnn_forward
    with pytest.raises(ValueError, match="ext_rnn_forward: Unknown nonlinearity 'elu'"):
        forward(x, h0, w_ih, w_hh, b_ih, b_hh, None, "elu")
    with pytest.raises(RuntimeError, match="ext_rnn_forward: h0 must have shape"):
        forward(x, h0[:, :2], w_ih, w_hh, b_ih, b_hh, None, "tanh")
    with pytest.raises(RuntimeError, match="ext_rnn_forward: w_ih must have shape"):
        forward(x, h0, w_ih[:, :2], w_hh, b_ih, b_hh, None, "tanh")
    with pytest.raises(RuntimeError, match="lengths must be int64"):
        forward(x, h0, w_ih, w_hh, None, None, torch.tensor([1, 2, 3], dtype=torch.int32), "tanh")


def test_functional_shape_errors():
    x, h0, w_ih, w_hh, b_ih, b_hh = [a.detach() for a in rnn_args()]
    with pytest.raises(RuntimeError, match="h0 must have shape"):
        functional.rnn_layer(x, h0[:, :2], w_ih, w_hh, b_ih, b_hh)
    with pytest.raises(RuntimeError, match="weight_hh must have shape"):
        functional.rnn_layer(x, h0, w_ih, w_hh[:, :3], b_ih, b_hh)
    with pytest.raises(ValueError, match="x must be 3-D"):
        functional.rnn_layer(x[0], h0, w_ih, w_hh, b_ih, b_hh)


# ---- torch.library ------------------------------------------------------------------------

@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_opcheck(backend):
    lengths = torch.tensor([5, 2, 3])
    for nonlinearity in NONLINEARITIES:
        for args in (rnn_args() + [lengths], rnn_args(bias=False) + [None]):
            result = torch.library.opcheck(rnn_layer_op, args + [nonlinearity, backend])
            assert all(v == "SUCCESS" for v in result.values()), result


@ext
def test_ext_opcheck():
    from fastrnn.ops.rnn import ext as rnn_ext
    lengths = torch.tensor([5, 2, 3])
    args = rnn_args() + [lengths, "relu"]
    result = torch.library.opcheck(rnn_ext.forward_op, args)
    assert all(v == "SUCCESS" for v in result.values()), result
    with torch.no_grad():
        y, h, ws = rnn_ext.forward_op(*args)
    x, h0, w_ih, w_hh, b_ih, b_hh = [a.detach() for a in args[:6]]
    result = torch.library.opcheck(rnn_ext.backward_op, [torch.randn_like(y), torch.randn_like(h),
                                                         x, h0, w_ih, w_hh, b_ih, b_hh, y, ws,
                                                         lengths, "relu"])
    assert all(v == "SUCCESS" for v in result.values()), result


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_torch_compile_fullgraph(backend):
    args = rnn_args(dtype=torch.float32)

    def loss_fn(*a):
        y, h = functional.rnn_layer(*a, nonlinearity="relu", backend=backend)
        return y.sum() + h.sum()

    compiled = torch.compile(loss_fn, fullgraph=True, backend="aot_eager")
    grads = torch.autograd.grad(compiled(*args), args)
    expected = torch.autograd.grad(loss_fn(*args), args)
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e)


# ---- Triton (GPU, or the interpreter on CPU) ----------------------------------------------

@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
@pytest.mark.parametrize("T,B,I,H", SHAPES[:3])
def test_triton_matches_nn_rnn_fp32(triton_device, nonlinearity, T, B, I, H):
    check_parity(CELLS[nonlinearity], T, B, I, H, triton_device, backend="triton")


@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
def test_triton_options(triton_device, nonlinearity):
    check_parity(CELLS[nonlinearity], 5, 2, 6, 12, triton_device, bias=False, with_states=False,
                 contiguous=False, backend="triton")


def test_triton_fp16(triton_device):
    check_parity(CELLS["tanh"], 6, 2, 8, 16, triton_device, dtype=torch.float16, backend="triton")


@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
def test_triton_lengths_match_reference(triton_device, nonlinearity):
    args = rnn_args(T=6, B=4, I=5, H=12, dtype=torch.float32, device=triton_device)
    # The longest sequence ends before T: the kernels skip the last step entirely.
    lengths = torch.tensor([3, 5, 1, 4], device=triton_device)

    def ours(*a, lengths):
        return functional.rnn_layer(*a, nonlinearity=nonlinearity, lengths=lengths,
                                    backend="triton")

    def ref(*a, lengths):
        return reference.rnn_layer(*a, lengths=lengths, nonlinearity=nonlinearity)

    assert_lengths_match_reference(ours, ref, args, lengths, ["y", "h_T"])


def test_triton_gradcheck_against_reference_formulas(triton_device):
    """Triton has no float64: its BPTT in fp32 against the reference's explicit formulas."""
    args = [a.detach() for a in rnn_args(T=4, B=3, I=5, H=20, dtype=torch.float32,
                                         device=triton_device)]
    from fastrnn.ops.rnn import triton as rnn_triton
    y, h, ws = rnn_triton.forward(*args, None, "tanh")
    gy, gh = torch.randn_like(y), torch.randn_like(h)
    ours = rnn_triton.backward(gy, gh, *args, y, ws, None, "tanh")
    x, h0, w_ih, w_hh, _, _ = args
    T, B, I = x.shape
    H = h0.shape[1]
    assert_matches_torch(
        ours, lambda *a: reference.rnn_layer_backward(*a, None, "tanh"), [gy, gh, x, h0, w_ih, w_hh, ws],
        ["dx", "dh0", "dw_ih", "dw_hh", "dbias"], reduction_length=max(I + H, T * B))


# ---- CUDA extension -------------------------------------------------------------------------

@ext
@cuda
@pytest.mark.parametrize("persistent", ["1", "0"])
@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
@pytest.mark.parametrize("T,B,I,H", [(1, 1, 3, 5), (9, 4, 7, 37), (6, 3, 16, 301)])
def test_cuda_matches_nn_rnn_fp32(monkeypatch, persistent, nonlinearity, T, B, I, H):
    monkeypatch.setenv("FASTRNN_CUDA_PERSISTENT", persistent)
    check_parity(CELLS[nonlinearity], T, B, I, H, "cuda", backend="ext")


@ext
@cuda
@pytest.mark.parametrize("persistent", ["1", "0"])
@pytest.mark.parametrize("nonlinearity", NONLINEARITIES)
def test_cuda_gradcheck(monkeypatch, persistent, nonlinearity):
    monkeypatch.setenv("FASTRNN_CUDA_PERSISTENT", persistent)
    args = rnn_args(T=4, B=3, I=3, H=5, device="cuda")
    lengths = torch.tensor([4, 1, 2], device="cuda")

    def layer(*a):
        return functional.rnn_layer(*a, nonlinearity=nonlinearity, lengths=lengths, backend="ext")

    assert torch.autograd.gradcheck(layer, args)


@ext
@cuda
def test_cuda_persistent_and_per_step_agree_on_a_large_layer(monkeypatch):
    """Both CUDA plans against torch.nn.RNN at H=1024, outputs and every gradient."""
    T, B, I, H = 20, 16, 64, 1024
    args = [a.detach().float().requires_grad_() for a in rnn_args(T, B, I, H, device="cuda")]

    def torch_rnn(x, h0, *weights):
        return torch_layer("RNN", x, [h0], weights)

    names = ["y", "h_T", "dx", "dh0", "dw_ih", "dw_hh", "db_ih", "db_hh"]
    for persistent in ("1", "0"):
        monkeypatch.setenv("FASTRNN_CUDA_PERSISTENT", persistent)
        ours = with_grads(lambda *a: functional.rnn_layer(*a, backend="ext"))(*args)
        assert_matches_torch(ours, with_grads(torch_rnn), args, [f"{n} ({persistent})" for n in names],
                             reduction_length=max(I + H, T * B))


@ext
@cuda
def test_cuda_opcheck():
    from fastrnn.ops.rnn import ext as rnn_ext
    args = rnn_args(device="cuda") + [torch.tensor([5, 2, 3], device="cuda"), "tanh"]
    result = torch.library.opcheck(rnn_ext.forward_op, args)
    assert all(v == "SUCCESS" for v in result.values()), result
