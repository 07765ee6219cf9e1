"""Test setup shared by every test.

Without a CUDA GPU, Triton kernels run under the interpreter: TRITON_INTERPRET=1 must be
set before triton (and so fastrnn) is imported, which this file does first.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import fastrnn  # noqa: E402,F401
from fastrnn import backends  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
INTERPRETER = backends.interpreter_enabled()


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    skip_ext = pytest.mark.skip(reason="needs the compiled extension fastrnn._C")
    skip_interp = pytest.mark.skip(reason="needs TRITON_INTERPRET=1 and triton installed")
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_cuda)
        if "ext" in item.keywords and backends.ext_module() is None:
            item.add_marker(skip_ext)
        if "interpreter" in item.keywords and not (INTERPRETER and backends.triton_importable()):
            item.add_marker(skip_interp)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    # Parity tests compare fp32 results: no TF32 anywhere.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.fixture
def triton_device():
    """Where the Triton kernels run: the GPU when there is one, else CPU under the interpreter."""
    if HAS_CUDA:
        return torch.device("cuda")
    if INTERPRETER and backends.triton_importable():
        return torch.device("cpu")
    pytest.skip("Triton kernels need a GPU or TRITON_INTERPRET=1")
