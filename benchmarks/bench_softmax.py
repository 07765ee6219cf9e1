"""Temperature softmax over a vocabulary: fastrnn against torch.softmax.

    python -m pytest benchmarks/bench_softmax.py
"""
import pytest

from benchmarks.conftest import params


@pytest.mark.parametrize("case, provider, mode", params("softmax"))
def test_softmax(run_case, case, provider, mode):
    run_case(case, provider, mode)
