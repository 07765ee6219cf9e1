"""Sampling on the compiled extension fastrnn._C: the one-pass C++ sampler (csrc/sampling.cpp,
csrc/include/fastrnn/sampling_cpu.h) for CPU tensors.

Provides the backend interface of fastrnn/ops/sampling/op.py (`kept_mask`, `sample`) on
the ops fastrnn::ext_sampling_mask / fastrnn::ext_sampling_forward, with their fake
implementations for tracing. Importing this module raises ImportError when the extension
was not built (fastrnn.backends then picks the vectorised path).
"""
import torch

from fastrnn import backends

if backends.ext_module() is None:
    raise ImportError("fastrnn.ops.sampling.ext needs the compiled extension fastrnn._C "
                      "(pip install --no-build-isolation -e .)")

sample_op = torch.ops.fastrnn.ext_sampling_forward.default
mask_op = torch.ops.fastrnn.ext_sampling_mask.default


def kept_mask(logits, temperature, top_k, top_p, min_p):
    return mask_op(logits, temperature, top_k, top_p, min_p)


def sample(logits, temperature, top_k, top_p, min_p, uniform):
    return sample_op(logits, temperature, top_k, top_p, min_p, uniform)


@torch.library.register_fake("fastrnn::ext_sampling_forward")
def _sample_fake(logits, temperature, top_k, top_p, min_p, uniform):
    B = logits.shape[0]
    return logits.new_empty(B, dtype=torch.int64), logits.new_empty(B, dtype=torch.int32)


@torch.library.register_fake("fastrnn::ext_sampling_mask")
def _mask_fake(logits, temperature, top_k, top_p, min_p):
    return (logits.new_empty(logits.shape, dtype=torch.bool),
            logits.new_empty(logits.shape[0], dtype=torch.int32))
