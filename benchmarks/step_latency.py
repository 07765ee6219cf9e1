"""Step latency and generation speed against torch.nn and the plain PyTorch loop.

    python -m benchmarks.step_latency [--device cpu|cuda] [--repeats N] [--out FILE]

Every comparison runs its providers interleaved in one process, on the same weights and
inputs, and reports the best of `repeats` rounds (each round calls every provider once in
turn), so a provider is never timed while the machine is quieter than for its baseline.
CPU runs use one thread (torch.set_num_threads(1)). Sections:

1. step mode: a layer called once per time step with its state carried (streaming, the
   decode step of an RNN LM or an RNN-T prediction network), and one T=1 call; fastrnn's
   module against torch.nn's, no_grad.
2. whole sequences: LSTM/GRU inference and forward+backward at the issue's shapes.
3. generation: a byte-level LM (Embedding(256, 64), LSTM(64, 256), Linear(256, 256)),
   B=1, 300 new tokens: fastrnn.generate on the model with fastrnn.LSTM against the
   plain PyTorch loop (argmax, or Hugging Face's top-p warper) on the model with nn.LSTM.
4. sampling: fastrnn.sample against Hugging Face's top-p warper path
   (benchmarks/sampling_baseline.py), top-p 0.9 at temperature 0.8, fp32 logits.

Writes a Markdown report (default benchmarks/results/step_latency_<device>.md) with the
machine, torch version, threads, date, commit and the load average before and after.
"""
import argparse
import datetime
import os
import platform
import statistics
import subprocess
import time
from typing import Callable, Dict, List, Tuple

import torch

import fastrnn
from benchmarks.sampling_baseline import hf_top_p_sample
from fastrnn.check import cpu_model

TEMPERATURE, TOP_P = 0.8, 0.9
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def interleaved_rounds(fns: Dict[str, Callable], repeats: int, device: str) -> Dict[str, List[float]]:
    """Wall times (seconds) of each callable in each of `repeats` rounds, after a warm-up."""
    for fn in fns.values():
        fn()
    sync(device)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def best_interleaved(fns: Dict[str, Callable], repeats: int, device: str) -> Dict[str, float]:
    """Best wall time (seconds) of each callable over `repeats` rounds, after a warm-up."""
    return {name: min(t) for name, t in interleaved_rounds(fns, repeats, device).items()}


def _pair(nn_cls, fast_cls, *args, device):
    reference = nn_cls(*args).to(device)
    fast = fast_cls(*args).to(device)
    fast.load_state_dict(reference.state_dict())
    return reference.eval(), fast.eval()


def _stepped(module, x):
    """One call per time step of x (T, B, I), the state carried."""
    def run():
        state = None
        with torch.no_grad():
            for t in range(x.shape[0]):
                _, state = module(x[t:t + 1], state)
    return run


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3g} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.3g} us"


def step_mode(device: str, repeats: int) -> List[Tuple[str, str, str, str]]:
    gen = torch.Generator().manual_seed(0)
    rows = []
    cases = [("LSTM(64, 256), B=1, 100 single-step calls", torch.nn.LSTM, fastrnn.LSTM, 64, 256, 1),
             ("LSTM(256, 256), B=32, 100 single-step calls", torch.nn.LSTM, fastrnn.LSTM, 256, 256, 32),
             ("GRU(64, 256), B=1, 100 single-step calls", torch.nn.GRU, fastrnn.GRU, 64, 256, 1),
             ("RNN(64, 256), B=1, 100 single-step calls", torch.nn.RNN, fastrnn.RNN, 64, 256, 1)]
    for label, nn_cls, fast_cls, I, H, B in cases:
        torch.manual_seed(0)
        reference, fast = _pair(nn_cls, fast_cls, I, H, device=device)
        x = torch.randn(100, B, I, generator=gen).to(device)
        t = best_interleaved({"nn": _stepped(reference, x), "fastrnn": _stepped(fast, x)},
                             repeats, device)
        rows.append((label, _ms(t["nn"]), _ms(t["fastrnn"]), f"{t['fastrnn'] / t['nn']:.2f}"))
    torch.manual_seed(0)
    reference, fast = _pair(torch.nn.LSTM, fastrnn.LSTM, 64, 256, device=device)
    x = torch.randn(1, 1, 64, generator=gen).to(device)

    def one_call(module):
        def run():
            with torch.no_grad():
                for _ in range(100):
                    module(x)
        return run
    t = best_interleaved({"nn": one_call(reference), "fastrnn": one_call(fast)}, repeats, device)
    rows.append(("one LSTM(64, 256) call, T=1, B=1, no_grad (per call)", _ms(t["nn"] / 100),
                 _ms(t["fastrnn"] / 100), f"{t['fastrnn'] / t['nn']:.2f}"))
    return rows


def sequences(device: str, repeats: int) -> List[Tuple[str, str, str, str]]:
    gen = torch.Generator().manual_seed(1)
    rows = []
    cases = [("LSTM", 64, 100, 256, 256, "inference"), ("LSTM", 32, 128, 512, 512, "forward+backward"),
             ("LSTM", 32, 64, 64, 256, "forward+backward"), ("GRU", 64, 100, 256, 256, "inference")]
    for kind, B, T, I, H, mode in cases:
        torch.manual_seed(0)
        reference, fast = _pair(getattr(torch.nn, kind), getattr(fastrnn, kind), I, H, device=device)
        if mode != "inference":   # cuDNN runs an RNN's backward in training mode only
            reference.train(), fast.train()
        x = torch.randn(T, B, I, generator=gen).to(device)

        def run(module):
            if mode == "inference":
                def go():
                    with torch.no_grad():
                        module(x)
                return go

            def go():
                module.zero_grad(set_to_none=True)
                xg = x.detach().requires_grad_()
                y, _ = module(xg)
                y.sum().backward()
            return go
        # As many rounds as the step cases: the LSTM rows sit within a few percent of nn, where
        # a shared machine's drift moves the ratio of the two best times by as much; the ratio
        # within each round (the two calls back to back) drifts less, so its median is given too.
        t = interleaved_rounds({"nn": run(reference), "fastrnn": run(fast)}, repeats, device)
        per_round = statistics.median(f / r for f, r in zip(t["fastrnn"], t["nn"]))
        rows.append((f"{kind} B={B} T={T} I={I} H={H}, {mode}", _ms(min(t["nn"])),
                     _ms(min(t["fastrnn"])), f"{min(t['fastrnn']) / min(t['nn']):.2f}",
                     f"{per_round:.3f}"))
    return rows


class ByteLM(torch.nn.Module):
    """Embedding(256, 64), an LSTM(64, 256) (torch.nn's or fastrnn's), Linear(256, 256)."""

    def __init__(self, lstm_cls):
        super().__init__()
        self.emb = torch.nn.Embedding(256, 64)
        self.rnn = lstm_cls(64, 256, batch_first=True)
        self.head = torch.nn.Linear(256, 256)

    def forward(self, tokens, state=None):
        y, state = self.rnn(self.emb(tokens), state)
        return self.head(y), state


def plain_loop(model, prompt, new_tokens, pick):
    """What a PyTorch user writes: feed the prompt, then one token per step."""
    def run():
        with torch.no_grad():
            logits, state = model(prompt, None)
            out = []
            for _ in range(new_tokens):
                token = pick(logits[:, -1])
                out.append(token)
                logits, state = model(token[:, None], state)
        return torch.stack(out, 1)
    return run


def generation(device: str, repeats: int) -> List[Tuple[str, str, str, str]]:
    new_tokens = 300
    torch.manual_seed(0)
    reference = ByteLM(torch.nn.LSTM).to(device).eval()
    fast = ByteLM(fastrnn.LSTM).to(device).eval()
    fast.load_state_dict(reference.state_dict())
    prompt = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(2)).to(device)
    sampler = torch.Generator(device=device).manual_seed(3)

    def fastrnn_generate(**options):
        def run():
            with torch.no_grad():
                return fastrnn.generate(fast, prompt, max_new_tokens=new_tokens, **options)
        return run

    fns = {
        "plain loop, nn.LSTM, greedy": plain_loop(reference, prompt, new_tokens, lambda l: l.argmax(-1)),
        "fastrnn.generate, fastrnn.LSTM, greedy": fastrnn_generate(),
        "plain loop, nn.LSTM, top-p (HF warper)": plain_loop(
            reference, prompt, new_tokens,
            lambda l: hf_top_p_sample(l, TEMPERATURE, TOP_P, generator=sampler)),
        "fastrnn.generate, fastrnn.LSTM, top-p": fastrnn_generate(do_sample=True, temperature=TEMPERATURE,
                                                                  top_p=TOP_P, seed=0),
    }
    # On CUDA the step loop can also replay as one CUDA graph (static shapes).
    variants = ("", ", CUDA graph") if device == "cuda" else ("",)
    if device == "cuda":
        fns["fastrnn.generate, fastrnn.LSTM, greedy, CUDA graph"] = fastrnn_generate(cuda_graph=True)
        fns["fastrnn.generate, fastrnn.LSTM, top-p, CUDA graph"] = fastrnn_generate(
            do_sample=True, temperature=TEMPERATURE, top_p=TOP_P, seed=0, cuda_graph=True)
    t = best_interleaved(fns, max(3, repeats // 2), device)
    rows = []
    for mode, baseline in (("greedy", "plain loop, nn.LSTM, greedy"),
                           ("top-p", "plain loop, nn.LSTM, top-p (HF warper)")):
        for variant in variants:
            base, ours = t[baseline], t[f"fastrnn.generate, fastrnn.LSTM, {mode}{variant}"]
            rows.append((f"B=1, {new_tokens} new tokens, {mode}{variant}", f"{new_tokens / base:,.0f}",
                         f"{new_tokens / ours:,.0f}", f"{base / ours:.2f}"))
    return rows


def sampling(device: str, repeats: int) -> List[Tuple[str, str, str, str]]:
    rows = []
    for B in (1, 32, 256):
        for V in (32000, 128256):
            logits = (torch.randn(B, V, generator=torch.Generator().manual_seed(B * V)) * 3).to(device)
            generator = torch.Generator(device=device).manual_seed(0)
            fns = {"hf": lambda: hf_top_p_sample(logits, TEMPERATURE, TOP_P, generator=generator),
                   "fastrnn": lambda: fastrnn.sample(logits, temperature=TEMPERATURE, top_p=TOP_P,
                                                     generator=generator)}
            reps = repeats if B * V <= 32 * 32000 else 3
            t = best_interleaved(fns, reps, device)
            rows.append((f"{B} x {V}", _ms(t["hf"]), _ms(t["fastrnn"]), f"{t['hf'] / t['fastrnn']:.1f}x"))
    return rows


def _table(title: str, header: Tuple[str, ...], rows) -> str:
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |",
             "|" + "---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _commit() -> str:
    if os.environ.get("FASTRNN_COMMIT"):   # set by scripts/gpu_run.sh (see benchmarks/run.py)
        return os.environ["FASTRNN_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--sections", default="step,sequences,generation,sampling")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    device = args.device
    if device == "cpu":
        torch.set_num_threads(1)
    load_before = os.getloadavg()
    started = time.time()
    machine = torch.cuda.get_device_name() if device == "cuda" else f"{cpu_model()} ({os.cpu_count()} cores)"
    sections = args.sections.split(",")
    parts = [f"# Step latency and generation ({device})", "",
             f"- machine: {machine}, {platform.machine()}; torch {torch.__version__}; "
             f"threads: {torch.get_num_threads() if device == 'cpu' else 'n/a'}",
             f"- date: {datetime.date.today().isoformat()}; commit {_commit()}; "
             f"`python -m benchmarks.step_latency --device {device} --repeats {args.repeats}`",
             "- protocol: providers interleaved in one process, same weights and inputs, best of "
             f"{args.repeats} rounds (the long shapes, generation and the largest sampling shapes: "
             "fewer rounds, except the whole sequences); ratio = fastrnn / baseline time (lower is better) unless marked",
             ""]
    if "step" in sections:
        parts.append(_table("Step mode (module forward, no_grad)",
                            ("case", "torch.nn", "fastrnn", "fastrnn / nn"), step_mode(device, args.repeats)))
    if "sequences" in sections:
        parts.append(_table("Whole sequences", ("case", "torch.nn", "fastrnn", "fastrnn / nn",
                                                "median ratio per round"),
                            sequences(device, args.repeats)))
    if "generation" in sections:
        parts.append(_table("Generation, tokens/s (higher is better)",
                            ("case", "plain loop, nn.LSTM", "fastrnn.generate, fastrnn.LSTM",
                             "speed-up"), generation(device, args.repeats)))
    if "sampling" in sections:
        parts.append(_table("Sampling, top-p 0.9 at temperature 0.8, fp32 logits",
                            ("B x V", "HF warper path", "fastrnn.sample", "speed-up"),
                            sampling(device, args.repeats)))
    load_after = os.getloadavg()
    parts.append(f"Load average (1, 5, 15 min) before: {', '.join(f'{v:.1f}' for v in load_before)}; "
                 f"after: {', '.join(f'{v:.1f}' for v in load_after)}; "
                 f"run took {time.time() - started:.0f} s.\n")
    report = "\n".join(parts)
    out = args.out or os.path.join(ROOT, "benchmarks", "results", f"step_latency_{device}.md")
    with open(out, "w") as f:
        f.write(report)
    print(report)
    return report


if __name__ == "__main__":
    main()
