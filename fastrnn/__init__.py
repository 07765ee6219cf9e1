"""fastrnn: fused recurrent kernels for PyTorch.

Public API only; the ops live in fastrnn/ops/<op>/.
"""
from fastrnn import functional
from fastrnn.errors import check_errors
from fastrnn import library  # noqa: F401  (registers the torch.library ops)
from fastrnn.nn import GRU, LSTM, RNN, replace_rnns
from fastrnn.ops.sampling.op import filtered_probs, sample, sampling_mask
from fastrnn.ops.softmax.op import log_softmax, softmax
from fastrnn.generate import generate
from fastrnn.stacked import StackedGRU, StackedLSTM
from fastrnn.bilm import BiLM, ScalarMix

__version__ = "0.1.0"

__all__ = ["functional", "LSTM", "GRU", "RNN", "replace_rnns", "softmax", "log_softmax", "sample", "sampling_mask",
           "filtered_probs", "generate", "StackedLSTM", "StackedGRU", "BiLM", "ScalarMix",
           "check_errors", "__version__"]
