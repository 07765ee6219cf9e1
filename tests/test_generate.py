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


def test_seeded_sampling_runs_past_the_int64_range_of_step_offsets(model):
    """Per-step seed offsets (step x stride) pass 2^63 after about 40 steps: they wrap as
    int64 sums do, and long seeded runs stay reproducible (the demo samples 200 tokens)."""
    prompts = torch.tensor([[1, 2]])
    kwargs = dict(do_sample=True, top_p=0.9, temperature=0.8)
    for seed in (0, torch.tensor([7])):
        a = fastrnn.generate(model, prompts, 70, seed=seed, **kwargs)
        assert a.shape == (1, 72)
        assert torch.equal(a, fastrnn.generate(model, prompts, 70, seed=seed, **kwargs))


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


# ---- issue 15, case 1: a prompt's output does not depend on the batch -------------------------

class ConstantLM(torch.nn.Module):
    """The same logits at every position and state: token 5 = 1.0, token 3 = 0.9, others -1."""

    def forward(self, tokens, state):
        logits = torch.full((10,), -1.0)
        logits[5], logits[3] = 1.0, 0.9
        B, T = tokens.shape
        return logits.expand(B, T, 10).clone(), torch.zeros(1, B, 1)


def test_issue_example_of_batch_dependent_repetition_penalty():
    prompts = [torch.tensor([5, 6, 7]), torch.tensor([9])]
    out = fastrnn.generate(ConstantLM(), prompts, 3, repetition_penalty=2.0)
    # By hand: [9] sees only 9, so 5 (1.0) beats 3 (0.9); then 5 is seen (0.5 < 0.9): 3;
    # then both are seen (0.5 > 0.45): 5. [5, 6, 7] sees 5 from the start: 3, 5, 5.
    assert out[1, :4].tolist() == [9, 5, 3, 5]
    assert out[0].tolist() == [5, 6, 7, 3, 5, 5]
    assert fastrnn.generate(ConstantLM(), prompts[1:], 3, repetition_penalty=2.0)[0].tolist() == [9, 5, 3, 5]


class BigramLM(torch.nn.Module):
    """logits[t] = A[token_t] + C[token_{t-1}]: table lookups, so each row's logits are
    bitwise the same whatever else is in the batch. State: the last token, (1, B)."""

    def __init__(self, V=9, seed=0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.A = torch.randn(V, V, generator=gen) * 2
        self.C = torch.randn(V, V, generator=gen)

    def forward(self, tokens, state):
        first = tokens[:, :1] if state is None else state.T
        previous = torch.cat([first, tokens[:, :-1]], dim=1)
        return self.A[tokens] + self.C[previous], tokens[:, -1:].T.clone()


def strip(row, prompt_len, pad):
    """A generated row without its right padding."""
    row = row.tolist()
    while len(row) > prompt_len and row[-1] == pad:
        row.pop()
    return row


BATCH_OPTIONS = [
    dict(repetition_penalty=1.7),
    dict(repetition_penalty=1.3, min_new_tokens=4, eos_token_id=[2, 4], pad_token_id=8),
    dict(num_beams=3, repetition_penalty=1.5, eos_token_id=2, pad_token_id=8),
    dict(num_beams=2, eos_token_id=[1, 2], early_stopping="never", pad_token_id=8),
    dict(do_sample=True, top_k=4, temperature=1.2, repetition_penalty=1.4,
         seed=torch.tensor([11, 22, 33, 44]), eos_token_id=6, pad_token_id=8),
    dict(do_sample=True, top_p=0.8, min_p=0.05, seed=torch.tensor([5, 6, 7, 8])),
]


@pytest.mark.parametrize("options", BATCH_OPTIONS)
def test_output_does_not_depend_on_the_rest_of_the_batch(options):
    model = BigramLM()
    prompts = [torch.tensor([1, 7, 7, 3]), torch.tensor([0]), torch.tensor([5, 5]), torch.tensor([3, 8, 1])]
    pad = options.get("pad_token_id", 0)
    together = fastrnn.generate(model, prompts, 7, **options)
    for i, prompt in enumerate(prompts):
        alone_options = dict(options)
        if isinstance(options.get("seed"), torch.Tensor):
            alone_options["seed"] = options["seed"][i:i + 1]
        alone = fastrnn.generate(model, [prompt], 7, **alone_options)[0]
        assert strip(together[i], len(prompt), pad) == strip(alone, len(prompt), pad), i


def test_sampled_first_tokens_do_not_depend_on_the_batch():
    # The issue's count: 200 prompts of unequal lengths, first tokens drawn with per-row seeds.
    model = BigramLM(V=9, seed=3)
    gen = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, 9, (int(n),), generator=gen) for n in torch.randint(1, 6, (200,), generator=gen)]
    seeds = torch.arange(200) * 7919
    kwargs = dict(do_sample=True, temperature=1.5, repetition_penalty=3.0)
    together = fastrnn.generate(model, prompts, 1, seed=seeds, **kwargs)
    for i in range(0, 200, 9):
        alone = fastrnn.generate(model, [prompts[i]], 1, seed=seeds[i:i + 1], **kwargs)[0]
        assert together[i, len(prompts[i])] == alone[-1], i


# ---- issue 15, case 3: never a token from NaN logits -------------------------------------------

class TurnsNaN(torch.nn.Module):
    """Prefers token 5 until `finite_calls` model calls have been made, then returns NaN.
    State: the number of calls so far, (1, B)."""

    def __init__(self, finite_calls=3, rows=None):
        super().__init__()
        self.finite_calls, self.rows = finite_calls, rows

    def forward(self, tokens, state):
        calls = 1 if state is None else int(state[0, 0]) + 1
        B, T = tokens.shape
        logits = torch.zeros(B, T, 6, device=tokens.device)
        logits[..., 5] = 3.0
        if calls > self.finite_calls:
            rows = slice(None) if self.rows is None else self.rows
            logits[rows] = float("nan")
        return logits, torch.full((1, B), calls, device=tokens.device)


@pytest.mark.parametrize("options", [dict(), dict(do_sample=True, seed=0), dict(do_sample=True, top_p=0.5, seed=1),
                                     dict(num_beams=2)])
def test_nan_logits_raise_instead_of_emitting_a_token(options):
    # The issue: greedy returned [1, 2, 5, 5, 0, 0, 0], a stream of token 0 from NaN logits.
    with pytest.raises(ValueError, match="contains NaN"):
        fastrnn.generate(TurnsNaN(), torch.tensor([[1, 2]]), 5, **options)
    with pytest.raises(ValueError, match="row 1 contains NaN"):
        fastrnn.generate(TurnsNaN(rows=1), torch.tensor([[1, 2], [3, 4]]), 5, **options)


@pytest.mark.cuda
@pytest.mark.parametrize("options", [dict(), dict(do_sample=True, seed=0), dict(num_beams=2)])
def test_nan_logits_raise_on_cuda(options):
    # The checks are deferred on CUDA; generate collects them once per step.
    with pytest.raises(ValueError, match="row 1 contains NaN"):
        fastrnn.generate(TurnsNaN(rows=1), torch.tensor([[1, 2], [3, 4]], device="cuda"), 5, **options)


def test_nan_logits_after_the_last_step_are_never_read():
    out = fastrnn.generate(TurnsNaN(finite_calls=3), torch.tensor([[1, 2]]), 3)
    assert out[0].tolist() == [1, 2, 5, 5, 5]


# ---- issue 15, case 4: generate's seeds behave as fastrnn.sample's -----------------------------

def test_generate_int_seed_draws_as_sample_does():
    model = BigramLM(V=9, seed=4)
    prompts = torch.tensor([[1, 2], [3, 4], [5, 6]])
    kwargs = dict(temperature=1.3, top_k=6)
    out = fastrnn.generate(model, prompts, 1, do_sample=True, seed=77, **kwargs)
    logits, _ = model(prompts, None)
    assert torch.equal(out[:, -1], fastrnn.sample(logits[:, -1], **kwargs, seed=77))
    rows = fastrnn.generate(model, prompts[:1].expand(300, 2), 1, do_sample=True, seed=77, **kwargs)[:, -1]
    assert len(set(rows.tolist())) > 1  # one int seed, independent rows


# ---- issue 15, case 5: beam search and early_stopping -------------------------------------------

class IssueMarkovLM(torch.nn.Module):
    """After the prompt token 5: token 0 (p .4), token 3 (p .4), token 1 (p .2); after token
    1: token 0 (p .99). Tokens 0 and 3 end the sequence."""

    def __init__(self):
        super().__init__()
        table = torch.full((6, 6), 1e-9)
        table[5, 0], table[5, 3], table[5, 1] = 0.4, 0.4, 0.2
        table[1, 0], table[1, 2] = 0.99, 0.01
        for t in (0, 2, 3, 4):
            table[t, t] = 1.0
        self.log_table = (table / table.sum(-1, keepdim=True)).log()

    def forward(self, tokens, state):
        return self.log_table[tokens], tokens[:, -1:].T.clone()


def test_issue_example_of_beam_search_stopping_early():
    kwargs = dict(num_beams=2, eos_token_id=[0, 3], length_penalty=1.0)
    prompt = torch.tensor([[5]])
    # [1, 0] scores log(.2 * .99) / 2 = -0.810, above [0] or [3] at log(.4) = -0.916.
    exact = fastrnn.generate(IssueMarkovLM(), prompt, 4, early_stopping="never", **kwargs)
    assert exact[0, 1:3].tolist() == [1, 0]
    # Hugging Face's heuristic (False) and True stop after the first step, as documented.
    for early in (False, True):
        out = fastrnn.generate(IssueMarkovLM(), prompt, 4, early_stopping=early, **kwargs)
        assert out[0, 1:].tolist() in ([0], [3])


# Exhaustive search for early_stopping="never" (with a proof that beam search sees every
# sequence there) lives in tests/test_beam_search.py with the Hugging Face cases.


# ---- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("prompt,kwargs,match", [
    ([[1, -2]], dict(), r"prompt 0 holds token id -2"),
    ([[1]], dict(num_beams=13), "num_beams = 13 exceeds the 12 tokens"),
    ([[1]], dict(eos_token_id=[3, 12]), r"eos_token_id 12 lies outside \[0, V\)"),
    ([[1]], dict(num_beams=2, early_stopping="always"), "early_stopping must be True, False or 'never'"),
    ([[1]], dict(do_sample=True, seed=1, generator=torch.Generator()), "generator or a seed"),
    ([[1]], dict(do_sample=True, seed=torch.tensor([1, 2])), r"seed must be an int or have shape \(1,\)"),
    ([[1]], dict(do_sample=True, top_p=1.5), r"top_p must be in \(0, 1\]"),
    ([[1]], dict(do_sample=True, top_k=-3), "top_k must be >= 0"),
    ([[1]], dict(do_sample=True, temperature=-1.0), "temperature must be >= 0"),
])
def test_bad_input_raises_a_clear_error(model, prompt, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fastrnn.generate(model, torch.tensor(prompt), 3, **kwargs)


def test_prompt_ids_beyond_the_vocabulary_raise():
    # A model that does not index with the ids: generate checks them against V itself.
    with pytest.raises(ValueError, match=r"prompt 1 holds token id 10; ids must lie in \[0, V\), V = 10"):
        fastrnn.generate(ConstantLM(), torch.tensor([[1, 2], [3, 10]]), 3)


def test_model_errors_on_out_of_range_prompts_name_the_ids(model):
    with pytest.raises(IndexError) as caught:
        fastrnn.generate(model, torch.tensor([[1, 2], [3, 12]]), 3)
    assert any("token ids must lie in [0, V) (the largest here is 12)" in n for n in caught.value.__notes__)


def test_non_integer_prompts_raise(model):
    with pytest.raises(TypeError, match="token ids must be integers"):
        fastrnn.generate(model, torch.tensor([[1.0, 2.0]]), 3)


def test_the_models_logits_are_never_written():
    # A model may hand out its own tensor (here an expanded view of one row): banning eos
    # before min_new_tokens must not write into it.
    row = torch.tensor([0.0, 2.0, 1.0, -1.0])

    class SharedLogits(torch.nn.Module):
        def forward(self, tokens, state):
            return row.expand(*tokens.shape, 4), torch.zeros(1, tokens.shape[0])

    out = fastrnn.generate(SharedLogits(), torch.tensor([[0]]), 3, eos_token_id=1, min_new_tokens=2)
    assert out[0].tolist() == [0, 2, 2, 1]
    assert row.tolist() == [0.0, 2.0, 1.0, -1.0]


# ---- CUDA graphs: generate(cuda_graph=True) ------------------------------------------------------

@pytest.mark.parametrize("kwargs,match", [
    (dict(cuda_graph=True), "cuda_graph=True needs CUDA prompts"),
    (dict(cuda_graph=True, num_beams=2), "beam search"),
])
def test_cuda_graph_arguments_are_checked(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fastrnn.generate(model, torch.tensor([[1, 2]]), 3, **kwargs)
    with pytest.raises(TypeError, match="cuda_graph must be True or False"):
        fastrnn.generate(model, torch.tensor([[1, 2]]), 3, cuda_graph=1)


def test_state_copies_keep_structure_and_shapes():
    from fastrnn.generate import _copy_state
    into = (torch.zeros(1, 2, 3), [torch.zeros(2)])
    _copy_state(into, (torch.ones(1, 2, 3), [torch.full((2,), 2.0)]))
    assert into[0].eq(1).all() and into[1][0].eq(2).all()
    for bad in ((torch.ones(1, 2, 4), [torch.ones(2)]), (torch.ones(1, 2, 3),), torch.ones(1)):
        with pytest.raises(TypeError, match="keeps its structure and shapes"):
            _copy_state(into, bad)


class FastLSTMLM(torch.nn.Module):
    def __init__(self, V=50, H=64):
        super().__init__()
        self.embed = torch.nn.Embedding(V, H)
        self.rnn = fastrnn.LSTM(H, H, num_layers=2, batch_first=True)
        self.head = torch.nn.Linear(H, V)

    def forward(self, tokens, state):
        y, state = self.rnn(self.embed(tokens), state)
        return self.head(y), state


@pytest.mark.cuda
@pytest.mark.parametrize("options", [
    dict(), dict(do_sample=True, seed=3, top_p=0.9, temperature=0.8),
    dict(do_sample=True, top_k=5, seed=torch.arange(3)),
    dict(eos_token_id=[0, 7], min_new_tokens=4, repetition_penalty=1.3),
    dict(do_sample=True, seed=5, eos_token_id=2, pad_token_id=1),
])
def test_cuda_graph_generation_equals_the_eager_loop(options):
    torch.manual_seed(0)
    with torch.no_grad():
        model = FastLSTMLM().cuda()
        prompts = torch.randint(0, 50, (3, 4), device="cuda")
        eager = fastrnn.generate(model, prompts, 12, **options)
        graphed = fastrnn.generate(model, prompts, 12, cuda_graph=True, **options)
    assert torch.equal(eager, graphed)


@pytest.mark.cuda
def test_cuda_graph_generation_with_a_generator_replays_its_stream():
    torch.manual_seed(0)
    with torch.no_grad():
        model = FastLSTMLM().cuda()
        prompts = torch.randint(0, 50, (2, 3), device="cuda")
        runs = []
        for graph in (False, True):
            g = torch.Generator(device="cuda").manual_seed(11)
            runs.append(fastrnn.generate(model, prompts, 10, do_sample=True, generator=g, cuda_graph=graph))
    assert torch.equal(*runs)


class CountingNaN(torch.nn.Module):
    """TurnsNaN(rows=1) without host reads, so a CUDA graph can capture it: token 5 is
    preferred, and row 1's logits are NaN from the fourth call on. State: calls so far."""

    def forward(self, tokens, state):
        B, T = tokens.shape
        calls = torch.ones(1, B, device=tokens.device) if state is None else state + 1
        logits = torch.zeros(B, T, 6, device=tokens.device)
        logits[..., 5] = 3.0
        bad = (calls[0] > 3) & (torch.arange(B, device=tokens.device) == 1)
        return torch.where(bad[:, None, None], float("nan"), logits), calls


def test_counting_nan_model_turns_nan_at_its_fourth_call():
    prompts = torch.tensor([[1, 2], [3, 4]])
    assert fastrnn.generate(CountingNaN(), prompts, 3)[:, 2:].eq(5).all()
    with pytest.raises(ValueError, match="row 1 contains NaN"):
        fastrnn.generate(CountingNaN(), prompts, 6)


@pytest.mark.cuda
def test_nan_logits_raise_under_a_cuda_graph():
    # The fourth call is the second replay: the error comes from a replayed draw.
    prompts = torch.tensor([[1, 2], [3, 4]], device="cuda")
    assert fastrnn.generate(CountingNaN(), prompts, 3, cuda_graph=True)[:, 2:].eq(5).all()
    with pytest.raises(ValueError, match="row 1 contains NaN"):
        fastrnn.generate(CountingNaN(), prompts, 6, cuda_graph=True)
