"""fastrnn.generate: greedy against step-by-step argmax, beam search against greedy and
against a hand-built model whose best sequence is known, eos / min tokens / repetition
penalty, unequal prompts, seeds, and the state protocol (prefill once, then one token)."""

import pytest
import torch

import fastrnn

V, H = 12, 16


class LSTMLM(torch.nn.Module):
    """A small LM following the protocol: (B, T) ids, (h, c) with batch at dim 1."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(V, H)
        self.rnn = torch.nn.LSTM(H, H, batch_first=True)
        self.head = torch.nn.Linear(H, V)
        self.fed = []  # the token shapes the model was called with

    def forward(self, tokens, state):
        self.fed.append(tuple(tokens.shape))
        y, state = self.rnn(self.embed(tokens), state)
        return self.head(y), state


@pytest.fixture
def model():
    torch.manual_seed(0)
    with torch.no_grad():
        yield LSTMLM()


def manual_greedy(model, prompt, steps, penalty=1.0):
    """Argmax step by step, re-running the model on the whole sequence (no state reuse)."""
    seq = prompt.clone()
    for _ in range(steps):
        logits, _ = model(seq[None], None)
        scores = logits[0, -1]
        for tok in set(seq.tolist()):
            scores[tok] = scores[tok] * penalty if scores[tok] < 0 else scores[tok] / penalty
        seq = torch.cat([seq, scores.argmax()[None]])
    return seq


def test_greedy_equals_step_by_step_argmax(model):
    prompts = torch.tensor([[1, 2, 3], [4, 5, 6]])
    out = fastrnn.generate(model, prompts, 7)
    assert model.fed == [(2, 3)] + [(2, 1)] * 6  # prefill once, then one token per step
    for row, prompt in zip(out, prompts):
        assert torch.equal(row, manual_greedy(model, prompt, 7))


def test_repetition_penalty_matches_manual(model):
    prompt = torch.tensor([[3, 3, 7]])
    out = fastrnn.generate(model, prompt, 6, repetition_penalty=1.8)
    assert torch.equal(out[0], manual_greedy(model, prompt[0], 6, penalty=1.8))


def test_unequal_prompts_match_single_runs(model):
    prompts = [torch.tensor([1, 2, 3, 4]), torch.tensor([5])]
    out = fastrnn.generate(model, prompts, 5)
    for row, prompt in zip(out, prompts):
        single = fastrnn.generate(model, prompt[None], 5)[0]
        assert torch.equal(row[:single.shape[0]], single)


def test_beam_search_with_one_beam_equals_greedy(model):
    prompts = torch.tensor([[1, 2], [7, 8]])
    assert torch.equal(fastrnn.generate(model, prompts, 6, num_beams=1),
                       fastrnn.generate(model, prompts, 6))


def test_eos_pads_and_min_new_tokens(model):
    prompt = torch.tensor([[1, 2]])
    free = fastrnn.generate(model, prompt, 8)
    eos = free[0, 3].item()  # the second new token becomes the end token
    out = fastrnn.generate(model, prompt, 8, eos_token_id=eos, pad_token_id=11)
    first = (out[0, 2:] == eos).nonzero()[0, 0].item() + 2
    assert torch.equal(out[0, :first + 1], free[0, :first + 1])
    assert out.shape[1] == first + 1 or (out[0, first + 1:] == 11).all()
    late = fastrnn.generate(model, prompt, 8, eos_token_id=eos, min_new_tokens=8)
    assert (late[0, 2:] != eos).all()


class MarkovLM(torch.nn.Module):
    """Next-token log-probs depend on the last token only; the state is that token, kept
    at batch dim 1 as (1, B). Greedy takes 1 (p=.6), then at best p=.35: .21 in all;
    the best pair is 2 then 3: .4 * .9 = .36."""

    def __init__(self):
        super().__init__()
        table = torch.full((5, 5), 1e-9)
        table[0, 1], table[0, 2] = 0.6, 0.4
        table[1, 2], table[1, 3], table[1, 4] = 0.35, 0.33, 0.32
        table[2, 3], table[2, 4] = 0.9, 0.1
        table[3, 3] = table[4, 4] = 1.0
        self.log_table = (table / table.sum(-1, keepdim=True)).log()

    def forward(self, tokens, state):
        return self.log_table[tokens], tokens[:, -1:].T.clone()


def test_beam_search_finds_the_best_sequence():
    model = MarkovLM()
    prompt = torch.tensor([[0], [0]])
    assert fastrnn.generate(model, prompt, 2)[0, 1:].tolist() == [1, 2]
    beams = fastrnn.generate(model, prompt, 2, num_beams=2)
    assert beams[:, 1:].tolist() == [[2, 3], [2, 3]]


def test_beam_search_ends_at_eos_with_length_penalty():
    # With eos = 3, the hypothesis "2 3" ends after two tokens and beats "1 2 3".
    out = fastrnn.generate(MarkovLM(), torch.tensor([[0]]), 5, num_beams=3, eos_token_id=3,
                           early_stopping=True)
    assert out[0, 1:3].tolist() == [2, 3]


def test_sampling_is_reproducible_by_seed(model):
    prompts = torch.tensor([[1, 2], [3, 4]])
    kwargs = dict(do_sample=True, top_k=6, top_p=0.95, temperature=1.3)
    a = fastrnn.generate(model, prompts, 10, seed=5, **kwargs)
    assert torch.equal(a, fastrnn.generate(model, prompts, 10, seed=5, **kwargs))
    rows = fastrnn.generate(model, prompts, 10, seed=torch.tensor([1, 2]), **kwargs)
    assert torch.equal(rows, fastrnn.generate(model, prompts, 10, seed=torch.tensor([1, 2]), **kwargs))
    streams = {tuple(fastrnn.generate(model, prompts[:1], 10, seed=s, **kwargs)[0].tolist())
               for s in range(6)}
    assert len(streams) > 1


@pytest.mark.parametrize("kwargs,match", [
    (dict(max_new_tokens=-1), "max_new_tokens"),
    (dict(max_new_tokens=3, min_new_tokens=4), "min_new_tokens"),
    (dict(max_new_tokens=3, num_beams=0), "num_beams"),
    (dict(max_new_tokens=3, repetition_penalty=0.0), "repetition_penalty"),
    (dict(max_new_tokens=3, num_beams=2, do_sample=True), "beam sampling"),
])
def test_bad_arguments_raise(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fastrnn.generate(model, torch.tensor([[1]]), **kwargs)


def test_bad_model_output_raises():
    with pytest.raises(TypeError, match=r"\(logits, state\)"):
        fastrnn.generate(lambda tokens, state: tokens, torch.tensor([[1]]), 2)
