"""fastrnn.BiLM, fastrnn.ScalarMix, truncated BPTT in both directions, and the ELMo example
(examples/elmo.py) at tiny settings."""
import math
import os

import pytest
import torch
import torch.nn.functional as F

import fastrnn
from fastrnn.bilm import tbptt_chunks

from .example_modules import load_example

V, HIDDEN, PROJ = 11, 7, 5


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread is as fast, and immune to a busy machine's oversubscription."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_bilm(cell="lstm", dtype=torch.float64):
    torch.manual_seed(0)
    return fastrnn.BiLM(V, HIDDEN, num_layers=2, proj_size=PROJ if cell == "lstm" else 0, cell=cell,
                        dtype=dtype)


# ---------------------------------------------------------------------------- BiLM

@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_backward_lm_is_the_forward_lm_on_reversed_input(cell):
    """With the forward stack given the backward stack's weights, the backward LM's logits,
    final state, loss and gradients equal the forward LM's on the time-reversed tokens."""
    bilm = small_bilm(cell)
    bilm.forward_stack.forward_layers.load_state_dict(bilm.backward_stack.backward_layers.state_dict())
    tokens = torch.randint(0, V, (9, 3), generator=torch.Generator().manual_seed(1))

    backward_logits, backward_state = bilm(tokens, "backward")
    forward_logits, forward_state = bilm(tokens.flip(0), "forward")
    torch.testing.assert_close(backward_logits, forward_logits.flip(0))
    for a, b in zip(fastrnn_states(backward_state), fastrnn_states(forward_state)):
        torch.testing.assert_close(a, b)

    shared = [bilm.embedding.weight, *bilm.softmax.parameters()]
    backward_loss, _ = bilm.loss(tokens, "backward")
    backward_grads = torch.autograd.grad(backward_loss, shared)
    forward_loss, _ = bilm.loss(tokens.flip(0), "forward")
    forward_grads = torch.autograd.grad(forward_loss, shared)
    torch.testing.assert_close(backward_loss, forward_loss)
    for a, b in zip(backward_grads, forward_grads):
        torch.testing.assert_close(a, b)

    width = PROJ if cell == "lstm" else HIDDEN
    reps = bilm.representations(tokens)
    assert reps.shape == (3, 9, 3, 2 * width)
    forward_layers, _ = bilm.forward_stack(bilm.embedding(tokens.flip(0)))
    torch.testing.assert_close(reps[1:, ..., width:], forward_layers.flip(1))


def fastrnn_states(state):
    return list(state) if isinstance(state, tuple) else [state]


def test_loss_is_the_next_and_previous_token_cross_entropy():
    bilm = small_bilm()
    chunk = torch.randint(0, V, (6, 2), generator=torch.Generator().manual_seed(2))
    logits, _ = bilm(chunk[:-1], "forward")
    expected = F.cross_entropy(logits.reshape(-1, V), chunk[1:].reshape(-1))
    torch.testing.assert_close(bilm.loss(chunk, "forward")[0], expected)
    logits, _ = bilm(chunk[1:], "backward")
    expected = F.cross_entropy(logits.reshape(-1, V), chunk[:-1].reshape(-1))
    torch.testing.assert_close(bilm.loss(chunk, "backward")[0], expected)


def test_directions_share_only_the_embedding_and_softmax():
    bilm = small_bilm()
    names = {name for name, _ in bilm.named_parameters()}
    assert any(n.startswith("forward_stack.forward_layers.1.") for n in names)
    assert any(n.startswith("backward_stack.backward_layers.1.") for n in names)
    loss, _ = bilm.loss(torch.randint(0, V, (5, 2)), "forward")
    loss.backward()
    for name, p in bilm.named_parameters():
        reached = p.grad is not None and bool(p.grad.abs().sum() > 0)
        assert reached == (not name.startswith("backward_stack")), name


def test_tbptt_chunks_cover_every_prediction_once_in_reading_order():
    streams = torch.arange(23).unsqueeze(1)
    forward = list(tbptt_chunks(streams, 5, "forward"))
    backward = list(tbptt_chunks(streams, 5, "backward"))
    assert [c[0, 0].item() for c in forward] == [0, 5, 10, 15, 20]
    assert [c[0, 0].item() for c in backward] == [20, 15, 10, 5, 0]
    assert torch.cat([c[1:] for c in forward]).flatten().tolist() == list(range(1, 23))
    assert torch.cat([c[:-1] for c in reversed(backward)]).flatten().tolist() == list(range(0, 22))
    with pytest.raises(ValueError):
        next(tbptt_chunks(streams, 5, "both"))


def test_perplexity_with_carried_state_equals_reading_whole_streams():
    """Truncated BPTT carries each LM's state across windows, the backward LM from the end:
    windows of 4 give the perplexities of reading the streams at once."""
    bilm = small_bilm()
    streams = torch.randint(0, V, (30, 3), generator=torch.Generator().manual_seed(3))
    windowed, whole = bilm.perplexity(streams, bptt=4), bilm.perplexity(streams, bptt=30)
    for direction in ("forward", "backward"):
        assert windowed[direction] == pytest.approx(whole[direction], rel=1e-12)
    assert windowed["forward"] != pytest.approx(windowed["backward"], rel=1e-6)


def test_loss_detaches_the_incoming_state():
    """Truncated BPTT: no gradient flows back into the previous window through the state."""
    bilm = small_bilm()
    state = (torch.randn(2, 2, PROJ, dtype=torch.float64, requires_grad=True),
             torch.randn(2, 2, HIDDEN, dtype=torch.float64, requires_grad=True))
    loss, _ = bilm.loss(torch.randint(0, V, (5, 2)), "forward", state)
    loss.backward()
    assert state[0].grad is None and state[1].grad is None


def test_perplexity_falls_on_a_tiny_corpus():
    """Both LMs learn: held-out perplexity of each direction falls well below its start
    (uniform over 256 bytes at first) in 40 steps of TBPTT on a few KB of Python source."""
    with open(os.__file__, "rb") as f:
        text = f.read(9_000)
    tokens = torch.frombuffer(bytearray(text), dtype=torch.uint8).long()
    train = tokens[:8_000].view(8, -1).t()  # 8 streams of 1,000 bytes
    held_out = tokens[8_000:].view(4, -1).t()
    torch.manual_seed(0)
    bilm = fastrnn.BiLM(256, 48, num_layers=2, proj_size=24)
    before = bilm.perplexity(held_out, 64)
    optimizer = torch.optim.Adam(bilm.parameters(), lr=1e-2)
    chunks = {d: list(tbptt_chunks(train, 25, d)) for d in ("forward", "backward")}
    states = {"forward": None, "backward": None}
    for step in range(40):
        i = step % len(chunks["forward"])
        total = 0
        for d in ("forward", "backward"):
            loss, states[d] = bilm.loss(chunks[d][i], d, None if i == 0 else states[d])
            total = total + loss
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    after = bilm.perplexity(held_out, 64)
    for d in ("forward", "backward"):
        assert before[d] > 200 and after[d] < 25, (d, before[d], after[d])


def test_bilm_errors():
    with pytest.raises(ValueError, match="cell"):
        fastrnn.BiLM(V, HIDDEN, cell="rnn")
    with pytest.raises(ValueError, match="proj_size"):
        fastrnn.BiLM(V, HIDDEN, cell="gru", proj_size=3)
    with pytest.raises(ValueError, match="direction"):
        small_bilm()(torch.zeros(3, 1, dtype=torch.long), "both")


# ---------------------------------------------------------------------------- ScalarMix

def test_scalar_mix_value_is_equation_1():
    """gamma * sum_j softmax(s)_j h_j (Peters et al. 2018, eq. 1), computed term by term."""
    mix = fastrnn.ScalarMix(3, dtype=torch.float64)
    with torch.no_grad():
        mix.scalars.copy_(torch.tensor([0.5, -1.0, 2.0]))
        mix.gamma.fill_(1.5)
    layers = torch.randn(3, 4, 2, 6, dtype=torch.float64)
    norm = sum(math.exp(s) for s in (0.5, -1.0, 2.0))
    expected = 1.5 * sum(math.exp(s) / norm * layers[j] for j, s in enumerate((0.5, -1.0, 2.0)))
    torch.testing.assert_close(mix(layers), expected)
    torch.testing.assert_close(mix(list(layers)), expected)  # a sequence of tensors too
    torch.testing.assert_close(mix.weights().sum(), torch.tensor(1.0, dtype=torch.float64))


def test_scalar_mix_starts_as_the_mean_of_the_layers():
    layers = torch.randn(4, 5, 3)
    torch.testing.assert_close(fastrnn.ScalarMix(4)(layers), layers.mean(0))


def test_scalar_mix_gradcheck():
    torch.manual_seed(0)
    scalars = torch.randn(3, dtype=torch.float64, requires_grad=True)
    gamma = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    layers = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    mix = fastrnn.ScalarMix(3, dtype=torch.float64)

    def mixed(scalars, gamma, layers):
        return torch.func.functional_call(mix, {"scalars": scalars, "gamma": gamma}, (layers,))

    assert torch.autograd.gradcheck(mixed, (scalars, gamma, layers))
    assert torch.autograd.gradgradcheck(mixed, (scalars, gamma, layers))


def test_scalar_mix_errors():
    with pytest.raises(ValueError, match="expected 3 layers, got 2"):
        fastrnn.ScalarMix(3)(torch.zeros(2, 4))
    with pytest.raises(ValueError):
        fastrnn.ScalarMix(0)


# ---------------------------------------------------------------------------- the example

@pytest.fixture(scope="module")
def elmo():
    return load_example("elmo")


def test_example_context_labels(elmo):
    source = 's = "é#x"  # é "q"\nt = 1\n'.encode()
    labels = elmo.context_labels(source)
    assert len(labels) == len(source)
    text = "".join("cSC"[k] for k in labels)
    string_start, comment_start = source.index(b'"'), source.index(b"# \xc3")
    assert text[string_start:string_start + 7] == "SSSSSSc"  # "é#x": 6 bytes with its quotes
    assert set(text[comment_start:source.index(b"\n")]) == {"C"}
    assert set(text[source.index(b"\n"):]) == {"c"}
    for broken in (b'x = "unclosed\n', b'x = """unclosed\n'):
        assert elmo.context_labels(broken) == [-1] * len(broken)


def test_example_runs_with_tiny_settings(elmo, tmp_path):
    save = tmp_path / "bilm.pt"
    result = elmo.main(["--corpus-bytes", "120000", "--val-bytes", "20000", "--steps", "12",
                        "--hidden", "32", "--proj", "16", "--batch", "8", "--bptt", "32",
                        "--words", "3", "--per-context", "4", "--probe-steps", "20",
                        "--save", str(save), "--plot", "", "--quiet"])
    for d in ("forward", "backward"):
        assert abs(result["stats"][d][0] - math.log(256)) < 0.3
        assert 1 < result["perplexity"][d] < 256
    saved = torch.load(save)
    bilm = fastrnn.BiLM(**saved["config"])
    bilm.load_state_dict(saved["state_dict"])
    assert bilm.num_layers == 2 and bilm.proj_size == 16
    table = result["contextual"]
    assert table["token (0)"]["nn_accuracy"] is None and table["token (0)"]["spread"] == 0
    assert all(0 <= table[f"layer {j}"]["nn_accuracy"] <= 1 and table[f"layer {j}"]["spread"] > 0
               for j in (1, 2))
    assert all(0 <= accuracy <= 1 for accuracy in result["probe"].values())
    assert "ScalarMix of all 3" in result["probe"]
