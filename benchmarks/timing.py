"""Timing: median and spread (20th and 80th percentiles) of one call, in milliseconds.

GPU: triton.testing.do_bench (CUDA events, L2 flushed between calls, synchronised) after
its own warm-up; CUDA events directly when Triton is missing. CPU: wall clock per call
after the caller's warm-up, repeated until about `budget_s` seconds have been spent.
"""
import math
import statistics
import time
from typing import Callable, Tuple

import torch

from fastrnn.check import cpu_model  # noqa: F401  (benchmarks name the CPU as the check does)

Stats = Tuple[float, float, float]  # median, p20, p80 in ms


def _quantiles(samples) -> Stats:
    if len(samples) == 1:
        return samples[0], samples[0], samples[0]
    cuts = statistics.quantiles(samples, n=10, method="inclusive")  # 10 %, 20 %, ... 90 %
    return statistics.median(samples), cuts[1], cuts[7]


def time_cpu(fn: Callable, budget_s: float = 0.5, max_reps: int = 50) -> Stats:
    """The caller has warmed fn up; one more untimed call sizes the number of repeats."""
    start = time.perf_counter()
    fn()
    estimate = time.perf_counter() - start
    reps = max(3, min(max_reps, math.ceil(budget_s / max(estimate, 1e-6))))
    samples = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - start) * 1e3)
    return _quantiles(samples)


def time_cuda_events(fn: Callable, warmup: int = 5, reps: int = 20) -> Stats:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    samples = []
    for _ in range(reps):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        samples.append(begin.elapsed_time(end))
    return _quantiles(samples)


def time_gpu(fn: Callable) -> Stats:
    try:
        from triton.testing import do_bench
    except ImportError:
        return time_cuda_events(fn)
    median, p20, p80 = do_bench(fn, warmup=25, rep=100, quantiles=[0.5, 0.2, 0.8])
    return median, p20, p80


def measure(fn: Callable, device, budget_s: float = 0.5) -> Stats:
    if torch.device(device).type == "cuda":
        return time_gpu(fn)
    return time_cpu(fn, budget_s)


def device_name(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"{cpu_model()} CPU, {threads} thread{'s' if threads > 1 else ''}"

