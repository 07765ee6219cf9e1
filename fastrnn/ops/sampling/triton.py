"""Fused sort-free sampling in Triton: one program per row, filters found by search.

Per row the kernel
  1. reads the logits once for the softmax statistics (fastrnn.ops.softmax.triton.row_stats,
     so probabilities match fastrnn.softmax bit for bit) and the greedy argmax;
  2. finds each filter's threshold as a value: probabilities are non-negative floats, so
     their int32 bit patterns order like the values, and the threshold is the smallest
     pattern t with weight(p >= t) < bound (a count for top-k, a float64 mass for top-p).
     Each pass over the row tests NPIV pivots at once, shrinking the search interval
     NPIV-fold, so a threshold costs about log_NPIV(2**30) passes and is exact, ties
     included; nothing is sorted;
  3. keeps p >= max(thresholds, min_p * max(p)) and writes the mask, or draws by inverse
     CDF: the first kept token whose running mass exceeds u * Z.
Rows with a NaN, a +inf or no finite logit get a status code instead (see op.STATUS).
"""
import torch
import triton
import triton.language as tl

from fastrnn.backends import interpreter_enabled
from fastrnn.ops.softmax.triton import block_size, probs, row_stats

NPIV = 16


@triton.jit
def _weight_at_or_above(row_ptr, V, t, M, S, pivots, floor, COUNT: tl.constexpr,
                        BLOCK: tl.constexpr, NPIV: tl.constexpr):
    """For each pivot: the count (COUNT) or float64 mass of tokens with bits(p) >= pivot
    and bits(p) >= floor."""
    acc = tl.zeros([NPIV], tl.float64)
    for start in range(0, V, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        inside = offs < V
        p = probs(tl.load(row_ptr + offs, mask=inside, other=0.0), t, M, S)
        bits = p.to(tl.int32, bitcast=True)
        eligible = inside & (bits >= floor)
        if COUNT:
            w = eligible.to(tl.float64)
        else:
            w = tl.where(eligible, p.to(tl.float64), 0.0)
        hit = bits[None, :].to(tl.int64) >= pivots[:, None]
        acc += tl.sum(tl.where(hit, w[None, :], 0.0), axis=1)
    return acc


@triton.jit
def _threshold(row_ptr, V, t, M, S, hi, floor, bound, COUNT: tl.constexpr, BLOCK: tl.constexpr,
               NPIV: tl.constexpr):
    """Bits of the smallest kept value: (smallest t in [0, hi] with weight(>= t) < bound) - 1.
    weight(>= hi) < bound must hold."""
    lo = tl.zeros([], tl.int64)
    hi = hi.to(tl.int64)
    index = tl.arange(0, NPIV)
    while lo < hi:
        pivots = lo + ((hi - lo) * index) // NPIV
        below = _weight_at_or_above(row_ptr, V, t, M, S, pivots, floor, COUNT, BLOCK, NPIV) < bound
        first = tl.min(tl.where(below, index, NPIV), axis=0)
        at_first = tl.sum(tl.where(index == first, pivots, 0), axis=0)
        before_first = tl.sum(tl.where(index == first - 1, pivots, 0), axis=0)
        last = tl.max(pivots, axis=0)
        # The answer lies in (pivot[first-1], pivot[first]]: pred is false before first.
        new_lo = tl.where(first == NPIV, last + 1, tl.where(first == 0, at_first, before_first + 1))
        hi = tl.where(first == NPIV, hi, at_first)
        lo = new_lo
    return lo - 1


@triton.jit
def _kept_mass(row_ptr, V, t, M, S, floor, BLOCK: tl.constexpr):
    acc = tl.zeros([BLOCK], tl.float64)
    for start in range(0, V, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        p = probs(tl.load(row_ptr + offs, mask=offs < V, other=0.0), t, M, S)
        keep = (offs < V) & (p.to(tl.int32, bitcast=True) >= floor)
        acc += tl.where(keep, p.to(tl.float64), 0.0)
    return tl.sum(acc, axis=0)


@triton.jit
def _sampling_kernel(logits_ptr, stride, V, t_ptr, k_ptr, top_p_ptr, min_p_ptr, u_ptr,
                     out_ptr, status_ptr, WRITE_MASK: tl.constexpr, BLOCK: tl.constexpr,
                     NPIV: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    row_ptr = logits_ptr + row * stride
    t_raw = tl.load(t_ptr + row)
    greedy = t_raw == 0.0
    t = tl.where(greedy, 1.0, t_raw)
    M, S, nans, argmax = row_stats(row_ptr, V, t, BLOCK)
    bad = tl.where(nans > 0, 1, tl.where((M == float("inf")) | (M == float("-inf")), 2, 0))
    tl.store(status_ptr + row, bad.to(tl.int32))

    p_max = 1.0 / S  # p at the argmax: exp(0) / S
    hi = p_max.to(tl.int32, bitcast=True) + 1
    floor = tl.full([], -1, tl.int32)
    k = tl.load(k_ptr + row)
    if (k < V) & (bad == 0) & (~greedy):
        floor = _threshold(row_ptr, V, t, M, S, hi, floor, k.to(tl.float64), True, BLOCK,
                           NPIV).to(tl.int32)
    top_p = tl.load(top_p_ptr + row)
    if (top_p < 1.0) & (bad == 0) & (~greedy):
        bound = top_p * _kept_mass(row_ptr, V, t, M, S, floor, BLOCK)
        by_p = _threshold(row_ptr, V, t, M, S, hi, floor, bound, False, BLOCK, NPIV)
        floor = tl.maximum(floor, by_p.to(tl.int32))
    min_p = tl.load(min_p_ptr + row)
    if min_p > 0.0:
        floor = tl.maximum(floor, (min_p * p_max).to(tl.int32, bitcast=True))

    if WRITE_MASK:
        for start in range(0, V, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            p = probs(tl.load(row_ptr + offs, mask=offs < V, other=0.0), t, M, S)
            keep = tl.where(greedy, offs == argmax, p.to(tl.int32, bitcast=True) >= floor)
            tl.store(out_ptr + row * V + offs, keep.to(tl.int8), mask=offs < V)
    else:
        target = tl.load(u_ptr + row) * _kept_mass(row_ptr, V, t, M, S, floor, BLOCK)
        running = tl.zeros([], tl.float64)
        found = tl.full([], 2147483647, tl.int32)
        last = tl.full([], -1, tl.int32)
        for start in range(0, V, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            p = probs(tl.load(row_ptr + offs, mask=offs < V, other=0.0), t, M, S)
            keep = (offs < V) & (p.to(tl.int32, bitcast=True) >= floor) & (p > 0.0)
            w = tl.where(keep, p.to(tl.float64), 0.0)
            cumulative = running + tl.cumsum(w, axis=0)
            crossed = keep & (cumulative > target)
            found = tl.minimum(found, tl.min(tl.where(crossed, offs, 2147483647), axis=0))
            last = tl.maximum(last, tl.max(tl.where(keep, offs, -1), axis=0))
            running = tl.max(cumulative, axis=0)
        # Rounding can leave the target at the very end of the row: stay on a kept token.
        token = tl.where(found == 2147483647, last, found)
        tl.store(out_ptr + row, tl.where(greedy, argmax, token).to(tl.int64))


def _launch(logits, temperature, top_k, top_p, min_p, uniform, write_mask):
    B, V = logits.shape
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    status = torch.empty(B, dtype=torch.int32, device=logits.device)
    if write_mask:
        out = torch.empty(B, V, dtype=torch.int8, device=logits.device)
    else:
        out = torch.empty(B, dtype=torch.int64, device=logits.device)
    if B:
        _sampling_kernel[(B,)](logits, logits.stride(0), V, temperature, top_k, top_p, min_p,
                               uniform, out, status, WRITE_MASK=write_mask, BLOCK=block_size(V),
                               NPIV=NPIV, num_warps=4 if interpreter_enabled() else 8)
    return out, status


def kept_mask(logits, temperature, top_k, top_p, min_p):
    out, status = _launch(logits, temperature, top_k, top_p, min_p, top_p, write_mask=True)
    return out.view(torch.bool), status


def sample(logits, temperature, top_k, top_p, min_p, uniform):
    return _launch(logits, temperature, top_k, top_p, min_p, uniform, write_mask=False)
