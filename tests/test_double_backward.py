"""Double backward (gradients of gradients) on every backend, against torch.nn in float64.

Gradient penalties, MAML-style meta-learning and Hessian-vector products differentiate a
gradient again. Each layer's backward op has an autograd formula (a differentiable
recomputation, fastrnn/ops/layer_autograd.py): torch.autograd.gradgradcheck checks it in
float64, and whole modules are compared with torch.nn's own second (and third) derivatives.
"""
import copy
import importlib
import importlib.util

import pytest
import torch
from torch import nn

import fastrnn
from fastrnn import backends, functional, testing
from tests.ops.layer_cases import torch_layer

T, B, I, H, P = 3, 2, 2, 3, 2
LENGTHS = [3, 1]


def runnable_backends(op: str, dtype: torch.dtype):
    """The backends that can run `op` on CPU tensors of `dtype` in this environment."""
    found = []
    for name in ("reference", "ext", "triton"):
        if name != "reference" and importlib.util.find_spec(f"fastrnn.ops.{op}.{name}") is None:
            continue
        needs = ("fp64",) if dtype == torch.float64 else ()
        if backends._why_unavailable(name, "cpu", op) is None and not backends._missing_features(
                name, op, needs):
            found.append(name)
    return found


def rand(*shape, dtype=torch.float64):
    return torch.randn(*shape, dtype=dtype, requires_grad=True)


def layer_case(cell: str, dtype=torch.float64):
    """(op name, function of the tensors, tensors) for one layer of `cell`."""
    if cell in ("lstm", "lstm_proj"):
        out = P if cell == "lstm_proj" else H
        args = [rand(T, B, I, dtype=dtype), rand(B, out, dtype=dtype), rand(B, H, dtype=dtype),
                rand(4 * H, I, dtype=dtype), rand(4 * H, out, dtype=dtype), rand(4 * H, dtype=dtype),
                rand(4 * H, dtype=dtype)] + ([rand(out, H, dtype=dtype)] if cell == "lstm_proj" else [])
        return "lstm", functional.lstm_layer, args
    if cell == "gru":
        args = [rand(T, B, I, dtype=dtype), rand(B, H, dtype=dtype), rand(3 * H, I, dtype=dtype),
                rand(3 * H, H, dtype=dtype), rand(3 * H, dtype=dtype), rand(3 * H, dtype=dtype)]
        return "gru", functional.gru_layer, args
    nonlinearity = cell.split("_")[1]
    args = [rand(T, B, I, dtype=dtype), rand(B, H, dtype=dtype), rand(H, I, dtype=dtype),
            rand(H, H, dtype=dtype), rand(H, dtype=dtype), rand(H, dtype=dtype)]

    def rnn(*a, **kw):
        return functional.rnn_layer(*a, nonlinearity=nonlinearity, **kw)
    return "rnn", rnn, args


CELLS = ["lstm", "lstm_proj", "gru"] + (["rnn_tanh", "rnn_relu"] if hasattr(functional, "rnn_layer")
                                        else [])
FP64_CASES = [(cell, backend) for cell in CELLS
              for backend in runnable_backends(layer_case(cell)[0], torch.float64)
              if not (cell == "lstm_proj" and "proj" not in backends.FEATURES[backend]["lstm"])]


@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
@pytest.mark.parametrize("cell,backend", FP64_CASES)
def test_gradgradcheck(cell, backend, lengths):
    _, layer, args = layer_case(cell)
    lengths = None if lengths is None else torch.tensor(lengths)

    def fn(*a):
        return layer(*a, lengths=lengths, backend=backend)

    assert torch.autograd.gradgradcheck(fn, args)


# --- whole modules against torch.nn -----------------------------------------------------

TORCH_CLASSES = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN": nn.RNN}
MODES = [m for m in TORCH_CLASSES if hasattr(fastrnn, m)]


def make_pair(mode, dtype, **options):
    theirs = TORCH_CLASSES[mode](I, H, dtype=torch.float64, **options)
    ours = getattr(fastrnn, mode)(I, H, dtype=dtype, **options)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def penalty_gradients(module, x):
    """Gradients, with respect to x and every parameter, of a gradient penalty: the squared
    norm of the gradient of sum(sin(output)) with respect to x and the parameters."""
    x = x.detach().requires_grad_()
    leaves = [x, *module.parameters()]
    output = module(x)[0]
    first = torch.autograd.grad(output.sin().sum(), leaves, create_graph=True)
    penalty = sum(g.pow(2).sum() for g in first)
    return torch.autograd.grad(penalty, leaves)


def test_issue_example_lstm():
    """The reproduction from the issue: it raised 'no autograd formula was registered'."""
    x = torch.randn(5, 2, 3, requires_grad=True)
    y, _ = fastrnn.LSTM(3, 4)(x)
    g, = torch.autograd.grad(y.sin().sum(), x, create_graph=True)
    g.pow(2).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("mode,backend", [(m, b) for m in MODES
                                          for b in runnable_backends(m.lower(), torch.float64)])
def test_gradient_penalty_matches_torch_fp64(monkeypatch, mode, backend, training):
    monkeypatch.setenv("FASTRNN_BACKEND", backend)
    options = {"num_layers": 2, "bidirectional": True}
    theirs, ours = make_pair(mode, torch.float64, **options)
    theirs.train(training), ours.train(training)
    x = torch.randn(4, B, I, dtype=torch.float64)
    expected = penalty_gradients(theirs, x)
    actual = penalty_gradients(ours, x)
    names = ["x"] + [n for n, _ in ours.named_parameters()]
    for name, a, e in zip(names, actual, expected):
        torch.testing.assert_close(a, e, msg=lambda m: f"d penalty / d {name}: {m}")


def test_lstm_projection_penalty_matches_torch_fp64():
    theirs, ours = make_pair("LSTM", torch.float64, proj_size=P)
    x = torch.randn(4, B, I, dtype=torch.float64)
    for a, e in zip(penalty_gradients(ours, x), penalty_gradients(theirs, x)):
        torch.testing.assert_close(a, e)


def layer_penalty_gradients(fn, args):
    """Gradients, with respect to every tensor in args, of the squared norm of the gradient
    of sum(sin(outputs of fn(*args))) with respect to them."""
    first = torch.autograd.grad(sum(o.sin().sum() for o in fn(*args)), args, create_graph=True)
    return torch.autograd.grad(sum(g.pow(2).sum() for g in first), args)


TRITON_CELLS = [c for c in CELLS if c != "lstm_proj" and "triton" in runnable_backends(
    layer_case(c)[0], torch.float32)]


@pytest.mark.interpreter
@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
@pytest.mark.parametrize("cell", TRITON_CELLS)
def test_triton_second_derivatives_match_torch(cell, lengths):
    """The Triton kernels give the first derivative, the recomputation the second: float32
    (the interpreter has no float64) against torch's own layer in float64."""
    op_name, layer, args = layer_case(cell, dtype=torch.float32)
    lengths = None if lengths is None else torch.tensor(LENGTHS)
    kind = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}[op_name]
    n_states = 2 if kind == "LSTM" else 1
    nonlinearity = cell.split("_")[1] if kind == "RNN" else "tanh"

    def ours(*a):
        return layer(*a, lengths=lengths, backend="triton")

    def torch_oracle(*a):
        return torch_layer(kind, a[0], a[1:1 + n_states], a[1 + n_states:], lengths, nonlinearity)

    ours_grads = layer_penalty_gradients(ours, args)
    testing.assert_matches_torch(ours_grads, lambda *a: layer_penalty_gradients(torch_oracle, list(a)), args,
                                 [f"penalty gradient of argument {i}" for i in range(len(ours_grads))],
                                 testing.recurrent_reduction_length(T, B, I, H, 4))


@pytest.mark.parametrize("mode", MODES)
def test_third_derivative_matches_torch(mode):
    """The double-backward formula is itself differentiable: d^3 of a scalar function of x
    along one direction, against torch.nn in float64."""
    theirs, ours = make_pair(mode, torch.float64)
    x = torch.randn(T, 1, I, dtype=torch.float64)
    direction = torch.randn_like(x)

    def third(module):
        xx = x.clone().requires_grad_()
        value = module(xx)[0].pow(3).sum()
        d1, = torch.autograd.grad(value, xx, create_graph=True)
        d2, = torch.autograd.grad((d1 * direction).sum(), xx, create_graph=True)
        d3, = torch.autograd.grad((d2 * direction).sum(), xx)
        return d3

    torch.testing.assert_close(third(ours), third(theirs))


@pytest.mark.ext
@pytest.mark.parametrize("cell", [c for c in CELLS if c != "lstm_proj"])
def test_extension_ops_called_directly_gradgradcheck(cell):
    """fastrnn::ext_<cell>_backward has the same double-backward formula as the layer ops."""
    op_name, _, leaves = layer_case(cell)
    importlib.import_module(f"fastrnn.ops.{op_name}.ext")  # the forward op's autograd formula
    forward = getattr(torch.ops.fastrnn, f"ext_{op_name}_forward")
    n_outputs = 3 if op_name == "lstm" else 2
    # After the tensors: the LSTM's w_hr (none here), lengths, the RNN's nonlinearity.
    rest = ([None] if op_name == "lstm" else []) + [torch.tensor(LENGTHS)]
    rest += [cell.split("_")[1]] if op_name == "rnn" else []

    def fn(*tensors):
        return forward(*tensors, *rest)[:n_outputs]

    assert torch.autograd.gradgradcheck(fn, leaves)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["triton", "ext"])
@pytest.mark.parametrize("mode", MODES)
def test_cuda_gradient_penalty_matches_torch(monkeypatch, mode, backend):
    """On the GPU the kernels give the first derivative and the recomputation (plain PyTorch
    on CUDA tensors) the second: float32 against torch.nn in float64 on the CPU."""
    if backends._why_unavailable(backend, "cuda", mode.lower()) is not None:
        pytest.fail(f"{backend} cannot run {mode} on CUDA")
    monkeypatch.setenv("FASTRNN_BACKEND", backend)
    theirs, ours = make_pair(mode, torch.float32, num_layers=2)
    x = torch.randn(4, B, I)
    ours_grads = [g.cpu() for g in penalty_gradients(ours.cuda(), x.cuda())]
    names = ["d_x"] + [f"d_{n}" for n, _ in theirs.named_parameters()]
    testing.assert_matches_torch(ours_grads, lambda x: penalty_gradients(copy.deepcopy(theirs).to(x.dtype), x),
                                 [x], names, testing.recurrent_reduction_length(4, B, max(I, H), H, 4))
