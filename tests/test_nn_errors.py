"""Bad arguments and inputs: fastrnn.LSTM / GRU raise what torch.nn.LSTM / GRU raise (same
type, same message), and clear errors where torch's own are unclear or missing."""
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fastrnn

TORCH_CLASSES = {"LSTM": nn.LSTM, "GRU": nn.GRU}
OUR_CLASSES = {"LSTM": fastrnn.LSTM, "GRU": fastrnn.GRU}
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
    if mode == "GRU":
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


# --- where torch is unclear or silent, fastrnn says what is wrong ----------------------

def packed_input(width=I):
    return pack_padded_sequence(torch.randn(5, 3, width), torch.tensor([2, 5, 3]),
                                enforce_sorted=False)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_packed_input_of_wrong_width(mode):
    # torch's LSTM skips this check for packed input (a one-sequence batch even succeeds).
    _, ours = pair(mode)
    with pytest.raises(RuntimeError, match="input.size\\(-1\\) must be equal to input_size. "
                                           "Expected 10, got 7"):
        ours(packed_input(width=7))


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_packed_input_with_wrong_hx_batch(mode):
    # torch's LSTM fails inside ATen; its GRU permutes hx first and can miss the mistake.
    _, ours = pair(mode)
    message = "Expected hidden\\[0\\] size" if mode == "LSTM" else "Expected hidden size"
    with pytest.raises(RuntimeError, match=message + " \\(1, 3, 20\\), got \\[1, 4, 20\\]"):
        ours(packed_input(), hidden(mode, (1, 4, H)))


@pytest.mark.parametrize("batch_sizes,message", [
    ([3, 2, 2], "data has 8 rows but batch_sizes sum to 7"),
    ([2, 3, 2, 1], "batch_sizes must be positive and non-increasing"),
    ([3, 3, 0, 2], "batch_sizes must be positive and non-increasing"),
])
def test_inconsistent_hand_made_packed_sequence(batch_sizes, message):
    _, ours = pair("LSTM")
    bad = PackedSequence(torch.randn(8, I), torch.tensor(batch_sizes))
    with pytest.raises(ValueError, match="LSTM: invalid PackedSequence: " + message):
        ours(bad)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_hx_of_wrong_dtype(mode):
    # torch fails inside oneDNN or a matmul with a message that does not name hx.
    _, ours = pair(mode)
    with pytest.raises(ValueError, match=f"{mode}: hx dtype \\(torch.float64\\) does not match "
                                         "weight dtype \\(torch.float32\\)"):
        ours(torch.randn(5, 3, I), hidden(mode, (1, 3, H), dtype=torch.float64))


def test_lstm_hx_that_is_not_a_pair():
    # torch indexes a bare tensor as hx[0], hx[1] and reports a confusing rank error.
    _, ours = pair("LSTM")
    with pytest.raises(TypeError, match="LSTM: hx must be a tuple \\(h_0, c_0\\) of two tensors, got Tensor"):
        ours(torch.randn(5, 3, I), torch.zeros(1, 3, H))


def test_gru_hx_that_is_not_a_tensor():
    _, ours = pair("GRU")
    with pytest.raises(TypeError, match="GRU: hx must be a Tensor, got tuple"):
        ours(torch.randn(5, 3, I), (torch.zeros(1, 3, H),))
