"""fastrnn: fused recurrent kernels for PyTorch.

Public API only; the ops live in fastrnn/ops/<op>/.
"""
from fastrnn import functional
from fastrnn import library  # noqa: F401  (registers the torch.library ops)

__version__ = "0.1.0"

__all__ = ["functional", "__version__"]
