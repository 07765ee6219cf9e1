"""Character-level language model: fastrnn against torch.nn, side by side, then sampling.

Trains the same byte-level LSTM (or GRU with --cell gru) twice from one initialisation and
one data order, once with fastrnn's layer and once with torch.nn's, using truncated
backpropagation through time and gradient clipping. Reports validation perplexity and
training tokens/s for both, then generates text from a prompt with greedy, temperature
and top-p sampling.

The default corpus is the Python standard library's own source (no download), so every
Python install has it. Runs on the GPU when there is one, else on the CPU; the defaults
finish in a few minutes on 2 CPU cores.

    python examples/char_lm.py                     # LSTM on the standard library source
    python examples/char_lm.py --cell gru --steps 200 --hidden 128
    python examples/char_lm.py --corpus my.txt --device cuda --hidden 1024 --batch 64
"""
import argparse
import glob
import math
import os
import sys
import sysconfig
import time
from typing import List, Optional

import torch
from torch import nn

import fastrnn
from fastrnn import backends
from fastrnn.check import device_argument

VOCAB = 256  # bytes: any text file is a valid corpus, nothing to build
VAL_STREAMS = 8  # the held-out text is read as 8 contiguous streams, each with its own state


# ---------------------------------------------------------------------------- data

def stdlib_source_files() -> List[str]:
    """The standard library's top-level .py files, in a fixed order."""
    return sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"], "*.py")))


def load_corpus(path: Optional[str], max_bytes: int) -> bytes:
    """`path`'s bytes, or the standard library source when path is None; at most max_bytes."""
    if path is not None:
        with open(path, "rb") as f:
            return f.read(max_bytes)
    chunks, total = [], 0
    for name in stdlib_source_files():
        with open(name, "rb") as f:
            chunks.append(f.read())
        total += len(chunks[-1])
        if total >= max_bytes:
            break
    return b"".join(chunks)[:max_bytes]


def to_streams(data: bytes, batch: int, device) -> torch.Tensor:
    """(N, batch) time-major token streams: column b is one contiguous slice of the text,
    so the recurrent state carries over from one BPTT window to the next."""
    tokens = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
    n = tokens.numel() // batch
    if n < 2:
        raise ValueError(f"corpus of {len(data)} bytes is too small for batch {batch}")
    return tokens[: n * batch].view(batch, n).t().contiguous().to(device)


# ---------------------------------------------------------------------------- model

def make_rnn(cell: str, impl: str, input_size: int, hidden_size: int) -> nn.Module:
    """A one-layer time-major recurrent layer: fastrnn's drop-in module or torch.nn's."""
    library = fastrnn if impl == "fastrnn" else nn
    return getattr(library, cell.upper())(input_size, hidden_size)


class CharLM(nn.Module):
    """Byte embedding -> one recurrent layer -> logits over the 256 byte values."""

    def __init__(self, cell: str, impl: str, embed: int, hidden: int):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, embed)
        self.rnn = make_rnn(cell, impl, embed, hidden)
        self.head = nn.Linear(hidden, VOCAB)

    def forward(self, tokens, state=None):
        """tokens (T, B) -> logits (T, B, VOCAB), new state."""
        y, state = self.rnn(self.embed(tokens), state)
        return self.head(y), state


def detach_state(state):
    if state is None:
        return None
    if isinstance(state, tuple):
        return tuple(s.detach() for s in state)
    return state.detach()


# ---------------------------------------------------------------------------- training

def synchronize(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def progress(label: str, step: int, total: int, loss: float, tokens_per_s: float):
    """A plain one-line progress bar on stderr."""
    width = 30
    filled = width * step // total
    bar = "=" * filled + " " * (width - filled)
    sys.stderr.write(f"\r[{label}] [{bar}] {step}/{total} loss {loss:.3f} {tokens_per_s:,.0f} tok/s")
    if step == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def train(model: CharLM, streams: torch.Tensor, steps: int, bptt: int, lr: float, clip: float,
          label: str = "", show_progress: bool = True) -> dict:
    """Truncated BPTT over the streams (wrapping around), Adam, gradient-norm clipping.

    Returns the per-step losses and the training throughput in tokens/s (wall time of
    the whole loop, optimizer included, synchronised on GPU)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    batch = streams.shape[1]
    device = streams.device
    state, pos, losses = None, 0, []
    model.train()
    synchronize(device)
    start = time.perf_counter()
    for step in range(1, steps + 1):
        if pos + bptt + 1 > streams.shape[0]:
            state, pos = None, 0
        inputs, targets = streams[pos:pos + bptt], streams[pos + 1:pos + bptt + 1]
        pos += bptt
        logits, state = model(inputs, detach_state(state))
        loss = loss_fn(logits.reshape(-1, VOCAB), targets.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        losses.append(loss.item())  # .item() synchronises, so the throughput below is honest
        if show_progress and (step % 10 == 0 or step == steps):
            elapsed = time.perf_counter() - start
            progress(label, step, steps, losses[-1], step * bptt * batch / elapsed)
    synchronize(device)
    elapsed = time.perf_counter() - start
    return {"losses": losses, "tokens_per_s": steps * bptt * batch / elapsed, "seconds": elapsed}


@torch.no_grad()
def perplexity(model: CharLM, streams: torch.Tensor, bptt: int) -> float:
    """exp(mean cross-entropy per byte) over the streams, state carried across windows."""
    model.eval()
    state, total, count = None, 0.0, 0
    for pos in range(0, streams.shape[0] - 1, bptt):
        inputs = streams[pos:pos + bptt]
        targets = streams[pos + 1:pos + 1 + inputs.shape[0]]
        inputs = inputs[: targets.shape[0]]
        logits, state = model(inputs, state)
        total += nn.functional.cross_entropy(logits.reshape(-1, VOCAB), targets.reshape(-1),
                                             reduction="sum").item()
        count += targets.numel()
    return math.exp(total / count)


# ---------------------------------------------------------------------------- generation

@torch.no_grad()
def generate_text(model: CharLM, prompt: str, length: int, temperature: float = 0.0,
                  top_p: float = 1.0, seed: int = 0) -> str:
    """The prompt followed by `length` generated bytes (fastrnn.generate), decoded as UTF-8.
    temperature 0 is greedy."""
    model.eval()
    device = next(model.parameters()).device

    def batch_first(tokens, state):  # fastrnn.generate's protocol: tokens (B, T), logits (B, T, V)
        logits, state = model(tokens.t(), state)
        return logits.transpose(0, 1), state

    prompt_ids = torch.tensor([list(prompt.encode())], dtype=torch.long, device=device)
    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if temperature > 0 else {}
    out = fastrnn.generate(batch_first, prompt_ids, max_new_tokens=length, seed=seed, **sampling)
    return bytes(out[0].tolist()).decode("utf-8", errors="replace")


# ---------------------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", help="a text file (default: the Python standard library source)")
    p.add_argument("--corpus-bytes", type=int, default=2_000_000, help="read at most this much")
    p.add_argument("--cell", choices=("lstm", "gru"), default="lstm")
    p.add_argument("--embed", type=int, default=64)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--bptt", type=int, default=64, help="truncated-BPTT window (time steps)")
    p.add_argument("--steps", type=int, default=500, help="training steps per model")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--clip", type=float, default=1.0, help="gradient-norm clipping")
    p.add_argument("--val-bytes", type=int, default=50_000, help="held-out tail of the corpus")
    p.add_argument("--prompt", default="def ")
    p.add_argument("--sample-length", type=int, default=200)
    p.add_argument("--device", type=device_argument, default="auto",
                   help="auto (cuda when present), cpu or cuda")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: torch's choice; 1 keeps the comparison "
                        "stable on a machine shared with other jobs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fastrnn-only", action="store_true", help="skip the torch.nn run")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = args.device
    data = load_corpus(args.corpus, args.corpus_bytes)
    if len(data) <= 2 * args.val_bytes:
        raise SystemExit(f"corpus has {len(data)} bytes; need more than 2 x --val-bytes")
    train_streams = to_streams(data[:-args.val_bytes], args.batch, device)
    val_streams = to_streams(data[-args.val_bytes:], VAL_STREAMS, device)
    source = args.corpus or f"Python {sys.version.split()[0]} standard library source"
    print(f"corpus: {source}, {len(data):,} bytes ({args.val_bytes:,} held out)")
    print(f"model: byte-level {args.cell.upper()}, embed {args.embed}, hidden {args.hidden}; "
          f"batch {args.batch} x BPTT {args.bptt}, {args.steps} steps; device {device} "
          f"(torch threads: {torch.get_num_threads()}), "
          f"torch {torch.__version__}, fastrnn backend {backends.choose(device.type, args.cell)!r}")

    torch.manual_seed(args.seed)
    baseline = CharLM(args.cell, "torch", args.embed, args.hidden).to(device)
    ours = CharLM(args.cell, "fastrnn", args.embed, args.hidden).to(device)
    ours.load_state_dict(baseline.state_dict())  # one initialisation for both

    runs = [("fastrnn", ours)] + ([] if args.fastrnn_only else [(f"nn.{args.cell.upper()}", baseline)])
    results = {}
    for label, model in runs:
        torch.manual_seed(args.seed)
        stats = train(model, train_streams, args.steps, args.bptt, args.lr, args.clip, label)
        stats["val_ppl"] = perplexity(model, val_streams, 256)
        results[label] = stats

    print(f"\n{'':14}{'train loss':>12}{'val ppl':>10}{'tokens/s':>12}{'seconds':>9}")
    for label, s in results.items():
        print(f"{label:14}{s['losses'][-1]:>12.3f}{s['val_ppl']:>10.2f}"
              f"{s['tokens_per_s']:>12,.0f}{s['seconds']:>9.1f}")
    if len(results) == 2:
        a, b = (results[k] for k in results)
        gap = max(abs(x - y) for x, y in zip(a["losses"], b["losses"]))
        print(f"fastrnn / nn.{args.cell.upper()} training throughput: "
              f"{a['tokens_per_s'] / b['tokens_per_s']:.2f}x; "
              f"largest per-step loss difference: {gap:.2e}")

    print(f"\nsamples from the fastrnn model, prompt {args.prompt!r}:")
    for title, temperature, top_p in (("greedy", 0.0, 1.0), ("temperature 0.8", 0.8, 1.0),
                                      ("top-p 0.9", 1.0, 0.9)):
        text = generate_text(ours, args.prompt, args.sample_length, temperature, top_p, args.seed)
        print(f"--- {title} ---\n{text}\n")
    return results


if __name__ == "__main__":
    main()
