"""GRU layer: fastrnn (Triton, ext) against nn.GRU, the reference cell loop and torch.compile.

    python -m pytest benchmarks/bench_gru.py
"""
import pytest

from benchmarks.conftest import params


@pytest.mark.parametrize("case, provider, mode", params("gru"))
def test_gru(run_case, case, provider, mode):
    run_case(case, provider, mode)
