"""The drop-in modules where they meet the rest of torch (issue 21, items 4 and 8):
TorchScript, error text, in-place ops on outputs, FLOP counting, isinstance, hooks and repr
after replace_rnns. Each against what torch.nn does, on every backend CPU CI runs."""
import copy

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import fastrnn
from fastrnn import testing
from tests.test_transforms import backend_cases

I, H = 3, 4


def modules(name, **kwargs):
    torch.manual_seed(0)
    theirs = getattr(nn, name)(I, H, **kwargs)
    ours = getattr(fastrnn, name)(I, H, **kwargs)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


# ---- item 4: TorchScript ------------------------------------------------------------------

class Holder(nn.Module):
    def __init__(self, rnn):
        super().__init__()
        self.rnn = rnn

    def forward(self, x):
        return self.rnn(x)[0]


@pytest.mark.parametrize("name", ["GRU", "LSTM", "RNN"])
def test_torch_jit_script_refuses_and_points_to_trace_and_compile(name):
    """Decision (documented in fastrnn/nn.py): scripting is unsupported; the error says so
    and names torch.compile / torch.jit.trace, instead of a TorchScript compile error."""
    ours, theirs = modules(name)
    torch.jit.script(Holder(theirs))  # torch.nn's scripts
    model = Holder(ours)
    with pytest.raises(RuntimeError, match=r"cannot be compiled by torch\.jit\.script.*"
                                           r"torch\.compile or torch\.jit\.trace"):
        torch.jit.script(model)
    assert model.rnn is ours  # the refusal changed nothing


def test_torch_jit_trace_matches_eager():
    ours, _ = modules("GRU")
    x = torch.randn(5, 2, I)
    traced = torch.jit.trace(Holder(ours), x)
    torch.testing.assert_close(traced(x), Holder(ours)(x), rtol=0, atol=0)


# ---- item 8: error text, in-place on outputs, FLOPs ----------------------------------------

@pytest.mark.parametrize("name", ["GRU", "LSTM", "RNN"])
def test_wrong_rank_error_is_torch_nn_s(name):
    ours, theirs = modules(name)
    x = torch.randn(2, 2, 2, I)
    with pytest.raises(ValueError) as expected:
        theirs(x)
    with pytest.raises(ValueError) as got:
        ours(x)
    assert str(got.value) == str(expected.value)


@pytest.mark.parametrize("backend,dtype,name,kwargs", backend_cases())
def test_in_place_change_of_an_output_before_backward_raises(backend, dtype, name, kwargs,
                                                              monkeypatch):
    """Decision (documented in fastrnn/nn.py): the output is saved for backward, as cuDNN
    saves it, so an in-place change raises torch's error rather than give a wrong
    gradient. A clone first gives torch.nn's gradient."""
    monkeypatch.setenv("FASTRNN_BACKEND", backend)
    ours, theirs = modules(name, **kwargs)
    ours = ours.to(dtype)
    torch.manual_seed(1)
    x = torch.randn(5, 2, I, dtype=dtype)
    if kwargs.get("batch_first"):
        x = x.transpose(0, 1)
    if ours.bidirectional:
        # The output is a concatenation of the directions, saved by nobody: the in-place
        # change is allowed and the gradient is torch.nn's.
        y = ours(x.requires_grad_())[0]
        y.mul_(2)
        (grad,) = torch.autograd.grad(y.sum(), x)
        assert_matches_torch_gradient(grad, theirs, x)
        return
    with pytest.raises(RuntimeError, match="inplace"):
        # At backward (the saved output changed), or at once when autograd marked the
        # output a view of the op's outputs (torch's "...is a view and is being modified
        # inplace"): an error either way, never a wrong gradient.
        y = ours(x.requires_grad_())[0]
        y.mul_(2)
        y.sum().backward()

    y = ours(x)[0].clone()
    y.mul_(2)
    (grad,) = torch.autograd.grad(y.sum(), x)
    assert_matches_torch_gradient(grad, theirs, x)


def assert_matches_torch_gradient(grad, theirs, x):
    """`grad`, the gradient of sum(2 * output) with respect to x, against torch.nn's (the
    same-dtype rule, fastrnn.testing)."""
    def torch_gradient(x):
        x = x.detach().requires_grad_()
        return [torch.autograd.grad(copy.deepcopy(theirs).to(x.dtype)(x)[0].mul(2).sum(), x)[0]]
    T, B = x.shape[:2]
    testing.assert_matches_torch([grad], torch_gradient, [x], ["d_x"], testing.recurrent_reduction_length(
        T, B, max(theirs.input_size, 2 * theirs.hidden_size), theirs.hidden_size, gates=4))


@pytest.mark.parametrize("backend,dtype,name,kwargs", backend_cases())
def test_flop_counter_counts_torch_nn_s_flops(backend, dtype, name, kwargs, monkeypatch):
    """FlopCounterMode counted 0 for fastrnn. Oracle: its count for torch.nn's CPU modules,
    which run as matrix products per step: 2 T B sum(W.numel()) forward, twice that
    backward (except float32 LSTM without projection, which oneDNN runs as one op that
    FlopCounterMode does not count)."""
    monkeypatch.setenv("FASTRNN_BACKEND", backend)
    ours, theirs = modules(name, **kwargs)
    ours, theirs = ours.to(dtype), theirs.to(dtype)
    directions = 2 if ours.bidirectional else 1
    counts = []
    for module in (ours, theirs):
        torch.manual_seed(1)
        x = torch.randn(5, 2, I, dtype=dtype, requires_grad=True)
        shape = (ours.num_layers * directions, 2, ours.proj_size or H)
        h0 = torch.randn(*shape, dtype=dtype, requires_grad=True)  # so torch computes dh0 too
        hx = (h0, torch.randn(*shape[:2], H, dtype=dtype, requires_grad=True)) if name == "LSTM" else h0
        with FlopCounterMode(display=False) as forward:
            y = module(x.transpose(0, 1) if module.batch_first else x, hx)[0]
        with FlopCounterMode(display=False) as backward:
            y.sum().backward()
        counts.append((forward.get_total_flops(), backward.get_total_flops()))
    weights = sum(w.numel() for n, w in ours.named_parameters() if n.startswith("weight"))
    assert counts[0] == (2 * 5 * 2 * weights, 4 * 5 * 2 * weights)
    if name == "LSTM" and not kwargs.get("proj_size") and dtype == torch.float32:
        assert counts[1] == (0, 0)  # oneDNN's fused LSTM: one op FlopCounterMode does not count
    else:
        assert counts[1] == counts[0]


def test_apply_repetition_penalty_is_private():
    """It changed its arguments once; a public name promised stability it did not have."""
    import importlib
    module = importlib.import_module("fastrnn.generate")
    assert not hasattr(module, "apply_repetition_penalty")
    assert hasattr(module, "_apply_repetition_penalty")


# ---- item 8: replace_rnns: isinstance, hooks, repr ------------------------------------------

class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.GRU(I, H)
        self.head = nn.Linear(H, 2)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


def test_replaced_modules_are_rnnbase_and_say_why_not_nn_gru():
    """Not isinstance(m, nn.GRU), on purpose: torch.compile refuses every nn.RNN / GRU /
    LSTM instance, subclasses included (documented in fastrnn/nn.py). nn.RNNBase and mode
    identify them, as they identify torch.nn's."""
    model = fastrnn.replace_rnns(Model())
    assert isinstance(model.rnn, nn.RNNBase) and model.rnn.mode == "GRU"
    assert not isinstance(model.rnn, nn.GRU)
    assert "isinstance(m, torch.nn.GRU) is False" in fastrnn.nn.__doc__
    found = [m for m in model.modules() if isinstance(m, nn.RNNBase)]
    assert found == [model.rnn]


def test_replace_rnns_carries_hooks_over():
    torch.manual_seed(0)
    model = Model()
    x = torch.randn(5, 2, I, requires_grad=True)
    seen = []
    handles = [
        model.rnn.register_forward_pre_hook(lambda m, args: seen.append(("pre", type(m)))),
        model.rnn.register_forward_hook(lambda m, args, out: seen.append(("forward", type(m)))),
        model.rnn.register_full_backward_hook(lambda m, gi, go: seen.append(("backward", type(m)))),
    ]
    scaled = model.rnn.register_forward_hook(lambda m, args, out: (out[0] * 3, out[1]))
    expected = model(x)
    fastrnn.replace_rnns(model)
    assert type(model.rnn) is fastrnn.GRU
    seen.clear()
    out = model(x)
    out.sum().backward()
    assert seen == [("pre", fastrnn.GRU), ("forward", fastrnn.GRU), ("backward", fastrnn.GRU)]
    torch.testing.assert_close(out, expected)  # the output-changing hook ran too
    for handle in handles + [scaled]:  # the original handles still remove them
        handle.remove()
    seen.clear()
    model(x)
    assert seen == []


def test_repr_shows_the_swap():
    model = fastrnn.replace_rnns(Model())
    assert "(rnn): fastrnn.GRU(3, 4)" in repr(model)
    assert repr(fastrnn.LSTM(3, 4, num_layers=2)) == "fastrnn.LSTM(3, 4, num_layers=2)"
