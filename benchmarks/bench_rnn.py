"""Elman RNN layer (tanh): fastrnn (Triton, ext) against nn.RNN, the reference cell loop and
torch.compile.

    python -m pytest benchmarks/bench_rnn.py
"""
import pytest

from benchmarks.conftest import params


@pytest.mark.parametrize("case, provider, mode", params("rnn"))
def test_rnn(run_case, case, provider, mode):
    run_case(case, provider, mode)
