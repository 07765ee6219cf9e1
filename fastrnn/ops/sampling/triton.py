"""Fused sort-free sampling in Triton: a radix select split across programs.

Probabilities are fastrnn.ops.softmax.triton's: p = exp((x - M) / t) / S from the same two
launches (row_statistics) and the same `probs`, so the kept sets and tokens are those of
fastrnn.softmax's float32 output, bit for bit, on the GPU as under the interpreter (M and
S are order-free: see that module). Each row is split across `parts` programs (plan():
from B and the SM count, so one row fills the GPU); every pass below is one launch, the
launch boundary being the only barrier between the programs of a row.

Every filter keeps the tokens whose probability is at least a threshold, found as a value:
probabilities are non-negative floats below 2, so their int32 bit patterns order like the
values and fit in 30 bits. A threshold is "the largest value v with weight(p >= v) >=
target" (top-k: the count reaches k, so v is the k-th largest value; top-p: the mass of
the top-k survivors reaches top_p * Z, so v is the value that crosses top_p), found by a
radix select over three 10-bit digits: a launch adds every token of the current bucket
into a per-row histogram of the next digit in global memory (int32 atomic counts, int64
atomic masses), the next launch reads it and picks the digit. Integer atomics add in any
order to the same result, so the split changes nothing. Passes over V per row: max, sum,
five histogram launches (slot 0: the first digit, shared by both searches; slots 1-2: the
rest of top-k, or of top-p when top-k is off; slots 3-4: the rest of top-p after top-k),
then the mask, or the kept mass and the draw (which reads one chunk). A row with one
filter does no work in slots 3-4; greedy and invalid rows do none in any slot. Slot 0 of
a row with top-p alone bins only the tokens at or above a value its threshold cannot be
below (_lump_below); the others, usually most of the vocabulary, add their mass to bin 0
with one atomic per program, which keeps Z whole and the contended atomics few.
The launch plan depends on shapes only and nothing is read back to the host (the two
histogram tensors are zeroed by torch.zeros), so a call can be captured in a CUDA graph.

What is exact. Counts are exact. Masses are int64 multiples of 2^-61: p is truncated to
that grid (exact for p >= 2^-38) and the sums are exact. The top-p test is the reference's:
token j is kept iff float64(mass strictly above p_j) < top_p * float64(Z), float64
rounding to nearest. Whenever every top-k survivor has p >= 2^-29, the reference's
float64 prefix sums are exact as well (all partial sums are multiples of 2^-52 below 2),
so the kept set equals exactly that of the sort-based reference
(fastrnn.ops.sampling.reference.kept_mask_from_probs) on these probabilities; otherwise
the two masses differ by at most about V * 2^-53 and only a token whose mass above lies
that close to top_p * Z can differ.
Ties are kept together (thresholds are values). Tokens with p < 2^-61 weigh 0 in the
draw and are never drawn.

The draw is by inverse CDF over the kept tokens in index order: the first kept token whose
exact int64 running mass exceeds the float64 product u * Z_kept.

Rows whose status is not 0 (1 NaN, 2 +inf, 3 all -inf; see op.STATUS) get token -1 and an
all-False mask row. Temperature 0 is greedy: the first index of the largest logit.

Verified only statically (no GPU here): resources of the compiled kernels (static_configs),
the cost of global atomics under contention, and the run time; the interpreter runs the
same launches one program at a time.
"""
from typing import Iterator, Optional

import torch
import triton
import triton.language as tl

from fastrnn.ops.softmax import triton as softmax_triton
from fastrnn.ops.softmax.triton import MAX_PARTS, plan, probs, row_max, row_statistics, row_sum

DIGIT_BITS = 10
BINS = 1 << DIGIT_BITS
# Digit shift of each histogram slot: slot 0 is the first digit of both searches, slots
# 1-2 the next two of top-k (or of top-p without top-k), slots 3-4 those of top-p.
SLOT_SHIFTS = (20, 10, 0, 10, 0)
MASS_ONE = 2.0 ** 61  # fixed-point unit of masses: p < 2 and sum(p) < 2 fit in int64


@triton.jit
def _fixed(p):
    """p (float32, < 2) as an int64 multiple of 2^-61 (truncated)."""
    return (p * 2305843009213693952.0).to(tl.int64)


@triton.jit
def _row(t_ptr, k_ptr, top_p_ptr, min_p_ptr, part_max_ptr, part_arg_ptr, part_flag_ptr,
         part_sum_ptr, sum_ulp, row, parts, V, PARTS: tl.constexpr):
    """A row's statistics and parameters: M, first argmax, status, S, t, k, top_p, min_p,
    and whether top-k / top-p are searched (status 0, t > 0, filter on)."""
    M, argmax, status = row_max(part_max_ptr, part_arg_ptr, part_flag_ptr, row, parts, PARTS)
    S = row_sum(part_sum_ptr, row, parts, sum_ulp, PARTS)
    t = tl.load(t_ptr + row)
    k = tl.load(k_ptr + row)
    top_p = tl.load(top_p_ptr + row)
    min_p = tl.load(min_p_ptr + row)
    searching = (status == 0) & (t > 0.0)
    return (M, argmax, status, S, t, k, top_p, min_p, searching & (k < V),
            searching & (top_p < 1.0))


@triton.jit
def _pick(count_ptr, mass_ptr, above_count, above_mass, k, bound, BY_MASS: tl.constexpr,
          BINS: tl.constexpr):
    """One radix level: the largest digit d whose weight at or above it (plus the weight
    above the bucket: above_count, above_mass) reaches k tokens, or float64 mass `bound`
    (BY_MASS). Returns d and the count and mass strictly above d, and the mass at d."""
    d = tl.arange(0, BINS)
    mass = tl.load(mass_ptr + d)
    mass_from = above_mass + tl.cumsum(mass, axis=0, reverse=True)
    if BY_MASS:  # counts play no part in top-p
        digit = tl.max(tl.where(mass_from.to(tl.float64) >= bound, d, 0), axis=0)
        count_above = above_count
    else:
        count = tl.load(count_ptr + d).to(tl.int64)
        count_from = above_count + tl.cumsum(count, axis=0, reverse=True)
        digit = tl.max(tl.where(count_from >= k, d, 0), axis=0)
        count_above = tl.sum(tl.where(d == digit, count_from - count, 0), axis=0)
    at = d == digit
    mass_at = tl.sum(tl.where(at, mass, 0), axis=0)
    mass_above = tl.sum(tl.where(at, mass_from, 0), axis=0) - mass_at
    return digit.to(tl.int64), count_above, mass_above, mass_at


@triton.jit
def _resolve(count_ptr, mass_ptr, k, top_p, use_k, use_p, BUILT: tl.constexpr,
             BINS: tl.constexpr):
    """Thresholds (bit patterns, int64) after the first BUILT histogram slots of a row:
    top-k's and top-p's, each as many digits as the slots hold (see SLOT_SHIFTS)."""
    zero = tl.zeros([], tl.int64)
    k_bits, k_count, k_mass = zero, zero, zero
    p_bits, p_mass = zero, zero
    bound = tl.zeros([], tl.float64)
    for s in tl.static_range(BUILT):
        counts, masses = count_ptr + s * BINS, mass_ptr + s * BINS
        if s == 0:
            if use_k:
                k_bits, k_count, k_mass, _ = _pick(counts, masses, k_count, k_mass, k, bound,
                                                   False, BINS)
            elif use_p:  # no top-k: Z is the whole row's mass
                bound = top_p * tl.sum(tl.load(masses + tl.arange(0, BINS)), axis=0).to(tl.float64)
                p_bits, _, p_mass, _ = _pick(counts, masses, zero, zero, k, bound, True, BINS)
        elif s < 3:
            if use_k:
                digit, k_count, k_mass, mass_at = _pick(counts, masses, k_count, k_mass, k,
                                                        bound, False, BINS)
                k_bits = k_bits * BINS + digit
                if s == 2:
                    if use_p:  # top-k is done: Z = its survivors' mass; top-p's first digit
                        bound = top_p * (k_mass + mass_at).to(tl.float64)
                        p_bits, _, p_mass, _ = _pick(count_ptr, mass_ptr, zero, zero, k, bound,
                                                     True, BINS)
            elif use_p:
                digit, _, p_mass, _ = _pick(counts, masses, zero, p_mass, k, bound, True, BINS)
                p_bits = p_bits * BINS + digit
        else:
            if use_k & use_p:
                digit, _, p_mass, _ = _pick(counts, masses, zero, p_mass, k, bound, True, BINS)
                p_bits = p_bits * BINS + digit
    return k_bits, p_bits


@triton.jit
def _floor(count_ptr, mass_ptr, k, top_p, use_k, use_p, min_p, t, M, S, BINS: tl.constexpr):
    """Bit pattern (int32) of the smallest kept probability: keep j iff bits(p_j) >= it."""
    k_bits, p_bits = _resolve(count_ptr, mass_ptr, k, top_p, use_k, use_p, 5, BINS)
    floor = tl.full([], -1, tl.int64)
    floor = tl.where(use_k, k_bits, floor)
    floor = tl.where(use_p, tl.maximum(floor, p_bits), floor)
    p_max = probs(M, t, M, S)  # the argmax's probability, computed as every token's
    by_min_p = (min_p * p_max).to(tl.int32, bitcast=True).to(tl.int64)
    floor = tl.where(min_p > 0.0, tl.maximum(floor, by_min_p), floor)
    return floor.to(tl.int32)


@triton.jit
def _lump_below(top_p, min_p, V, t, M, S):
    """A value (float32) below which no token can hold the top-p threshold of a row
    without top-k, or be kept at all: the larger of min_p * max(p) and
    tau = (1 - top_p - 2^-50) / (8 V). All tokens below tau weigh less than V * tau <=
    (1 - top_p) Z / 4 (Z, the row's mass, is about 1, surely >= 1/2), so the mass at or
    above tau exceeds top_p * Z even after float64 rounding of the bound: the threshold
    is >= tau. Below the min-p floor a lower top-p threshold would change nothing."""
    tau = (tl.maximum(1.0 - top_p - 2.0 ** -50, 0.0) / (8.0 * V)).to(tl.float32)
    return tl.maximum(tau, min_p * probs(M, t, M, S))


@triton.jit
def _histogram_kernel(x_ptr, stride, V, chunk, t_ptr, k_ptr, top_p_ptr, min_p_ptr,
                      part_max_ptr, part_arg_ptr, part_flag_ptr, part_sum_ptr, sum_ulp,
                      count_ptr, mass_ptr,
                      SLOT: tl.constexpr, SHIFT: tl.constexpr, PARTS: tl.constexpr,
                      BINS: tl.constexpr, BLOCK: tl.constexpr):
    """Add this program's tokens of the searched bucket into histogram slot SLOT of its
    row: counts (top-k) and fixed-point masses (top-p) of digit (bits >> SHIFT) % BINS."""
    row, part = tl.program_id(0), tl.program_id(1)
    parts = tl.num_programs(1)
    M, _, _, S, t, k, top_p, min_p, use_k, use_p = _row(
        t_ptr, k_ptr, top_p_ptr, min_p_ptr, part_max_ptr, part_arg_ptr, part_flag_ptr,
        part_sum_ptr, sum_ulp, row, parts, V, PARTS)
    hist = row * (5 * BINS)
    k_bits, p_bits = _resolve(count_ptr + hist, mass_ptr + hist, k, top_p, use_k, use_p, SLOT,
                              BINS)
    if SLOT == 0:
        prefix = tl.zeros([], tl.int64)
        active = use_k | use_p
    elif SLOT < 3:
        prefix = tl.where(use_k, k_bits, p_bits)
        active = use_k | use_p
    else:
        prefix = p_bits
        active = use_k & use_p
    counts = count_ptr + hist + SLOT * BINS
    masses = mass_ptr + hist + SLOT * BINS
    # Slot 0 of a top-p row without top-k bins only the tokens that can hold its threshold
    # (_lump_below); the others' mass goes to bin 0 in one sum, so Z stays whole.
    lump = tl.where(use_p & ~use_k, _lump_below(top_p, min_p, V, t, M, S), 0.0)
    lumped = tl.zeros([BLOCK], tl.int64)
    row_ptr = x_ptr + row.to(tl.int64) * stride
    if active:
        for start in range(part * chunk, part * chunk + chunk, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            inside = offs < V
            p = probs(tl.load(row_ptr + offs, mask=inside, other=float("-inf")), t, M, S)
            bits = p.to(tl.int32, bitcast=True)
            if SHIFT < 20:
                inside &= (bits >> (SHIFT + 10)).to(tl.int64) == prefix
            digit = (bits >> SHIFT) & (BINS - 1)
            if SLOT < 3:  # slots 3-4 are top-p's alone
                tl.atomic_add(counts + digit, 1, mask=tl.where(use_k, inside, False),
                              sem="relaxed")
            binned = inside & (p > 0.0) & (p >= lump)
            tl.atomic_add(masses + digit, _fixed(p), mask=tl.where(use_p, binned, False),
                          sem="relaxed")
            if SLOT == 0:
                lumped += tl.where(inside & (p < lump), _fixed(p), 0)
        if SLOT == 0:
            tl.atomic_add(masses, tl.sum(lumped, axis=0), mask=use_p & ~use_k, sem="relaxed")


@triton.jit
def _finish_kernel(x_ptr, stride, V, chunk, t_ptr, k_ptr, top_p_ptr, min_p_ptr,
                   part_max_ptr, part_arg_ptr, part_flag_ptr, part_sum_ptr, sum_ulp, count_ptr,
                   mass_ptr, out_ptr, status_ptr, WRITE_MASK: tl.constexpr, PARTS: tl.constexpr,
                   BINS: tl.constexpr, BLOCK: tl.constexpr):
    """WRITE_MASK: the kept set of this program's chunk (int8, 0 on invalid rows);
    otherwise the int64 mass of its kept tokens, out (B, parts). Program 0 of a row also
    writes the row's status."""
    row, part = tl.program_id(0), tl.program_id(1)
    parts = tl.num_programs(1)
    M, argmax, status, S, t, k, top_p, min_p, use_k, use_p = _row(
        t_ptr, k_ptr, top_p_ptr, min_p_ptr, part_max_ptr, part_arg_ptr, part_flag_ptr,
        part_sum_ptr, sum_ulp, row, parts, V, PARTS)
    if part == 0:
        tl.store(status_ptr + row, status)
    hist = row * (5 * BINS)
    floor = _floor(count_ptr + hist, mass_ptr + hist, k, top_p, use_k, use_p, min_p, t, M, S,
                   BINS)
    greedy = t == 0.0
    row_ptr = x_ptr + row.to(tl.int64) * stride
    if WRITE_MASK:
        for start in range(part * chunk, part * chunk + chunk, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            inside = offs < V
            p = probs(tl.load(row_ptr + offs, mask=inside, other=float("-inf")), t, M, S)
            keep = tl.where(greedy, offs == argmax, p.to(tl.int32, bitcast=True) >= floor)
            keep = tl.where(status == 0, keep, False)
            tl.store(out_ptr + row.to(tl.int64) * V + offs, keep.to(tl.int8), mask=inside)
    else:
        acc = tl.zeros([BLOCK], tl.int64)
        if (status == 0) & (~greedy):
            for start in range(part * chunk, part * chunk + chunk, BLOCK):
                offs = start + tl.arange(0, BLOCK)
                inside = offs < V
                p = probs(tl.load(row_ptr + offs, mask=inside, other=float("-inf")), t, M, S)
                kept = inside & (p.to(tl.int32, bitcast=True) >= floor)
                acc += tl.where(kept, _fixed(p), 0)
        tl.store(out_ptr + row * parts + part, tl.sum(acc, axis=0))


@triton.jit
def _draw_kernel(x_ptr, stride, V, chunk, t_ptr, k_ptr, top_p_ptr, min_p_ptr, part_max_ptr,
                 part_arg_ptr, part_flag_ptr, part_sum_ptr, sum_ulp, count_ptr, mass_ptr, u_ptr,
                 kept_ptr, out_ptr, PARTS: tl.constexpr, BINS: tl.constexpr,
                 BLOCK: tl.constexpr):
    """The token of each row, written by the one program whose chunk holds it: the first
    kept token whose running mass exceeds u * Z_kept (float64 product, compared exactly
    with the int64 running mass), else the last kept token of weight > 0 (when rounding
    puts the target at the very end). Greedy rows: the argmax; rows
    with a bad status: -1 (both written by program 0)."""
    row, part = tl.program_id(0), tl.program_id(1)
    parts = tl.num_programs(1)
    M, argmax, status, S, t, k, top_p, min_p, use_k, use_p = _row(
        t_ptr, k_ptr, top_p_ptr, min_p_ptr, part_max_ptr, part_arg_ptr, part_flag_ptr,
        part_sum_ptr, sum_ulp, row, parts, V, PARTS)
    greedy = t == 0.0
    if (part == 0) & ((status != 0) | greedy):
        tl.store(out_ptr + row, tl.where(status == 0, argmax, -1).to(tl.int64))
    i = tl.arange(0, PARTS)
    chunk_mass = tl.load(kept_ptr + row * parts + i, mask=i < parts, other=0)
    total = tl.sum(chunk_mass, axis=0)
    base = tl.sum(tl.where(i < part, chunk_mass, 0), axis=0)
    mine = tl.sum(tl.where(i == part, chunk_mass, 0), axis=0)
    # Integer masses cross the float64 target u * Z_kept exactly where they pass its floor.
    target = (tl.load(u_ptr + row) * total.to(tl.float64)).to(tl.int64)
    holds = (base <= target) & (mine > 0) & ((base + mine > target) | (base + mine == total))
    if holds & (status == 0) & (~greedy):
        hist = row * (5 * BINS)
        floor = _floor(count_ptr + hist, mass_ptr + hist, k, top_p, use_k, use_p, min_p, t, M,
                       S, BINS)
        row_ptr = x_ptr + row.to(tl.int64) * stride
        running = base
        found = tl.full([], 2147483647, tl.int32)
        last = tl.full([], -1, tl.int32)
        for start in range(part * chunk, part * chunk + chunk, BLOCK):
            offs = start + tl.arange(0, BLOCK)
            inside = offs < V
            p = probs(tl.load(row_ptr + offs, mask=inside, other=float("-inf")), t, M, S)
            w = tl.where(inside & (p.to(tl.int32, bitcast=True) >= floor), _fixed(p), 0)
            cumulative = running + tl.cumsum(w, axis=0)
            crossed = (w > 0) & (cumulative > target)
            found = tl.minimum(found, tl.min(tl.where(crossed, offs, 2147483647), axis=0))
            last = tl.maximum(last, tl.max(tl.where(w > 0, offs, -1), axis=0))
            running += tl.sum(w, axis=0)
        tl.store(out_ptr + row, tl.where(found == 2147483647, last, found).to(tl.int64))


# ---- launchers ----------------------------------------------------------------------------

def _launch(logits, temperature, top_k, top_p, min_p, uniform, write_mask, programs_per_row):
    # Triton launches on the current device and its stream: make them the logits'.
    with torch.cuda.device_of(logits):
        return _launch_on_device(logits, temperature, top_k, top_p, min_p, uniform, write_mask,
                                 programs_per_row)


def _launch_on_device(logits, temperature, top_k, top_p, min_p, uniform, write_mask,
                      programs_per_row):
    B, V = logits.shape
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    device = logits.device
    status = torch.empty(B, dtype=torch.int32, device=device)
    if write_mask:
        out = torch.empty(B, V, dtype=torch.int8, device=device)
    else:
        out = torch.empty(B, dtype=torch.int64, device=device)
    if B == 0:
        return out, status
    p = plan(B, V, device, programs_per_row)
    stats = row_statistics(logits, temperature, p)
    counts = torch.zeros(B, len(SLOT_SHIFTS), BINS, dtype=torch.int32, device=device)
    masses = torch.zeros(B, len(SLOT_SHIFTS), BINS, dtype=torch.int64, device=device)
    common = (logits, logits.stride(0), V, p.chunk, temperature, top_k, top_p, min_p,
              stats.part_max, stats.part_arg, stats.part_flag, stats.part_sum, 1.0 / p.sum_one,
              counts, masses)
    sizes = dict(PARTS=MAX_PARTS, BINS=BINS, BLOCK=p.block, num_warps=p.num_warps)
    for slot, shift in enumerate(SLOT_SHIFTS):
        _histogram_kernel[p.grid](*common, SLOT=slot, SHIFT=shift, **sizes)
    if write_mask:
        _finish_kernel[p.grid](*common, out, status, WRITE_MASK=True, **sizes)
        return out, status
    kept = torch.empty(B, p.parts, dtype=torch.int64, device=device)
    _finish_kernel[p.grid](*common, kept, status, WRITE_MASK=False, **sizes)
    _draw_kernel[p.grid](*common, uniform, kept, out, **sizes)
    return out, status


def kept_mask(logits, temperature, top_k, top_p, min_p, programs_per_row: Optional[int] = None):
    """Kept set (B, V) bool and status (B,) int32 of logits (B, V) float16/bfloat16/float32
    under per-row temperature (B,) float32 (0: greedy), top_k (B,) int64 in [1, V], top_p
    (B,) float64 in (0, 1], min_p (B,) float32 in [0, 1]. `programs_per_row` forces the
    split (tests). 8 launches, no host sync."""
    out, status = _launch(logits, temperature, top_k, top_p, min_p, None, True, programs_per_row)
    return out.view(torch.bool), status


def sample(logits, temperature, top_k, top_p, min_p, uniform,
           programs_per_row: Optional[int] = None):
    """Tokens (B,) int64 (-1 on rows with a bad status) and status (B,) int32; arguments
    as kept_mask, plus uniform (B,) float64 in [0, 1). 9 launches, no host sync."""
    return _launch(logits, temperature, top_k, top_p, min_p, uniform, False, programs_per_row)


# ---- static check hook --------------------------------------------------------------------

def static_configs() -> Iterator[dict]:
    """One dict per distinct compiled configuration of the sampling launches (the row
    statistics, five histogram slots, mask / kept-mass finish, draw) for B in {1, 32, 256}
    x V in {32000, 128256} x {fp16, bf16, fp32} on an H200 (132 SMs):
    {"kernel", "args", "constexprs", "num_warps", "num_stages", "row"}."""
    def configs():
        for B, V, dtype, p in softmax_triton.static_shapes():
            common = {"x_ptr": f"*{dtype}", "stride": V, **softmax_triton.stride_args(p),
                      "t_ptr": "*fp32", "k_ptr": "*i64", "top_p_ptr": "*fp64",
                      "min_p_ptr": "*fp32",
                      "part_max_ptr": "*fp32", "part_arg_ptr": "*i32", "part_flag_ptr": "*i32",
                      "part_sum_ptr": "*i64", "sum_ulp": "fp32", "count_ptr": "*i32",
                      "mass_ptr": "*i64"}
            sizes = {"PARTS": MAX_PARTS, "BINS": BINS, "BLOCK": p.block}
            launches = [(launch["name"], launch)
                        for launch in softmax_triton.stats_configs(p, dtype)]
            for slot, shift in enumerate(SLOT_SHIFTS):
                launches.append((f"histogram {slot}", {"kernel": _histogram_kernel, "args": common,
                                 "constexprs": dict(SLOT=slot, SHIFT=shift, **sizes)}))
            finish = dict(common, status_ptr="*i32")
            launches.append(("mask", {"kernel": _finish_kernel, "args": dict(finish, out_ptr="*i8"),
                             "constexprs": dict(WRITE_MASK=True, **sizes)}))
            launches.append(("kept mass", {"kernel": _finish_kernel,
                             "args": dict(finish, out_ptr="*i64"),
                             "constexprs": dict(WRITE_MASK=False, **sizes)}))
            draw = dict(common, u_ptr="*fp64", kept_ptr="*i64", out_ptr="*i64")
            launches.append(("draw", {"kernel": _draw_kernel, "args": draw, "constexprs": sizes}))
            for name, launch in launches:
                # Full reads of V per row by the call: sampling_mask 8, sample 8 + one chunk.
                row = {"kernel": "sampling", "mode": name, "dtype": dtype, "B": B, "V": V,
                       "programs": B * p.parts, "programs_per_row": p.parts,
                       "passes_over_v": 8, "counting": "int32 counts, int64 fixed-point masses"}
                yield softmax_triton.config_dict(launch, p, row)
    return softmax_triton.dedupe(configs())
