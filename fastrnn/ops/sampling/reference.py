"""Sort-based sampling reference in plain PyTorch, the oracle for the sort-free paths.

It filters the way Hugging Face does (sort each row once, read the filters off the
sorted probabilities), but with fastrnn's semantics (README, "Softmax and sampling"),
which decide ties by value rather than by position:

- probabilities p = softmax(logits / T) in float32, computed as e_j = exp((l_j - max) / T)
  (the max subtracted before dividing, so a tiny T never overflows; T = +inf gives
  e_j = 1 on every finite logit) with e_j = 0 on -inf logits, rounded once to float32
  from a float64 exp, and p_j = e_j / Z with Z = sum(e) in float64 rounded to float32.
  Every rounding step is pinned down so a compiled backend (the C++ sampler) reproduces
  these probabilities bit for bit. T = 0 rows are greedy: the kept set is the argmax alone
  (lowest index among ties);
- top-k keeps j iff fewer than k tokens have p strictly greater than p_j;
- top-p keeps j iff M_j < top_p * Z, where M_j is the mass of the top-k survivors strictly
  more probable than j and Z the mass of all top-k survivors (both summed in float64);
  top_p = 1 disables it;
- min-p keeps p_j >= min_p * max(p), the product taken in float32; min_p = 0 disables it.

The kept set is their intersection; sampling renormalises it. Parameters here are
already per-row tensors (see fastrnn.ops.sampling.op for the checks and broadcasting).
"""
import torch
from torch import Tensor


def probabilities(logits: Tensor, temperature: Tensor) -> Tensor:
    """softmax(logits / T) (B, V) float32, with T = 1 standing in on greedy (T = 0) rows.

    logits (B, V) float (rounded to float32 first), temperature (B,) >= 0 or +inf. Rows
    with a NaN, a +inf or no finite logit give NaN rows (the backends flag them first).
    """
    x = logits.float()
    t = torch.where(temperature > 0, temperature, torch.ones_like(temperature)).float()
    shifted = (x - x.amax(-1, keepdim=True)) / t[:, None]  # <= 0: exp cannot overflow
    # -inf logits stay at 0 even where T = +inf makes the shifted value -inf / inf = NaN.
    e = torch.where(x == float("-inf"), 0.0, shifted.double().exp().float())
    return e / e.double().sum(-1, keepdim=True).float()


def status(logits: Tensor) -> Tensor:
    """Per row (B,) int32: 0 usable, 1 has a NaN, 2 has +inf, 3 no finite logit (all -inf);
    the codes of fastrnn.ops.sampling.op.STATUS."""
    top = logits.amax(-1)  # NaN if the row has one
    code = torch.where(top == float("inf"), 2, torch.where(top == float("-inf"), 3, 0))
    return torch.where(torch.isnan(top), 1, code).to(torch.int32)


def kept_mask_from_probs(probs: Tensor, top_k: Tensor, top_p: Tensor, min_p: Tensor) -> Tensor:
    """Kept set (B, V) bool of float32 probabilities under top-k, top-p and min-p.

    top_k (B,) int64 (V or more disables), top_p (B,) float64, min_p (B,) float32.
    """
    B, V = probs.shape
    sorted_p, order = probs.sort(dim=-1, descending=True, stable=True)
    position = torch.arange(V, device=probs.device).expand(B, V)
    starts_group = torch.ones_like(sorted_p, dtype=torch.bool)
    starts_group[:, 1:] = sorted_p[:, 1:] != sorted_p[:, :-1]
    # Index of the first token of each tie group = how many tokens are strictly greater.
    group_start = torch.cummax(torch.where(starts_group, position, 0), dim=-1).values
    keep = group_start < top_k[:, None]

    mass = torch.where(keep, sorted_p.double(), 0.0)
    cumulative = mass.cumsum(dim=-1)
    exclusive = torch.cat([torch.zeros_like(cumulative[:, :1]), cumulative[:, :-1]], dim=-1)
    mass_above = exclusive.gather(-1, group_start)
    total = cumulative[:, -1:]
    keep &= (top_p[:, None] >= 1.0) | (mass_above < top_p[:, None] * total)

    keep &= sorted_p >= min_p[:, None] * sorted_p[:, :1]
    return torch.zeros_like(keep).scatter(-1, order, keep)


def greedy_mask(logits: Tensor) -> Tensor:
    mask = torch.zeros(logits.shape, dtype=torch.bool, device=logits.device)
    return mask.scatter(-1, logits.argmax(dim=-1, keepdim=True), True)


def kept_mask(logits: Tensor, temperature: Tensor, top_k: Tensor, top_p: Tensor,
              min_p: Tensor) -> Tensor:
    """Kept set (B, V) bool of logits (B, V) under fastrnn's semantics, by sorting."""
    mask = kept_mask_from_probs(probabilities(logits, temperature), top_k, top_p, min_p)
    greedy = (temperature == 0)[:, None]
    return torch.where(greedy, greedy_mask(logits), mask)


def sample(logits: Tensor, temperature: Tensor, top_k: Tensor, top_p: Tensor, min_p: Tensor,
           generator=None) -> Tensor:
    """Tokens (B,) int64 drawn from the renormalised kept set (multinomial, as HF samples)."""
    probs = probabilities(logits, temperature)
    probs = torch.where(kept_mask(logits, temperature, top_k, top_p, min_p), probs, 0.0)
    drawn = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    return torch.where(temperature == 0, logits.argmax(dim=-1), drawn)
