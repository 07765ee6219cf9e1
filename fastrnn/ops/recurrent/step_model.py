"""Step-time model of recurrent kernels on sm_90 (H100 / H200): the one place that the
static GPU check (benchmarks/gpu_static.py), the planner (common.choose_plan) and the
model tables (benchmarks/step_model_table.py) take a modelled step time from.

A kernel design is described by parameters (`Design`): how many programs run a step,
their warps, batch block and units, where W_hh lives (registers, shared memory, or
streamed from L2 every step), the bytes a program exchanges with the others per step,
the synchronisations per step and their kind, the MMA work per warp, whether the next
step's input projection is loaded before the wait, and one launch per step or one
persistent launch. `step_time` adds the latencies on one step's critical path:

    launches x LAUNCH_US                       (per-step designs only)
  + syncs x cost of the kind                   (grid barrier, flags in the data, ...)
  + exchange hops x L2 latency                 (dependent loads of other programs' output)
  + input-projection load latency              (unless prefetched before the wait)
  + bytes through this SM's L2 port            (exchange, streamed weights, large stores;
                                                overlapped with the MMA when the K loop is
                                                software-pipelined)
  + weights read from shared memory
  + the MMA: the longer of its dependent chain and its issue time per sub-partition
  + cross-warp reductions through shared memory
  + the gate math (instruction issue or its dependent chain)
  + STEP_OVERHEAD_CYCLES                        (loop, layout conversions, CTA barriers)
  + the anchor's own share of input/weight GEMMs (when a published figure includes them)

Every constant names its source. Figures measured on an H100 PCIe (114 SMs, 1.755 GHz)
are kept in cycles and converted at CLOCK_GHZ. Two constants are not pinned by any
published microbenchmark on sm_90, and are chosen so that the model lands on the
published step times (benchmarks/results/latency_model_calibration.md, reproduced by
tests/test_step_model.py): STEP_OVERHEAD_CYCLES and LAUNCH_US (see their comments).

Pure Python: no torch, no Triton. Sizes in bytes, times in cycles or microseconds as named.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Dict, List, Optional, Tuple

# ------------------------------------------------------------------ the machine (sm_90)

# SM clock at which the dense fp16 peak is quoted: 989.4 TFLOP/s = 132 SMs x 2048 FMA/clk x 2
# x 1.83 GHz (NVIDIA H100 whitepaper: 132 SMs on SXM5, twice A100's 1024 fp16 FMA/clk/SM).
CLOCK_GHZ = 1.83
SMS = 132                           # H100 SXM5 / H200 (NVIDIA datasheets)
SUB_PARTITIONS = 4                  # per SM, each with its own tensor core (H100 whitepaper)

# L2 load latency as a tile sees it. lenLRX/HopperTest l2_test/mem_fg_all.csv (H100 PCIe,
# pointer chase): 222-266 cycles to the near L2 partition, 377-443 to the far one, lines
# alternating; l2_ldst_dyn_latency_test: 398-483 cycles under full load. A tile spans both
# partitions, so its load completes at the far latency.
L2_LATENCY_CYCLES = 450
# HBM load latency (an L2 miss): the step's input projection, or FlashRNN's Wx, is read
# from HBM when the whole sequence's projection (T x B x 4H) exceeds the 50 MB L2.
# mem_fg_all.csv's cold first access: 551 cycles; published overviews give 400-800 cycles
# (H100 SXM: "~600 cycles"). [no H100 pointer-chase to DRAM at hand: a range, 600 taken]
HBM_LATENCY_CYCLES = 600
# L2 -> SM bandwidth per SM when every SM loads: 7.33 TB/s (lenLRX l2_bw_test_result.txt,
# float4 loads, H100 PCIe) / 114 SMs / 1.755 GHz = 36.6 B/clk. Taken as the per-SM limit
# whatever the number of SMs loading (no published single-SM figure).
L2_BYTES_PER_CYCLE_PER_SM = 7.33e12 / 114 / 1.755e9
# Shared memory: 32 banks x 4 B per clock per SM (NVIDIA CUDA programming guide, compute
# capability 9.0); latency ~30 cycles (Luo et al., arXiv 2402.13499, H800).
SMEM_BYTES_PER_CYCLE = 128
SMEM_LATENCY_CYCLES = 30

# mma.sync (what Triton emits for tiles of fewer than 64 rows): m16n8k16 fp16/bf16 with fp32
# accumulation is 2048 MACs. Hopper runs mma.sync at A100's per-SM rate, 1024 MAC/clk
# (Luo et al., arXiv 2402.13499: legacy mma reaches about half of wgmma's dense peak), so
# one sub-partition issues one every 8 cycles; tf32 (m16n8k8) at half the rate.
MMA_ISSUE_CYCLES = {"fp16": 8, "bf16": 8, "tf32": 8}
MMA_K = {"fp16": 16, "bf16": 16, "tf32": 8}
# Latency of one mma.sync whose accumulator feeds the next: ~32 cycles on Ampere (A100,
# m16n8k16 fp32-accumulate, from the issue rate and pipe depth: Sun et al., "Dissecting
# Tensor Cores via Microbenchmarks", TPDS 2022). [not measured on sm_90 here]
MMA_LATENCY_CYCLES = 32
# Exact fp32 products run on the FMA pipes: 128 fp32 lanes per SM (H100 whitepaper).
FMA_LANES_PER_SUB_PARTITION = 32

# One L2 atomic round trip (arrive, or one poll): taken as the far L2 latency.
ATOMIC_ROUND_TRIP_CYCLES = L2_LATENCY_CYCLES
# A counter grid barrier (fastrnn's grid_barrier; CUDA cooperative groups' grid.sync()
# works the same way): a release fence that waits for the step's stores to be
# acknowledged, the arriving atomic, and the poll that sees the last arrival: three L2
# round trips, ~1350 cycles = 0.74 us. The only published grid.sync figure is 0.73 us
# per sync on an RTX 3090 (Infatoshi/MegaQwen experiments/RESULTS.md); none for H100.
BARRIER_ROUND_TRIPS = 3
# Readiness flags carried in the exchanged data (Lamport timestamps, Zhu et al. arXiv
# 1804.10223; NCCL's LL protocol): the consumer's data load is the check. What remains is
# the producer's store reaching L2 and, on average, the poll that just missed it: one round trip.
FLAG_ROUND_TRIPS = 1
BAR_SYNC_CYCLES = 20                # bar.sync of one CTA (Luo et al. 2402.13499 order of magnitude)

# Gate math per (row, unit) cell and thread: instructions, counted from the formulas as
# Triton compiles them (a sigmoid is ex2 + add + an IEEE fp32 division, ~13 instructions;
# a tanh through exp ~16): LSTM 3 sigmoids + 2 tanh + the gate sums and state update; GRU
# 2 sigmoids + 1 tanh + blend; Elman 1 tanh. BPTT also forms the gate gradients. [derived]
POINTWISE_INSTRUCTIONS = {"lstm": 90, "gru": 55, "rnn": 20}
BPTT_POINTWISE_FACTOR = 1.5
# The dependent chain of one cell (sigmoid -> product -> tanh -> product, each MUFU op
# ~20 cycles plus FMAs). [derived]
POINTWISE_CHAIN_CYCLES = 150

# What a step costs beyond the terms above: the loop, address arithmetic, converting the
# MMA's accumulator layout through shared memory, CTA barriers, predicated stores.
# [fitted] No microbenchmark isolates it: chosen so that the anchors below land within
# +-25% (benchmarks/results/latency_model_calibration.md); FlashRNN's Triton kernel, which
# has no exchange and no grid sync, is the anchor that pins it most directly.
STEP_OVERHEAD_CYCLES = 900
# One kernel launch per step from a host loop (no CUDA graph): the gap between two
# dependent small kernels. [fitted] to FlashRNN's alternating kernel (cuBLAS GEMM +
# pointwise kernel per step, 10.5 us/step); published bounds: 1.3 us per kernel under CUDA
# graphs on H100 (Hazy Research, "Look Ma, No Bubbles", 2025), 5.6 us for a trivial
# elementwise launch from PyTorch on an H20 (flagos-ai/FlagGems PR 5291).
LAUNCH_US = 4.3
# Dense GEMMs outside the recurrence (input projection, weight gradients): 77.3 GFLOP at the
# headline shape take 0.1-0.13 ms at 600-800 TFLOP/s (shared/notes/gpu_anchors_and_floor.md).
GEMM_TFLOPS = 700.0

# The model's resolution: plans whose modelled times differ by less are not told apart
# (the planner then keeps its candidates' order). About 5% of a step at the headline
# shape, well inside the +-25% of the calibration. [judgement]
RESOLUTION_US = 0.1

# Where W_hh lives during the steps.
REGISTERS = "registers"
SHARED = "shared memory"
L2 = "L2 (streamed)"
# Kinds of synchronisation between programs, per step.
NONE = "none"
CTA = "CTA barrier"
BARRIER = "grid barrier (L2 atomics)"
GRID_SYNC = "cooperative grid.sync"
FLAGS = "flags in the data"


def _sync_cycles(kind: str) -> float:
    return {NONE: 0.0, CTA: BAR_SYNC_CYCLES,
            BARRIER: BARRIER_ROUND_TRIPS * ATOMIC_ROUND_TRIP_CYCLES + 2 * BAR_SYNC_CYCLES,
            GRID_SYNC: BARRIER_ROUND_TRIPS * ATOMIC_ROUND_TRIP_CYCLES + 2 * BAR_SYNC_CYCLES,
            FLAGS: FLAG_ROUND_TRIPS * ATOMIC_ROUND_TRIP_CYCLES + BAR_SYNC_CYCLES}[kind]


@dataclasses.dataclass(frozen=True)
class Design:
    """One kernel design, per step and per program (a CTA)."""
    name: str
    cell: str                    # "lstm" | "gru" | "rnn"
    direction: str               # "forward" | "backward"
    programs: int                # programs running one step at once
    warps: int                   # per program
    block_b: int                 # batch rows per program
    units: int                   # hidden units per program (its own outputs)
    mma_kind: str                # "fp16" | "bf16" | "tf32" | "fma" (exact fp32)
    mma_per_warp: int            # MMA instructions per warp per step (padding included)
    mma_chain: int               # of them, dependent through one accumulator
    macs: int                    # multiply-adds per program per step (for "fma")
    weights: str                 # REGISTERS | SHARED | L2
    weight_bytes: int            # W_hh bytes per program (read per step unless REGISTERS)
    exchange_bytes: int          # bytes per program per step of other programs' output
    exchange_dtype: str          # what they are: "fp16", "fp32", ...
    sync: str                    # NONE | CTA | BARRIER | GRID_SYNC | FLAGS
    syncs: int = 1               # per step
    exchange_hops: int = 1       # dependent rounds of exchange loads per step
    store_bytes: int = 0         # large per-step stores through the L2 port (partials)
    reductions: int = 0          # cross-warp reductions through shared memory per step
    input_prefetched: bool = False   # next step's input projection loaded before the wait
    pipelined: bool = False      # streamed weights overlap the MMA (software-pipelined K loop)
    launches: int = 0            # kernel launches per step (0: one persistent launch)
    gemm_gflop_per_step: float = 0.0  # GEMM work outside the recurrence the figure includes

    @property
    def programs_per_sm(self) -> int:
        return max(1, math.ceil(self.programs / SMS))


@dataclasses.dataclass(frozen=True)
class StepTime:
    """Modelled step time of a design and its terms (microseconds)."""
    design: Design
    terms: Dict[str, float]

    @property
    def us(self) -> float:
        return sum(self.terms.values())


def _us(cycles: float) -> float:
    return cycles / (CLOCK_GHZ * 1e3)


def step_time(d: Design) -> StepTime:
    """The modelled time of one step of design `d` (see the module docstring)."""
    per_sm = d.programs_per_sm
    # Warps that share one sub-partition's issue slot (tensor core, FMA pipes, MUFU).
    share = max(1.0, per_sm * d.warps / SUB_PARTITIONS)
    streamed = d.weight_bytes if d.weights == L2 else 0
    transfer = per_sm * (d.exchange_bytes + streamed + d.store_bytes) / L2_BYTES_PER_CYCLE_PER_SM
    if d.mma_kind == "fma":
        mma = per_sm * d.macs / (FMA_LANES_PER_SUB_PARTITION * min(SUB_PARTITIONS, per_sm * d.warps))
    else:
        mma = max(d.mma_chain * MMA_LATENCY_CYCLES, share * d.mma_per_warp * MMA_ISSUE_CYCLES[d.mma_kind])
    if d.pipelined:
        transfer, mma = max(transfer, mma), 0.0
    smem = per_sm * d.weight_bytes / SMEM_BYTES_PER_CYCLE if d.weights == SHARED else 0.0
    cells = math.ceil(d.block_b * d.units / (32 * d.warps))
    instructions = POINTWISE_INSTRUCTIONS[d.cell] * (BPTT_POINTWISE_FACTOR if d.direction == "backward" else 1)
    pointwise = max(POINTWISE_CHAIN_CYCLES, share * cells * instructions)
    terms = {
        "launch": d.launches * LAUNCH_US,
        "sync": _us(d.syncs * _sync_cycles(d.sync)),
        "exchange latency": _us(d.exchange_hops * L2_LATENCY_CYCLES) if d.exchange_bytes else 0.0,
        "input latency": 0.0 if d.input_prefetched else _us(HBM_LATENCY_CYCLES),
        "L2 bytes": _us(transfer),
        "smem weights": _us(smem),
        "mma": _us(mma),
        "reductions": _us(d.reductions * (2 * SMEM_LATENCY_CYCLES + BAR_SYNC_CYCLES)),
        "pointwise": _us(pointwise),
        "overhead": _us(STEP_OVERHEAD_CYCLES),
        "gemm share": d.gemm_gflop_per_step * 1e3 / GEMM_TFLOPS,
    }
    return StepTime(d, terms)


# ------------------------------------------------------------------ fastrnn's launch plans


GATES = {"lstm": 4, "gru": 3, "rnn": 1}
# common.LSTM, GRU, RNN_TANH, RNN_RELU (tests/test_step_model.py checks they agree).
_CELLS = {0: "lstm", 1: "gru", 2: "rnn", 3: "rnn"}


def cell_name(cell: int) -> str:
    """The model's name of one of common's cell constants."""
    return _CELLS[cell]


def operand_kind(dtype: str, precision: str = "ieee") -> str:
    """The product's operand type: "fp16", "bf16", or for "fp32" inputs "tf32" (precision
    "tf32", torch.backends.cudnn.allow_tf32) or "fma" (exact fp32 on the FMA pipes)."""
    if dtype != "fp32":
        return dtype
    return "tf32" if precision == "tf32" else "fma"


def _pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def plan_design(plan, cell: str, direction: str, element_size: int, kind: str, H: int,
                name: str = "fastrnn", exchange_size: Optional[int] = None,
                exchange_scaled: bool = False) -> Design:
    """The Design of one of fastrnn's launch plans (common.LaunchPlan, read by attribute).

    cell: "lstm" | "gru" | "rnn"; direction: "forward" | "backward"; element_size: bytes
    of the input dtype (2 or 4); kind: the product's operand type ("fp16", "bf16", "tf32",
    or "fma" for exact fp32); H: hidden size. The forward multiplies h_{t-1} (block_b x H)
    by the W_hh rows of every gate of its units (N = plan.tile_n, K = H); BPTT multiplies
    the gate gradients (block_b x gates*H, exchanged in exchange_size bytes each: required
    for BPTT, from backward.exchange_dtype, plus with exchange_scaled one fp32 power of two
    per row from each program, backward.exchange_scaled; the forward exchanges h in
    element_size) by W_hh[:, units]
    (N = plan.tile_n, K = gates*H), its warps either each on a column block or, with
    plan.split > 1, each on a slice of every K chunk (then summed through shared memory).
    A streamed plan reads its W_hh slice from L2 every step in a K loop of two pipeline
    stages; a resident one holds it in registers (K padded to a power of two)."""
    G = GATES[cell]
    forward = direction == "forward"
    k = H if forward else G * H
    if plan.resident:
        k_padded = _pow2(max(16, H)) * (1 if forward else G)
    else:
        k_padded = math.ceil(H / plan.block_k) * plan.block_k * (1 if forward else G)
    split = max(1, getattr(plan, "split", 1))
    mma_k = MMA_K.get(kind, 16)
    tiles = max(1, plan.block_b // 16) * max(1, plan.tile_n // 8)
    if split > 1:
        tiles_per_warp, chain = tiles, k_padded // split // mma_k
    else:
        tiles_per_warp, chain = max(1, tiles // plan.num_warps), k_padded // mma_k
    if forward:
        exchange_size = element_size
    elif exchange_size is None:
        raise ValueError("plan_design: BPTT needs exchange_size (bytes per exchanged gate gradient)")
    return Design(
        name=name, cell=cell, direction=direction, programs=plan.programs, warps=plan.num_warps,
        block_b=plan.block_b, units=plan.block_h, mma_kind=kind,
        mma_per_warp=tiles_per_warp * chain, mma_chain=chain,
        macs=plan.block_b * plan.tile_n * k_padded,
        weights=REGISTERS if plan.resident else L2,
        weight_bytes=G * plan.block_h * H * element_size,
        exchange_bytes=plan.block_b * k * exchange_size
        + (plan.block_b * math.ceil(H / plan.block_h) * 4 if exchange_scaled and not forward else 0),
        exchange_dtype={2: "16-bit", 4: "fp32"}[exchange_size],
        sync=BARRIER if plan.cooperative else CTA,
        reductions=1 if split > 1 else 0,
        pipelined=not plan.resident,
        launches=0 if plan.persistent else 1)


def plan_step_us(plan, cell: str, direction: str, element_size: int, kind: str, H: int,
                 exchange_size: Optional[int] = None, exchange_scaled: bool = False) -> float:
    """Modelled microseconds per step of one of fastrnn's plans (see plan_design)."""
    return step_time(plan_design(plan, cell, direction, element_size, kind, H, exchange_size=exchange_size,
                                 exchange_scaled=exchange_scaled)).us


# ------------------------------------------------------------------ published designs


def gemm_gflop(B: int, I: int, H: int, G: int = 4) -> float:
    """GFLOP of one (B x I) @ (I x G*H) GEMM per step: the input projection, or one of
    BPTT's weight-gradient / dx GEMMs."""
    return 2 * B * I * G * H / 1e9


def cudnn_persistent(B: int = 16, H: int = 768, direction: str = "forward") -> Design:
    """cuDNN's CUDNN_RNN_ALGO_PERSIST_STATIC as PyTorch calls it for fp16 nn.LSTM (closed
    source). Its design as published for persistent RNNs (Diamos et al., ICML 2016;
    baidu-research/persistent-rnn): W_hh in registers over every SM, rows split across
    CTAs, h exchanged through global memory in the storage type (fp16), one global
    barrier per step, warps splitting K then reducing. Assumed here: 128 CTAs of 8 warps
    (6 units, 24 gate rows padded to 32 per CTA at H = 768), the input projection loaded
    before the wait (it does not depend on the exchange). Backward: the same split over the transposed weights, exchanging the
    fp16 gate gradients. The timed figure includes the input GEMM (forward) and the
    weight-gradient and dx GEMMs (backward)."""
    G, programs, warps = 4, 128, 8
    units = math.ceil(H / programs)
    rows = math.ceil(G * units / 16) * 16                       # gate rows, padded to the MMA
    forward = direction == "forward"
    k = H if forward else G * H
    chain = k // 16 // warps
    tiles = max(1, B // 16) * (rows // 8 if forward else max(2, units // 8 * 2))
    return Design(
        name="cuDNN persistent (PERSIST_STATIC)", cell="lstm", direction=direction,
        programs=programs, warps=warps, block_b=B, units=units, mma_kind="fp16",
        mma_per_warp=tiles * chain, mma_chain=chain, macs=B * rows * k,
        weights=REGISTERS, weight_bytes=G * units * H * 2,
        exchange_bytes=B * k * 2, exchange_dtype="fp16", sync=BARRIER, reductions=1,
        input_prefetched=True, gemm_gflop_per_step=gemm_gflop(B, H, H) * (1 if forward else 3))


# FlashRNN's fused kernel loads each wmma A fragment (h, or the gate gradients) from global
# memory inside its K loop (fused/flashrnn_fused_forward.cu l.400-415); nvcc unrolls such a
# loop by 4 by default, so the loads come in rounds of 4 that each wait for L2. [assumption:
# the unroll factor is read from nvcc's default, not from FlashRNN's SASS]
FRAGMENT_LOADS_PER_ROUND = 4


def _fragment_rounds(chain: int) -> int:
    return math.ceil(chain / FRAGMENT_LOADS_PER_ROUND)


def flashrnn_fused(B: int = 16, head_dim: int = 768, heads: int = 1,
                   direction: str = "forward") -> Design:
    """FlashRNN's fused CUDA kernel (NX-AI/flashrnn @ d73fb52, fused/flashrnn_fused_*.cu),
    bf16, with the tiling its ConstrINT solver picks for an H100 (132 SMs, 227 KB smem;
    solver rerun from flashrnn.py's constraints): forward 96/heads CTAs per head along the
    gate rows, 8 warps (2 along gate rows x 4 along K, 16x16x16 wmma), R cached in
    registers; per step it writes fp32 gate partials to a global buffer, grid.sync(),
    reads them back with Wx (not prefetched), the pointwise, writes h, grid.sync(): two
    grid syncs; the h fragments are loaded inside the K loop (_fragment_rounds). Backward: 48 CTAs of 16 hidden units, 8 warps
    along the gates (K = 4*768 / 8 per warp), the same two syncs. The timed figures
    exclude the input projection."""
    G, forward = 4, direction == "forward"
    if forward:
        programs = 96
        warps, k_warps = 8, 4
        chain = head_dim // k_warps // 16
        rows = G * head_dim * heads // programs                     # gate rows per CTA
        return Design(
            name=f"FlashRNN fused CUDA ({heads}x{head_dim})", cell="lstm", direction=direction,
            programs=programs, warps=warps, block_b=B, units=rows // G, mma_kind="bf16",
            mma_per_warp=2 * chain, mma_chain=chain, macs=B * rows * head_dim,
            weights=REGISTERS, weight_bytes=rows * head_dim * 2,
            exchange_bytes=B * head_dim * 2 + B * rows * 4, exchange_dtype="bf16 h, fp32 gates",
            store_bytes=B * rows * 4,
            sync=GRID_SYNC, syncs=2, exchange_hops=1 + _fragment_rounds(chain), reductions=1)
    programs, warps = 48, 8
    units = head_dim * heads // programs
    k = G * head_dim
    chain = k // warps // 16
    return Design(
        name=f"FlashRNN fused CUDA ({heads}x{head_dim})", cell="lstm", direction=direction,
        programs=programs, warps=warps, block_b=B, units=units, mma_kind="bf16",
        mma_per_warp=2 * chain, mma_chain=chain, macs=B * units * k,
        weights=REGISTERS, weight_bytes=units * k * 2,
        exchange_bytes=B * k * 2 + B * units * 4 * warps, exchange_dtype="bf16 dgates",
        store_bytes=B * units * G * 4,
        sync=GRID_SYNC, syncs=2, exchange_hops=1 + _fragment_rounds(chain), reductions=1,
        gemm_gflop_per_step=gemm_gflop(B, head_dim * heads, head_dim, G) / heads)


def flashrnn_triton(B: int = 16, head_dim: int = 32, heads: int = 24) -> Design:
    """FlashRNN's Triton kernel (triton_fused/lstm_fw.py @ d73fb52): one program per
    (head, batch block of 16), 4 warps, num_stages 1; the head's R (4 x D x D) loaded
    before the time loop; per step four Wx tile loads (not prefetched: a `for` loop of one
    stage), four dots of K = D, the gate math, stores of h and c. Block-diagonal W_hh: no
    exchange between programs and no grid sync. Excludes the input projection."""
    programs = heads * math.ceil(B / 16)
    tiles_per_warp = max(1, (16 // 16) * (head_dim // 8) // 4)
    chain = max(1, head_dim // 16)
    return Design(
        name=f"FlashRNN Triton ({heads}x{head_dim})", cell="lstm", direction="forward",
        programs=programs, warps=4, block_b=16, units=head_dim, mma_kind="bf16",
        mma_per_warp=4 * tiles_per_warp * chain, mma_chain=chain, macs=16 * 4 * head_dim * head_dim,
        weights=REGISTERS, weight_bytes=4 * head_dim * head_dim * 2,
        exchange_bytes=0, exchange_dtype="-", sync=NONE, syncs=0)


def per_step_library(name: str, B: int = 16, H: int = 768, kind: str = "bf16",
                     element_size: int = 2, launches: int = 2, cell: str = "lstm",
                     direction: str = "forward") -> Design:
    """A host loop launching a GEMM (h @ W_hh^T over 96 CTAs, W_hh read from L2) and a
    pointwise kernel per step: FlashRNN's `cuda` "alternating" kernel, Haste, and cuDNN's
    CUDNN_RNN_ALGO_STANDARD (what PyTorch runs for bf16, fp32, GRU and the shapes outside
    PERSIST_STATIC). BPTT: the same with the gate gradients (K = gates x H)."""
    G, programs, warps = GATES[cell], 96, 4
    rows = max(8, math.ceil(G * H / programs))
    k = H if direction == "forward" else G * H
    chain = k // MMA_K.get(kind, 16)
    return Design(
        name=name, cell=cell, direction=direction, programs=programs, warps=warps,
        block_b=B, units=max(1, rows // G), mma_kind=kind,
        mma_per_warp=max(1, math.ceil(B / 16) * rows // 8 // warps) * chain, mma_chain=chain,
        macs=B * rows * k, weights=L2, weight_bytes=rows * H * element_size,
        exchange_bytes=B * k * element_size, exchange_dtype="fp32" if element_size == 4 else "16-bit",
        sync=NONE, syncs=0, pipelined=True, launches=launches)


@dataclasses.dataclass(frozen=True)
class Anchor:
    design: Design
    published_us: float          # per step
    source: str


def anchors() -> List[Anchor]:
    """Published step times (H100 SXM, B = 16, T = 1024, H = 768; per step = ms / 1024):
    FlashRNN's head_dim--lstm.svg at NX-AI/flashrnn @ d73fb52 (kernel_speed_benchmark.py:
    do_bench, warmup 25, rep 1000), see shared/notes/gpu_anchors_and_floor.md. Backward =
    (fw+bw - fw) / 1024."""
    svg = "FlashRNN head_dim--lstm.svg (arXiv 2412.07752)"
    return [
        Anchor(cudnn_persistent(), 2.01e3 / 1024, f"{svg}: nn.LSTM fp16 2.01 ms fw"),
        Anchor(cudnn_persistent(direction="backward"), (5.19 - 2.01) * 1e3 / 1024,
               f"{svg}: nn.LSTM fp16 5.19 ms fw+bw"),
        Anchor(flashrnn_fused(), 4.87e3 / 1024, f"{svg}: cuda_fused 768x1 4.87 ms fw"),
        Anchor(flashrnn_fused(head_dim=64, heads=12), 3.10e3 / 1024, f"{svg}: cuda_fused 64x12 3.10 ms fw"),
        Anchor(flashrnn_fused(direction="backward"), (13.61 - 4.87) * 1e3 / 1024,
               f"{svg}: cuda_fused 768x1 13.61 ms fw+bw"),
        Anchor(flashrnn_triton(), 1.44e3 / 1024, f"{svg}: triton_fused 32x24 1.44 ms fw"),
        Anchor(per_step_library("FlashRNN alternating (cuBLAS + pointwise)"), 10.79e3 / 1024,
               f"{svg}: cuda 768x1 10.79 ms fw"),
        Anchor(per_step_library("Haste (per-step cuBLAS, fp32)", kind="fma", element_size=4),
               18.41e3 / 1024, f"{svg}: haste fp32 18.41 ms fw"),
    ]


# ------------------------------------------------------------------ designs to weigh


def row_split(name: str, cell: str, direction: str, B: int, H: int, programs_h: int, warps: int,
              k_split: int = 1, weights: str = REGISTERS, sync: str = BARRIER,
              exchange_size: int = 2, batch_groups: int = 1, reduce_scatter: bool = False,
              input_prefetched: bool = False, kind: str = "fp16", element_size: int = 2) -> Design:
    """A persistent row-split design (fastrnn's, cuDNN's) by its levers.

    programs_h programs share the hidden units (all gates of ceil(H / programs_h) units
    each) for each of `batch_groups` batch groups (B split evenly; each group's programs
    hold a full copy of W_hh); `k_split` of the `warps` split the reduction and sum through
    shared memory (weights not replicated across warps). The forward exchanges h in
    `exchange_size` bytes per element. BPTT exchanges the gate gradients of the batch block
    (exchange_size bytes: 4 for fp32, 2 for fp16 with power-of-two row scaling or bf16), or
    with reduce_scatter each program multiplies its own units' gate gradients by its rows
    of W_hh into fp32 partial dh for all H, stores them, and after the barrier reads and
    sums its units' slice from every program."""
    G = GATES[cell]
    units = math.ceil(H / programs_h)
    block_b = math.ceil(B / batch_groups)
    m_tiles = math.ceil(block_b / 16)
    mma_k = MMA_K.get(kind, 16)
    store = 0
    if direction == "forward":
        k, n = H, G * units
        exchange = block_b * H * exchange_size
    elif reduce_scatter:
        k, n = G * units, H
        store = block_b * H * 4
        exchange = programs_h * block_b * units * 4
    else:
        k, n = G * H, units
        exchange = block_b * G * H * exchange_size
    tiles = m_tiles * math.ceil(n / 8)
    chain = max(1, math.ceil(k / k_split / mma_k))
    per_warp = max(1, math.ceil(tiles * k_split / warps)) * chain
    return Design(
        name=name, cell=cell, direction=direction, programs=programs_h * batch_groups, warps=warps,
        block_b=block_b, units=units, mma_kind=kind, mma_per_warp=per_warp, mma_chain=chain,
        macs=block_b * n * k, weights=weights, weight_bytes=G * units * H * element_size,
        exchange_bytes=exchange,
        exchange_dtype="fp32 partial dh" if reduce_scatter else {2: "16-bit", 4: "fp32"}[exchange_size],
        store_bytes=store, sync=sync, reductions=1 if k_split > 1 else 0,
        input_prefetched=input_prefetched, pipelined=weights == L2)


def headline_levers(cell: str = "lstm", B: int = 16, H: int = 768) -> List[Tuple[str, Design]]:
    """The levers of issue 19 part 2 at one shape, each added to the one before (forward,
    then BPTT), as designs the model can time."""
    fw = [
        ("W_hh in registers, 192 programs of 4 units (2 per SM), K split over 4 warps",
         row_split("resident 192", cell, "forward", B, H, 192, 4, k_split=4)),
        ("... over 128 programs of 6 units (1 per SM)",
         row_split("resident 128", cell, "forward", B, H, 128, 4, k_split=4)),
        ("... + next step's input projection loaded before the wait",
         row_split("resident 128 + prefetch", cell, "forward", B, H, 128, 4, k_split=4, input_prefetched=True)),
        ("... + ready flags in h instead of the grid barrier",
         row_split("resident 128 + prefetch + flags", cell, "forward", B, H, 128, 4, k_split=4,
                   input_prefetched=True, sync=FLAGS)),
    ]
    bw = [
        ("W_hh^T in registers, 96 programs of 8 units, K split over 8 warps, fp32 gate gradients",
         row_split("resident 96 fp32", cell, "backward", B, H, 96, 8, k_split=8, exchange_size=4)),
        ("... gate gradients exchanged in 16 bits",
         row_split("resident 96 16-bit", cell, "backward", B, H, 96, 8, k_split=8)),
        ("... reduce-scatter of fp32 partial dh instead",
         row_split("resident 96 reduce-scatter", cell, "backward", B, H, 96, 8, k_split=8, reduce_scatter=True)),
        ("16-bit gate gradients, batch split in 2 groups of 64 programs (12 units)",
         row_split("resident 2x64 16-bit", cell, "backward", B, H, 64, 8, k_split=8, batch_groups=2)),
        ("... + prefetch of the step's saved gates + flags",
         row_split("resident 2x64 16-bit + prefetch + flags", cell, "backward", B, H, 64, 8, k_split=8,
                   batch_groups=2, input_prefetched=True, sync=FLAGS)),
    ]
    return fw + bw
