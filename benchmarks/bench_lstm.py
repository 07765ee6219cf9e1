"""LSTM layer: fastrnn (Triton, ext) against nn.LSTM, the reference cell loop and torch.compile.

    python -m pytest benchmarks/bench_lstm.py
"""
import pytest

from benchmarks.conftest import params


@pytest.mark.parametrize("case, provider, mode", params("lstm"))
def test_lstm(run_case, case, provider, mode):
    run_case(case, provider, mode)
