"""ELMo on fastrnn's fused layers: a byte-level bidirectional LM, its contextual
representations, and a scalar-mix probe.

1. Trains a fastrnn.BiLM (Peters et al. 2018): a forward and a backward stack of LSTM layers
   with projections and a residual connection, sharing the byte embedding and the softmax,
   with truncated BPTT in both directions. Reports each direction's held-out perplexity and
   saves the model.
2. Contextual vectors: the same identifier in code, in a string or in a comment gets
   different vectors. Each occurrence of a word is the forward half at its last byte
   joined with the backward half at its first byte (each half has read the whole word and
   its context on one side; Akbik et al. 2018). For every layer it measures how far apart
   a word's occurrences lie and how often an occurrence's nearest neighbour (among the
   same word's other occurrences) shares its context, against chance.
3. Downstream: a linear probe on the fastrnn.ScalarMix of all layers predicts, for each
   byte, whether it sits in code, a string literal or a comment (labels from Python's own
   tokenize module; the LM never sees them), compared with probes on single layers and
   with the majority class. The probe trains and tests on alternate windows of the
   held-out text.

The corpus is the Python standard library's source (loaded as examples/char_lm.py loads
it; no download). The defaults take a few minutes on one CPU core.

    python examples/elmo.py
    python examples/elmo.py --steps 600 --hidden 512 --proj 128 --save elmo.pt --plot elmo.png
"""
import argparse
import collections
import io
import math
import os
import re
import sys
import time
import token
import tokenize
from typing import Dict, List, Optional

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import char_lm  # noqa: E402  (the corpus loading is shared with the char-level example)

import fastrnn  # noqa: E402
from fastrnn.bilm import tbptt_chunks  # noqa: E402

CONTEXTS = ("code", "string", "comment")  # label 0, 1, 2 of each byte; -1: file not tokenizable
_STRING_TOKENS = {getattr(token, name) for name in ("STRING", "FSTRING_START", "FSTRING_MIDDLE",
                                                     "FSTRING_END", "TSTRING_START",
                                                     "TSTRING_MIDDLE", "TSTRING_END")
                  if hasattr(token, name)}  # f-strings are split into tokens from Python 3.12


# ---------------------------------------------------------------------------- labels

def context_labels(source: bytes) -> List[int]:
    """For each byte of a Python file: 0 code, 1 inside a string literal, 2 inside a comment,
    as Python's tokenize module reads it (all -1 when the file does not tokenize cleanly)."""
    lines = io.BytesIO(source).readlines()  # tokenize's own line split
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    labels = [0] * len(source)
    encoding = "utf-8"

    def offset(position) -> int:  # tokenize's (row, column in characters) -> byte offset
        row, col = position
        if row > len(lines):
            return len(source)
        return starts[row - 1] + len(lines[row - 1].decode(encoding)[:col].encode(encoding))

    try:
        for tok in tokenize.tokenize(io.BytesIO(source).readline):
            if tok.type == token.ENCODING:
                encoding = tok.string
            if tok.type == token.ERRORTOKEN:  # what Python < 3.12 yields for e.g. an unclosed quote
                raise tokenize.TokenError(tok)
            kind = 1 if tok.type in _STRING_TOKENS else 2 if tok.type == token.COMMENT else 0
            if kind:
                labels[offset(tok.start):offset(tok.end)] = [kind] * (offset(tok.end) - offset(tok.start))
    except (tokenize.TokenError, SyntaxError, UnicodeDecodeError):
        return [-1] * len(source)
    return labels


def corpus_with_labels(path: Optional[str], max_bytes: int):
    """char_lm's corpus (the standard library source, or `path`) and each byte's context
    label, a (len,) int64 tensor: the files are labelled one by one, in char_lm's order."""
    data = char_lm.load_corpus(path, max_bytes)
    labels: List[int] = []
    for name in [path] if path is not None else char_lm.stdlib_source_files():
        with open(name, "rb") as f:
            labels += context_labels(f.read())
        if len(labels) >= len(data):
            break
    return data, torch.tensor(labels[:len(data)])


# ---------------------------------------------------------------------------- training

def train(bilm: fastrnn.BiLM, streams: torch.Tensor, steps: int, bptt: int, lr: float, clip: float,
          show_progress: bool = True) -> Dict[str, list]:
    """Truncated BPTT in both directions: at each step the forward LM reads the next window
    from the start of the streams and the backward LM the next from their end, each
    carrying its state across windows; the two losses are averaged and Adam takes a step.
    Returns the per-step losses of each direction (nats per byte) and tokens/s."""
    optimizer = torch.optim.Adam(bilm.parameters(), lr=lr)
    chunks = {d: list(tbptt_chunks(streams, bptt, d)) for d in ("forward", "backward")}
    states = {"forward": None, "backward": None}
    losses = {"forward": [], "backward": []}
    bilm.train()
    start = time.perf_counter()
    for step in range(steps):
        i = step % len(chunks["forward"])
        if i == 0:
            states = {"forward": None, "backward": None}
        total = 0
        for direction in ("forward", "backward"):
            loss, states[direction] = bilm.loss(chunks[direction][i], direction, states[direction])
            losses[direction].append(loss.item())
            total = total + loss / 2
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        nn.utils.clip_grad_norm_(bilm.parameters(), clip)
        optimizer.step()
        if show_progress and ((step + 1) % 10 == 0 or step + 1 == steps):
            rate = 2 * (step + 1) * bptt * streams.shape[1] / (time.perf_counter() - start)
            char_lm.progress("BiLM", step + 1, steps, (losses["forward"][-1] + losses["backward"][-1]) / 2,
                             rate)
    seconds = time.perf_counter() - start
    return {**losses, "tokens_per_s": 2 * steps * bptt * streams.shape[1] / seconds, "seconds": seconds}


# ---------------------------------------------------------------------------- representations

@torch.no_grad()
def text_representations(bilm: fastrnn.BiLM, text: bytes) -> torch.Tensor:
    """(L + 1, N, 2P) representations of the first N bytes of `text`, N a multiple of
    char_lm.VAL_STREAMS: the text is cut into that many contiguous streams and the biLM reads
    each whole, from both ends, so every byte has the context of its whole stream."""
    bilm.eval()
    tokens = char_lm.to_streams(text, char_lm.VAL_STREAMS, "cpu")  # (N / streams, streams)
    reps = bilm.representations(tokens)  # (L + 1, N / streams, streams, 2P)
    return reps.transpose(1, 2).reshape(reps.shape[0], -1, reps.shape[-1])


def word_occurrences(text: bytes, labels: torch.Tensor, words: int, per_context: int):
    """The `words` most frequent identifiers (3+ characters) that occur at least per_context
    times in each of two contexts or more, with per_context of their occurrences in each
    such context (spread evenly over the text) as (first byte, last byte, context)."""
    found = collections.defaultdict(lambda: collections.defaultdict(list))
    for m in re.finditer(rb"(?<![A-Za-z0-9_])[A-Za-z_][A-Za-z0-9_]{2,}(?![A-Za-z0-9_])", text):
        first, last = m.start(), m.end() - 1
        label = int(labels[first])
        if label >= 0:
            found[m.group().decode()][label].append((first, last, label))
    chosen = {}
    for word, by_context in found.items():
        enough = [occ for occ in by_context.values() if len(occ) >= per_context]
        if len(enough) >= 2:
            chosen[word] = [o for occ in enough
                            for o in (occ[i * len(occ) // per_context] for i in range(per_context))]
    frequent = sorted(chosen, key=lambda w: -sum(len(o) for o in found[w].values()))[:words]
    return {w: chosen[w] for w in frequent}


def word_vectors(reps: torch.Tensor, occurrences) -> torch.Tensor:
    """(L + 1, n, 2P): per layer, [forward half at the last byte; backward half at the first]."""
    first = torch.tensor([o[0] for o in occurrences])
    last = torch.tensor([o[1] for o in occurrences])
    half = reps.shape[-1] // 2
    return torch.cat([reps[:, last, :half], reps[:, first, half:]], -1)


def context_separation(vectors: torch.Tensor, contexts: torch.Tensor):
    """For one word's occurrences ((n, D) vectors, (n,) context labels): the mean distance
    between two occurrences relative to the mean vector norm, and the share whose nearest
    other occurrence (Euclidean) has the same context (None when all the vectors are equal,
    as in the token layer: nearest is undefined)."""
    v = vectors.double()
    distance = torch.cdist(v, v, compute_mode="donot_use_mm_for_euclid_dist")  # exact zeros
    n = len(contexts)
    spread = float(distance.sum() / (n * (n - 1)) / v.norm(dim=-1).mean())
    if bool((v == v[0]).all()):
        return spread, None
    distance.fill_diagonal_(math.inf)
    nearest = distance.argmin(1)
    return spread, float((contexts[nearest] == contexts).double().mean())


# ---------------------------------------------------------------------------- probe

def train_probe(features: torch.Tensor, labels: torch.Tensor, steps: int, lr: float, seed: int):
    """A ScalarMix over features' layers ((K, N, D)) and a linear layer to the contexts,
    trained full-batch with Adam on cross-entropy. Returns (mix, linear)."""
    torch.manual_seed(seed)
    mix = fastrnn.ScalarMix(features.shape[0])
    linear = nn.Linear(features.shape[-1], len(CONTEXTS))
    optimizer = torch.optim.Adam([*mix.parameters(), *linear.parameters()], lr=lr)
    for _ in range(steps):
        loss = nn.functional.cross_entropy(linear(mix(features)), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return mix, linear


@torch.no_grad()
def probe_accuracy(mix, linear, features, labels) -> float:
    """The share of bytes whose context the probe predicts."""
    return float((linear(mix(features)).argmax(-1) == labels).double().mean())


def contextual_table(reps: torch.Tensor, text: bytes, labels: torch.Tensor, layer_names, args) -> dict:
    """Print and return, per layer, how far apart a word's occurrences lie and how often the
    nearest occurrence shares the context; "chance" is the share a random other occurrence
    would get (sum of squared context shares, pooled over the words)."""
    words = word_occurrences(text, labels, args.words, args.per_context)
    if not words:
        print("\nno identifier occurs often enough in two contexts: lower --per-context")
        return {}
    spreads = [[] for _ in layer_names]
    hits = [0.0] * len(layer_names)
    chance_hits, count = 0.0, 0
    for occurrences in words.values():
        vectors = word_vectors(reps, occurrences)
        contexts = torch.tensor([o[2] for o in occurrences])
        shares = torch.bincount(contexts, minlength=len(CONTEXTS)).double() / len(contexts)
        chance_hits += len(contexts) * float((shares ** 2).sum())
        count += len(contexts)
        for j in range(len(layer_names)):
            spread, accuracy = context_separation(vectors[j], contexts)
            spreads[j].append(spread)
            hits[j] = None if accuracy is None or hits[j] is None else hits[j] + accuracy * len(contexts)
    print(f"\nthe same word in different contexts: {', '.join(words)} "
          f"({args.per_context} occurrences per context, {count} in all, held-out text)")
    print(f"{'layer':14}{'relative spread':>17}{'nearest occurrence in the same context':>41}")
    table = {"words": list(words), "chance": chance_hits / count}
    for j, name in enumerate(layer_names):
        accuracy = None if hits[j] is None else hits[j] / count
        table[name] = {"spread": sum(spreads[j]) / len(spreads[j]), "nn_accuracy": accuracy}
        shown = "n/a (one vector per word)" if accuracy is None else f"{accuracy:.1%}"
        print(f"{name:14}{table[name]['spread']:>17.3f}{shown:>41}")
    print(f"{'chance':14}{'':>17}{table['chance']:>41.1%}")
    return table


def probe_table(reps: torch.Tensor, labels: torch.Tensor, layer_names, args) -> dict:
    """Print and return the test accuracy of a code / string / comment probe on each layer
    alone and on the ScalarMix of all. The held-out windows alternate between the probe's
    training and test sets, so both see the same files' mix of contexts."""
    window_of = torch.arange(labels.numel()) // args.window
    known = labels >= 0
    train_set, test_set = known & (window_of % 2 == 0), known & (window_of % 2 == 1)
    majority = int(torch.bincount(labels[train_set], minlength=len(CONTEXTS)).argmax())
    table = {"majority class": float((labels[test_set] == majority).double().mean())}
    print(f"\nprobe: code / string / comment for each byte; {int(train_set.sum()):,} training and "
          f"{int(test_set.sum()):,} test bytes (alternate {args.window}-byte windows, held-out text)")
    print(f"{'features':22}{'test accuracy':>14}   layer weights softmax(s); gamma")
    print(f"{'majority class':22}{table['majority class']:>14.1%}")
    probes = [(name, [j]) for j, name in enumerate(layer_names)]
    probes.append((f"ScalarMix of all {len(layer_names)}", list(range(len(layer_names)))))
    for name, layers in probes:
        mix, linear = train_probe(reps[layers][:, train_set], labels[train_set], args.probe_steps,
                                  args.probe_lr, args.seed)
        table[name] = probe_accuracy(mix, linear, reps[layers][:, test_set], labels[test_set])
        weights = ""
        if len(layers) > 1:
            weights = " ".join(f"{w:.2f}" for w in mix.weights().tolist()) + f"; {mix.gamma.item():.2f}"
        print(f"{name:22}{table[name]:>14.1%}   {weights}")
    return table


# ---------------------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", help="a Python source file (default: the standard library source)")
    p.add_argument("--corpus-bytes", type=int, default=1_000_000, help="read at most this much")
    p.add_argument("--val-bytes", type=int, default=60_000,
                   help="held-out tail: perplexity, contextual vectors and the probe")
    p.add_argument("--cell", choices=("lstm", "gru"), default="lstm")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--proj", type=int, default=64, help="proj_size (LSTM only; 0 for none)")
    p.add_argument("--no-residual", action="store_true")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--bptt", type=int, default=64)
    p.add_argument("--steps", type=int, default=250)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--window", type=int, default=256,
                   help="the probe trains and tests on alternate windows of this many bytes")
    p.add_argument("--words", type=int, default=8, help="identifiers in the contextual test")
    p.add_argument("--per-context", type=int, default=20,
                   help="occurrences of each word taken in each context (it needs that many)")
    p.add_argument("--probe-steps", type=int, default=300)
    p.add_argument("--probe-lr", type=float, default=1e-2)
    p.add_argument("--save", default="elmo_bilm.pt", help="where to save the model ('' for nowhere)")
    p.add_argument("--plot", default="elmo.png", help="PNG path, if matplotlib is there ('' for none)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    data, labels = corpus_with_labels(args.corpus, args.corpus_bytes)
    if len(data) <= 2 * args.val_bytes:
        raise SystemExit(f"corpus has {len(data)} bytes; need more than 2 x --val-bytes")
    val_start = len(data) - args.val_bytes
    train_streams = char_lm.to_streams(data[:val_start], args.batch, "cpu")
    val_streams = char_lm.to_streams(data[val_start:], char_lm.VAL_STREAMS, "cpu")
    proj = args.proj if args.cell == "lstm" else 0
    print(f"corpus: {args.corpus or 'Python standard library source'}, {len(data):,} bytes "
          f"({args.val_bytes:,} held out); contexts in the held-out bytes: "
          + ", ".join(f"{name} {float((labels[val_start:] == k).double().mean()):.1%}"
                      for k, name in enumerate(CONTEXTS)))
    print(f"BiLM: byte-level, {args.layers} x {args.cell.upper()} {args.hidden}"
          f"{f' -> proj {proj}' if proj else ''} per direction, residual {not args.no_residual}; "
          f"batch {args.batch} x BPTT {args.bptt}, {args.steps} steps, CPU, {args.threads} thread(s), "
          f"fastrnn backend {fastrnn.backends.choose('cpu', args.cell)!r}")

    torch.manual_seed(args.seed)
    config = dict(vocab_size=char_lm.VOCAB, hidden_size=args.hidden, num_layers=args.layers,
                  proj_size=proj, residual=not args.no_residual, cell=args.cell, dropout=args.dropout)
    bilm = fastrnn.BiLM(**config)
    stats = train(bilm, train_streams, args.steps, args.bptt, args.lr, args.clip, not args.quiet)
    ppl = bilm.perplexity(val_streams, 256)
    print(f"\n{'direction':10}{'first loss':>12}{'last 10 loss':>14}{'held-out ppl':>14}")
    for d in ("forward", "backward"):
        print(f"{d:10}{stats[d][0]:>12.3f}{sum(stats[d][-10:]) / len(stats[d][-10:]):>14.3f}{ppl[d]:>14.2f}")
    print(f"training: {stats['tokens_per_s']:,.0f} tokens/s (both directions), {stats['seconds']:.0f} s")
    if args.save:
        torch.save({"config": config, "state_dict": bilm.state_dict()}, args.save)
        print(f"saved to {args.save} (fastrnn.BiLM(**config).load_state_dict(state_dict))")

    text = data[val_start:]
    reps = text_representations(bilm, text)
    text, labels = text[:reps.shape[1]], labels[val_start:val_start + reps.shape[1]]
    layer_names = ["token (0)"] + [f"layer {j}" for j in range(1, args.layers + 1)]
    contextual = contextual_table(reps, text, labels, layer_names, args)
    probe = probe_table(reps, labels, layer_names, args)
    if args.plot:
        plot(args.plot, layer_names, contextual, probe)
    return {"stats": stats, "perplexity": ppl, "contextual": contextual, "probe": probe,
            "config": config}


def plot(path: str, layer_names, contextual: dict, probe: dict) -> None:
    """Two panels: nearest-neighbour context accuracy per layer, probe accuracy per feature set."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib is not installed: no plot)")
        return
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    shown = [n for n in layer_names if contextual.get(n, {}).get("nn_accuracy") is not None]
    left.bar(shown, [contextual[n]["nn_accuracy"] for n in shown])
    if "chance" in contextual:
        left.axhline(contextual["chance"], color="black", linestyle="--", label="chance")
    left.set_ylim(0, 1)
    left.set_title("same word: nearest occurrence in the same context")
    left.legend(loc="lower right")
    names = list(probe)
    right.barh(names, [probe[n] for n in names])
    right.set_xlim(0, 1)
    right.set_title("probe accuracy: code / string / comment")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


if __name__ == "__main__":
    main()
