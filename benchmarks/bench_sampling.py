"""Top-p sampling from logits: fastrnn (Triton on a GPU, the C++ sampler and the vectorised
PyTorch path on CPU) against the sort-based PyTorch sampler.

    python -m pytest benchmarks/bench_sampling.py

The C++ sampler's targets, timed interleaved with its baselines: benchmarks/sampling_cpu_targets.py.
"""
import pytest

from benchmarks.conftest import params


@pytest.mark.parametrize("case, provider, mode", params("sampling"))
def test_sampling(run_case, case, provider, mode):
    run_case(case, provider, mode)
