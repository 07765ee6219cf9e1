"""Sort-free sampling in vectorised PyTorch: the CPU path (backend "reference").

Same semantics as reference.py, to the bit, without sorting a row. Every filter keeps
the tokens whose probability is at least some threshold, so each one reduces to finding
that threshold: the smallest probability p_j whose "weight strictly above" (a count for
top-k, a mass for top-p) stays under a bound. Probabilities are non-negative floats, so
their int32 bit patterns sort like the values; a three-level radix select over those bits
(10 bits per level: a weighted histogram per row, then the same inside the one bucket that
holds the threshold) finds the threshold exactly in a few passes over the rows, whatever
the ties.
"""
from typing import Optional

import torch
from torch import Tensor

from fastrnn.ops.sampling.reference import greedy_mask, probabilities

# p <= 1.0 = 0x3F800000 < 2**30. Digits, most significant first, as (shift, width): the
# first is the high 16-bit half (read through an int16 view: no shift over the whole row),
# the low half is split in two so the histograms of the later levels stay small.
DIGITS = ((16, 14), (8, 8), (0, 8))


def _select_bucket(hist: Tensor, outside: Tensor, bound: Tensor):
    """Per row, the lowest bucket whose largest element has weight-above < bound.

    hist (R, BUCKETS) float64 weights; outside (R,) weight already above these buckets.
    """
    inclusive = hist.flip(-1).cumsum(-1).flip(-1)
    above = torch.cat([inclusive[:, 1:], torch.zeros_like(inclusive[:, :1])], dim=-1)
    ok = (hist > 0) & (outside[:, None] + above < bound[:, None])
    buckets = hist.shape[-1]
    bucket = torch.where(ok, torch.arange(buckets, device=hist.device), buckets).amin(-1)
    bucket = bucket.clamp_max(buckets - 1)
    return bucket, above.gather(-1, bucket[:, None]).squeeze(-1)


def _radix_threshold(bits: Tensor, weight: Optional[Tensor], bound: Tensor) -> Tensor:
    """Bits (R,) of the smallest value p_j with sum(weight of p_i > p_j) < bound, per row.

    bits (R, V) int32 patterns of non-negative floats; weight (R, V) float64, or None to
    count tokens; bound (R,) float64 > 0. Zero-weight values are never selected.
    """
    R, V = bits.shape
    rows = torch.arange(R, device=bits.device)
    prefix = torch.zeros(R, dtype=torch.int64, device=bits.device)
    outside = torch.zeros(R, dtype=torch.float64, device=bits.device)
    for level, (shift, width) in enumerate(DIGITS):
        buckets = 1 << width
        if level == 0:
            high = bits.view(torch.int16)[:, 1::2]  # little-endian: the high halves
            keys = high.to(torch.int32).add_((rows.to(torch.int32) * buckets)[:, None]).view(-1)
            w = None if weight is None else weight.reshape(-1)
        else:
            # Only the elements inside the bucket chosen so far: usually a small set.
            inside = (bits >> (shift + width)) == prefix[:, None].to(torch.int32) if level > 1 else \
                bits.view(torch.int16)[:, 1::2] == prefix[:, None].to(torch.int16)
            row_of, col = inside.nonzero(as_tuple=True)
            keys = row_of * buckets + ((bits[row_of, col] >> shift) & (buckets - 1))
            w = None if weight is None else weight[row_of, col]
        hist = torch.bincount(keys, weights=w, minlength=R * buckets).view(R, buckets)
        bucket, above = _select_bucket(hist.double(), outside, bound)
        outside += above
        prefix = (prefix << width) + bucket
    return prefix


def _threshold_where(active: Tensor, bits: Tensor, weight: Optional[Tensor], bound: Tensor) -> Tensor:
    """_radix_threshold on the active rows; -1 (keeps everything) on the others."""
    out = torch.full(active.shape, -1, dtype=torch.int64, device=bits.device)
    if not bool(active.any()):
        return out
    if bool(active.all()):
        return _radix_threshold(bits, weight, bound)
    rows = active.nonzero(as_tuple=True)[0]
    out[rows] = _radix_threshold(bits[rows], None if weight is None else weight[rows], bound[rows])
    return out


def _kept_threshold(probs: Tensor, top_k: Tensor, top_p: Tensor, min_p: Tensor) -> Tensor:
    """Bits (B,) of the smallest kept probability: token j is kept iff bits(p_j) >= it."""
    V = probs.shape[-1]
    bits = probs.view(torch.int32)
    by_k = _threshold_where(top_k < V, bits, None, top_k.double())

    use_p = top_p < 1.0
    if bool(use_p.any()):
        survivors = torch.where(bits >= by_k[:, None].to(torch.int32), probs.double(), 0.0)
        bound = top_p * survivors.sum(-1)
        by_p = _threshold_where(use_p, bits, survivors, bound)
    else:
        by_p = torch.full_like(by_k, -1)

    floor = (min_p * probs.amax(-1)).view(torch.int32).long()
    by_min = torch.where(min_p > 0, floor, -1)
    return torch.maximum(torch.maximum(by_k, by_p), by_min)


def status(logits: Tensor) -> Tensor:
    """Per row: 0 usable, 1 has a NaN, 2 has +inf or no finite logit (see op.STATUS)."""
    has_nan = torch.isnan(logits).any(-1)
    top = logits.amax(-1)
    return torch.where(has_nan, 1, torch.where(torch.isfinite(top), 0, 2)).to(torch.int32)


def kept_mask(logits, temperature, top_k, top_p, min_p):
    probs = probabilities(logits, temperature)
    mask = probs.view(torch.int32) >= _kept_threshold(probs, top_k, top_p, min_p)[:, None]
    greedy = (temperature == 0)[:, None]
    return torch.where(greedy, greedy_mask(logits), mask), status(logits)


def sample(logits, temperature, top_k, top_p, min_p, uniform):
    """Inverse-CDF draw over the kept tokens: the first j whose running mass exceeds u*Z."""
    probs = probabilities(logits, temperature)
    mask = probs.view(torch.int32) >= _kept_threshold(probs, top_k, top_p, min_p)[:, None]
    weight = torch.where(mask, probs.double(), 0.0)
    running = weight.cumsum(-1)
    target = uniform * running[:, -1]
    token = torch.searchsorted(running, target[:, None], right=True).squeeze(-1)
    # Rounding can put the target at the very end of the row: stay on a kept token.
    position = torch.arange(logits.shape[-1], device=logits.device)
    last = torch.where(weight > 0, position, -1).amax(-1)
    token = torch.minimum(token, last)
    greedy = temperature == 0
    if bool(greedy.any()):
        token = torch.where(greedy, logits.argmax(-1), token)
    return token, status(logits)
