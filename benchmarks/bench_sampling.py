"""Top-p sampling from logits: fastrnn against the sort-based PyTorch sampler.

    python -m pytest benchmarks/bench_sampling.py
"""
import pytest

from benchmarks.conftest import params


@pytest.mark.parametrize("case, provider, mode", params("sampling"))
def test_sampling(run_case, case, provider, mode):
    run_case(case, provider, mode)
