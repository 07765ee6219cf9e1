"""The functional API on the reference backend: parity with torch.nn, gradcheck, errors,
backend selection, opcheck and torch.compile."""
import pytest
import torch

from fastrnn import backends, functional
from fastrnn.ops.gru import reference as gru_reference
from fastrnn.ops.gru.op import gru_layer_op
from fastrnn.ops.lstm import reference as lstm_reference
from fastrnn.ops.lstm.op import lstm_layer_op

T, B, I, H, P = 5, 3, 4, 6, 3


def rand(*shape, dtype=torch.float64):
    return torch.randn(*shape, dtype=dtype, requires_grad=True)


def lstm_args(proj=False, bias=True, dtype=torch.float64):
    out = P if proj else H
    return [rand(T, B, I, dtype=dtype), rand(B, out, dtype=dtype), rand(B, H, dtype=dtype),
            rand(4 * H, I, dtype=dtype), rand(4 * H, out, dtype=dtype),
            rand(4 * H, dtype=dtype) if bias else None, rand(4 * H, dtype=dtype) if bias else None,
            rand(out, H, dtype=dtype) if proj else None]


def gru_args(bias=True, dtype=torch.float64):
    return [rand(T, B, I, dtype=dtype), rand(B, H, dtype=dtype), rand(3 * H, I, dtype=dtype),
            rand(3 * H, H, dtype=dtype), rand(3 * H, dtype=dtype) if bias else None,
            rand(3 * H, dtype=dtype) if bias else None]


@pytest.mark.parametrize("bias", [True, False])
def test_lstm_reference_matches_nn_lstm(bias):
    lstm = torch.nn.LSTM(I, H, bias=bias).double()
    x = torch.randn(T, B, I, dtype=torch.float64)
    h0, c0 = torch.randn(1, B, H, dtype=torch.float64), torch.randn(1, B, H, dtype=torch.float64)
    expected, (h_n, c_n) = lstm(x, (h0, c0))
    params = [getattr(lstm, n, None) for n in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")]
    y, h_t, c_t = lstm_reference.lstm_layer(x, h0[0], c0[0], *params)
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(h_t, h_n[0])
    torch.testing.assert_close(c_t, c_n[0])


def test_gru_reference_matches_nn_gru():
    gru = torch.nn.GRU(I, H).double()
    x = torch.randn(T, B, I, dtype=torch.float64)
    h0 = torch.randn(1, B, H, dtype=torch.float64)
    expected, h_n = gru(x, h0)
    y, h_t = gru_reference.gru_layer(x, h0[0], gru.weight_ih_l0, gru.weight_hh_l0, gru.bias_ih_l0,
                                     gru.bias_hh_l0)
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(h_t, h_n[0])


@pytest.mark.parametrize("proj", [False, True])
@pytest.mark.parametrize("lengths", [None, [5, 2, 3]])
def test_lstm_gradcheck_reference_backend(proj, lengths):
    args = lstm_args(proj=proj)
    lengths = torch.tensor(lengths) if lengths is not None else None

    def fn(*a):
        return functional.lstm_layer(*a, lengths=lengths, backend="reference")

    assert torch.autograd.gradcheck(fn, args)


@pytest.mark.parametrize("lengths", [None, [5, 2, 3]])
def test_gru_gradcheck_reference_backend(lengths):
    lengths = torch.tensor(lengths) if lengths is not None else None

    def fn(*a):
        return functional.gru_layer(*a, lengths=lengths, backend="reference")

    assert torch.autograd.gradcheck(fn, gru_args())


def test_lengths_freeze_state_and_zero_outputs():
    args = lstm_args()
    lengths = torch.tensor([5, 2, 3])
    y, h_t, c_t = functional.lstm_layer(*args, lengths=lengths, backend="reference")
    for b, n in enumerate(lengths.tolist()):
        y_b, h_b, c_b = functional.lstm_layer(args[0][:n, b:b + 1], args[1][b:b + 1], args[2][b:b + 1],
                                              *args[3:], backend="reference")
        torch.testing.assert_close(y[:n, b:b + 1], y_b)
        torch.testing.assert_close(h_t[b:b + 1], h_b)
        torch.testing.assert_close(c_t[b:b + 1], c_b)
        assert (y[n:, b] == 0).all()


def test_opcheck_reference_ops():
    lstm = lstm_args(proj=True) + [torch.tensor([5, 2, 3]), "reference"]
    gru = gru_args() + [None, "reference"]
    for op, args in ((lstm_layer_op, lstm), (gru_layer_op, gru)):
        result = torch.library.opcheck(op, args)
        assert all(v == "SUCCESS" for v in result.values()), result


def test_compile_fullgraph_no_graph_break():
    args = lstm_args(dtype=torch.float32)

    def model(x, w_ih, w_hh):
        y, h, c = functional.lstm_layer(x, None, None, w_ih, w_hh)
        return y.sum() + h.sum() + c.sum()

    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    loss = compiled(args[0], args[3], args[4])
    grads = torch.autograd.grad(loss, [args[0], args[3], args[4]])
    expected = torch.autograd.grad(model(args[0], args[3], args[4]), [args[0], args[3], args[4]])
    for g, e in zip(grads, expected):
        torch.testing.assert_close(g, e)
    explanation = torch._dynamo.explain(model)(args[0], args[3], args[4])
    assert explanation.graph_break_count == 0


def test_errors():
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, _ = lstm_args()
    with pytest.raises(RuntimeError, match="Expected sequence length to be larger than 0 in RNN"):
        functional.lstm_layer(x[:0], None, None, w_ih, w_hh)
    with pytest.raises(ValueError, match="must be 3-D"):
        functional.lstm_layer(x[0], None, None, w_ih, w_hh)
    with pytest.raises(RuntimeError, match="input_size"):
        functional.lstm_layer(x[..., :2], None, None, w_ih, w_hh)
    with pytest.raises(ValueError, match="dtype"):
        functional.lstm_layer(x.float(), None, None, w_ih, w_hh)
    with pytest.raises(RuntimeError, match=r"h0 must have shape \(3, 6\)"):
        functional.lstm_layer(x, h0[:2], c0, w_ih, w_hh)
    with pytest.raises(RuntimeError, match="on meta"):
        functional.lstm_layer(x, h0.to("meta"), c0, w_ih, w_hh)
    with pytest.raises(ValueError, match="lengths must lie in"):
        functional.lstm_layer(x, None, None, w_ih, w_hh, lengths=torch.tensor([6, 1, 1]))
    with pytest.raises(ValueError, match="both bias_ih and bias_hh"):
        functional.gru_layer(x, None, w_ih[:18], w_hh[:18, :6], b_ih[:18], None)


def test_forced_backend_unavailable_is_an_error(monkeypatch):
    monkeypatch.setattr(backends, "ext_module", lambda: None)
    with pytest.raises(RuntimeError, match="fastrnn._C is not built"):
        backends.choose("cpu", "lstm", (), "ext")
    with pytest.raises(ValueError, match="unknown backend"):
        backends.choose("cpu", "lstm", (), "fast")
    assert backends.choose("cpu", "lstm", (), None) == "reference"
    monkeypatch.setenv(backends.ENV_VAR, "reference")
    assert backends.choose("cuda", "lstm", (), None) == "reference"
