"""Pieces shared by the recurrent Triton kernels: cells, the grid barrier, launch planning.

A recurrent kernel runs a range of time steps in one launch. Its grid is
(programs along batch, programs along hidden); each program owns BLOCK_B batch rows and
BLOCK_H hidden units (all gates of those units) and either keeps its slice of W_hh on
chip across the steps of the launch ("resident") or reads it from L2 in K chunks every
step ("streamed", for slices too large to keep). When the hidden size is split across
programs, they exchange h_t (forward) or the gate gradients (backward) through global
memory and meet at a grid barrier once per step.

The per-step product of one program (`Product`): the forward multiplies h_{t-1} by the
W_hh rows of all gates of its units at once, the gates side by side along the MMA's N
(gate slots x BLOCK_H columns), so an LSTM or GRU program may own as few as 4 units (an
Elman one 8) and a hidden size of 768 spreads over 96 or more SMs even at batch 16. BPTT
reduces over the gates (K = gates x H) and its N is the program's units, padded to
tl.dot's 16 when a program owns 8; its warps then split each K chunk between them.

Co-residency. The grid barrier needs every program of a launch on an SM at once. The
planner (choose_plan) therefore admits a persistent plan only when the compiled kernel's
registers, threads and shared memory allow all its programs to be resident together on
the device's SMs, and persistent multi-program launches are cooperative launches
(`launch_cooperative_grid`): CUDA starts such a grid only when all of its blocks fit at
once, or fails the launch, so other kernels (NCCL on a side stream, a second fastrnn
launch on another stream) can delay it but never leave half of it waiting for SMs that
the other half holds. As a last line of defence the barrier gives up after
MAX_BARRIER_POLLS polls (about a second), every program of the launch leaves its time
loop, and the launcher reports a RuntimeError through fastrnn.errors.

Memory ordering inside a program. Steps are a `while` loop, which the software pipeliner
does not touch, so no load of step t+1 is issued before the stores of step t; and a CTA
barrier (bar.sync) separates one step's stores from the next step's loads even when one
program covers the whole hidden size and no grid barrier runs.

Under the Triton interpreter programs run one after another, so a barrier would spin
forever: there the plan always uses a single program along the hidden dimension.
"""
from __future__ import annotations

import dataclasses
import os
import re
import weakref
from typing import Callable, List, Optional, Tuple

import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources

from fastrnn.ops.recurrent import step_model

LSTM = 0
GRU = 1
RNN_TANH = 2
RNN_RELU = 3
CELL_NAMES = {LSTM: "lstm", GRU: "gru", RNN_TANH: "rnn_tanh", RNN_RELU: "rnn_relu"}
GATES = {LSTM: 4, GRU: 3, RNN_TANH: 1, RNN_RELU: 1}
# Floats of the workspace per hidden unit and step: LSTM i,f,g,o,c; GRU r,z,n,hn; RNN h.
WORKSPACE_WIDTH = {LSTM: 5, GRU: 4, RNN_TANH: 1, RNN_RELU: 1}

# A barrier wait gives up after this many polls of the counter. One poll is an L2 atomic
# round trip (0.3-0.6 us on sm_80/sm_90), so this is about a second; a wait between two
# steps of a healthy launch takes microseconds.
MAX_BARRIER_POLLS = 1 << 21
# The program that gives up raises the barrier counter to this value (an atomic max): every
# other wait then ends at once and reads the abort from the counter's value. Why it cannot
# overflow int32: a launch counts at most MAX_BARRIER_ARRIVALS arrivals in all (longer
# sequences run in several launches), each adding 1, so before any abort the counter is
# below MAX_BARRIER_ARRIVALS < BARRIER_ABORT; an abort sets it to BARRIER_ABORT whatever it
# held (a max, not an add: any number of programs may abort, together or not, and the
# value stays BARRIER_ABORT), and the arrivals after it add at most MAX_BARRIER_ARRIVALS:
# the counter stays below BARRIER_ABORT + MAX_BARRIER_ARRIVALS = 3 * 2^29 < 2^31.
BARRIER_ABORT = 1 << 30
MAX_BARRIER_ARRIVALS = 1 << 29

# Whether the forward kernel carries the next step's input projection across the barrier
# (loaded before the wait, so its latency hides behind it). Triton 3.6, the version torch
# 2.11 ships, crashes compiling that loop (an assertion in TritonGPURemoveLayoutConversions)
# for every exact-fp32 plan and most 16-bit ones: seen on the H200 machine, reproduced by
# compiling for sm_90 without a GPU. Triton 3.9 compiles every plan (the static check).
# Measured on the H200 with Triton 3.6 (LSTM B=16 T=1024 H=768 bf16, forward, a plan that
# compiled carrying it): 6.7 ms carried, 12.4 ms loaded in the step after its product (the
# step now loads it first, beside h's loads: not measured).
CARRY_NEXT_INPUT = tuple(int(v) for v in triton.__version__.split(".")[:2]) >= (3, 9)


# tanh(x) = x * P(x^2) below |x| = TANH_SERIES_BELOW (P: tanh's Taylor series to x^15, whose
# truncation there is under 0.2 ulp), else sign(x) * (1 - 2 / (exp(2|x|) + 1)), where
# tanh >= 0.5 and the subtraction loses nothing: within 2 ulp of tanh in fp32 everywhere
# (tests/ops/test_recurrent_plans.py checks it against float64). 2 * sigmoid(2x) - 1, the
# usual one-liner, errs by up to an ulp of 1 near 0, where tanh is small: that doubled the
# layers' fp32 error against torch's. Only tl.exp is used, which every supported Triton
# version and the interpreter have (tl has no tanh in all of them).
TANH_SERIES_BELOW = tl.constexpr(0.55)


@triton.jit
def tanh(x):
    """tanh of fp32 x, to 2 ulp (see TANH_SERIES_BELOW)."""
    x2 = x * x
    series = -929569.0 / 638512875.0
    series = series * x2 + 21844.0 / 6081075.0
    series = series * x2 - 1382.0 / 155925.0
    series = series * x2 + 62.0 / 2835.0
    series = series * x2 - 17.0 / 315.0
    series = series * x2 + 2.0 / 15.0
    series = series * x2 - 1.0 / 3.0
    series = x * (1.0 + series * x2)
    tail = 1.0 - 2.0 / (tl.exp(2.0 * tl.abs(x)) + 1.0)
    tail = tl.where(x < 0.0, -tail, tail)
    return tl.where(tl.abs(x) < TANH_SERIES_BELOW, series, tail)


@triton.jit
def grid_barrier(counter_ptr, target, error_ptr, MAX_POLLS: tl.constexpr, ABORT: tl.constexpr):
    """Wait until `target` arrivals are counted at counter_ptr (one per program per step).

    Returns True when every program arrived, False when the launch was aborted: this
    program polled MAX_POLLS times in vain (it then raises the counter to ABORT and sets
    the error flag), or another program had aborted (the counter is ABORT or more; see
    BARRIER_ABORT for why it cannot overflow). The release add publishes this program's
    stores (made visible to all its threads by the CTA barrier first); the acquire loads
    make the other programs' stores visible. Scalar atomics run on one thread and their
    result is broadcast to the CTA, so every thread takes the same branch.
    """
    tl.debug_barrier()
    tl.atomic_add(counter_ptr, 1, sem="release", scope="gpu")
    count = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
    polls = 0
    while (count < target) & (polls < MAX_POLLS):
        count = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
        polls += 1
    if count < target:
        tl.atomic_max(counter_ptr, ABORT, sem="relaxed", scope="gpu")
        tl.atomic_xchg(error_ptr, 1, sem="relaxed", scope="gpu")
    tl.debug_barrier()
    return (count >= target) & (count < ABORT)


@triton.jit
def step_barrier(counter_ptr, arrivals, error_ptr, GRID_BARRIER: tl.constexpr,
                 MAX_POLLS: tl.constexpr, ABORT: tl.constexpr):
    """Between two steps: the grid barrier of the batch block's programs (`arrivals` per
    program so far) when the hidden size is split across programs, else a CTA barrier
    (this program's threads exchange h through global memory too)."""
    if GRID_BARRIER:
        ok = grid_barrier(counter_ptr, arrivals * tl.num_programs(1), error_ptr, MAX_POLLS, ABORT)
    else:
        tl.debug_barrier()
        ok = arrivals >= 0
    return ok


@triton.jit
def k_slices(k0, SPLIT: tl.constexpr, KS: tl.constexpr, AXIS: tl.constexpr):
    """Reduction indices k0 + s*KS + k of a K chunk split into SPLIT slices of KS: a 3-D
    (SPLIT, ., .) block with k along AXIS (1 or 2)."""
    slices = k0 + tl.arange(0, SPLIT)[:, None, None] * KS
    if AXIS == 1:
        return slices + tl.arange(0, KS)[None, :, None]
    else:
        return slices + tl.arange(0, KS)[None, None, :]


@triton.jit
def load_weight_chunk(ptr, col_offsets, col_ok, k0, K, stride_k, SPLIT: tl.constexpr,
                      KS: tl.constexpr):
    """One K chunk of a resident weight operand: tile[k, n] = ptr[col_offsets[n] +
    (k0 + k) * stride_k] for k < SPLIT*KS (zero past K), as (KS, N) when SPLIT == 1, else
    (SPLIT, KS, N) with slice s holding k0 + s*KS .. k0 + (s+1)*KS - 1: the operand of a
    batched tl.dot whose warps Triton places along the batch dimension, so each warp keeps
    only its own K slice of the weights in registers."""
    if SPLIT == 1:
        ks = k0 + tl.arange(0, KS)
        return tl.load(ptr + ks.to(tl.int64)[:, None] * stride_k + col_offsets[None, :],
                       mask=(ks < K)[:, None] & col_ok[None, :], other=0.0)
    else:
        ks = k_slices(k0, SPLIT, KS, 1)
        return tl.load(ptr + ks.to(tl.int64) * stride_k + col_offsets[None, None, :],
                       mask=(ks < K) & col_ok[None, None, :], other=0.0)


@triton.jit
def load_rows_chunk(row_ptrs, row_ok, k0, K, SPLIT: tl.constexpr, KS: tl.constexpr):
    """The same K chunk of the rows the weights multiply (row_ptrs: (BLOCK_B, 1) pointers
    to contiguous rows of length K): (BLOCK_B, KS) or (SPLIT, BLOCK_B, KS). Read with .cg,
    from L2, where the other programs' stores land (never a stale L1 line)."""
    if SPLIT == 1:
        ks = k0 + tl.arange(0, KS)
        return tl.load(row_ptrs + ks[None, :], mask=row_ok[:, None] & (ks < K)[None, :], other=0.0,
                       cache_modifier=".cg")
    else:
        ks = k_slices(k0, SPLIT, KS, 2)
        return tl.load(row_ptrs[None, :, :] + ks, mask=row_ok[None, :, None] & (ks < K), other=0.0,
                       cache_modifier=".cg")


@triton.jit
def round_to_tf32(x):
    """fp32 x rounded to TF32's 10-bit mantissa, to nearest with ties away from zero (NaN
    unchanged). Triton's tf32 tl.dot truncates its fp32 operands (measured on the H200:
    products match truncated operands, and cuBLAS's match rounded ones); truncation pulls
    every product toward zero, so a recurrence's error grows with T beyond cuDNN's."""
    bits = x.to(tl.uint32, bitcast=True)
    rounded = ((bits + 0x1000) >> 13 << 13).to(tl.float32, bitcast=True)
    return tl.where(x == x, rounded, x)


@triton.jit
def dot_operand(a, dtype, DOT_PRECISION: tl.constexpr):
    """a as a tl.dot operand of `dtype`: cast, and rounded to TF32 when the product runs
    in TF32 (round_to_tf32)."""
    if DOT_PRECISION == "tf32":
        return round_to_tf32(a.to(tl.float32))
    else:
        return a.to(dtype)


def tf32_rounded(w: torch.Tensor) -> torch.Tensor:
    """round_to_tf32 of an fp32 tensor on the host: the recurrent weights' copy a TF32
    product multiplies (rounded once per call rather than per step in the kernel)."""
    bits = w.contiguous().view(torch.int32)
    rounded = ((bits + 0x1000) & ~0x1FFF).view(torch.float32)
    return torch.where(w.isnan(), w, rounded)


# id(w) -> (weak reference to w, w's version, its TF32-rounded copy): one rounding per
# weight update, not per call (a decode step calls once per token).
_TF32_WEIGHTS: dict = {}


def recurrent_weights(w: torch.Tensor) -> torch.Tensor:
    """The recurrent weights as the kernels multiply them: TF32-rounded when the product
    runs in TF32 (dot_precision), else w itself; contiguous and aligned (`aligned`). The
    rounded copy is cached while w lives and is not modified in place (its version
    counter), except during CUDA graph capture, whose tensors hold data only on replay,
    and for inference tensors (torch.inference_mode), which have no version counter."""
    if dot_precision(w.dtype) != "tf32":
        return aligned(w)
    if w.is_inference() or (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()):
        return aligned(tf32_rounded(w))
    entry = _TF32_WEIGHTS.get(id(w))
    if entry is None or entry[0]() is not w or entry[1] != w._version:
        key = id(w)
        ref = weakref.ref(w, lambda _: _TF32_WEIGHTS.pop(key, None))
        entry = _TF32_WEIGHTS[key] = (ref, w._version, aligned(tf32_rounded(w.detach())))
    return entry[2]


@triton.jit
def chunk_dot(a, w, SPLIT: tl.constexpr, DOT_PRECISION: tl.constexpr, RANGE_SCALE: tl.constexpr):
    """a @ w (2-D, or batched over the K slices) in fp32, a cast to w's type first. With
    RANGE_SCALE (fp16 weights, fp32 rows that may pass 65504) each row of the chunk is
    scaled by a power of two before the cast and the product scaled back (exact)."""
    if RANGE_SCALE:
        if SPLIT == 1:
            shift = range_shift(tl.max(tl.abs(a), axis=1))[:, None]
        else:
            shift = range_shift(tl.max(tl.max(tl.abs(a), axis=2), axis=0))[None, :, None]
        return tl.dot((a * tl.exp2(-shift)).to(w.dtype), w, input_precision=DOT_PRECISION) * tl.exp2(shift)
    else:
        return tl.dot(dot_operand(a, w.dtype, DOT_PRECISION), w, input_precision=DOT_PRECISION)


@triton.jit
def range_shift(row_peak):
    """log2 of the power of two that brings a row whose largest value is row_peak near
    2^13 (<= 2^15 even if log2 is off by one), so an fp16 cast cannot overflow; powers of
    two scale exactly. Rows below 1e-30 (zero ones included) scale by 2^100 at most, which
    keeps 2^-shift finite."""
    return tl.maximum(tl.floor(tl.log2(tl.maximum(row_peak, 1e-30))) - 13.0, -100.0)


@triton.jit
def resident_product(row_ptrs, row_ok, K, w0, w1, w2, w3, K_CHUNKS: tl.constexpr,
                     SPLIT: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_B: tl.constexpr,
                     TILE_N: tl.constexpr, DOT_PRECISION: tl.constexpr, RANGE_SCALE: tl.constexpr):
    """(BLOCK_B, TILE_N) fp32: the rows (length K) times the resident weights, held as
    K_CHUNKS chunks w0..w3 of BLOCK_K (load_weight_chunk; chunks past K_CHUNKS unused).
    Chunks let K = 768 take 3 x 256 instead of padding to 1024. With SPLIT > 1 every warp
    multiplies its K slices and the partial products are summed over the warps at the
    end (one reduction through shared memory per step)."""
    KS: tl.constexpr = BLOCK_K // SPLIT
    if SPLIT == 1:
        acc = tl.zeros((BLOCK_B, TILE_N), dtype=tl.float32)
    else:
        acc = tl.zeros((SPLIT, BLOCK_B, TILE_N), dtype=tl.float32)
    acc += chunk_dot(load_rows_chunk(row_ptrs, row_ok, 0, K, SPLIT, KS), w0,
                     SPLIT, DOT_PRECISION, RANGE_SCALE)
    if K_CHUNKS > 1:
        acc += chunk_dot(load_rows_chunk(row_ptrs, row_ok, BLOCK_K, K, SPLIT, KS), w1,
                         SPLIT, DOT_PRECISION, RANGE_SCALE)
    if K_CHUNKS > 2:
        acc += chunk_dot(load_rows_chunk(row_ptrs, row_ok, 2 * BLOCK_K, K, SPLIT, KS), w2,
                         SPLIT, DOT_PRECISION, RANGE_SCALE)
    if K_CHUNKS > 3:
        acc += chunk_dot(load_rows_chunk(row_ptrs, row_ok, 3 * BLOCK_K, K, SPLIT, KS), w3,
                         SPLIT, DOT_PRECISION, RANGE_SCALE)
    if SPLIT == 1:
        return acc
    else:
        return tl.sum(acc, axis=0)


@triton.jit
def load_resident_weights(ptr, col_offsets, col_ok, K, stride_k, K_CHUNKS: tl.constexpr,
                          SPLIT: tl.constexpr, BLOCK_K: tl.constexpr):
    """The K_CHUNKS weight chunks resident_product multiplies (unused ones repeat w0 and
    cost nothing)."""
    KS: tl.constexpr = BLOCK_K // SPLIT
    w0 = load_weight_chunk(ptr, col_offsets, col_ok, 0, K, stride_k, SPLIT, KS)
    w1 = w0
    w2 = w0
    w3 = w0
    if K_CHUNKS > 1:
        w1 = load_weight_chunk(ptr, col_offsets, col_ok, BLOCK_K, K, stride_k, SPLIT, KS)
    if K_CHUNKS > 2:
        w2 = load_weight_chunk(ptr, col_offsets, col_ok, 2 * BLOCK_K, K, stride_k, SPLIT, KS)
    if K_CHUNKS > 3:
        w3 = load_weight_chunk(ptr, col_offsets, col_ok, 3 * BLOCK_K, K, stride_k, SPLIT, KS)
    return w0, w1, w2, w3


def barrier_error_message(kernel: str, plan: "LaunchPlan") -> Callable[[List[int]], Optional[str]]:
    def message(codes: List[int]) -> Optional[str]:
        if not any(codes):
            return None
        return (f"fastrnn: the grid barrier of the Triton {kernel} kernel timed out after about a "
                f"second (grid {plan.grid}, {plan.programs} programs): not all of them were resident "
                "on the GPU at once. The results of that call are invalid. Set "
                "FASTRNN_BACKEND=ext (the CUDA extension) or FASTRNN_BACKEND=reference to avoid "
                "the persistent Triton kernels.")
    return message


# --------------------------------------------------------------------------- planning


def max_blocks_per_sm(arch: int) -> int:
    """Resident blocks per SM that CUDA allows on compute capability arch // 10 . arch % 10
    (cudaOccMaxBlocksPerMultiprocessor in the CUDA toolkit's cuda_occupancy.h; the CUDA C++
    Programming Guide's table of technical specifications per compute capability)."""
    major, minor = divmod(arch, 10)
    if major == 7:
        return 16 if minor == 5 else 32
    if major == 8:
        return {0: 32, 9: 24}.get(minor, 16)
    if major == 10:
        return 24 if minor == 1 else 32
    if major == 11:
        return 24 if minor == 0 else 32
    if major == 12:
        return 24
    return 32


@dataclasses.dataclass(frozen=True)
class DeviceLimits:
    """What bounds a launch on one GPU (from torch.cuda.get_device_properties, and CUDA's
    per-architecture constants where torch does not report them)."""
    arch: int                   # compute capability as 90, 80, ...
    sms: int
    shared_per_block: int       # bytes one program may use (opt-in maximum)
    shared_per_sm: int
    regs_per_sm: int
    threads_per_sm: int
    blocks_per_sm: int = 32
    regs_per_block: int = 65_536
    # Shared memory the driver reserves for every resident block (sm_80 and later).
    reserved_shared_per_block: int = 1024


# The targets the static check compiles for (NVIDIA's published limits).
SM90 = DeviceLimits(90, 132, 232_448, 233_472, 65_536, 2048)   # H100 / H200 SXM
SM80 = DeviceLimits(80, 108, 166_912, 167_936, 65_536, 2048)   # A100


def device_limits(device: torch.device) -> DeviceLimits:
    p = torch.cuda.get_device_properties(device)
    arch = p.major * 10 + p.minor
    return DeviceLimits(arch, p.multi_processor_count, p.shared_memory_per_block_optin,
                        p.shared_memory_per_multiprocessor, p.regs_per_multiprocessor,
                        p.max_threads_per_multi_processor, max_blocks_per_sm(arch),
                        reserved_shared_per_block=1024 if arch >= 80 else 0)


@dataclasses.dataclass(frozen=True)
class Resources:
    """What one compiled program needs (from the compiled kernel)."""
    regs: int           # per thread (0: unknown, the kernel did not load)
    spill_bytes: int    # local memory per thread, in bytes (where spilled registers live)
    shared_bytes: int   # per program
    num_warps: int
    replicated: bool = False   # some warps compute another warp's MMA tile again
    # Why the driver would not load the kernel, as Triton's OutOfResources names it
    # ("shared memory", "threads", ...: "threads: 256 required, limit 128"); "" when it loads.
    out_of: str = ""


MMA_LAYOUT = re.compile(r"warpsPerCTA = \[([\d, ]+)\], instrShape = \[([\d, ]+)\]")


def mma_layout(ttgir: str) -> Optional[Tuple[List[int], List[int]]]:
    """(warps per dimension, instruction shape) of the first MMA layout in the TTGIR:
    two dimensions for a plain product, three for a batched one."""
    m = MMA_LAYOUT.search(ttgir)
    if not m:
        return None
    return [int(v) for v in m.group(1).split(",")], [int(v) for v in m.group(2).split(",")]


def mma_replicated(ttgir: str, block_b: int, tile_n: int, split: int = 1) -> bool:
    """Whether the MMA layout of a (block_b, tile_n) product (batched over `split` K
    slices) puts more warps along a dimension than it has instruction tiles (Triton's
    choice, read from the TTGIR: it gives a 16x16 tile on 2 warps warpsPerCTA [2, 1], so
    both compute the same rows)."""
    layout = mma_layout(ttgir)
    if layout is None:
        return False
    warps, instr = layout
    shape = [block_b, tile_n] if len(warps) == 2 else [split, block_b, tile_n]
    return any(w * i > n for w, i, n in zip(warps, instr, shape))


# CUDA's occupancy rules for sm_70 and later (cuda_occupancy.h of the CUDA toolkit, the
# source of cudaOccupancyMaxActiveBlocksPerMultiprocessor and of the occupancy calculator):
# registers are allocated per warp, in units of 256 (so per thread in multiples of 8), from
# one of the SM's 4 sub-partitions (a quarter of the register file each); a block takes
# at most 256 registers per thread; shared memory is allocated in units of 128 bytes
# (sm_80 and later), the driver's reserved 1 KiB per block included.
REG_ALLOCATION_UNIT = 256
SUB_PARTITIONS = 4
MAX_REGS_PER_THREAD = 256
SHARED_ALLOCATION_UNIT = 128
MAX_THREADS_PER_BLOCK = 1024


def _round_up(n: int, unit: int) -> int:
    return -(-n // unit) * unit


def programs_per_sm(res: Resources, limits: DeviceLimits) -> int:
    """How many programs of this kernel an SM holds at once, by CUDA's occupancy rules
    (cudaOccMaxActiveBlocksPerMultiprocessor in cuda_occupancy.h, default shared-memory
    carveout, no partitioned global caching, which sm_70 and later lack): the least of
    the limits by warps, by blocks per SM, by registers and by shared memory. A kernel
    whose registers are unknown (res.regs == 0: it did not load) is limited by the rest."""
    warps = res.num_warps
    if warps * 32 > MAX_THREADS_PER_BLOCK:
        return 0
    by_warps = limits.threads_per_sm // 32 // warps
    regs_per_warp = _round_up(res.regs * 32, REG_ALLOCATION_UNIT)
    if regs_per_warp == 0:
        by_regs = by_warps
    elif (res.regs > MAX_REGS_PER_THREAD or regs_per_warp * warps > limits.regs_per_block
          # The hardware checks a block's registers as if its warps filled every sub-partition.
          or regs_per_warp * _round_up(warps, SUB_PARTITIONS) > limits.regs_per_block):
        by_regs = 0
    else:
        warps_per_partition = limits.regs_per_sm // SUB_PARTITIONS // regs_per_warp
        by_regs = warps_per_partition * SUB_PARTITIONS // warps
    shared = _round_up(res.shared_bytes + limits.reserved_shared_per_block, SHARED_ALLOCATION_UNIT)
    if shared > limits.shared_per_block + limits.reserved_shared_per_block:
        by_shared = 0
    else:
        by_shared = limits.shared_per_sm // shared
    return min(by_warps, limits.blocks_per_sm, by_regs, by_shared)


@dataclasses.dataclass(frozen=True)
class LaunchPlan:
    block_b: int        # batch rows per program
    block_h: int        # hidden units per program (all gates of them)
    block_k: int        # reduction tile: all of H when resident, a chunk when streamed
    programs_b: int
    programs_h: int
    resident: bool      # W_hh slice loaded once per launch (else streamed from L2 each step)
    persistent: bool    # all steps in one launch (else one launch per step)
    num_warps: int
    tile_n: int         # N of the program's MMA output tile (Product.tile_n)
    split: int = 1      # warps that each reduce a slice of every K chunk
    k_chunks: int = 1   # resident: the weights are k_chunks chunks of block_k along K
    reason: str = ""    # why this plan, and what was rejected before it

    @property
    def grid(self) -> Tuple[int, int]:
        return (self.programs_b, self.programs_h)

    @property
    def programs(self) -> int:
        return self.programs_b * self.programs_h

    @property
    def mode(self) -> str:
        if not self.persistent:
            return "per-step"
        return "persistent" if self.resident else "streamed"

    @property
    def cooperative(self) -> bool:
        """Multi-program persistent launches need all programs resident at once."""
        return self.persistent and self.programs_h > 1


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _pow2_at_least_16(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


# tl.dot needs every dimension >= 16.
MIN_DOT = 16
# Programs may own 8 units with their product padded to 16 columns (BPTT, and the Elman
# forward): half of its MMA work multiplies zeros, but the weight loads are masked, so no
# memory traffic is wasted.
MIN_PADDED_UNITS = 8


@dataclasses.dataclass(frozen=True)
class Product:
    """The recurrent product one program computes per step.

    stacked (the forward): h_{t-1} (BLOCK_B x H) times the W_hh rows of every gate of the
    program's units, gates side by side: N = slots x units >= 16, K = H. The slots are a
    power of two for tl.arange (the GRU's three gates take four, the fourth masked; the
    Elman cells' one gate takes two when a program owns 8 units).
    Not stacked (BPTT): the gate gradients (BLOCK_B x gates*H) times W_hh[:, units]:
    N = the units (at least MIN_DOT, padded), K = gates x H, one tile per gate.
    fma: exact fp32, which tl.dot computes on the FMA units (no MMA instructions).
    exchange_size: BPTT's bytes per gate gradient the programs read from each other
    (backward.exchange_dtype), and exchange_scaled: whether each program adds one fp32
    power of two per row (backward.exchange_scaled); the forward exchanges h in the input
    type and ignores both."""
    gates: int
    stacked: bool
    fma: bool = False
    exchange_size: int = 4
    exchange_scaled: bool = False

    @property
    def min_units(self) -> int:
        if not self.stacked:
            return MIN_PADDED_UNITS
        return min(MIN_PADDED_UNITS, MIN_DOT // triton.next_power_of_2(self.gates))

    def tile_n(self, units: int) -> int:
        slots = triton.next_power_of_2(self.gates) if self.stacked else 1
        return max(MIN_DOT, slots * units)

    def weight_elements(self, units: int, block_k: int) -> int:
        """W_hh elements a resident program holds (padding included)."""
        return self.tile_n(units) * block_k * (1 if self.stacked else self.gates)


# Reduction chunk of the streamed mode (W_hh read from L2 every step).
STREAM_BLOCK_K = 64
# Warps of a streamed BPTT program whose output tile would give fewer warps their own
# MMA work: each reduces STREAM_BLOCK_K / SPLIT_WARPS = 16 of every chunk's K.
SPLIT_WARPS = 4
# fp32 outputs of one program per step (gates x rows x units): 32 KiB of accumulators.
# Larger tiles spill (ptxas also takes minutes on them), and by then the grid has far
# fewer programs than SMs anyway.
MAX_TILE_OUTPUTS = 8192
# Persistent candidates may place up to this many programs per SM (the compiled
# occupancy must then allow it: check_plan).
RESIDENT_PER_SM = 2
# Planning compiles candidates (seconds each) on a shape's first call: a few tiles per
# mode, then the per-step fallback.
MAX_CANDIDATES_PER_MODE = 3


def max_useful_warps(block_b: int, tile_n: int, fma: bool = False) -> int:
    """Warps that each get their own part of a (block_b, tile_n) output tile.

    An mma.sync instruction covers 16 x 8. Triton (3.6 and 3.9, read from the TTGIR of
    our kernels) puts every warp along the longer side of the tile, rows first on a
    square one: 2 warps on a 16 x 16 tile become warpsPerCTA [2, 1] and compute the same
    rows twice. So the useful warps are the instruction tiles along that side. The
    compiled layout is checked anyway (mma_replicated). An FMA product (exact fp32)
    spreads its outputs over all threads: warps up to FMA_OUTPUTS_PER_THREAD each."""
    if fma:
        return max(1, min(8, block_b * tile_n // (32 * FMA_OUTPUTS_PER_THREAD)))
    along = block_b // 16 if block_b >= tile_n else tile_n // 8
    return max(1, min(8, along))


# Outputs per thread of an FMA product below which more warps add more barrier and
# reduction work than they take off each thread's K loop.
FMA_OUTPUTS_PER_THREAD = 4


# A resident W_hh slice is a loop-invariant value: it lives in registers, spread over the
# program's threads. Past this many elements per thread (64 registers' worth at 16 bits,
# 64 registers at 32) it cannot stay there beside the step's working set; such tiles are
# not even compiled (ptxas spends minutes on them, and they spill).
RESIDENT_ELEMENTS_PER_THREAD = {2: 128, 4: 64}
# A resident forward slice is held as at most this many K chunks (load_resident_weights)
# of a power of two each, so K = 768 takes 3 x 256 rather than padding to 1024.
MAX_K_CHUNKS = 4
MAX_CHUNK = 1024
# Warps a resident tile splits K over when its weights do not fit the registers of the
# warps its output tile gives work to (each warp then holds 1/SPLIT of the weights): at
# least four, so that every SM sub-partition's tensor core takes part.
RESIDENT_SPLITS = (4, 8)


def resident_chunking(k: int) -> Tuple[int, int]:
    """(chunk, chunks): the power-of-two chunk of at least tl.dot's 16 whose at most
    MAX_K_CHUNKS copies cover k with the least padding (the largest such chunk)."""
    options = [(c * -(-k // c), -c) for c in (1 << i for i in range(4, MAX_CHUNK.bit_length()))
               if -(-k // c) <= MAX_K_CHUNKS]
    padded, neg_chunk = min(options)
    return -neg_chunk, padded // -neg_chunk


def resident_fits(plan: "LaunchPlan", product: Product, element_size: int) -> bool:
    elements = product.weight_elements(plan.block_h, plan.block_k) * plan.k_chunks
    return elements // (32 * plan.num_warps) <= RESIDENT_ELEMENTS_PER_THREAD[min(element_size, 4)]


def candidate_plans(batch: int, hidden: int, product: Product, sms: int,
                    element_size: int = 2) -> List[LaunchPlan]:
    """Launch plans in order of preference: resident tiles from those that spread the work
    over most SMs to larger ones (grids of at most one program per SM first, then up to
    RESIDENT_PER_SM per SM, where some SMs would carry two programs' work), then streamed
    tiles in the same order (MAX_CANDIDATES_PER_MODE tiles of each, a streamed tile also
    with half the K chunk, which needs fewer registers), then one launch per step (the
    widest tile, then half the units, half the rows, half of both; each with both K
    chunks). Each tile gets the most warps that do not replicate MMA work; resident tiles
    only where their weights fit in registers."""
    full_k = _pow2_at_least_16(hidden)

    def programs(tile):
        return triton.cdiv(batch, tile[0]) * triton.cdiv(hidden, tile[1])
    tiles = [(block_b, block_h) for block_b in (16, 32, 64) if block_b <= min(_pow2_at_least_16(batch), 64)
             for block_h in _unit_blocks(product.min_units, full_k)
             if programs((block_b, block_h)) <= RESIDENT_PER_SM * sms
             and product.gates * block_b * block_h <= MAX_TILE_OUTPUTS]
    # One program per SM first, most programs first; among equals, wider batch blocks
    # (fewer barrier groups).
    tiles.sort(key=lambda tile: (programs(tile) > sms, -programs(tile), -tile[0]))
    resident_plans = [plan for plan in (_plan(batch, hidden, product, tile, full_k, True, True,
                                               element_size) for tile in tiles)
                      if resident_fits(plan, product, element_size)]
    plans = resident_plans[:MAX_CANDIDATES_PER_MODE]
    for tile in tiles[:MAX_CANDIDATES_PER_MODE]:
        plans += _lighter_variants(_plan(batch, hidden, product, tile, full_k, False, True))
    # The per-step fallback: no barrier, any grid; streamed so that any size compiles.
    block_b = min(_pow2_at_least_16(batch), 64)
    fitting = max(MIN_DOT, MAX_TILE_OUTPUTS // (product.gates * block_b))
    block_h = min(64, full_k, 1 << (fitting.bit_length() - 1))   # a power of two
    for tile in [(block_b, block_h), (block_b, block_h // 2), (block_b // 2, block_h),
                 (block_b // 2, block_h // 2)]:
        if tile[0] >= MIN_DOT and tile[1] >= product.min_units:
            plans += _lighter_variants(_plan(batch, hidden, product, tile, full_k, False, False))
    return plans


def _plan(batch: int, hidden: int, product: Product, tile: Tuple[int, int], full_k: int,
          resident: bool, persistent: bool, element_size: int = 2) -> LaunchPlan:
    """The plan of one (block_b, block_h) tile: the most warps that do not replicate MMA
    work (max_useful_warps). Resident forward tiles hold K in chunks (resident_chunking)
    and, when their weights do not fit those warps' registers, split every chunk's K over
    4 or 8 warps instead (a batched tl.dot: no warp holds another's weights). Streamed
    tiles take chunks of STREAM_BLOCK_K (32 for one- and two-warp programs, which stay out
    of spills that way); small streamed BPTT tiles split each chunk's K over SPLIT_WARPS
    warps."""
    block_b, block_h = tile
    tile_n = product.tile_n(block_h)
    warps = max_useful_warps(block_b, tile_n, product.fma)
    block_k = full_k if resident else min(STREAM_BLOCK_K if warps > 2 else 32, full_k)
    split, chunks = 1, 1
    if resident and product.stacked:
        block_k, chunks = resident_chunking(hidden)
    elif not resident and persistent and not product.stacked and warps < SPLIT_WARPS \
            and full_k >= STREAM_BLOCK_K:
        warps = split = SPLIT_WARPS
        block_k = STREAM_BLOCK_K
    plan = LaunchPlan(block_b, block_h, block_k, triton.cdiv(batch, block_b), triton.cdiv(hidden, block_h),
                      resident, persistent, warps, tile_n, split, chunks)
    if resident and product.stacked and not resident_fits(plan, product, element_size):
        for split in RESIDENT_SPLITS:
            wide = dataclasses.replace(plan, num_warps=split, split=split)
            if block_k // split >= MIN_DOT and resident_fits(wide, product, element_size):
                return wide
    return plan


def _lighter_variants(plan: LaunchPlan) -> List[LaunchPlan]:
    """A streamed plan, then the same tile with half the K chunk (half the registers for
    the chunk's operands in flight; a split chunk keeps 16 of K per warp on half the
    warps) where that chunk is still tl.dot's 16 or more."""
    plans = [plan]
    half = plan.block_k // 2
    if plan.split > 1:
        if half // (plan.split // 2) >= MIN_DOT and plan.split // 2 > 1:
            plans.append(dataclasses.replace(plan, block_k=half, split=plan.split // 2,
                                             num_warps=plan.split // 2))
    elif half >= MIN_DOT:
        plans.append(dataclasses.replace(plan, block_k=half))
    return plans


def _unit_blocks(min_units: int, full_k: int) -> List[int]:
    """Hidden units per program: powers of two from min_units to all of H."""
    return [1 << i for i in range(min_units.bit_length() - 1, full_k.bit_length()) if 1 << i <= full_k]


# Triton's CompiledKernel.n_spills is the kernel's local memory per thread in 4-byte words:
# its CUDA driver module (third_party/nvidia/backend/driver.c, load_binary, in Triton 3.6
# and 3.9 alike) reads CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES and divides it by 4.
TRITON_SPILL_UNIT_BYTES = 4


def runtime_resources(kernel, args, plan: LaunchPlan, meta) -> Resources:
    """Compiles (without launching) the kernel as Triton's JIT would for these arguments on
    the current GPU and reads what one program needs. The launch that follows with the
    same specialisation reuses this compiled kernel.

    When the driver refuses the kernel, Triton raises OutOfResources before loading it
    (shared memory over the block's limit: registers unknown) or after (more threads than
    the block's registers allow: registers known); its `name`, `required` and `limit` go
    into Resources.out_of, which check_plan reports."""
    compiled = kernel.warmup(*args, grid=plan.grid, **meta)
    replicated = mma_replicated(compiled.asm["ttgir"], plan.block_b, plan.tile_n, plan.split)
    out_of = ""
    try:
        compiled._init_handles()   # loads the binary: registers and spills come from the driver
    except OutOfResources as err:
        out_of = f"{err.name}: {err.required} required, limit {err.limit}"
    return Resources(getattr(compiled, "n_regs", None) or 0,
                     (getattr(compiled, "n_spills", None) or 0) * TRITON_SPILL_UNIT_BYTES,
                     compiled.metadata.shared, meta["num_warps"], replicated, out_of)


def check_plan(plan: LaunchPlan, res: Resources, limits: DeviceLimits) -> List[str]:
    """The reasons this plan cannot run well on `limits`; empty when it can."""
    problems = []
    if res.out_of:
        problems.append(f"the driver refuses it (out of {res.out_of})")
    if res.shared_bytes > limits.shared_per_block:
        problems.append(f"shared memory {res.shared_bytes} B > {limits.shared_per_block} B per block")
    if res.spill_bytes:
        problems.append(f"{res.spill_bytes} B of register spills per thread")
    if res.replicated:
        problems.append("warps replicate each other's MMA work")
    per_sm = programs_per_sm(res, limits)
    if plan.cooperative and plan.programs > per_sm * limits.sms:
        problems.append(f"{plan.programs} programs cannot be co-resident "
                        f"({per_sm} per SM x {limits.sms} SMs)")
    return problems


def choose_plan(candidates: List[LaunchPlan], resources_of: Callable[[LaunchPlan], Resources],
                limits: DeviceLimits, step_us: Optional[Callable[[LaunchPlan], float]] = None) -> LaunchPlan:
    """The candidate with the lowest modelled step time (`step_us`, microseconds; see
    plan_for) among those whose compiled kernel fits `limits` (check_plan), with the
    rejected ones named in its `reason`. Times within step_model.RESOLUTION_US of the
    lowest count as equal, and then the candidates' own order decides (resident tiles
    first, most SMs first). Candidates are compiled in order of modelled time, so slower
    ones are never compiled; without step_us, the first candidate that fits is taken.
    When none fits, the per-step plan that the driver loads (within the shared-memory and
    thread limits) and that spills least is taken (it launches, slowly); where there is no
    per-step candidate (a forced persistent mode), the persistent plan that loads, whose
    programs are co-resident, and that spills least; when there is none either,
    RuntimeError."""
    checked = {}

    def problems_of(i):
        if i not in checked:
            res = resources_of(candidates[i])
            checked[i] = (res, check_plan(candidates[i], res, limits))
        return checked[i][1]

    times = [step_us(plan) if step_us is not None else 0.0 for plan in candidates]
    best = next((times[i] for i in sorted(range(len(candidates)), key=lambda i: times[i])
                 if not problems_of(i)), None)
    if best is not None:
        chosen = next(i for i in range(len(candidates))
                      if times[i] <= best + step_model.RESOLUTION_US and not problems_of(i))
        rejected = [f"{_describe(candidates[i])}: {', '.join(problems_of(i))}"
                    for i in sorted(checked) if checked[i][1]]
        why = "; ".join(rejected) if rejected else "first choice"
        if step_us is not None:
            why = f"lowest modelled step time that fits ({times[chosen]:.2f} us); {why}"
        return dataclasses.replace(candidates[chosen], reason=why)
    rejected, runnable = [], []
    for i, plan in enumerate(candidates):
        res, problems = checked[i]
        rejected.append(f"{_describe(plan)}: {', '.join(problems)}")
        # Spills and replicated warps cost time; a program that cannot load, or a barrier
        # whose programs are not all resident (it would never complete), cannot run.
        co_resident = not plan.cooperative or plan.programs <= programs_per_sm(res, limits) * limits.sms
        if not res.out_of and res.shared_bytes <= limits.shared_per_block and co_resident:
            runnable.append((plan.persistent, res.spill_bytes, i))
    if runnable:
        fallback = candidates[min(runnable)[2]]
        kind = "persistent" if fallback.persistent else "per-step"
        return dataclasses.replace(fallback, reason="; ".join(rejected)
                                   + f"; so the {kind} plan that spills least ({_describe(fallback)})")
    raise RuntimeError("fastrnn: no launch plan of the recurrent kernel fits this GPU: "
                       + "; ".join(rejected))


def modelled_step_us(plan: LaunchPlan, product: Product, element_size: int, hidden: int) -> float:
    """step_model's time per step (us) of `plan` for `product` (the forward's stacked
    product or BPTT's) at this hidden size and input element size (bytes)."""
    if product.fma:
        kind = "fma"
    else:
        kind = "tf32" if element_size == 4 else "fp16"   # fp16 and bf16 MMAs run at one rate
    cell = {4: "lstm", 3: "gru", 1: "rnn"}[product.gates]
    return step_model.plan_step_us(plan, cell, "forward" if product.stacked else "backward",
                                   element_size, kind, hidden, exchange_size=product.exchange_size,
                                   exchange_scaled=product.exchange_scaled)


def _describe(plan: LaunchPlan) -> str:
    split = f", K split {plan.split} ways" if plan.split > 1 else ""
    return f"{plan.mode} ({plan.block_b},{plan.block_h},{plan.block_k}) x{plan.num_warps} warps{split}"


def plan_for(kernel, args: list, meta_of: Callable[[LaunchPlan], dict], batch: int, hidden: int,
             product: Product, limits: DeviceLimits, resources_of,
             mode: Optional[str] = None) -> LaunchPlan:
    """The plan choose_plan picks for `kernel` from its compiled resources and the
    step-time model (step_model).

    args: the kernel's arguments for specialisation (MockTensors and ints); meta_of(plan):
    its constexprs and launch options. resources_of(kernel, args, plan, meta) compiles
    (runtime_resources on the GPU at hand; the static check compiles for a target without
    one). mode restricts the candidates ("streamed", "per-step"; tests force them)."""
    element_size = args[0].dtype.itemsize
    candidates = candidate_plans(batch, hidden, product, limits.sms, element_size)
    if mode is not None:
        candidates = [p for p in candidates if p.mode == mode]
    return choose_plan(candidates, lambda plan: resources_of(kernel, args, plan, meta_of(plan)),
                       limits, lambda plan: modelled_step_us(plan, product, element_size, hidden))


def launch_plan(name: str, device: torch.device, batch: int, hidden: int, product: Product, key: tuple,
                kernel, args_of: Callable[[], list], meta_of, force_per_step: bool,
                force_streamed: bool) -> LaunchPlan:
    """The plan of one kernel call: planned once per (kernel, device, shape, key) on a GPU;
    under the interpreter or on CPU tensors, the single-program interpreter plan.
    args_of() gives the kernel's arguments for specialisation, built only when planning."""
    if interpreting() or device.type != "cuda":
        return interpreter_plan(batch, hidden, product, force_per_step, force_streamed)
    mode = "per-step" if force_per_step else ("streamed" if force_streamed else None)
    return cached_plan((name, device.index, batch, hidden, mode) + key, lambda: plan_for(
        kernel, args_of(), meta_of, batch, hidden, product, device_limits(device), runtime_resources,
        mode))


def launch_options(plan: LaunchPlan) -> dict:
    """The barrier constants and launch options every recurrent kernel takes for `plan`:
    one software-pipelining stage (the time loops must not be pipelined; inner loops set
    their own), cooperative launches for grid-barrier plans."""
    return dict(GRID_BARRIER=plan.cooperative, MAX_POLLS=MAX_BARRIER_POLLS, ABORT=BARRIER_ABORT,
                num_warps=plan.num_warps, num_stages=1,
                **({"launch_cooperative_grid": True} if plan.cooperative else {}))


# Triton specialises a pointer argument on whether it is a multiple of 16 (in 3.6 and 3.9):
# the planner and the static check compile the aligned variant (MockTensor), so every
# tensor a recurrent kernel is launched with is 16-byte aligned (`aligned`).
POINTER_ALIGNMENT = 16


def aligned(t: torch.Tensor) -> torch.Tensor:
    """t contiguous and 16-byte aligned: itself when it is, else a copy. torch allocates
    at least that aligned; a view at an offset may not be (h0[1] of a stacked state, a
    weight inside a flat buffer), and launching it would run a variant of the kernel
    (no divisibility hint) that was never planned or checked."""
    t = t.contiguous()
    return t if t.data_ptr() % POINTER_ALIGNMENT == 0 else t.clone()


def barrier_counters(launches: int, plan: LaunchPlan, device) -> List[torch.Tensor]:
    """Zeroed barrier counters (one per batch block) for each of `launches` launches, each
    launch's row 16-byte aligned; plans without a grid barrier share one unused row."""
    width = -(-plan.programs_b // 4) * 4   # int32s: a multiple of 16 bytes
    rows = torch.zeros(launches if plan.cooperative else 1, width, dtype=torch.int32, device=device)
    return [rows[i if plan.cooperative else 0, :plan.programs_b] for i in range(launches)]


def interpreter_plan(batch: int, hidden: int, product: Product, force_per_step: bool,
                     force_streamed: bool) -> LaunchPlan:
    """Under the interpreter (and for tests that force a mode): one program along the
    hidden dimension, so no grid barrier is ever needed. A resident slice must stay within
    Triton's largest tensor (TRITON_MAX_TENSOR_NUMEL elements, 2^20): the forward then
    holds it as up to MAX_K_CHUNKS chunks (LSTM H = 768: 4 x 256 of 4096 columns), and a
    slice too large even so (BPTT, whose tiles are one per gate, past H = 1024) streams."""
    block_b = min(_pow2_at_least_16(batch), 64)
    full_k = _pow2_at_least_16(hidden)
    tile_n = product.tile_n(full_k)
    chunks = 1
    while product.stacked and full_k // chunks * tile_n > tl.TRITON_MAX_TENSOR_NUMEL \
            and chunks < MAX_K_CHUNKS:
        chunks *= 2
    resident = not force_streamed and full_k // chunks * tile_n <= tl.TRITON_MAX_TENSOR_NUMEL
    return LaunchPlan(block_b, full_k, full_k // chunks if resident else 16, triton.cdiv(batch, block_b),
                      1, resident, not force_per_step, 4, tile_n, k_chunks=chunks if resident else 1,
                      reason="interpreter")


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot precision of the recurrent products, following torch's switch for cuDNN's
    RNNs: fp32 inputs use TF32 when torch.backends.cudnn.allow_tf32 is True (torch's
    default, and what nn.LSTM does on cuDNN), exact fp32 otherwise. 16-bit inputs
    multiply in their own type with fp32 accumulation (the value is then unused)."""
    if dtype == torch.float32 and torch.backends.cudnn.allow_tf32:
        return "tf32"
    return "ieee"


_PLANS: dict = {}


def cached_plan(key: tuple, chooser: Callable[[], LaunchPlan]) -> LaunchPlan:
    """One plan per (device, kernel, cell, dtype, B, H, ...) for the life of the process:
    planning compiles candidates, which must not happen per call."""
    if key not in _PLANS:
        _PLANS[key] = chooser()
    return _PLANS[key]
