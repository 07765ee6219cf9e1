"""The sampling path a PyTorch user runs without fastrnn: Hugging Face's warpers.

TemperatureLogitsWarper then TopPLogitsWarper (transformers/generation/logits_process.py):
float32 logits divided by the temperature, sorted ascending, softmax and cumsum of the
sorted logits, tokens whose cumulative mass stays <= 1 - top_p removed (the most probable
always kept), scattered back, softmax, torch.multinomial. This is the baseline the
benchmarks report (issue 23); fastrnn's exact reference (fastrnn/ops/sampling/reference.py:
float64, stable sort, tie groups) stays the tests' oracle.
"""
import torch
from torch import Tensor


def hf_top_p_sample(logits: Tensor, temperature: float, top_p: float,
                    generator: torch.Generator = None) -> Tensor:
    """(B, V) logits -> (B,) int64 tokens, as Hugging Face's warpers draw them."""
    scores = logits / temperature
    sorted_logits, sorted_indices = torch.sort(scores, descending=False)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove = cumulative <= (1 - top_p)
    remove[..., -1:] = False
    remove = remove.scatter(1, sorted_indices, remove)
    scores = scores.masked_fill(remove, float("-inf"))
    return torch.multinomial(scores.softmax(dim=-1), 1, generator=generator)[:, 0]
