"""The step (decode) path and start-up: `import fastrnn` stays free of torch._dynamo, and the
short-call fast paths keep parity with torch.nn."""
import functools
import re
import subprocess
import sys

import pytest
import torch
from torch import nn

import fastrnn
from fastrnn import backends, functional
from tests.ops.layer_cases import GRU, LSTM, RNN_RELU, RNN_TANH, check_parity


def test_import_does_not_load_dynamo():
    code = "import sys, fastrnn; print('torch._dynamo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_assume_constant_result_matches_torch():
    """backends.assume_constant_result sets exactly what torch's decorator sets."""
    def ours():
        return 1

    def theirs():
        return 1

    before = set(vars(theirs))
    torch.compiler.assume_constant_result(theirs)
    backends.assume_constant_result(ours)
    assert {k: v for k, v in vars(theirs).items() if k not in before} == vars(ours)


# ---- the extension's single-step path (T == 1, no lengths) ------------------------------

ext = pytest.mark.ext
STEP_CELLS = [LSTM, GRU, RNN_TANH, RNN_RELU]


def _rand(*shape):
    return torch.randn(*shape, dtype=torch.float64, requires_grad=True)


def _step_fn(cell, **kwargs):
    if cell is LSTM:
        return functools.partial(functional.lstm_layer, backend="ext", **kwargs)
    if cell is GRU:
        return functools.partial(functional.gru_layer, backend="ext", **kwargs)
    return functools.partial(functional.rnn_layer, backend="ext",
                             nonlinearity=cell.name.split("_")[1], **kwargs)


@ext
@pytest.mark.parametrize("cell", STEP_CELLS, ids=lambda c: c.name)
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("B", [1, 3])
def test_single_step_gradcheck(cell, bias, B):
    I, H = 4, 5
    gates = {"lstm": 4, "gru": 3}.get(cell.name, 1)
    states = [_rand(B, H)] * (2 if cell.has_cell_state else 1)
    args = [_rand(1, B, I), *[s.detach().clone().requires_grad_() for s in states],
            _rand(gates * H, I), _rand(gates * H, H)]
    args += [_rand(gates * H), _rand(gates * H)] if bias else [None, None]
    assert torch.autograd.gradcheck(_step_fn(cell), args)


@ext
def test_single_step_projection_gradcheck():
    B, I, H, P = 2, 4, 6, 3
    args = [_rand(1, B, I), _rand(B, P), _rand(B, H), _rand(4 * H, I), _rand(4 * H, P),
            _rand(4 * H), _rand(4 * H), _rand(P, H)]
    assert torch.autograd.gradcheck(_step_fn(LSTM), args)


@ext
@pytest.mark.parametrize("cell", STEP_CELLS, ids=lambda c: c.name)
@pytest.mark.parametrize("B, I, H", [(1, 64, 256), (3, 7, 13), (5, 7, 13), (32, 16, 48)])
def test_single_step_matches_nn_fp32(cell, B, I, H):
    check_parity(cell, 1, B, I, H, "cpu", backend="ext")


@ext
@pytest.mark.parametrize("cell", [LSTM, GRU, RNN_TANH], ids=lambda c: c.name)
def test_single_step_matches_nn_bf16(cell):
    check_parity(cell, 1, 3, 8, 16, "cpu", dtype=torch.bfloat16, backend="ext")


# ---- the modules' short forward ---------------------------------------------------------

@ext
@pytest.mark.parametrize("kind, options", [
    ("LSTM", dict(num_layers=2)), ("LSTM", dict(proj_size=3, batch_first=True)),
    ("GRU", dict(num_layers=2, batch_first=True)), ("RNN", dict(nonlinearity="relu", bias=False))])
@pytest.mark.parametrize("T", [1, 4])
def test_short_forward_matches_nn_and_is_taken(monkeypatch, kind, options, T):
    """Plain calls skip fastrnn.functional (the general path) and still match torch.nn in
    fp64, outputs, final states and gradients."""
    reference = getattr(torch.nn, kind)(5, 6, dtype=torch.float64, **options)
    module = getattr(fastrnn, kind)(5, 6, dtype=torch.float64, **options)
    module.load_state_dict(reference.state_dict())
    monkeypatch.setattr(functional, f"{kind.lower()}_layer", None)  # the general path would fail
    x = torch.randn(3, T, 5, dtype=torch.float64) if module.batch_first else \
        torch.randn(T, 3, 5, dtype=torch.float64)
    hx = None
    for _ in range(2):  # the second call carries the state
        x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
        expected, ref_state = reference(x_ref, hx)
        got, state = module(x_ours, hx)
        flat = lambda s: list(s) if isinstance(s, tuple) else [s]  # noqa: E731
        for e, g in zip([expected] + flat(ref_state), [got] + flat(state)):
            torch.testing.assert_close(g, e)
        (expected.sum() + sum(s.sum() for s in flat(ref_state))).backward()
        (got.sum() + sum(s.sum() for s in flat(state))).backward()
        torch.testing.assert_close(x_ours.grad, x_ref.grad)
        for (name, p), q in zip(module.named_parameters(), reference.parameters()):
            torch.testing.assert_close(p.grad, q.grad, msg=name)
        module.zero_grad(), reference.zero_grad()
        hx = tuple(s.detach() for s in flat(ref_state))
        hx = hx if kind == "LSTM" else hx[0]


@ext
def test_short_forward_leaves_other_calls_to_the_general_path(monkeypatch):
    """Unbatched input, autocast and a wrong hx shape take the general path (which raises
    torch.nn's error for the last)."""
    module = fastrnn.LSTM(4, 6)
    calls = []
    general = functional.lstm_layer
    monkeypatch.setattr(functional, "lstm_layer", lambda *a, **k: calls.append(1) or general(*a, **k))
    module(torch.randn(3, 4))
    assert len(calls) == 1
    x = torch.randn(2, 3, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        try:
            nn.LSTM(4, 6)(x)
        except RuntimeError as error:
            # oneDNN has no bf16 LSTM primitive on CPUs without bf16 arithmetic (an AVX2 AMD
            # EPYC): torch.nn raises there, and so must the drop-in, with torch's message.
            with pytest.raises(RuntimeError, match=re.escape(str(error))):
                module(x)
        else:
            module(x)
            assert len(calls) == 2
    with pytest.raises(RuntimeError, match="Expected hidden"):
        module(torch.randn(2, 3, 4), (torch.zeros(1, 2, 6), torch.zeros(1, 2, 6)))
