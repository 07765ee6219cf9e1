"""Sort-free sampling in vectorised PyTorch (backend "reference"): the CPU path when the
extension's C++ sampler (ext.py) is not built, and the fallback for CUDA without Triton.

Same semantics as reference.py, to the bit, without sorting a row. Every filter keeps
the tokens whose probability is at least some threshold, so each one reduces to finding
that threshold: the smallest probability p_j whose "weight strictly above" (a count for
top-k, a mass for top-p) stays under a bound. Probabilities are non-negative floats, so
their int32 bit patterns sort like the values; a three-level radix select over those bits
(10 bits per level: a weighted histogram per row, then the same inside the one bucket that
holds the threshold) finds the threshold exactly in a few passes over the rows, whatever
the ties.

That radix select is now the fallback. The fast path (_fast) first narrows each row to a
few candidates, the true top of the row: torch.topk(k + 1) when top-k is set, else every
token at or above a value t read off a per-row histogram of the float exponents (the
bucket where the mass from the top crosses top_p), then compacted and sorted. On sorted
candidates every threshold is exact and cheap (the k-th value; the float64 mass strictly
above a candidate is the same prefix sum the sort-based reference takes), and a row is
accepted only if its answer is provably decided inside the candidates: the kept set lies
among them, so renormalising and drawing need only them too. The draw adds the kept
candidates' probabilities in index order, the same float64 sums as the full-row draw, so
a uniform gives the same token on either path. Rows not decided (flat distributions, ties
at the candidate boundary, no filter at all) go through the radix select and the full row.
"""
from typing import Optional

import torch
from torch import Tensor

from fastrnn.ops.sampling.reference import greedy_mask, probabilities, status

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


def _usable(logits: Tensor):
    """(status, logits with every unusable row replaced by zeros): the filters and the draw
    then run on finite rows only, and their results on those rows are discarded."""
    code = status(logits)
    return code, torch.where((code != 0)[:, None], torch.zeros_like(logits), logits)


# ---- fast path: thresholds and draw on a few candidates per row ---------------------------

TOPK_MAX = 1024        # top-k rows with k up to this take their candidates from torch.topk
CANDIDATES_MAX = 4096  # rows needing more candidates than this take the radix fallback
MASS_MARGIN = 1e-4     # the exponent histogram is float32: aim a little past top_p


def _topk_candidates(probs: Tensor, top_k: Tensor):
    """The m = max(k) + 1 largest values per row, sorted; every token left out is <= the
    last one, so t = the next float above it bounds everything outside from above."""
    V = probs.shape[-1]
    m = min(int(top_k.max()) + 1, V)
    values, index = probs.topk(m, dim=-1)
    t = torch.nextafter(values[:, -1], values.new_tensor(2.0)) if m < V else torch.zeros_like(values[:, 0])
    return values, index, t


def _mass_candidates(probs: Tensor, t: Tensor, bound: Optional[Tensor]):
    """Every token with p >= t, sorted descending and padded with -1 (index V).

    Where bound is given (top-p rows) t is lowered to the bottom of the exponent bucket in
    which the mass counted from the top reaches bound. Rows with more than CANDIDATES_MAX
    candidates get none (t = +inf), so they fail the checks and fall back.
    """
    B, V = probs.shape
    if bound is not None:
        rows = torch.arange(B, dtype=torch.int32, device=probs.device)[:, None] * 256
        exponent = (probs.view(torch.int32) >> 23) & 255
        hist = torch.bincount((exponent + rows).view(-1), weights=probs.view(-1),
                              minlength=B * 256).view(B, 256).double()
        from_top = hist.flip(-1).cumsum(-1).flip(-1)
        bucket = (from_top >= (bound * (1 + MASS_MARGIN))[:, None]).sum(-1) - 1
        lowest = (bucket.clamp_min(0).to(torch.int32) << 23).view(torch.float32)
        t = torch.where(bound.isnan(), t, torch.minimum(t, lowest))
    mask = probs >= t[:, None]
    count = torch.count_nonzero(mask, dim=-1)   # (a bool sum would copy the mask to int64)
    too_many = count > CANDIDATES_MAX
    if bool(too_many.any()):
        mask[too_many] = False
        t = torch.where(too_many, float("inf"), t)
        count = torch.where(too_many, 0, count)
    row, col = mask.nonzero(as_tuple=True)
    start = count.cumsum(0) - count
    slot = torch.arange(row.numel(), device=probs.device) - start[row]
    width = max(int(count.max()), 1)
    values = torch.full((B, width), -1.0, device=probs.device)
    index = torch.full((B, width), V, dtype=torch.int64, device=probs.device)
    values[row, slot] = probs[row, col]
    index[row, slot] = col
    values, order = values.sort(-1, descending=True)
    return values, index.gather(-1, order), t


def _decide(values: Tensor, t: Tensor, top_k: Tensor, top_p: Tensor, min_p: Tensor, V: int,
            total: Optional[Tensor]):
    """Threshold (R,) float32 per row from its sorted candidates, and whether it is exact.

    values (R, L) hold the true top L of the row (ties cut only at the last value), padded
    with -1; every token outside is < t. total (R,) float64 is the row's mass (Z of top-p
    without top-k), None where every row has top-k. Token j is kept iff p_j >= threshold.
    """
    L = values.shape[-1]
    real = values >= 0
    use_k, use_p = top_k < V, top_p < 1.0
    # top-k: the k-th value; all its survivors must be candidates (v_k >= t).
    v_k = values.gather(-1, (top_k.clamp_max(L) - 1)[:, None]).squeeze(-1)
    k_inside = (top_k <= real.sum(-1)) & (v_k >= t)
    by_k = torch.where(use_k, v_k, 0.0)
    # top-p: M_j = float64 mass of survivors above j, summed in sorted order as the reference
    # does; Z likewise when top-k holds every survivor in the candidates, else the full row.
    survivor = real & (values >= by_k[:, None])
    running = torch.where(survivor, values.double(), 0.0).cumsum(-1)
    above = torch.cat([torch.zeros_like(running[:, :1]), running[:, :-1]], dim=-1)
    by_p, p_decided = torch.zeros_like(by_k), ~use_p
    if bool(use_p.any()):
        Z = running[:, -1] if total is None else torch.where(use_k, running[:, -1], total)
        bound = top_p * Z
        n = (above < bound[:, None]).sum(-1).clamp_min(1)
        by_p = torch.where(use_p, values.gather(-1, (n - 1)[:, None]).squeeze(-1), 0.0)
        # Decided if the mass of the candidates reaches the bound (every token outside has
        # at least that much above it), or if they hold every top-k survivor.
        p_decided = p_decided | (use_k & k_inside) | (running[:, -1] >= bound)
    floor = torch.where(min_p > 0, min_p * values[:, 0], 0.0)
    threshold = torch.maximum(torch.maximum(by_k, by_p), floor)
    exact = (~use_k | k_inside) & p_decided & (threshold >= t)
    return threshold, exact


def _fast(probs: Tensor, top_k, top_p, min_p, uniform: Optional[Tensor]):
    """Thresholds (B,) float32, which rows they are exact for, and (with uniform) tokens.

    Rows with a small top-k take torch.topk candidates, the others exponent-histogram
    candidates (top-p) or those at or above the min-p floor.
    """
    B, V = probs.shape
    threshold = torch.zeros(B, device=probs.device)
    exact = torch.zeros(B, dtype=torch.bool, device=probs.device)
    token = torch.zeros(B, dtype=torch.int64, device=probs.device) if uniform is not None else None
    by_topk = top_k <= min(TOPK_MAX, V - 1)
    for group in (by_topk, ~by_topk):
        if not bool(group.any()):
            continue
        rows = None if bool(group.all()) else group.nonzero(as_tuple=True)[0]
        pick = (lambda x: x) if rows is None else (lambda x: x[rows])  # noqa: E731
        p, k, top, low = pick(probs), pick(top_k), pick(top_p), pick(min_p)
        if group is by_topk:
            values, index, t = _topk_candidates(p, k)
            total = None
        else:
            use_p = top < 1.0
            # No filter at all: t = +inf, nothing is a candidate and the row falls back.
            t = torch.where(low > 0, low * p.amax(-1), float("inf"))
            total = p.sum(-1, dtype=torch.float64) if bool(use_p.any()) else None
            bound = None if total is None else torch.where(use_p, top * total, float("nan"))
            values, index, t = _mass_candidates(p, t, bound)
        th, ok = _decide(values, t, k, top, low, V, total)
        if rows is None:
            threshold, exact = th, ok
        else:
            threshold[rows], exact[rows] = th, ok
        if uniform is not None:
            drawn = _draw(p, values, index, th, pick(uniform))
            if rows is None:
                token = drawn
            else:
                token[rows] = drawn
    return threshold, exact, token


def _thresholds(probs, greedy, top_k, top_p, min_p, uniform=None):
    """Kept-threshold bits (B,) int64 (keep j iff bits(p_j) >= it), exact on every row, and
    tokens drawn on the rows the fast path decided (None without uniform)."""
    # Greedy rows keep the argmax whatever their filters: decide them as top-k 1.
    top_k = torch.where(greedy, 1, top_k)
    threshold, exact, token = _fast(probs, top_k, top_p, min_p, uniform)
    bits = threshold.view(torch.int32).long()
    if not bool(exact.all()):
        rows = (~exact).nonzero(as_tuple=True)[0]
        bits[rows] = _kept_threshold(probs[rows], top_k[rows], top_p[rows], min_p[rows])
    return bits, exact, token


def kept_mask(logits, temperature, top_k, top_p, min_p):
    code, logits = _usable(logits)
    probs = probabilities(logits, temperature)
    greedy = temperature == 0
    bits, _, _ = _thresholds(probs, greedy, top_k, top_p, min_p)
    mask = probs.view(torch.int32) >= bits[:, None]
    if bool(greedy.any()):
        mask = torch.where(greedy[:, None], greedy_mask(logits), mask)
    return mask & (code == 0)[:, None], code


def sample(logits, temperature, top_k, top_p, min_p, uniform):
    """Inverse-CDF draw over the kept tokens: the first j whose running mass exceeds u*Z."""
    code, logits = _usable(logits)
    probs = probabilities(logits, temperature)
    greedy = temperature == 0
    bits, exact, token = _thresholds(probs, greedy, top_k, top_p, min_p, uniform)
    if not bool(exact.all()):
        rows = (~exact).nonzero(as_tuple=True)[0]
        token[rows] = _full_row_draw(probs[rows], bits[rows], uniform[rows])
    if bool(greedy.any()):
        token = torch.where(greedy, logits.argmax(-1), token)
    return torch.where(code == 0, token, -1), code


def _full_row_draw(probs, bits, uniform):
    """Inverse-CDF draw over the kept tokens: the first j whose running mass exceeds u*Z."""
    mask = probs.view(torch.int32) >= bits[:, None]
    weight = torch.where(mask, probs.double(), 0.0)
    running = weight.cumsum(-1)
    target = uniform * running[:, -1]
    token = torch.searchsorted(running, target[:, None], right=True).squeeze(-1)
    # Rounding can put the target at the very end of the row: stay on a kept token.
    position = torch.arange(probs.shape[-1], device=probs.device)
    last = torch.where(weight > 0, position, -1).amax(-1)
    return torch.minimum(token, last)


def _draw(probs: Tensor, values: Tensor, index: Tensor, threshold: Tensor, uniform: Tensor):
    """The full-row inverse-CDF draw restricted to the kept candidates (same sums, in the
    same index order, so the same token)."""
    V = probs.shape[-1]
    kept_index = torch.where(values >= threshold[:, None], index, V).sort(-1).values
    kept = kept_index < V
    weight = torch.where(kept, probs.gather(-1, kept_index.clamp_max(V - 1)).double(), 0.0)
    running = weight.cumsum(-1)
    slot = torch.searchsorted(running, (uniform * running[:, -1])[:, None], right=True).squeeze(-1)
    position = torch.arange(weight.shape[-1], device=probs.device)
    last = torch.where(weight > 0, position, -1).amax(-1)
    slot = torch.minimum(slot, last).clamp_min(0)
    return kept_index.gather(-1, slot[:, None]).squeeze(-1)
