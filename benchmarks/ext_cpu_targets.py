"""Times the extension's CPU LSTM/GRU/RNN layer against torch.nn.LSTM / GRU / RNN (tanh) in
one run, at the shapes of the extension's speed targets, and writes the figures as Markdown.

    python -m benchmarks.ext_cpu_targets [--threads 1,2] [--repeats N] [--kernels rnn] [--out FILE]

Reports the best (minimum) forward and forward+backward time of each over interleaved
repeats, and their ratio (ext / nn; below 1 is faster), the ratio of the medians, and the
ratio of the best thread CPU times (time.thread_time: with one thread every kernel runs on
the calling thread, and time the core spent on other processes is left out, which keeps the
ratio stable on a shared machine). Same threads, same inputs, random
(never zero) data; x, the weights and biases require grad (no h0: zeros). The minimum and
the interleaving keep the comparison fair on a machine shared with other work, where a
median mostly measures the neighbours.

To judge a target against the hardware, each row also gives the rate nn reaches in
multiply-adds per second (a layer's forward is T*B*G*H*(I+H) multiply-adds with G = 4 gates
for the LSTM, 3 for the GRU and 1 for the RNN; backward twice that: dx, dW_ih, dh, dW_hh)
and the rate a target ratio would need, beside the rate of a large square torch.mm on the
same threads.
"""
import argparse
import datetime
import os
import statistics
import subprocess
import time

import torch

from benchmarks.timing import cpu_model
from fastrnn import functional

SHAPES = [(32, 128, 512, 512), (1, 256, 128, 128)]   # (B, T, I, H)
# The extension's speed targets (ext time / nn time, forward+backward).
TARGETS = {("lstm", 32): 0.8, ("lstm", 1): 0.5, ("gru", 32): 0.8, ("gru", 1): 0.1,
           ("rnn", 32): 0.6, ("rnn", 1): 0.3}
KERNELS = ("lstm", "gru", "rnn")
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
MODULES = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}


def all_times(fns, repeats, clock=time.perf_counter):
    """Times of each of `fns` on `clock` (one list per fn), run in turn `repeats` times
    after a warm-up."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = clock()
            fn()
            times[i].append(clock() - start)
    return times


def best_times(fns, repeats):
    """Minimum wall time of each of `fns`, run in turn `repeats` times after a warm-up."""
    return [min(t) for t in all_times(fns, repeats)]


def runners(kind, B, T, I, H):
    module = MODULES[kind](I, H)
    x = torch.randn(T, B, I, requires_grad=True)
    params = [module.weight_ih_l0, module.weight_hh_l0, module.bias_ih_l0, module.bias_hh_l0]

    def ext_forward():
        if kind == "lstm":
            return functional.lstm_layer(x, None, None, *params, backend="ext")[0]
        if kind == "rnn":
            return functional.rnn_layer(x, None, *params, backend="ext")[0]
        return functional.gru_layer(x, None, *params, backend="ext")[0]

    def nn_forward():
        return module(x)[0]

    def train(forward):
        def step():
            y = forward()
            y.backward(grad)
        return step

    grad = torch.randn(T, B, H)
    return {"forward": (ext_forward, nn_forward),
            "forward+backward": (train(ext_forward), train(nn_forward))}


def multiply_adds(kind, B, T, I, H, mode):
    forward = T * B * GATES[kind] * H * (I + H)
    return forward if mode == "forward" else 3 * forward


def mm_rate(n=2048, repeats=5):
    """Multiply-adds per second of an n x n x n torch.mm (MKL) on the current threads."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = best_times([lambda: a @ b], repeats)[0]
    return n ** 3 / best


def measure(threads, repeats, kernels=KERNELS):
    torch.set_num_threads(threads)
    rows = []
    for kind in kernels:
        for B, T, I, H in SHAPES:
            for mode, (ext_fn, nn_fn) in runners(kind, B, T, I, H).items():
                grad_mode = torch.enable_grad() if "backward" in mode else torch.no_grad()
                with grad_mode:
                    ext_times, nn_times = all_times([ext_fn, nn_fn], repeats)
                t_ext, t_nn = min(ext_times), min(nn_times)
                median_ratio = statistics.median(ext_times) / statistics.median(nn_times)
                cpu_ratio = None  # with more threads, thread_time misses the other threads
                if threads == 1:
                    with grad_mode:
                        ext_cpu, nn_cpu = all_times([ext_fn, nn_fn], repeats, time.thread_time)
                    cpu_ratio = min(ext_cpu) / min(nn_cpu)
                macs = multiply_adds(kind, B, T, I, H, mode)
                target = TARGETS[(kind, B)] if mode == "forward+backward" else None
                rows.append(dict(kind=kind, B=B, T=T, I=I, H=H, mode=mode, threads=threads,
                                 ext_ms=t_ext * 1e3, nn_ms=t_nn * 1e3, ratio=t_ext / t_nn,
                                 median_ratio=median_ratio, cpu_ratio=cpu_ratio,
                                 nn_gmacs=macs / t_nn / 1e9, target=target,
                                 needed_gmacs=macs / (target * t_nn) / 1e9 if target else None))
                cpu_text = "n/a" if cpu_ratio is None else f"{cpu_ratio:.2f}"
                print(f"{threads} thr {kind} B={B} T={T} I={I} H={H} {mode:17s} "
                      f"ext {t_ext * 1e3:8.2f} ms  nn {t_nn * 1e3:8.2f} ms  ratio {t_ext / t_nn:.2f} "
                      f"(medians {median_ratio:.2f}, thread CPU times {cpu_text})")
    return rows, mm_rate() / 1e9


def markdown(results, repeats):
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip() or "unknown"
    except OSError:
        commit = "unknown"
    lines = [
        "# Extension (CPU) against torch.nn at the speed-target shapes",
        "",
        f"Written by `python -m benchmarks.ext_cpu_targets` on {datetime.date.today()}: "
        f"{cpu_model()} ({os.cpu_count()} cores), torch {torch.__version__}, commit "
        f"{commit}, fp32, best of {repeats} interleaved repeats. Ratio = ext time / nn time "
        "(below 1: the extension is faster), of the best times, of the medians and of the best "
        "thread CPU times (a second pass of the same repeats). GMAC/s = multiply-adds per "
        "second. rnn: nn.RNN with tanh.",
        "",
        "| threads | layer | B, T, I, H | mode | nn ms | ext ms | ratio | ratio of medians "
        "| ratio of CPU times | target | nn GMAC/s | GMAC/s the target needs "
        "| torch.mm 2048^3 GMAC/s |",
        "|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for rows, mm in results:
        for r in rows:
            target = f"<= {r['target']}" if r["target"] else ""
            needed = f"{r['needed_gmacs']:.1f}" if r["needed_gmacs"] else ""
            lines.append(f"| {r['threads']} | {r['kind']} | {r['B']}, {r['T']}, {r['I']}, {r['H']} | "
                         f"{r['mode']} | {r['nn_ms']:.2f} | {r['ext_ms']:.2f} | {r['ratio']:.2f} | "
                         f"{r['median_ratio']:.2f} | "
                         f"{'' if r['cpu_ratio'] is None else format(r['cpu_ratio'], '.2f')} | "
                         f"{target} | {r['nn_gmacs']:.1f} | {needed} | {mm:.1f} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", default=str(torch.get_num_threads()),
                        help="comma-separated thread counts (torch.set_num_threads)")
    parser.add_argument("--kernels", default=",".join(KERNELS),
                        help="comma-separated subset of " + ",".join(KERNELS))
    parser.add_argument("--out", default=None, help="Markdown file for the figures")
    args = parser.parse_args()
    print(f"torch {torch.__version__}")
    kernels = args.kernels.split(",")
    results = [measure(int(n), args.repeats, kernels) for n in args.threads.split(",")]
    if args.out:
        with open(args.out, "w") as f:
            f.write(markdown(results, args.repeats))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
