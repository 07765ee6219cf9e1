"""pytest-benchmark setup for benchmarks/bench_*.py (not part of `make test`).

    python -m pytest benchmarks/bench_lstm.py                       # one op
    python -m pytest benchmarks -o python_files='bench_*.py'        # all ops
    python -m pytest benchmarks/bench_lstm.py -k "nn or triton" --benchmark-json out.json

Cases, providers and modes come from benchmarks/cases.py (the runner uses the same), so
a provider that cannot run here is skipped with its reason.
"""
import pytest
import torch

from benchmarks import cases as bench_cases

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def params(kernel: str):
    """pytest params (case, provider, mode) of the device's sweep for one kernel."""
    sweep = bench_cases.gpu_sweep if DEVICE == "cuda" else bench_cases.cpu_sweep
    return [pytest.param(case, provider, mode, id=f"{provider}-{mode}-{case.shape}-{case.dtype_name}")
            for case in sweep([kernel])
            for provider in bench_cases.providers_for(kernel)
            for mode in case.modes]


def _synchronised(fn):
    """pytest-benchmark reads the wall clock, so GPU work must be finished inside the target."""
    if DEVICE != "cuda":
        return fn

    def target():
        fn()
        torch.cuda.synchronize()
    return target


@pytest.fixture
def run_case(benchmark):
    def run(case, provider, mode):
        reason = bench_cases.why_unavailable(case, provider, DEVICE)
        if reason is not None:
            pytest.skip(reason)
        target = _synchronised(bench_cases.make_callable(case, provider, mode, DEVICE))
        rounds, warmup = (20, 3) if DEVICE == "cuda" else (5, 1)
        benchmark.group = f"{case.kernel} {mode} {case.shape} {case.dtype_name}"
        benchmark.pedantic(target, rounds=rounds, warmup_rounds=warmup)
        median_s = benchmark.stats.stats.median
        benchmark.extra_info["tokens_per_s"] = case.tokens / median_s
        if case.is_rnn:
            benchmark.extra_info["time_per_step_us"] = median_s * 1e6 / case.dim["T"]
        moved = case.bytes_moved(mode)
        if moved is not None:
            benchmark.extra_info["gb_per_s"] = moved / median_s / 1e9
    return run
