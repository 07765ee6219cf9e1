"""benchmarks/gpu_probe.py's skeleton kernel computes the exchange it times: every program
reads all of h_{t-1} and writes its slice of h_t between grid barriers (on CPU: every
program a thread under the interpreter), against the same recurrence in PyTorch."""
import pytest
import torch

from benchmarks.gpu_probe import exchange_reference, run_exchange_probe
from fastrnn import backends
from fastrnn.testing import assert_matches_torch

from .concurrent_interpreter import concurrent_programs
from .conftest import HAS_CUDA, INTERPRETER

pytestmark = [pytest.mark.grid, pytest.mark.skipif(
    not (HAS_CUDA or (INTERPRETER and backends.triton_importable())),
    reason="needs a CUDA GPU, or TRITON_INTERPRET=1 with triton installed")]


@pytest.mark.parametrize("programs, grid_barrier, block_k", [(4, True, 4), (4, True, 8), (1, False, 4)])
def test_exchange_probe_computes_the_exchange_it_times(programs, grid_barrier, block_k):
    T, B, H = 3, 2, 8
    device = torch.device("cuda" if HAS_CUDA else "cpu")
    with concurrent_programs():
        hbuf = run_exchange_probe(T, B, H, programs, True, grid_barrier, device, block_k)
    assert_matches_torch([hbuf[:T]], lambda h0: [exchange_reference(h0, T)], [hbuf[T]], ["h_t"],
                         reduction_length=H)


def test_exchange_probe_barrier_alone_leaves_h_unwritten():
    with concurrent_programs():
        hbuf = run_exchange_probe(3, 2, 8, 4, False, True, torch.device("cuda" if HAS_CUDA else "cpu"))
    assert hbuf[:3].eq(0).all() and hbuf[3].ne(0).any()
