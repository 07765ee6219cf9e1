"""fastrnn.LSTM / fastrnn.GRU against torch.nn.LSTM / torch.nn.GRU: parameters, forward and
every gradient for each constructor option and input form, dropout, module plumbing
(state_dict, .to, pickling, functional_call), autocast, torch.compile and replace_rnns.
torch's own module test recipe, on its module_db samples: tests/test_torch_module_recipe.py."""
import copy
import importlib.util
import io
import pickle
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import fastrnn
from fastrnn import testing

T, B, I, H, P = 5, 3, 4, 6, 3
LENGTHS = [2, 5, 3]  # unsorted, longest == T

TORCH_CLASSES = {"LSTM": nn.LSTM, "GRU": nn.GRU}
OUR_CLASSES = {"LSTM": fastrnn.LSTM, "GRU": fastrnn.GRU}

COMMON_OPTIONS = [
    {},
    {"num_layers": 2},
    {"bias": False},
    {"batch_first": True},
    {"bidirectional": True},
    {"num_layers": 3, "bidirectional": True},
    {"num_layers": 2, "bidirectional": True, "batch_first": True, "bias": False},
]
LSTM_ONLY_OPTIONS = [
    {"proj_size": P},
    {"num_layers": 2, "bidirectional": True, "proj_size": P, "batch_first": True},
]
CASES = ([("LSTM", o) for o in COMMON_OPTIONS + LSTM_ONLY_OPTIONS]
         + [("GRU", o) for o in COMMON_OPTIONS])
FORMS = ["padded", "unbatched", "packed"]


def case_id(case):
    mode, options = case
    return mode + "-" + ("-".join(f"{k}={v}" for k, v in options.items()) or "default")


def make_pair(mode, options, dtype=torch.float64, input_size=I, hidden_size=H):
    """nn module and ours with the nn module's weights."""
    theirs = TORCH_CLASSES[mode](input_size, hidden_size, dtype=dtype, **options)
    ours = OUR_CLASSES[mode](input_size, hidden_size, dtype=dtype, **options)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def hidden_shapes(module, batch):
    """Shapes of hx's tensors (None for the batch dim of unbatched input)."""
    layers = module.num_layers * (2 if module.bidirectional else 1)
    h_width = module.proj_size if module.proj_size > 0 else module.hidden_size
    shapes = [(layers, batch, h_width)]
    if module.mode == "LSTM":
        shapes.append((layers, batch, module.hidden_size))
    return [tuple(s for s in shape if s is not None) for shape in shapes]


def make_leaves(module, form, with_hx, dtype, steps=T, batch=B):
    """Random input and (optionally) hx tensors, requiring grad; x first."""
    if form == "unbatched":
        x = torch.randn(steps, module.input_size, dtype=dtype)
    elif module.batch_first:
        x = torch.randn(batch, steps, module.input_size, dtype=dtype)
    else:
        x = torch.randn(steps, batch, module.input_size, dtype=dtype)
    hx = [torch.randn(s, dtype=dtype) for s in
          hidden_shapes(module, None if form == "unbatched" else batch)] if with_hx else []
    return [t.requires_grad_() for t in [x, *hx]]


def forward_args(module, form, leaves, lengths=LENGTHS):
    """The forward arguments built from the leaves (packing them for form "packed")."""
    inp = leaves[0]
    if form == "packed":
        inp = pack_padded_sequence(inp, torch.tensor(lengths), batch_first=module.batch_first,
                                   enforce_sorted=False)
    if len(leaves) == 1:
        return (inp,)
    return (inp, tuple(leaves[1:]) if module.mode == "LSTM" else leaves[1])


def flat_outputs(result):
    output, hidden = result
    if isinstance(output, PackedSequence):
        output = output.data
    return [output, *(hidden if isinstance(hidden, tuple) else (hidden,))]


def run_with_grads(module, form, leaves, weights=None):
    """Outputs, and gradients of sum(out_i * weights_i) w.r.t. input, hx and every parameter
    (the final states' gradients are exercised too)."""
    outputs = flat_outputs(module(*forward_args(module, form, leaves)))
    if weights is None:
        weights = [torch.randn_like(o) for o in outputs]
    loss = sum((o * w.to(o.dtype)).sum() for o, w in zip(outputs, weights))
    grads = torch.autograd.grad(loss, [*leaves, *module.parameters()])
    return outputs, list(grads), weights


def module_reduction_length(module, steps=T, batch=B) -> int:
    """The longest reduction in a (stacked, maybe bidirectional) recurrent module."""
    directions = 2 if module.bidirectional else 1
    width = max(module.input_size, directions * (module.proj_size or module.hidden_size))
    gates = {"LSTM": 4, "GRU": 3}.get(module.mode, 1)
    return testing.recurrent_reduction_length(steps, batch, width, module.hidden_size, gates)


def assert_parity(theirs, ours, form, with_hx, dtype, leaves=None):
    """Our module in `dtype` against nn's module in fp64 on the same inputs: fp64 at
    assert_close's default, other dtypes within twice nn's own error in `dtype`."""
    leaves = leaves or make_leaves(ours, form, with_hx, dtype)
    ref_leaves = [t.detach().double().requires_grad_() for t in leaves]
    expected, expected_grads, weights = run_with_grads(copy.deepcopy(theirs).double(), form, ref_leaves)
    actual, actual_grads, _ = run_with_grads(ours, form, leaves, weights)
    baseline = (None, None)
    if dtype != torch.float64:
        base_leaves = [t.detach().requires_grad_() for t in leaves]
        baseline = run_with_grads(theirs.to(dtype), form, base_leaves, weights)[:2]
    names = ["output", "h_n", "c_n"][:len(expected)] + ["d_input"]
    names += [f"d_hx[{i}]" for i in range(len(leaves) - 1)]
    names += [f"d_{n}" for n, _ in ours.named_parameters()]
    assert len(names) == len(actual + actual_grads) == len(expected + expected_grads)
    for i, (name, a, e) in enumerate(zip(names, actual + actual_grads, expected + expected_grads)):
        assert a.dtype == dtype and a.shape == e.shape, name
        if dtype == torch.float64:
            torch.testing.assert_close(a, e, msg=lambda m: f"{name}: {m}")
        else:
            testing.assert_within_baseline(a, (baseline[0] + baseline[1])[i], e, name,
                                           reduction_length=module_reduction_length(ours))


# --- parameters ----------------------------------------------------------------------

@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_same_seed_gives_identical_parameters_and_repr(case):
    mode, options = case
    torch.manual_seed(7)
    theirs = TORCH_CLASSES[mode](I, H, **options)
    torch.manual_seed(7)
    ours = OUR_CLASSES[mode](I, H, **options)
    their_params, our_params = list(theirs.named_parameters()), list(ours.named_parameters())
    assert [n for n, _ in our_params] == [n for n, _ in their_params]
    for (name, a), (_, e) in zip(our_params, their_params):
        assert torch.equal(a, e), name
    assert repr(ours) == "fastrnn." + repr(theirs)  # the repr shows the swap (issue 21)
    assert ours._flat_weights_names == theirs._flat_weights_names
    assert [[n for n in names] for names in ours._all_weights] == theirs._all_weights
    assert all(a is b for a, b in zip(ours.all_weights[0], [getattr(ours, n) for n in ours._all_weights[0]]))


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_state_dict_loads_both_ways_strictly(mode):
    options = {"num_layers": 2, "bidirectional": True, **({"proj_size": P} if mode == "LSTM" else {})}
    theirs, ours = TORCH_CLASSES[mode](I, H, **options), OUR_CLASSES[mode](I, H, **options)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    fresh = TORCH_CLASSES[mode](I, H, **options)
    fresh.load_state_dict(ours.state_dict(), strict=True)
    for name, value in theirs.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name


def test_module_is_rnnbase_not_nn_lstm():
    assert isinstance(fastrnn.LSTM(I, H), nn.RNNBase)
    assert not isinstance(fastrnn.LSTM(I, H), nn.LSTM)
    assert not isinstance(fastrnn.GRU(I, H), nn.GRU)


# --- forward and gradients -----------------------------------------------------------

@pytest.fixture(params=["reference", pytest.param("ext", marks=pytest.mark.ext)])
def cpu_backend(request, monkeypatch):
    """Each CPU backend in turn, forced (the automatic choice would hide the reference)."""
    monkeypatch.setenv("FASTRNN_BACKEND", request.param)
    return request.param


@pytest.mark.parametrize("with_hx", [True, False], ids=["hx", "no_hx"])
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_fp64_parity_with_torch(cpu_backend, case, form, with_hx):
    theirs, ours = make_pair(*case)
    assert_parity(theirs, ours, form, with_hx, torch.float64)


@pytest.mark.parametrize("form", ["padded", "packed"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_fp32_parity_with_fp64_torch(cpu_backend, case, form):
    theirs, ours = make_pair(*case, dtype=torch.float32)
    assert_parity(theirs, ours, form, True, torch.float32)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_return_types_and_shapes_match_torch(mode):
    theirs, ours = make_pair(mode, {"num_layers": 2, "bidirectional": True, "batch_first": True})
    for form in FORMS:
        leaves = make_leaves(ours, form, False, torch.float64)
        expected = theirs(*forward_args(theirs, form, leaves))
        actual = ours(*forward_args(ours, form, leaves))
        assert type(actual) is type(expected) and type(actual[1]) is type(expected[1])
        assert type(actual[0]) is type(expected[0])
        if form == "packed":
            for field in ("batch_sizes", "sorted_indices", "unsorted_indices"):
                assert torch.equal(getattr(actual[0], field), getattr(expected[0], field))
        assert [t.shape for t in flat_outputs(actual)] == [t.shape for t in flat_outputs(expected)]


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_packed_sorted_and_equal_lengths_match_padded(mode):
    """Packed input whose lengths are all T gives the padded result; a sequence's final
    state in a packed batch equals running it alone."""
    theirs, ours = make_pair(mode, {"bidirectional": True})
    x = torch.randn(T, B, I, dtype=torch.float64)
    full = pack_padded_sequence(x, torch.full((B,), T), enforce_sorted=True)
    # Packed rows are time-major: row t * B + b holds step t of sequence b.
    torch.testing.assert_close(ours(full)[0].data, ours(x)[0].reshape(T * B, -1))
    packed = pack_padded_sequence(x, torch.tensor(LENGTHS), enforce_sorted=False)
    hidden = flat_outputs(ours(packed))[1:]
    for b, length in enumerate(LENGTHS):
        alone = flat_outputs(ours(x[:length, b:b + 1]))[1:]
        for h_all, h_alone in zip(hidden, alone):
            torch.testing.assert_close(h_all[:, b], h_alone[:, 0])


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_batch_of_zero(cpu_backend, mode):
    theirs, ours = make_pair(mode, {"num_layers": 2, "bidirectional": True})
    empty = torch.randn(T, 0, I, dtype=torch.float64)
    for e, a in zip(flat_outputs(theirs(empty)), flat_outputs(ours(empty))):
        assert a.shape == e.shape


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_non_contiguous_inputs(cpu_backend, mode):
    theirs, ours = make_pair(mode, {"num_layers": 2})
    x = torch.randn(I, B, T, dtype=torch.float64).permute(2, 1, 0)
    hx = [torch.randn(B, 2, s[-1], dtype=torch.float64).transpose(0, 1) for s in hidden_shapes(ours, B)]
    assert not x.is_contiguous() and not hx[0].is_contiguous()
    hx = tuple(hx) if mode == "LSTM" else hx[0]
    for e, a in zip(flat_outputs(theirs(x, hx)), flat_outputs(ours(x, hx))):
        torch.testing.assert_close(a, e)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_packed_input_reaches_the_layers_as_lengths(monkeypatch, mode):
    """Variable-length batches run in the layers with per-sequence lengths (sorted order,
    as PackedSequence sorts), not as a padded batch; the reverse direction gets each
    sequence reversed over its own steps, so its valid steps come first too."""
    layer_name = f"{mode.lower()}_layer"
    real_layer, calls = getattr(fastrnn.functional, layer_name), []

    def recording_layer(x, *args, lengths=None, **kwargs):
        calls.append((x.detach().clone(), lengths))
        return real_layer(x, *args, lengths=lengths, **kwargs)

    monkeypatch.setattr(fastrnn.functional, layer_name, recording_layer)
    _, ours = make_pair(mode, {"bidirectional": True})
    x = torch.randn(T, B, I, dtype=torch.float64)
    ours(pack_padded_sequence(x, torch.tensor(LENGTHS), enforce_sorted=False))
    order = sorted(range(B), key=lambda b: -LENGTHS[b])
    sorted_lengths = torch.tensor([LENGTHS[b] for b in order])
    assert len(calls) == 2
    for direction, (layer_x, lengths) in enumerate(calls):
        assert torch.equal(lengths.cpu(), sorted_lengths)
        for column, b in enumerate(order):
            steps = x[:LENGTHS[b], b] if direction == 0 else x[:LENGTHS[b], b].flip(0)
            torch.testing.assert_close(layer_x[:LENGTHS[b], column], steps, rtol=0, atol=0)
            assert not layer_x[LENGTHS[b]:, column].any(), "padding must hold no data"


# --- dropout -------------------------------------------------------------------------

@pytest.mark.parametrize("form", ["padded", "packed"])
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_dropout_in_training_uses_torch_masks(mode, form):
    """Same seed, same random stream: the inter-layer dropout masks equal torch's."""
    theirs, ours = make_pair(mode, {"num_layers": 3, "dropout": 0.5, "bidirectional": True})
    leaves = make_leaves(ours, form, False, torch.float64)
    torch.manual_seed(3)
    expected = flat_outputs(theirs(*forward_args(theirs, form, leaves)))
    torch.manual_seed(3)
    actual = flat_outputs(ours(*forward_args(ours, form, leaves)))
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e)
    eval_theirs, eval_ours = theirs.eval(), ours.eval()
    for a, e in zip(flat_outputs(eval_ours(*forward_args(ours, form, leaves))),
                    flat_outputs(eval_theirs(*forward_args(theirs, form, leaves)))):
        torch.testing.assert_close(a, e)


def test_changing_dropout_after_construction_takes_effect():
    ours = fastrnn.LSTM(I, H, num_layers=2, dropout=0.0).double()
    x = torch.randn(T, B, I, dtype=torch.float64)
    before = ours(x)[0]
    ours.dropout = 1.0  # zeroes the second layer's input
    after = ours(x)[0]
    second_layer_alone = fastrnn.functional.lstm_layer(
        torch.zeros(T, B, H, dtype=torch.float64), None, None, ours.weight_ih_l1, ours.weight_hh_l1,
        ours.bias_ih_l1, ours.bias_hh_l1)[0]
    torch.testing.assert_close(after, second_layer_alone)
    assert not torch.allclose(before, after)


# --- module plumbing -----------------------------------------------------------------

def test_to_pickle_deepcopy_and_flatten_parameters():
    theirs, ours = make_pair("LSTM", {"num_layers": 2, "proj_size": P}, dtype=torch.float32)
    ours.flatten_parameters()
    ours = ours.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in ours.parameters())
    assert all(w.dtype == torch.float64 for w in ours._flat_weights)
    x = torch.randn(T, B, I, dtype=torch.float64)
    expected = flat_outputs(theirs.double()(x))
    buffer = io.BytesIO()
    torch.save(ours, buffer)
    buffer.seek(0)
    for clone in (pickle.loads(pickle.dumps(ours)), copy.deepcopy(ours),
                  torch.load(buffer, weights_only=False)):
        assert type(clone) is fastrnn.LSTM
        for a, e in zip(flat_outputs(clone(x)), expected):
            torch.testing.assert_close(a, e)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_functional_call_uses_the_given_weights(mode):
    theirs, ours = make_pair(mode, {"bidirectional": True})
    other = {n: torch.randn_like(p) for n, p in ours.named_parameters()}
    x = torch.randn(T, B, I, dtype=torch.float64)
    expected = flat_outputs(torch.func.functional_call(theirs, other, (x,)))
    actual = flat_outputs(torch.func.functional_call(ours, other, (x,)))
    for a, e in zip(actual, expected):
        torch.testing.assert_close(a, e)
    # The module's own weights are used again afterwards.
    for a, e in zip(flat_outputs(ours(x)), flat_outputs(theirs(x))):
        torch.testing.assert_close(a, e)


def test_weight_reassignment_is_seen_by_forward():
    theirs, ours = make_pair("GRU", {})
    new_weight = nn.Parameter(torch.randn_like(ours.weight_hh_l0))
    ours.weight_hh_l0 = new_weight
    theirs.weight_hh_l0 = nn.Parameter(new_weight.detach().clone())
    x = torch.randn(T, B, I, dtype=torch.float64)
    torch.testing.assert_close(ours(x)[0], theirs(x)[0])


AUTOCAST_MODES = [m for m in ("LSTM", "GRU", "RNN") if hasattr(fastrnn, m)]


def autocast_outputs(module, x, device_type, dtype):
    # no_grad: torch's CPU fp16 LSTM with grad enabled fails inside oneDNN.
    with torch.no_grad(), torch.autocast(device_type, dtype=dtype):
        return flat_outputs(module(x))


def assert_autocast_matches_torch(mode, device, dtype):
    """Output dtypes under autocast equal torch.nn's (whose policy differs per module and
    device), values are within twice torch's own error, and the results feed float32 code
    (the next call with h_n, a Linear layer) outside autocast, as torch's do."""
    theirs = TORCH_CLASSES.get(mode, getattr(nn, mode))(8, 16, num_layers=2).to(device)
    ours = getattr(fastrnn, mode)(8, 16, num_layers=2).to(device)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(10, 4, 8, device=device)
    try:
        expected = autocast_outputs(theirs, x, device.type, dtype)
    except RuntimeError as error:
        # The oracle itself: oneDNN has no fp16 LSTM primitive on CPUs without fp16
        # arithmetic (seen on an AMD EPYC), so there is nothing to compare with here.
        pytest.skip(f"torch.nn's own {mode} cannot run under {dtype} autocast on this {device.type}: "
                    f"{str(error)[:120]}")
    actual = autocast_outputs(ours, x, device.type, dtype)
    reference = flat_outputs(copy.deepcopy(theirs).double()(x.double()))
    for name, a, e, r in zip(["output", "h_n", "c_n"], actual, expected, reference):
        assert a.dtype == e.dtype, f"{name}: {a.dtype}, torch.nn gives {e.dtype}"
        testing.assert_within_baseline(a, e, r, name)
    hidden = tuple(actual[1:]) if mode == "LSTM" else actual[1]
    expected_hidden = tuple(expected[1:]) if mode == "LSTM" else expected[1]
    assert_same_outcome(lambda: theirs(x, expected_hidden), lambda: ours(x, hidden))
    head = nn.Linear(16, 2).to(device)
    assert_same_outcome(lambda: head(expected[0]), lambda: head(actual[0]))


def assert_same_outcome(torch_fn, our_fn):
    """Both succeed, or both raise the same exception type."""
    outcomes = []
    for fn in (torch_fn, our_fn):
        try:
            fn()
            outcomes.append(None)
        except Exception as error:  # noqa: BLE001 (the type is what is compared)
            outcomes.append(type(error))
    assert outcomes[1] == outcomes[0]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mode", AUTOCAST_MODES)
def test_cpu_autocast_follows_torch_policy(mode, dtype):
    assert_autocast_matches_torch(mode, torch.device("cpu"), dtype)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", AUTOCAST_MODES)
def test_cuda_autocast_follows_torch_policy(mode, dtype):
    assert_autocast_matches_torch(mode, torch.device("cuda"), dtype)


@pytest.mark.parametrize("mode", AUTOCAST_MODES)
def test_autocast_policy_compiles_without_graph_breaks(mode):
    """torch.compile takes the policy as a constant: one graph, and torch.nn's dtypes."""
    import torch._dynamo

    torch._dynamo.reset()
    theirs = getattr(nn, mode)(I, H, num_layers=2)
    ours = getattr(fastrnn, mode)(I, H, num_layers=2)
    x = torch.randn(T, B, I)

    def run(module):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return module(x)[0]

    try:
        expected_dtype = run(theirs).dtype
    except RuntimeError as error:
        # As in assert_autocast_matches_torch: oneDNN has no bf16 LSTM primitive on
        # CPUs without bf16 arithmetic (an AVX2 AMD EPYC), so there is no policy to follow
        # (tests/test_latency.py checks that fastrnn raises torch's error there).
        pytest.skip(f"torch.nn's own {mode} cannot run under bfloat16 autocast on this cpu: {error}")
    explanation = torch._dynamo.explain(run)(ours)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    compiled = torch.compile(run, fullgraph=True, backend="aot_eager")
    assert compiled(ours).dtype == expected_dtype


def test_issue_gru_autocast_keeps_float32():
    """The issue's case: torch.nn.GRU stays float32 under CPU bf16 autocast, and its outputs
    work with float32 code afterwards."""
    gru = fastrnn.GRU(8, 16, num_layers=2)
    x = torch.randn(10, 4, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        output, h_n = gru(x)
    assert output.dtype == h_n.dtype == torch.float32
    gru(x, h_n)
    nn.Linear(16, 2)(output)


# --- torch.compile -------------------------------------------------------------------

class _Tagger(nn.Module):
    def __init__(self, mode):
        super().__init__()
        self.rnn = OUR_CLASSES[mode](I, H, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(2 * H, 2)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


@pytest.mark.parametrize("device,dtype", [("cpu", torch.float64),
                                          pytest.param("cuda", torch.float32, marks=pytest.mark.cuda)])
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_compiles_fullgraph_without_graph_breaks(mode, device, dtype):
    import torch._dynamo

    torch._dynamo.reset()
    model = _Tagger(mode).to(device, dtype)
    x = torch.randn(B, T, I, dtype=dtype, device=device)
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1, explanation.break_reasons
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    expected = model(x)
    expected_grads = torch.autograd.grad(expected.sum(), list(model.parameters()))
    actual = compiled(x)
    actual_grads = torch.autograd.grad(actual.sum(), list(model.parameters()))
    torch.testing.assert_close(actual, expected)
    for a, e in zip(actual_grads, expected_grads):
        torch.testing.assert_close(a, e)


# --- replace_rnns --------------------------------------------------------------------

class _Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(I, H, num_layers=2, proj_size=P, dropout=0.25)
        self.blocks = nn.Sequential(nn.GRU(P, H, bidirectional=True), nn.Identity())
        self.head = nn.Linear(2 * H, 1)

    def forward(self, x):
        y, _ = self.lstm(x)
        y, _ = self.blocks[0](y)
        return self.head(y)


def test_replace_rnns_keeps_parameters_mode_and_outputs():
    model = _Encoder().double().eval()
    params_before = dict(model.named_parameters())
    x = torch.randn(T, B, I, dtype=torch.float64)
    expected = model(x)
    rng_before = torch.get_rng_state()
    assert fastrnn.replace_rnns(model) is model
    assert torch.equal(torch.get_rng_state(), rng_before)
    assert type(model.lstm) is fastrnn.LSTM and type(model.blocks[0]) is fastrnn.GRU
    assert repr(model.lstm) == "fastrnn.LSTM(4, 6, proj_size=3, num_layers=2, dropout=0.25)"
    params_after = dict(model.named_parameters())
    assert list(params_after) == list(params_before)
    assert all(params_after[n] is p for n, p in params_before.items())
    assert not model.lstm.training
    torch.testing.assert_close(model(x), expected)


def test_replace_rnns_on_a_bare_rnn_returns_the_replacement():
    lstm = nn.LSTM(I, H).train()
    replaced = fastrnn.replace_rnns(lstm)
    assert type(replaced) is fastrnn.LSTM and replaced.training
    assert replaced.weight_ih_l0 is lstm.weight_ih_l0


def _old_style_weight_norm(module, name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # deprecated, still in use
        return nn.utils.weight_norm(module, name)


@pytest.mark.parametrize("weight_norm,message", [
    (nn.utils.parametrizations.weight_norm, "cannot replace a parametrized GRU"),
    (_old_style_weight_norm, "cannot replace a GRU whose weight_hh_l0 is computed by a hook"),
], ids=["parametrizations", "old_style"])
def test_replace_rnns_is_atomic_and_refuses_reparametrized_weights(weight_norm, message):
    """The issue's model: a plain LSTM first, then a weight-normed GRU. Every module is
    checked before any is swapped, so the error leaves the model exactly as it was."""
    model = nn.ModuleDict({"first": nn.LSTM(10, 20, 2),
                           "second": weight_norm(nn.GRU(20, 20, bias=False), "weight_hh_l0")})
    children = dict(model.named_children())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="replace_rnns: " + message):
        fastrnn.replace_rnns(model)
    assert dict(model.named_children()) == children
    assert type(model["first"]) is nn.LSTM
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="replace_rnns: " + message):
        fastrnn.replace_rnns(model["second"])


def test_replace_rnns_emits_no_warnings_of_its_own():
    """Construction warnings (dropout with one layer) were given when the user built the
    modules; the swap does not repeat them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = nn.Sequential(nn.LSTM(3, 4, dropout=0.5), nn.GRU(4, 4, dropout=0.5))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fastrnn.replace_rnns(model)
    assert [str(w.message) for w in caught] == []
    assert type(model[0]) is fastrnn.LSTM and model[0].dropout == 0.5


def test_replace_rnns_keeps_a_shared_module_shared():
    gru = nn.GRU(I, H)
    model = nn.ModuleDict({"a": gru, "b": nn.Sequential(gru)})
    fastrnn.replace_rnns(model)
    assert type(model["a"]) is fastrnn.GRU and model["b"][0] is model["a"]


# --- other backends ------------------------------------------------------------------

def _has_triton_backend(mode):
    return importlib.util.find_spec(f"fastrnn.ops.{mode.lower()}.triton") is not None


TRITON_CASES = [("LSTM", {"bidirectional": True}, "packed"),
                ("LSTM", {"num_layers": 2, "batch_first": True}, "padded"),
                ("GRU", {"bidirectional": True}, "packed"),
                ("GRU", {"num_layers": 2}, "unbatched")]


@pytest.mark.interpreter
@pytest.mark.parametrize("mode,options,form", TRITON_CASES)
def test_triton_backend_under_interpreter(monkeypatch, mode, options, form):
    if not _has_triton_backend(mode):
        pytest.skip(f"fastrnn/ops/{mode.lower()}/triton.py is not written yet")
    monkeypatch.setenv("FASTRNN_BACKEND", "triton")
    theirs, ours = make_pair(mode, options, dtype=torch.float32, input_size=3, hidden_size=4)
    assert_parity(theirs, ours, form, True, torch.float32)


@pytest.mark.cuda
@pytest.mark.parametrize("mode,options,form", TRITON_CASES)
def test_cuda_default_backend(mode, options, form):
    theirs, ours = make_pair(mode, options, dtype=torch.float32)
    theirs, ours = theirs.cuda(), ours.cuda()
    leaves = [t.cuda().detach().requires_grad_() for t in make_leaves(ours, form, True, torch.float32)]
    with torch.backends.cudnn.flags(allow_tf32=False):   # exact fp32 on both sides
        assert_parity(theirs, ours, form, True, torch.float32, leaves)
