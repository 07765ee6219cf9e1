"""Bad arguments and inputs: fastrnn.LSTM / GRU raise what torch.nn.LSTM / GRU raise (same
type, same message), and clear errors where torch's own are unclear or missing."""
import re
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fastrnn

TORCH_CLASSES = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN": nn.RNN}
OUR_CLASSES = {name: getattr(fastrnn, name) for name in TORCH_CLASSES if hasattr(fastrnn, name)}
I, H = 10, 20


def raised(fn):
    """(exception type, message) that fn raises; fails the test if it raises nothing."""
    with pytest.raises(Exception) as info:
        fn()
    return info.type, str(info.value)


def assert_same_error(torch_fn, our_fn):
    expected = raised(torch_fn)
    assert raised(our_fn) == expected


CONSTRUCTOR_CASES = [
    ((I, H), {"dropout": 1.5}),
    ((I, H), {"dropout": True}),
    ((I, H), {"dropout": "0.1"}),
    ((I, H), {"bias": 1}),
    ((I, H), {"batch_first": 0}),
    ((10.0, H), {}),
    ((I, 20.0), {}),
    ((0, H), {}),
    ((I, 0), {}),
    ((I, H, 0), {}),
    ((I, H, 2.0), {}),
]
LSTM_CONSTRUCTOR_CASES = [((I, H), {"proj_size": -1}), ((I, H), {"proj_size": H})]


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
@pytest.mark.parametrize("args,kwargs", CONSTRUCTOR_CASES)
def test_constructor_errors_match_torch(mode, args, kwargs):
    assert_same_error(lambda: TORCH_CLASSES[mode](*args, **kwargs),
                      lambda: OUR_CLASSES[mode](*args, **kwargs))


@pytest.mark.parametrize("args,kwargs", LSTM_CONSTRUCTOR_CASES)
def test_lstm_projection_errors_match_torch(args, kwargs):
    assert_same_error(lambda: nn.LSTM(*args, **kwargs), lambda: fastrnn.LSTM(*args, **kwargs))


def test_gru_refuses_proj_size_like_torch():
    assert_same_error(lambda: nn.GRU(I, H, proj_size=2), lambda: fastrnn.GRU(I, H, proj_size=2))


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_single_layer_dropout_warns_like_torch(mode):
    def warnings_of(cls):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cls(I, H, dropout=0.5)
        return [(w.category, str(w.message)) for w in caught]

    expected = warnings_of(TORCH_CLASSES[mode])
    assert expected and warnings_of(OUR_CLASSES[mode]) == expected


def pair(mode, **options):
    theirs = TORCH_CLASSES[mode](I, H, **options)
    ours = OUR_CLASSES[mode](I, H, **options)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def hidden(mode, h_shape, c_shape=None, **kwargs):
    h = torch.zeros(h_shape, **kwargs)
    if mode != "LSTM":
        return h
    return h, torch.zeros(c_shape if c_shape is not None else h_shape, **kwargs)


# Each case: (name, options, input, hx builder taking the mode) for a 2-layer module.
FORWARD_CASES = [
    ("1-D input", {}, lambda: torch.randn(I), None),
    ("4-D input", {}, lambda: torch.randn(2, 5, 3, I), None),
    ("input dtype", {}, lambda: torch.randn(5, 3, I, dtype=torch.float64), None),
    ("input size", {}, lambda: torch.randn(5, 3, 7), None),
    ("unbatched input size", {}, lambda: torch.randn(5, 7), None),
    ("sequence length 0", {}, lambda: torch.randn(0, 3, I), None),
    ("sequence length 0, batch_first", {"batch_first": True}, lambda: torch.randn(3, 0, I), None),
    ("hx batch", {}, lambda: torch.randn(5, 3, I), lambda m: hidden(m, (2, 4, H))),
    ("hx layers", {}, lambda: torch.randn(5, 3, I), lambda m: hidden(m, (1, 3, H))),
    ("hx width, bidirectional", {"bidirectional": True}, lambda: torch.randn(5, 3, I),
     lambda m: hidden(m, (4, 3, H + 1))),
    ("2-D hx for batched input", {}, lambda: torch.randn(5, 3, I), lambda m: hidden(m, (2, H))),
    ("3-D hx for unbatched input", {}, lambda: torch.randn(5, I), lambda m: hidden(m, (2, 1, H))),
    ("unbatched hx size", {}, lambda: torch.randn(5, I), lambda m: hidden(m, (2, H + 1))),
    ("input on another device", {}, lambda: torch.randn(5, 3, I, device="meta"), None),
    ("hx on another device", {}, lambda: torch.randn(5, 3, I),
     lambda m: hidden(m, (2, 3, H), device="meta")),
]


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
@pytest.mark.parametrize("name,options,make_input,make_hx", FORWARD_CASES,
                         ids=[c[0] for c in FORWARD_CASES])
def test_forward_errors_match_torch(mode, name, options, make_input, make_hx):
    theirs, ours = pair(mode, num_layers=2, **options)
    x = make_input()
    args = (x,) if make_hx is None else (x, make_hx(mode))
    assert_same_error(lambda: theirs(*args), lambda: ours(*args))


def test_lstm_cell_state_size_error_matches_torch():
    theirs, ours = pair("LSTM", proj_size=5)
    hx = (torch.zeros(1, 3, 5), torch.zeros(1, 3, 5))  # c must have hidden_size, not proj_size
    x = torch.randn(4, 3, I)
    assert_same_error(lambda: theirs(x, hx), lambda: ours(x, hx))


# --- where torch is unclear or silent, fastrnn says what is wrong, with torch's type -----

def assert_torch_type_and_our_message(torch_fn, our_fn, expected_type, message):
    """fastrnn raises `expected_type` (or a subclass) with a message matching `message`;
    torch, when it raises at all, raises `expected_type` too (so code that catches torch's
    error catches ours)."""
    our_type, our_message = raised(our_fn)
    assert issubclass(our_type, expected_type), f"{our_type.__name__}: {our_message}"
    assert re.search(message, our_message), our_message
    try:
        torch_fn()
    except Exception as error:  # noqa: BLE001 (the type is what is compared)
        assert isinstance(error, expected_type), f"torch raises {type(error).__name__}: {error}"


def packed_input(width=I):
    return pack_padded_sequence(torch.randn(5, 3, width), torch.tensor([2, 5, 3]),
                                enforce_sorted=False)


def hand_made(batch_sizes):
    return PackedSequence(torch.randn(8, I), batch_sizes)


MODES = ["LSTM", "GRU"] + (["RNN"] if hasattr(fastrnn, "RNN") else [])
h_of = torch.zeros(1, 3, H)

# (name, modes, input, hx or None, exception type torch raises, fastrnn's message)
UNCLEAR_CASES = [
    # torch's LSTM skips this check for packed input (a one-sequence batch even succeeds).
    ("packed input of wrong width", MODES, lambda: packed_input(width=7), None, RuntimeError,
     r"input.size\(-1\) must be equal to input_size. Expected 10, got 7"),
    # torch's LSTM fails inside ATen; its GRU permutes hx first and can miss the mistake.
    ("packed input with wrong hx batch", ["LSTM"], packed_input, lambda m: hidden(m, (1, 4, H)),
     RuntimeError, r"Expected hidden\[0\] size \(1, 3, 20\), got \[1, 4, 20\]"),
    ("packed input with wrong hx batch", ["GRU"], packed_input, lambda m: hidden(m, (1, 4, H)),
     RuntimeError, r"Expected hidden size \(1, 3, 20\), got \[1, 4, 20\]"),
    # Hand-made PackedSequences: torch fails deep in ATen, or runs on garbage.
    ("batch_sizes sum", MODES, lambda: hand_made(torch.tensor([3, 2, 2])), None, RuntimeError,
     "invalid PackedSequence: data has 8 rows but batch_sizes sum to 7"),
    ("batch_sizes increasing", MODES, lambda: hand_made(torch.tensor([2, 3, 2, 1])), None,
     RuntimeError, "invalid PackedSequence: batch_sizes must be positive and non-increasing"),
    ("batch_sizes zero", MODES, lambda: hand_made(torch.tensor([3, 3, 0, 2])), None, RuntimeError,
     "invalid PackedSequence: batch_sizes must be positive and non-increasing"),
    ("batch_sizes int32", MODES, lambda: hand_made(torch.tensor([3, 3, 2], dtype=torch.int32)),
     None, RuntimeError, "invalid PackedSequence: batch_sizes must be int64, got torch.int32"),
    ("batch_sizes float", MODES, lambda: hand_made(torch.tensor([3.0, 3.0, 2.0])), None, TypeError,
     "invalid PackedSequence: batch_sizes must be a 1-D int64 tensor, got 1-D torch.float32"),
    ("batch_sizes 2-D", MODES, lambda: hand_made(torch.tensor([[3, 3, 2]])), None, TypeError,
     "invalid PackedSequence: batch_sizes must be a 1-D int64 tensor, got 2-D"),
    # torch fails inside oneDNN or a matmul with a message that does not name hx.
    ("hx dtype", MODES, lambda: torch.randn(5, 3, I),
     lambda m: hidden(m, (1, 3, H), dtype=torch.float64), RuntimeError,
     r"hx dtype \(torch.float64\) does not match weight dtype \(torch.float32\)"),
    ("c0 dtype", ["LSTM"], lambda: torch.randn(5, 3, I),
     lambda m: (torch.zeros(1, 3, H), torch.zeros(1, 3, H, dtype=torch.float64)), RuntimeError,
     r"hx dtype \(torch.float64\) does not match weight dtype \(torch.float32\)"),
    # torch indexes a bad LSTM hx as hx[0], hx[1]: its error depends on the value.
    ("LSTM hx a tensor", ["LSTM"], lambda: torch.randn(5, 3, I), lambda m: h_of, IndexError,
     r"LSTM: hx must be a tuple \(h_0, c_0\) of two tensors, got Tensor"),
    ("LSTM hx a 1-tuple", ["LSTM"], lambda: torch.randn(5, 3, I), lambda m: (h_of,), IndexError,
     r"LSTM: hx must be a tuple \(h_0, c_0\) of two tensors, got tuple"),
    ("LSTM hx a 3-tuple", ["LSTM"], lambda: torch.randn(5, 3, I), lambda m: (h_of,) * 3,
     RuntimeError, r"LSTM: hx must be a tuple \(h_0, c_0\) of two tensors, got tuple"),
    ("LSTM hx an int", ["LSTM"], lambda: torch.randn(5, 3, I), lambda m: 3, TypeError,
     r"LSTM: hx must be a tuple \(h_0, c_0\) of two tensors, got int"),
    ("LSTM hx holding an int", ["LSTM"], lambda: torch.randn(5, 3, I), lambda m: (h_of, 3),
     AttributeError, r"LSTM: hx must be a tuple \(h_0, c_0\) of two tensors, got tuple"),
    ("hx a tuple", [m for m in MODES if m != "LSTM"], lambda: torch.randn(5, 3, I),
     lambda m: (h_of,), AttributeError, "hx must be a Tensor, got tuple"),
    ("hx an int", [m for m in MODES if m != "LSTM"], lambda: torch.randn(5, 3, I), lambda m: 3,
     AttributeError, "hx must be a Tensor, got int"),
]


@pytest.mark.parametrize("mode,name,make_input,make_hx,expected_type,message", [
    pytest.param(mode, case[0], *case[2:], id=f"{mode}-{case[0]}") for case in UNCLEAR_CASES
    for mode in case[1]])
def test_unclear_torch_errors_get_clear_messages_of_torch_type(mode, name, make_input, make_hx,
                                                              expected_type, message):
    theirs, ours = pair(mode)
    x = make_input()
    args = (x,) if make_hx is None else (x, make_hx(mode))
    assert_torch_type_and_our_message(lambda: theirs(*args), lambda: ours(*args), expected_type,
                                      message)


def test_issue_hx_dtype_is_a_runtime_error():
    """The issue's case: float64 h0 with float32 weights raised ValueError; torch raises
    RuntimeError, so code catching torch's error must catch ours."""
    lstm = fastrnn.LSTM(3, 4)
    h0 = torch.zeros(1, 2, 4, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="hx dtype"):
        lstm(torch.randn(5, 2, 3), (h0, h0.float()))
