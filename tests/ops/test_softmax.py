"""Softmax / log-softmax with temperature: forward and backward against torch, on the
reference backend and the Triton kernels (interpreter on CPU, GPU when there is one);
gradcheck, opcheck, torch.compile and errors."""
import pytest
import torch

import fastrnn
from fastrnn.ops.softmax.op import softmax_op
from fastrnn.testing import assert_matches_torch, assert_within_baseline

FUNCS = {False: (fastrnn.softmax, torch.softmax), True: (fastrnn.log_softmax, torch.log_softmax)}


def torch_result(x, temperature, log, dim=-1):
    """torch's (log-)softmax of x / temperature, in x's dtype."""
    if isinstance(temperature, torch.Tensor):
        temperature = temperature.to(x.dtype).unsqueeze(dim)
    return FUNCS[log][1](x / temperature, dim)


def check_fp32(backend, device, shape, temperature, log, dim=-1):
    """Output and gradient against torch's softmax in float64, within twice the error of
    torch's own float32 softmax (plus the floor of a sum over the row)."""
    ours = FUNCS[log][0]
    x = (torch.randn(*shape, device=device) * 3).requires_grad_(True)
    y = ours(x, temperature, dim=dim, backend=backend)
    grad = torch.randn_like(y)
    (dx,) = torch.autograd.grad((y * grad).sum(), x)

    def torch_softmax(x, grad):
        y = torch_result(x, temperature, log, dim)
        return [y.detach(), torch.autograd.grad((y * grad).sum(), x)[0]]
    assert_matches_torch([y, dx], torch_softmax, [x, grad], ["output", "dx"], reduction_length=shape[dim])


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("shape", [(3, 37), (2, 1), (1, 5, 20)])
def test_reference_matches_torch(log, shape):
    check_fp32("reference", "cpu", shape, 0.7, log)


@pytest.mark.interpreter
@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("shape", [(3, 37), (2, 1), (2, 1500)])
def test_triton_matches_torch(log, shape, triton_device):
    check_fp32("triton", triton_device, shape, 0.7, log)


@pytest.mark.interpreter
def test_triton_per_row_temperature_other_dim_and_minus_inf(triton_device):
    t = torch.tensor([[0.5, 1.0, 2.0, 3.0]], device=triton_device).expand(2, 4)
    check_fp32("triton", triton_device, (2, 9, 4), t, False, dim=1)
    x = torch.randn(2, 10, device=triton_device)
    x[0, :9] = float("-inf")
    assert_matches_torch([fastrnn.softmax(x, backend="triton")], lambda x: [torch.softmax(x, -1)], [x],
                         ["output"], reduction_length=x.shape[-1])


@pytest.mark.interpreter
def test_triton_fp16_within_torch_error(triton_device):
    x = torch.randn(3, 300, device=triton_device).half()
    ref = torch.softmax(x.double() / 0.8, -1)
    baseline = torch.softmax(x.float() / 0.8, -1).half()  # torch's own half result
    assert_within_baseline(fastrnn.softmax(x, 0.8, backend="triton"), baseline, ref)


def test_gradcheck_reference_fp64():
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    for log in (False, True):
        assert torch.autograd.gradcheck(lambda v: FUNCS[log][0](v, 1.3, backend="reference"), (x,))


def test_opcheck_and_compile():
    x = torch.randn(4, 11, requires_grad=True)
    t = torch.full((4,), 0.9)
    torch.library.opcheck(softmax_op, (x, t, False, "reference"))
    torch.library.opcheck(softmax_op, (x, t, True, "reference"))

    def f(v):
        return fastrnn.log_softmax(v, 0.9, backend="reference").sum(-1).mean()
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    (dx,) = torch.autograd.grad(compiled(x), x)
    (dx_eager,) = torch.autograd.grad(f(x), x)
    torch.testing.assert_close(compiled(x), f(x))
    torch.testing.assert_close(dx, dx_eager)


@pytest.mark.parametrize("temperature,exc,match", [
    (0.0, ValueError, "temperature must be > 0"),
    (-1.0, ValueError, "temperature must be > 0"),
    (torch.ones(5), ValueError, "shaped like the rows"),
    ("hot", TypeError, "temperature must be a number"),
])
def test_bad_temperature_raises(temperature, exc, match):
    with pytest.raises(exc, match=match):
        fastrnn.softmax(torch.randn(2, 3), temperature)


def test_bad_input_raises():
    with pytest.raises(TypeError, match="float16"):
        fastrnn.softmax(torch.ones(2, 3, dtype=torch.int64))
    with pytest.raises(RuntimeError, match="cannot run"):
        fastrnn.softmax(torch.randn(2, 3), backend="ext")


@pytest.mark.cuda
@pytest.mark.parametrize("V", [32000, 128256, 1000])
def test_cuda_large_rows(V):
    for log in (False, True):
        check_fp32("triton", "cuda", (4, V), 0.8, log)
    x = torch.randn(8, V, device="cuda").bfloat16()
    ref = torch.softmax(x.double(), -1)
    assert_within_baseline(fastrnn.softmax(x), torch.softmax(x, -1), ref)
