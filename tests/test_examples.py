"""The character-level LM demo (examples/char_lm.py): a short convergence run.

fastrnn's model and torch.nn's start from one initialisation and see the same batches;
both must learn (loss well below the uniform ln 256) and agree step by step.
"""
import math

import pytest
import torch

from .example_modules import load_example


@pytest.fixture(scope="module")
def char_lm():
    return load_example("char_lm")


@pytest.fixture(autouse=True)
def _one_thread():
    """The models are tiny: one thread is as fast, and immune to a busy machine's
    oversubscription stalls."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def corpus(char_lm):
    return char_lm.load_corpus(None, 60_000)


def _train_pair(char_lm, corpus, cell):
    train_streams = char_lm.to_streams(corpus[:-8_000], 8, "cpu")
    val_streams = char_lm.to_streams(corpus[-8_000:], char_lm.VAL_STREAMS, "cpu")
    torch.manual_seed(0)
    baseline = char_lm.CharLM(cell, "torch", 16, 48)
    ours = char_lm.CharLM(cell, "fastrnn", 16, 48)
    ours.load_state_dict(baseline.state_dict())
    runs = {}
    for name, model in (("fastrnn", ours), ("torch", baseline)):
        stats = char_lm.train(model, train_streams, steps=40, bptt=32, lr=1e-2, clip=1.0,
                              show_progress=False)
        stats["val_ppl"] = char_lm.perplexity(model, val_streams, 256)
        runs[name] = stats
    return ours, runs


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_demo_model_learns_and_matches_torch(char_lm, corpus, cell):
    _, runs = _train_pair(char_lm, corpus, cell)
    ours, theirs = runs["fastrnn"]["losses"], runs["torch"]["losses"]
    assert abs(ours[0] - math.log(256)) < 0.2  # starts near uniform over the 256 bytes
    assert sum(ours[-5:]) / 5 < ours[0] - 2.0, f"loss did not fall: {ours[0]:.3f} -> {ours[-5:]}"
    assert runs["fastrnn"]["val_ppl"] < 40, runs["fastrnn"]["val_ppl"]  # uniform would be 256
    worst = max(abs(a - b) for a, b in zip(ours, theirs))
    assert worst < 1e-3, f"per-step losses of fastrnn and torch.nn differ by up to {worst:.2e}"
    assert abs(runs["fastrnn"]["val_ppl"] - runs["torch"]["val_ppl"]) < 0.05


def test_demo_generation_is_seeded_and_keeps_the_prompt(char_lm):
    torch.manual_seed(0)
    model = char_lm.CharLM("lstm", "fastrnn", 8, 16)
    greedy = char_lm.generate_text(model, "def ", 20)
    assert greedy.startswith("def ") and greedy == char_lm.generate_text(model, "def ", 20)
    nucleus = [char_lm.generate_text(model, "def ", 20, temperature=1.0, top_p=0.9, seed=s) for s in (1, 1, 2)]
    assert nucleus[0] == nucleus[1] != nucleus[2]
