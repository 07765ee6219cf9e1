"""fastrnn.RNN against torch.nn.RNN: parameters and repr, forward and every gradient for each
constructor option (tanh and relu) and input form, dropout, state_dict, replace_rnns,
errors, torch.compile. The input/gradient helpers are tests/test_nn.py's (LSTM, GRU)."""
import pytest
import torch
from torch import nn

import fastrnn
from tests.test_nn import (B, I, T, assert_parity, flat_outputs, forward_args, make_leaves,
                           run_with_grads)

H = 6
OPTIONS = [
    {},
    {"nonlinearity": "relu"},
    {"num_layers": 2},
    {"bias": False, "nonlinearity": "relu"},
    {"batch_first": True},
    {"bidirectional": True},
    {"num_layers": 3, "bidirectional": True, "nonlinearity": "relu"},
    {"num_layers": 2, "bidirectional": True, "batch_first": True, "bias": False},
]
FORMS = ["padded", "unbatched", "packed"]


def options_id(options):
    return "-".join(f"{k}={v}" for k, v in options.items()) or "default"


def make_pair(options, dtype=torch.float64):
    """nn.RNN and fastrnn.RNN with nn's weights."""
    theirs = nn.RNN(I, H, dtype=dtype, **options)
    ours = fastrnn.RNN(I, H, dtype=dtype, **options)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


@pytest.fixture(params=["reference", pytest.param("ext", marks=pytest.mark.ext)])
def cpu_backend(request, monkeypatch):
    """Each CPU backend in turn, forced (the automatic choice would hide the reference)."""
    monkeypatch.setenv("FASTRNN_BACKEND", request.param)
    return request.param


# --- parameters ----------------------------------------------------------------------

@pytest.mark.parametrize("options", OPTIONS, ids=options_id)
def test_same_seed_gives_identical_parameters_and_repr(options):
    torch.manual_seed(5)
    theirs = nn.RNN(I, H, **options)
    torch.manual_seed(5)
    ours = fastrnn.RNN(I, H, **options)
    assert repr(ours) == "fastrnn." + repr(theirs)  # the repr shows the swap (issue 21)
    assert ours.nonlinearity == theirs.nonlinearity and ours.mode == theirs.mode
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    for (_, a), (_, e) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert torch.equal(a, e)


def test_positional_nonlinearity_and_state_dict_both_ways():
    theirs = nn.RNN(I, H, 2, "relu", False)
    ours = fastrnn.RNN(I, H, 2, "relu", False)
    assert ours.nonlinearity == "relu" and not ours.bias and ours.num_layers == 2
    ours.load_state_dict(theirs.state_dict(), strict=True)
    theirs.load_state_dict(ours.state_dict(), strict=True)


# --- forward and gradients -----------------------------------------------------------

@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "no_hx"])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("options", OPTIONS, ids=options_id)
def test_fp64_parity_with_torch(cpu_backend, options, form, with_hx):
    theirs, ours = make_pair(options)
    assert_parity(theirs, ours, form, with_hx, torch.float64)


@pytest.mark.parametrize("form", ["padded", "packed"])
@pytest.mark.parametrize("options", OPTIONS, ids=options_id)
def test_fp32_parity_with_fp64_torch(cpu_backend, options, form):
    theirs, ours = make_pair(options, dtype=torch.float32)
    assert_parity(theirs, ours, form, True, torch.float32)


@pytest.mark.parametrize("form", ["padded", "packed"])
def test_triton_parity_with_fp64_torch(triton_device, monkeypatch, form):
    """The Triton layers (the interpreter on CPU) through the module, fp32."""
    if triton_device.type != "cpu":
        pytest.skip("on the GPU: test_cuda_fp32_parity_with_fp64_torch")
    monkeypatch.setenv("FASTRNN_BACKEND", "triton")
    options = {"num_layers": 2, "bidirectional": True, "nonlinearity": "relu"}
    theirs, ours = make_pair(options, dtype=torch.float32)
    assert_parity(theirs, ours, form, True, torch.float32)


def test_return_types_and_shapes_match_torch():
    theirs, ours = make_pair({"num_layers": 2, "bidirectional": True, "batch_first": True})
    for form in FORMS:
        leaves = make_leaves(ours, form, False, torch.float64)
        expected = theirs(*forward_args(theirs, form, leaves))
        actual = ours(*forward_args(ours, form, leaves))
        assert type(actual[0]) is type(expected[0]) and type(actual[1]) is type(expected[1])
        assert [t.shape for t in flat_outputs(actual)] == [t.shape for t in flat_outputs(expected)]


@pytest.mark.parametrize("form", ["padded", "packed"])
def test_dropout_in_training_uses_torch_masks(form):
    """Same seed, same random stream: the inter-layer dropout masks equal torch's."""
    theirs, ours = make_pair({"num_layers": 3, "dropout": 0.5, "bidirectional": True})
    leaves = make_leaves(ours, form, False, torch.float64)
    torch.manual_seed(3)
    expected = flat_outputs(theirs(*forward_args(theirs, form, leaves)))
    torch.manual_seed(3)
    actual = flat_outputs(ours(*forward_args(ours, form, leaves)))
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e)


def test_batch_of_zero(cpu_backend):
    theirs, ours = make_pair({"num_layers": 2, "bidirectional": True})
    empty = torch.randn(T, 0, I, dtype=torch.float64)
    for e, a in zip(flat_outputs(theirs(empty)), flat_outputs(ours(empty))):
        assert a.shape == e.shape


def test_compiles_fullgraph_without_graph_breaks():
    import torch._dynamo

    torch._dynamo.reset()
    _, ours = make_pair({"num_layers": 2, "nonlinearity": "relu"})
    x = torch.randn(T, B, I, dtype=torch.float64)
    explanation = torch._dynamo.explain(ours)(x)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    expected = ours(x)[0]
    expected_grads = torch.autograd.grad(expected.sum(), list(ours.parameters()))
    actual = compiled(x)[0]
    actual_grads = torch.autograd.grad(actual.sum(), list(ours.parameters()))
    torch.testing.assert_close(actual, expected)
    for a, e in zip(actual_grads, expected_grads):
        torch.testing.assert_close(a, e)


# --- replace_rnns --------------------------------------------------------------------

def test_replace_rnns_swaps_nn_rnn_keeping_parameters_and_nonlinearity():
    model = nn.Sequential(nn.RNN(I, H, num_layers=2, nonlinearity="relu", dropout=0.25),
                          nn.GRU(H, H)).double().eval()
    params_before = dict(model.named_parameters())
    x = torch.randn(T, B, I, dtype=torch.float64)
    expected = model[1](model[0](x)[0])[0]
    assert fastrnn.replace_rnns(model) is model
    assert type(model[0]) is fastrnn.RNN and type(model[1]) is fastrnn.GRU
    assert model[0].nonlinearity == "relu" and not model[0].training
    assert repr(model[0]) == "fastrnn.RNN(4, 6, num_layers=2, dropout=0.25)"
    assert all(dict(model.named_parameters())[n] is p for n, p in params_before.items())
    torch.testing.assert_close(model[1](model[0](x)[0])[0], expected)


def test_replace_rnns_on_a_bare_rnn_returns_the_replacement():
    rnn = nn.RNN(I, H, nonlinearity="relu")
    replaced = fastrnn.replace_rnns(rnn)
    assert type(replaced) is fastrnn.RNN and replaced.nonlinearity == "relu"
    assert replaced.weight_hh_l0 is rnn.weight_hh_l0


# --- errors: torch's exception types ---------------------------------------------------

def error_of(fn):
    with pytest.raises(Exception) as info:
        fn()
    return info.type, str(info.value)


@pytest.mark.parametrize("args,kwargs", [
    ((I, H), {"nonlinearity": "sigmoid"}),
    ((I, H, 1, "gelu"), {}),
    ((I, H), {"proj_size": 2}),
    ((I, H), {"dropout": 1.5}),
    ((I, 0), {}),
])
def test_constructor_errors_match_torch(args, kwargs):
    expected = error_of(lambda: nn.RNN(*args, **kwargs))
    assert error_of(lambda: fastrnn.RNN(*args, **kwargs)) == expected


@pytest.mark.parametrize("make_input,make_hx", [
    (lambda: torch.randn(T, B, I + 1), lambda: None),           # wrong input size
    (lambda: torch.randn(T, B, I), lambda: torch.randn(1, B + 1, H)),  # wrong hx batch
    (lambda: torch.randn(T, B, I), lambda: torch.randn(2, B, H)),      # wrong hx layers
    (lambda: torch.randn(T, B, I), lambda: torch.randn(B, H)),         # hx rank, batched
    (lambda: torch.randn(T, I), lambda: torch.randn(1, 1, H)),         # hx rank, unbatched
    (lambda: torch.randn(T, B, I), lambda: (torch.randn(1, B, H),)),   # hx not a tensor
])
def test_forward_error_types_match_torch(make_input, make_hx):
    theirs, ours = make_pair({}, dtype=torch.float32)
    x, hx = make_input(), make_hx()
    expected_type, _ = error_of(lambda: theirs(x, hx))
    actual_type, _ = error_of(lambda: ours(x, hx))
    assert issubclass(actual_type, expected_type)


def test_input_rank_error_is_a_value_error_like_torch():
    theirs, ours = make_pair({})
    x = torch.randn(2, T, B, I, dtype=torch.float64)
    assert error_of(lambda: ours(x))[0] is error_of(lambda: theirs(x))[0] is ValueError


# --- CUDA --------------------------------------------------------------------------------

@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["triton", pytest.param("ext", marks=pytest.mark.ext)])
@pytest.mark.parametrize("form", ["padded", "packed"])
def test_cuda_fp32_parity_with_fp64_torch(monkeypatch, backend, form):
    """On the GPU, outputs and every gradient against nn.RNN in float64."""
    monkeypatch.setenv("FASTRNN_BACKEND", backend)
    theirs, ours = make_pair({"num_layers": 2, "bidirectional": True, "nonlinearity": "relu"},
                             dtype=torch.float32)
    theirs, ours = theirs.cuda(), ours.cuda()
    leaves = [t.cuda().detach().requires_grad_() for t in make_leaves(ours, form, True, torch.float32)]
    with torch.backends.cudnn.flags(allow_tf32=False):   # exact fp32 on both sides
        assert_parity(theirs, ours, form, True, torch.float32, leaves)
