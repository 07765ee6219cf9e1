"""fastrnn: fused recurrent kernels for PyTorch.

Public API only; the ops live in fastrnn/ops/<op>/.
"""
from fastrnn import functional
from fastrnn import library  # noqa: F401  (registers the torch.library ops)
from fastrnn.nn import GRU, LSTM, replace_rnns

__version__ = "0.1.0"

__all__ = ["functional", "LSTM", "GRU", "replace_rnns", "__version__"]
