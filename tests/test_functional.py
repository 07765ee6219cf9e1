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


def _lstm_cell_run(x, h0, c0, w_ih, w_hh):
    """torch's own analog of a bad functional call: nn.LSTMCell stepped once."""
    cell = torch.nn.LSTMCell(w_ih.shape[1], w_hh.shape[1], bias=False, dtype=w_ih.dtype)
    return torch.func.functional_call(cell, {"weight_ih": w_ih, "weight_hh": w_hh},
                                      (x[0], (h0, c0)))


def _error_cases():
    """(name, our call, torch's analog or None, torch's exception type, our message)."""
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, _ = [a.detach() if a is not None else None
                                            for a in lstm_args()]
    ours = functional.lstm_layer
    return [
        ("sequence length 0", lambda: ours(x[:0], None, None, w_ih, w_hh),
         lambda: torch.nn.LSTM(I, H).double()(x[:0]), RuntimeError,
         "Expected sequence length to be larger than 0 in RNN"),
        ("x of rank 2", lambda: ours(x[0], None, None, w_ih, w_hh),
         lambda: torch.nn.LSTMCell(I, H).double()(x), ValueError, "must be 3-D"),
        ("input size", lambda: ours(x[..., :2], None, None, w_ih, w_hh),
         lambda: _lstm_cell_run(x[..., :2], h0, c0, w_ih, w_hh), RuntimeError, "input_size"),
        ("x dtype", lambda: ours(x.float(), None, None, w_ih, w_hh),
         lambda: _lstm_cell_run(x.float(), h0, c0, w_ih, w_hh), RuntimeError,
         "weight_ih has dtype torch.float64 but x has dtype torch.float32"),
        ("h0 dtype", lambda: ours(x, h0.float(), c0, w_ih, w_hh),
         lambda: _lstm_cell_run(x, h0.float(), c0, w_ih, w_hh), RuntimeError,
         "h0 has dtype torch.float32 but x has dtype torch.float64"),
        # torch's cell type-promotes c0 silently.
        ("c0 dtype", lambda: ours(x, h0, c0.float(), w_ih, w_hh), None, RuntimeError,
         "c0 has dtype torch.float32 but x has dtype torch.float64"),
        ("integer x", lambda: ours(x.long(), None, None, w_ih.long(), w_hh.long()),
         lambda: _lstm_cell_run(x.long(), h0.long(), c0.long(), w_ih.long(), w_hh.long()),
         RuntimeError, "x must be float16, bfloat16, float32 or float64, got torch.int64"),
        ("h0 shape", lambda: ours(x, h0[:2], c0, w_ih, w_hh),
         lambda: _lstm_cell_run(x, h0[:2], c0, w_ih, w_hh), RuntimeError,
         r"h0 must have shape \(3, 6\)"),
        ("h0 device", lambda: ours(x, h0.to("meta"), c0, w_ih, w_hh),
         lambda: _lstm_cell_run(x, h0.to("meta"), c0, w_ih, w_hh), RuntimeError, "on meta"),
        ("x not a tensor", lambda: ours(x.tolist(), None, None, w_ih, w_hh),
         lambda: torch.lstm(x.tolist(), (h0[None], c0[None]), [w_ih, w_hh], False, 1, 0.0, False,
                            False, False), TypeError,
         "x must be a Tensor, got list"),
        ("weight of rank 1", lambda: ours(x, None, None, w_ih.flatten(), w_hh), None, RuntimeError,
         "weight_ih must be 2-D, got 1-D"),
        ("one bias", lambda: ours(x, None, None, w_ih, w_hh, b_ih, None),
         lambda: torch.lstm(x, (h0[None], c0[None]), [w_ih, w_hh, b_ih], True, 1, 0.0, False,
                            False, False), RuntimeError, "both bias_ih and bias_hh"),
        ("length 0", lambda: ours(x, None, None, w_ih, w_hh, lengths=torch.tensor([5, 0, 1])),
         lambda: torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([5, 0, 1]),
                                                         enforce_sorted=False),
         RuntimeError, "lengths must lie in"),
        ("length past T", lambda: ours(x, None, None, w_ih, w_hh, lengths=torch.tensor([6, 1, 1])),
         None, RuntimeError, "lengths must lie in"),
        ("lengths shape", lambda: ours(x, None, None, w_ih, w_hh, lengths=torch.tensor([5, 1])),
         None, RuntimeError, r"lengths must have shape \(3,\)"),
    ]


@pytest.mark.parametrize("index", range(len(_error_cases())),
                         ids=[case[0] for case in _error_cases()])
def test_errors_have_torch_types_and_clear_messages(index):
    """Each bad call raises the type torch's analog raises (nn.LSTMCell, torch.lstm,
    pack_padded_sequence: asserted here where one exists), with a message naming the problem."""
    _, ours, theirs, expected_type, message = _error_cases()[index]
    with pytest.raises(expected_type, match=message):
        ours()
    if theirs is not None:
        with pytest.raises(expected_type):
            theirs()


def test_forced_backend_unavailable_is_an_error(monkeypatch):
    monkeypatch.setattr(backends, "ext_module", lambda: None)
    with pytest.raises(RuntimeError, match="fastrnn._C is not built"):
        backends.choose("cpu", "lstm", (), "ext")
    with pytest.raises(ValueError, match="unknown backend"):
        backends.choose("cpu", "lstm", (), "fast")
    assert backends.choose("cpu", "lstm", (), None) == "reference"
    monkeypatch.setenv(backends.ENV_VAR, "reference")
    assert backends.choose("cuda", "lstm", (), None) == "reference"
