"""Benchmark runner: sweep the shapes of benchmarks/cases.py on the device present, append
the results to benchmarks/results/results.csv, and render results.md and PNG plots.

    python -m benchmarks.run                       # everything, on the GPU if there is one
    python -m benchmarks.run --kernels lstm --modes forward
    python -m benchmarks.run --kernels lstm,gru --shapes B16-T1024-H768   # the headline cases only
    python -m benchmarks.run --render-only         # redo the Markdown and plots from the CSV

On a CPU-only machine the sweep is reduced (see benchmarks.cases.cpu_sweep) so that it
finishes in a few minutes on 2 cores; the Markdown says which sweep ran.
"""
import argparse
import datetime
import gc
import os
import subprocess
import sys
import time
from typing import List

import torch

import fastrnn
from benchmarks import cases as bench_cases
from benchmarks import results
from benchmarks.timing import device_name, measure

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "results")
KERNELS = ("lstm", "gru", "rnn", "softmax", "sampling")


def versions() -> str:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "absent"
    # scripts/gpu_run.sh names the commit: the device machine's copy of .git can be older.
    commit = os.environ.get("FASTRNN_COMMIT")
    try:
        commit = commit or subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE,
                                          capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    ext = "built" if fastrnn.backends.ext_module() is not None else "not built"
    return (f"torch {torch.__version__}, triton {triton_version}, fastrnn {fastrnn.__version__} "
            f"(commit {commit}, extension {ext}), python {sys.version.split()[0]}")


def derived(case: bench_cases.Case, mode: str, median_ms: float) -> dict:
    seconds = median_ms / 1e3
    row = {"tokens_per_s": f"{case.tokens / seconds:.1f}"}
    if case.is_rnn:
        row["time_per_step_us"] = f"{median_ms * 1e3 / case.dim['T']:.3f}"
    moved = case.bytes_moved(mode)
    if moved is not None:
        row["gb_per_s"] = f"{moved / seconds / 1e9:.3f}"
    return row


def run_one(case, provider, mode, device, budget_s) -> tuple:
    """(median, p20, p80) in ms; exceptions propagate to the caller, which reports them."""
    fn = bench_cases.make_callable(case, provider, mode, device)
    fn()  # warm-up outside the timing: compilation, autotuning, allocator growth
    try:
        return measure(fn, device, budget_s)
    finally:
        del fn
        gc.collect()
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()


def sweep(args, device, csv_path: str) -> List[str]:
    """Measure every case on `device`, appending each row to csv_path as soon as it is
    measured (a run cut short keeps what it measured). Returns what was not measured, and why."""
    on_gpu = torch.device(device).type == "cuda"
    cases = (bench_cases.gpu_sweep if on_gpu else bench_cases.cpu_sweep)(args.kernels)
    sweep_name = "full" if on_gpu else "cpu-reduced"
    if args.shapes:
        cases = [c for c in cases if c.shape in args.shapes]
        if not cases:
            raise SystemExit(f"no case of the {sweep_name} sweep has a shape in {args.shapes}")
        sweep_name = "selected"
    run_id = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    common = {"run_id": run_id, "device": device_name(device), "versions": versions(),
              "date": run_id[:10], "sweep": sweep_name}
    skipped: dict = {}
    baseline_ms: dict = {}
    deadline = time.monotonic() + args.time_limit_s if args.time_limit_s else None
    try:
        for case in cases:
            if deadline is not None and time.monotonic() > deadline:
                skipped.setdefault(f"{case.kernel} {case.shape} {case.dtype_name} and later cases: "
                                   f"the --time-limit-s of {args.time_limit_s:.0f} s was reached", None)
                break
            for provider in bench_cases.providers_for(case.kernel):  # the baseline comes first
                if args.providers and provider not in args.providers:
                    continue
                reason = bench_cases.why_unavailable(case, provider, device)
                if reason is not None:
                    skipped.setdefault(f"{case.kernel} / {provider}: {reason}", None)
                    continue
                for mode in case.modes:
                    if args.modes and mode not in args.modes:
                        continue
                    row = measure_row(case, provider, mode, device, args.budget_s, skipped)
                    if row is None:
                        continue
                    key = (case.kernel, mode, case.shape, case.dtype_name)
                    baseline = bench_cases.BASELINE[case.kernel]
                    if provider == baseline:
                        baseline_ms[key] = float(row["median_ms"])
                    row["baseline"] = baseline
                    if key in baseline_ms:
                        row["speedup_vs_baseline"] = f"{baseline_ms[key] / float(row['median_ms']):.3f}"
                    results.append_rows(csv_path, [{**common, **row}])
    except KeyboardInterrupt:  # e.g. the time limit of scripts/gpu_run.sh: keep what was measured
        skipped.setdefault("the run was interrupted; later cases were not measured", None)
    return list(skipped)


def measure_row(case, provider, mode, device, budget_s, skipped: dict):
    """One measurement as a CSV row (without the run's common columns), or None when it
    failed; the failure is printed and added to `skipped`."""
    label = f"{case.kernel:8} {provider:15} {mode:17} {case.shape:18} {case.dtype_name:9}"
    try:
        median, p20, p80 = run_one(case, provider, mode, device, budget_s)
    except Exception as exc:  # one failing provider must not end the sweep
        message = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        skipped.setdefault(f"{case.kernel} / {provider} / {mode} / {case.shape} {case.dtype_name}: "
                           f"failed: {type(exc).__name__}: {message}", None)
        print(f"{label} FAILED {type(exc).__name__}: {message}", flush=True)
        return None
    print(f"{label} {median:10.3f} ms  [{p20:.3f} - {p80:.3f}]", flush=True)
    return {"kernel": case.kernel, "provider": provider, "mode": mode, "shape": case.shape,
            "dtype": case.dtype_name, "median_ms": f"{median:.4f}", "p20_ms": f"{p20:.4f}",
            "p80_ms": f"{p80:.4f}", **derived(case, mode, median)}


def sweep_descriptions() -> dict:
    describe = lambda fn: " ".join(fn.__doc__.split())  # noqa: E731
    return {"full": describe(bench_cases.gpu_sweep), "cpu-reduced": describe(bench_cases.cpu_sweep),
            "selected": "the cases of the device's sweep with the shapes given by --shapes "
                        "(e.g. the headline B16-T1024-H768)."}


def not_measured_path(out_dir: str, device: str) -> str:
    return os.path.join(out_dir, f"not_measured_{results.slug(device_name(device))}.txt")


def render(out_dir: str):
    rows = results.read_rows(os.path.join(out_dir, "results.csv"))
    skipped = {}
    for device in results.latest_run_per_device(rows):
        path = os.path.join(out_dir, f"not_measured_{results.slug(device)}.txt")
        if os.path.exists(path):
            with open(path) as f:
                skipped[device] = f.read().splitlines()
    text = results.markdown(rows, sweep_descriptions(), skipped)
    with open(os.path.join(out_dir, "results.md"), "w") as f:
        f.write(text)
    plots = results.plot(rows, out_dir)
    print(f"wrote {os.path.join(out_dir, 'results.md')}")
    if plots:
        print("wrote " + ", ".join(plots))
    else:
        print("no PNG plots: matplotlib is not installed (CSV and Markdown are complete)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--kernels", type=lambda s: s.split(","), default=list(KERNELS),
                   help="comma-separated subset of " + ",".join(KERNELS))
    p.add_argument("--providers", type=lambda s: s.split(","), default=None,
                   help="comma-separated providers to run (default: all)")
    p.add_argument("--modes", type=lambda s: s.split(","), default=None,
                   help="comma-separated subset of forward,backward,forward+backward")
    p.add_argument("--shapes", type=lambda s: s.split(","), default=None,
                   help="comma-separated shapes of the sweep to run, e.g. B16-T1024-H768 (default: all)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--out", default=DEFAULT_OUT, help="folder for results.csv, results.md, PNGs")
    p.add_argument("--budget-s", type=float, default=0.2,
                   help="CPU only: seconds of repeated calls per measurement")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU only: torch threads (1 keeps timings stable on a shared machine)")
    p.add_argument("--time-limit-s", type=float, default=None,
                   help="start no new case after this many seconds (results so far are kept)")
    p.add_argument("--render-only", action="store_true")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    unknown = set(args.kernels) - set(KERNELS)
    if unknown:
        raise SystemExit(f"unknown kernels {sorted(unknown)}; choose from {KERNELS}")
    os.makedirs(args.out, exist_ok=True)
    if args.render_only:
        render(args.out)
        return
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if device == "cpu":
        torch.set_num_threads(args.threads)
    print(f"benchmarking on {device_name(device)}; {versions()}", flush=True)
    skipped = sweep(args, device, os.path.join(args.out, "results.csv"))
    for line in skipped:
        print(f"not measured: {line}")
    with open(not_measured_path(args.out, device), "w") as f:  # what the latest run left out, and why
        f.write("".join(line + "\n" for line in skipped))
    render(args.out)


if __name__ == "__main__":
    main()
