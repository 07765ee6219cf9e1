"""Times the C++ sampler (fastrnn.sample, backend "ext") against the sort-based sampler and
the vectorised PyTorch path in one run, at the sampling shapes of the CPU sweep, and
writes the figures as Markdown.

    python -m benchmarks.sampling_cpu_targets [--repeats N] [--runs R] [--out FILE]

Every provider draws top-p 0.9 at temperature 0.8 (benchmarks.cases' sampling case) from
the same fp32 logits (randn * 3), with one torch thread: the extension runs its rows on
torch's pool, so it gets one thread too. Within a run the three providers are called in
turn, `repeats` times each after a warm-up, and a shape's speedups are ratios of medians
from that run. The run is repeated `runs` times, since the machine may be shared: the
table gives each shape's median and lowest speedup over the runs, and the times of the
run whose C++ median is the median one.

Targets (issue 15): at least 10x the sort-based path at every shape, and at least 2x the
vectorised path at 1 x 32000.
"""
import argparse
import datetime
import statistics
import subprocess
import time

import torch

import fastrnn
from benchmarks.cases import TEMPERATURE, TOP_P
from benchmarks.timing import cpu_model
from fastrnn.ops.sampling import reference

SHAPES = [(1, 32000), (1, 128256), (32, 32000), (32, 128256)]
PROVIDERS = ("torch-sort", "fastrnn-vectorized", "fastrnn-ext")
TARGET_OVER_SORT = 10.0
TARGET_OVER_VECTORIZED = {(1, 32000): 2.0}


def callables(B: int, V: int):
    logits = torch.randn(B, V, generator=torch.Generator().manual_seed(B * V)) * 3
    generator = torch.Generator().manual_seed(0)
    params = (torch.full((B,), TEMPERATURE), torch.full((B,), V),
              torch.full((B,), TOP_P, dtype=torch.float64), torch.zeros(B))
    return {
        "torch-sort": lambda: reference.sample(logits, *params, generator=generator),
        "fastrnn-vectorized": lambda: fastrnn.sample(logits, temperature=TEMPERATURE, top_p=TOP_P,
                                                     generator=generator, backend="reference"),
        "fastrnn-ext": lambda: fastrnn.sample(logits, temperature=TEMPERATURE, top_p=TOP_P,
                                              generator=generator, backend="ext"),
    }


def interleaved_medians(fns: dict, repeats: int) -> dict:
    """Median wall time (ms) of each callable, called in turn `repeats` times after a warm-up."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def measure(repeats_for, runs: int):
    """{shape: [medians of run 1, ...]}, the runs of all shapes interleaved too."""
    results = {shape: [] for shape in SHAPES}
    fns = {shape: callables(*shape) for shape in SHAPES}
    for _ in range(runs):
        for shape in SHAPES:
            results[shape].append(interleaved_medians(fns[shape], repeats_for(shape)))
    return results


def speedups(medians: dict):
    ext = medians["fastrnn-ext"]
    return medians["torch-sort"] / ext, medians["fastrnn-vectorized"] / ext


def table(results: dict, runs: int) -> str:
    lines = ["| B x V | sort-based | vectorised | C++ sampler | C++ vs sort: median run (lowest) "
             "| C++ vs vectorised: median run (lowest) | targets met |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for shape, all_runs in results.items():
        ordered = sorted(all_runs, key=lambda m: m["fastrnn-ext"])
        middle = ordered[len(ordered) // 2]
        over_sort, over_vec = speedups(middle)
        low_sort = min(speedups(m)[0] for m in all_runs)
        low_vec = min(speedups(m)[1] for m in all_runs)
        need_vec = TARGET_OVER_VECTORIZED.get(shape)
        met = over_sort >= TARGET_OVER_SORT and (need_vec is None or over_vec >= need_vec)
        target = f">= {TARGET_OVER_SORT:g}x sort" + (f", >= {need_vec:g}x vectorised" if need_vec else "")
        lines.append(f"| {shape[0]} x {shape[1]} | {middle['torch-sort']:.3g} ms | "
                     f"{middle['fastrnn-vectorized']:.3g} ms | {middle['fastrnn-ext']:.3g} ms | "
                     f"{over_sort:.1f}x ({low_sort:.1f}x) | {over_vec:.1f}x ({low_vec:.1f}x) | "
                     f"{'yes' if met else 'NO'} ({target}) |")
    return "\n".join(lines)


def header(args) -> str:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (f"Run {now}: {cpu_model()}, 1 thread, torch {torch.__version__}, commit {commit}. "
            f"Top-p {TOP_P} at temperature {TEMPERATURE}, fp32 logits; {args.runs} runs of "
            f"{args.repeats} interleaved calls per provider (4 at 32 x 128256).")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--out", default=None, help="write the Markdown here (printed either way)")
    args = p.parse_args(argv)
    if fastrnn.backends.ext_module() is None:
        raise SystemExit("the extension fastrnn._C is not built: nothing to time")
    torch.set_num_threads(1)
    # The sort-based sampler takes about a second a call at 32 x 128256: fewer repeats there.
    results = measure(lambda shape: 4 if shape == (32, 128256) else args.repeats, args.runs)
    text = header(args) + "\n\n" + table(results, args.runs) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
