"""Beam search against Hugging Face's generate (transformers 5.25.0) on Markov LMs (the
logits depend on the last token only), issue 21 items 5-7.

CI has no transformers: the expected outputs below are literals that Hugging Face's
generate produced (scripts/hf_beam_search_cases.py prints them). Beside them, random cases
are checked against two oracles written here: a plain-Python beam search that follows Hugging
Face's rules candidate by candidate (independent of fastrnn's tensor code), and, where beam
search provably sees every sequence, exhaustive search over all sequences.
"""
import itertools
import math
import random

import pytest
import torch

import fastrnn


class MarkovLM(torch.nn.Module):
    """logits = table[last token]; the state is unused (the last token says everything)."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.as_tensor(table, dtype=torch.float32)

    def forward(self, tokens, state):
        return self.table[tokens], tokens[:, -1:].T.clone()


def log(rows):
    return [[math.log(p) for p in row] for row in rows]


UNIFORM5 = [0.2] * 5
# (logits table, prompts, max_new_tokens, generate's keyword arguments)
ISSUE_CASES = [
    # Item 5: an end token ranked below the first num_beams candidates must not finish.
    (log([[.25, .25, .25, .25], [.5, .4, .06, .04], [.6, .2, .12, .08], [.1, .5, .3, .1]]),
     [[3]], 5, dict(num_beams=2, eos_token_id=0, pad_token_id=0, early_stopping=True,
                    length_penalty=2.0)),
    # Item 6: several end tokens; enough candidates that num_beams beams keep running.
    (log([UNIFORM5, UNIFORM5, [.45, .33, .10, .07, .05], [.45, .33, .10, .07, .05],
          [.32, .28, .20, .15, .05]]),
     [[4]], 4, dict(num_beams=2, eos_token_id=[0, 1], pad_token_id=0, early_stopping="never",
                    length_penalty=2.0)),
    # Item 7: the repetition penalty applies to the log-probabilities. The issue's [2, 0]
    # is Hugging Face's answer with length_penalty 0 (or -1); with the default 1 it is
    # [2, 1, 2, 1] (early_stopping False) or [2, 1, 0] (True).
    ([[-2, 1.5, -1.7], [1.1, -0.1, 1.7], [0.2, 1.1, 0.6]], [[2]], 3,
     dict(num_beams=2, repetition_penalty=1.5, eos_token_id=0, pad_token_id=0, length_penalty=0.0)),
    ([[-2, 1.5, -1.7], [1.1, -0.1, 1.7], [0.2, 1.1, 0.6]], [[2]], 3,
     dict(num_beams=2, repetition_penalty=1.5, eos_token_id=0, pad_token_id=0)),
    ([[-2, 1.5, -1.7], [1.1, -0.1, 1.7], [0.2, 1.1, 0.6]], [[2]], 3,
     dict(num_beams=2, repetition_penalty=1.5, eos_token_id=0, pad_token_id=0, early_stopping=True)),
    # Item 7: min_new_tokens bars the end token from the log-probabilities.
    ([[-1.18, .81, .98], [1.36, -.93, .04], [-1.79, .19, .26]], [[2]], 2,
     dict(num_beams=2, min_new_tokens=2, eos_token_id=0, pad_token_id=0)),
]

# Printed by scripts/hf_beam_search_cases.py with transformers 5.25.0 (CPU).
ISSUE_EXPECTED = [
    [[3, 1, 1, 0]],
    [[4, 2, 2, 2, 0]],
    [[2, 0]],
    [[2, 1, 2, 1]],
    [[2, 1, 0]],
    [[2, 2, 2]],
]
RANDOM_EXPECTED = [
    [[3, 3], [3, 3]],
    [[3, 3, 2, 4], [3, 1, 1, 4]],
    [[4, 0], [1, 1]],
    [[0, 0, 2, 3, 3, 3, 3, 3], [3, 2, 3, 1, 4, 4, 4, 4]],
    [[1, 0, 0, 4, 2], [0, 3, 4, 2, 5]],
    [[6, 3, 6, 3, 4, 4, 4, 4, 4], [1, 5, 0, 0, 0, 6, 7, 7, 7]],
    [[0, 5, 6], [0, 5, 6]],
    [[4, 0, 2, 1, 6], [4, 0, 4, 5, 0]],
    [[1, 1, 1], [1, 1, 1]],
    [[1, 5, 5, 5, 4], [0, 2, 1, 3, 4]],
    [[3, 3, 2, 0, 2], [1, 0, 3, 0, 2]],
    [[1, 4, 3, 0, 0, 3], [5, 4, 1, 1, 5, 6]],
    [[1, 3, 0, 2], [2, 3, 2, 2]],
    [[1, 5, 5, 5, 0, 4], [1, 1, 0, 5, 0, 4]],
    [[0, 3, 2, 3], [3, 3, 3, 1]],
    [[1, 0, 0, 1, 2], [1, 2, 1, 2, 3]],
    [[3, 0, 3], [3, 5, 5]],
    [[5, 4, 4, 5], [5, 2, 1, 2]],
    [[1, 1, 3, 1, 2, 3, 1, 2], [3, 1, 3, 1, 2, 3, 1, 2]],
    [[2, 1, 2], [1, 2, 4]],
    [[4, 1, 0, 1], [3, 3, 0, 1]],
    [[2, 3, 1, 0, 0, 0, 0, 3], [3, 1, 1, 0, 2, 2, 2, 2]],
    [[0, 2, 0, 2, 3, 3, 3, 3], [1, 2, 0, 2, 3, 3, 3, 3]],
    [[2, 1, 3, 4, 4, 4, 4], [5, 1, 3, 4, 4, 4, 4]],
    [[1, 2, 5, 2], [1, 2, 5, 2]],
    [[3, 4, 4, 4, 4], [0, 3, 5, 5, 5]],
    [[0, 1, 6], [6, 6, 1]],
    [[0, 0, 5, 6], [2, 4, 0, 5]],
    [[1, 3, 3, 3, 3, 3], [1, 1, 1, 0, 1, 4]],
    [[4, 2, 3, 3, 3, 3, 3], [3, 0, 0, 1, 2, 7, 7]],
    [[4, 5, 2, 1, 1, 1, 1, 1], [6, 1, 1, 1, 1, 1, 1, 1]],
    [[0, 1, 3], [0, 1, 3]],
    [[0, 0, 0, 1], [2, 4, 2, 1]],
    [[3, 5, 4, 3, 4, 3], [4, 1, 5, 3, 4, 3]],
    [[2, 2, 4], [0, 1, 3]],
    [[2, 3, 5, 4, 6], [4, 3, 5, 4, 6]],
]


def random_table(V, seed):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(V, V, generator=generator) * 1.5).tolist()


def random_case_arguments():
    """One random Markov LM and search per early_stopping value, length penalty and
    number of end tokens; some with a repetition penalty, some with min_new_tokens."""
    cases = []
    settings = itertools.product((True, False, "never"), (-1.0, 0.0, 1.0, 2.0), (1, 2, 3))
    for index, (early_stopping, length_penalty, n_eos) in enumerate(settings):
        rng = random.Random(index)
        V = rng.randint(n_eos + 2, 7)
        eos = rng.sample(range(V), n_eos)
        prompt_length = rng.randint(1, 3)
        max_new = rng.randint(2, 6)
        case = dict(V=V, seed=1000 + index, num_beams=rng.randint(2, V),
                    prompts=[[rng.randrange(V) for _ in range(prompt_length)] for _ in range(2)],
                    max_new_tokens=max_new, early_stopping=early_stopping,
                    length_penalty=length_penalty, eos_token_id=eos[0] if n_eos == 1 else eos,
                    pad_token_id=V)  # outside the vocabulary: padding shows
        if index % 3 == 0:
            case["repetition_penalty"] = rng.choice([1.5, 0.8])
        if index % 4 == 1:
            case["min_new_tokens"] = rng.randint(1, max_new)
        cases.append(case)
    return cases


def ours(table, prompts, max_new_tokens, **kwargs):
    return fastrnn.generate(MarkovLM(table), torch.tensor(prompts), max_new_tokens, **kwargs).tolist()


@pytest.mark.parametrize("index", range(len(ISSUE_CASES)))
def test_issue_cases_match_hugging_face(index):
    table, prompts, max_new, kwargs = ISSUE_CASES[index]
    assert ours(table, prompts, max_new, **kwargs) == ISSUE_EXPECTED[index]


def test_issue_cases_literal_values():
    """The issue's own statement of Hugging Face's answers, beside the generated literals."""
    assert ISSUE_EXPECTED[0] == [[3, 1, 1, 0]]
    assert ISSUE_EXPECTED[1] == [[4, 2, 2, 2, 0]]
    assert ISSUE_EXPECTED[2] == [[2, 0]]
    assert ISSUE_EXPECTED[5] == [[2, 2, 2]]


@pytest.mark.parametrize("index", range(len(random_case_arguments())))
def test_random_markov_lms_match_hugging_face(index):
    args = dict(random_case_arguments()[index])
    table = random_table(args.pop("V"), args.pop("seed"))
    assert ours(table, args.pop("prompts"), args.pop("max_new_tokens"), **args) == RANDOM_EXPECTED[index]


# ---- oracle 1: Hugging Face's rules, candidate by candidate, in plain Python ----------------

IMPOSSIBLE = -1.0e9


def rule_oracle(table, prompt, max_new, num_beams, eos, length_penalty, early_stopping,
                repetition_penalty=1.0, min_new_tokens=0):
    """The best finished hypothesis of one prompt, by Hugging Face's beam search rules
    (GenerationMixin._beam_search), in float64 Python lists. Valid when num_beams <= V -
    len(eos): then every step has num_beams real running candidates, and the placeholder
    beams Hugging Face starts with never matter."""
    V, K = len(table), num_beams
    S = max(2, 1 + len(eos)) * K
    running = [((), 0.0)] + [((), IMPOSSIBLE)] * (K - 1)
    finished = []  # (score, tokens), best first, at most K
    improvable = True
    for step in range(max_new):
        candidates = []
        for k, (tokens, total) in enumerate(running):
            sequence = list(prompt) + list(tokens)
            row = table[sequence[-1]]
            norm = math.log(sum(math.exp(z) for z in row))
            for v in range(V):
                logp = row[v] - norm
                if v in sequence and repetition_penalty != 1.0:
                    logp = logp * repetition_penalty if logp < 0 else logp / repetition_penalty
                if step < min_new_tokens and v in eos:
                    logp = -math.inf
                candidates.append((total + logp, k * V + v, tokens + (v,)))
        candidates.sort(key=lambda c: (-c[0], c[1]))
        candidates = candidates[:S]
        hits = [c[2][-1] in eos or step + 1 == max_new for c in candidates]
        # The first K candidates that hit become hypotheses, unless the prompt is done.
        if improvable and not (len(finished) == K and early_stopping is True):
            for rank in range(K):
                if hits[rank]:
                    score, _, tokens = candidates[rank]
                    finished.append((score / (step + 1) ** length_penalty, tokens))
            finished = sorted(finished, key=lambda f: -f[0])[:K]
        if all(hits):
            break
        running = [(c[2], c[0]) for c, hit in zip(candidates, hits) if not hit][:K]
        if len(finished) == K:
            length = max_new if early_stopping == "never" and length_penalty > 0 else step + 1
            improvable = improvable and running[0][1] / length ** length_penalty > finished[-1][0]
        if not improvable or (len(finished) == K and early_stopping is True):
            break
    return list(finished[0][1])


def oracle_cases():
    cases = []
    for index in range(72):
        rng = random.Random(5000 + index)
        n_eos = rng.randint(1, 3)
        V = rng.randint(n_eos + 2, 7)
        max_new = rng.randint(1, 5)
        case = dict(V=V, seed=index, eos=rng.sample(range(V), n_eos),
                    num_beams=rng.randint(2, V - n_eos), max_new=max_new,
                    early_stopping=(True, False, "never")[index % 3],
                    length_penalty=(-1.0, 0.0, 1.0, 2.0)[index // 3 % 4],
                    prompts=[[rng.randrange(V) for _ in range(rng.randint(1, 3))] for _ in range(2)])
        if index % 5 in (1, 2):
            case["repetition_penalty"] = rng.choice([1.5, 0.7, 2.0])
        if index % 5 in (2, 3):
            case["min_new_tokens"] = rng.randint(1, max_new)
        cases.append(case)
    return cases


@pytest.mark.parametrize("case", oracle_cases(), ids=lambda c: f"V{c['V']}-seed{c['seed']}")
def test_random_markov_lms_follow_the_rules(case):
    case = dict(case)
    V, prompts, eos, max_new = case.pop("V"), case.pop("prompts"), case.pop("eos"), case.pop("max_new")
    table = random_table(V, case.pop("seed"))
    # Unequal prompts: each is searched on its own, whatever the batch holds.
    out = fastrnn.generate(MarkovLM(table), [torch.tensor(p) for p in prompts], max_new,
                           eos_token_id=eos, pad_token_id=V, **case)
    for row, prompt in zip(out.tolist(), prompts):
        new = [t for t in row[len(prompt):] if t != V]
        assert new == rule_oracle(table, prompt, max_new, eos=eos, **case)


# ---- oracle 2: exhaustive search where beam search sees every sequence ----------------------

def exhaustive_best(table, start, eos, max_new, length_penalty):
    """The best-scoring finished sequence of all: ended by an end token, or of length
    max_new; score = sum(log p) / length ** length_penalty."""
    V = len(table)
    logp = torch.log_softmax(torch.tensor(table, dtype=torch.float64), -1)
    best, best_score = None, -math.inf
    for n in range(1, max_new + 1):
        for sequence in itertools.product(range(V), repeat=n):
            if any(t in eos for t in sequence[:-1]) or (n < max_new and sequence[-1] not in eos):
                continue
            previous, total = start, 0.0
            for t in sequence:
                previous, total = t, total + logp[previous, t].item()
            if total / n ** length_penalty > best_score:
                best, best_score = list(sequence), total / n ** length_penalty
    return best


@pytest.mark.parametrize("length_penalty", [-1.0, 0.0, 1.0, 2.0])
@pytest.mark.parametrize("n_eos", [1, 2, 3])
def test_never_early_stopping_equals_exhaustive_search(length_penalty, n_eos):
    """num_beams = V and two new tokens: the first step's candidates are all V tokens of
    the one starting beam, all ranked below V = num_beams, so every one-token hypothesis
    ends there and every other token runs; at the last step the best two-token sequence
    ranks first. "never" stops early only when the bound it uses (max_new_tokens for a
    positive length penalty, else the current length) shows no continuation can win."""
    V, max_new = 5, 2
    for seed in range(10):
        table = random_table(V, 7000 + seed)
        eos = list(range(n_eos))
        start = seed % V
        out = ours(table, [[start]], max_new, num_beams=V, eos_token_id=eos, pad_token_id=V,
                   length_penalty=length_penalty, early_stopping="never")
        found = [t for t in out[0][1:] if t != V]
        assert found == exhaustive_best(table, start, eos, max_new, length_penalty), seed
