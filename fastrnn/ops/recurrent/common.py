"""Pieces shared by the recurrent Triton kernels: cell ids, the grid barrier, launch plans.

A recurrent kernel runs a range of time steps in one launch. Its grid is
(programs along batch, programs along hidden); each program owns BLOCK_B batch rows and
BLOCK_H hidden units (all gates of those units), loads its slice of W_hh once and keeps it
on chip (Triton places the dot operand in shared memory or registers) across the steps of
the launch. When the hidden size is split across
programs, they exchange h_t (forward) or the gate gradients (backward) through global
memory and meet at a grid barrier once per step. The barrier needs every program of a
batch block resident at once, so a persistent launch never has more programs than SMs;
otherwise the launcher runs one step per launch (the launch boundary is the barrier).
When even the smallest slice of W_hh is too large to keep on chip, the kernels stream it
from L2 in K chunks every step instead (W_hh of a few thousand units fits in L2).
Under the Triton interpreter programs run one after another, so a barrier would spin
forever: there the plan always uses a single program along the hidden dimension.
"""
import dataclasses
import os

import torch
import triton
import triton.language as tl

LSTM = 0
GRU = 1
GATES = {LSTM: 4, GRU: 3}
# Floats of the workspace per hidden unit and step: LSTM i,f,g,o,c; GRU r,z,n,hn.
WORKSPACE_WIDTH = {LSTM: 5, GRU: 4}

# A barrier wait gives up after this many polls and raises the error flag instead of
# hanging the GPU (a correct wait takes a few hundred polls at most).
MAX_BARRIER_SPINS = 1 << 26
# Bytes of W_hh one program keeps on chip across steps (a sm_80/sm_90 block has up to
# 227 KiB of shared memory, and the h tile needs room too); past this the plan splits the
# hidden dimension further, then streams W_hh from L2 instead.
MAX_RESIDENT_WEIGHT_BYTES = 128 * 1024


@triton.jit
def grid_barrier(counter_ptr, target, error_ptr, MAX_SPINS: tl.constexpr):
    """Wait until `target` arrivals are counted at counter_ptr (one per program per step).

    The release add publishes this program's stores (made visible to all its threads by
    the CTA barrier first); the acquire loads make the other programs' stores visible.
    """
    tl.debug_barrier()
    tl.atomic_add(counter_ptr, 1, sem="release", scope="gpu")
    count = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
    spins = 0
    while (count < target) & (spins < MAX_SPINS):
        count = tl.atomic_add(counter_ptr, 0, sem="acquire", scope="gpu")
        spins += 1
    if count < target:
        tl.atomic_xchg(error_ptr, 1)
    tl.debug_barrier()


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

    @property
    def grid(self):
        return (self.programs_b, self.programs_h)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _pow2_at_least_16(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


# Tiles of the streamed mode, for hidden sizes whose W_hh slices do not fit in registers:
# each step reads W_hh from L2 (it fits there up to H of a few thousand) in K chunks.
STREAM_BLOCK_K = 64
STREAM_BLOCK_H = 64


def plan_launch(batch: int, hidden: int, gates: int, device: torch.device,
                element_size: int = 2, force_per_step: bool = False,
                force_streamed: bool = False) -> LaunchPlan:
    """Choose tiles and grid for `batch` rows and `hidden` units of `gates` gates each; the
    recurrent products reduce over `hidden` per gate (forward: h W_hh^T, backward:
    dgates W_hh, one gate block at a time)."""
    block_b = min(_pow2_at_least_16(batch), 64)
    programs_b = triton.cdiv(batch, block_b)
    full_k = _pow2_at_least_16(hidden)
    if interpreting() or device.type != "cuda":
        block_k = 16 if force_streamed else full_k
        return LaunchPlan(block_b, full_k, block_k, programs_b, 1, not force_streamed,
                          not force_per_step, 4)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    max_weights = MAX_RESIDENT_WEIGHT_BYTES // element_size
    block_h = full_k
    while block_h > 16 and gates * block_h * full_k > max_weights:
        block_h //= 2
    resident = gates * block_h * full_k <= max_weights and not force_streamed
    if resident:
        block_k = full_k
        # More warps, more registers for the resident tile: 4 warps spill past ~64 KiB.
        num_warps = 8 if gates * block_h * block_k * element_size > 64 * 1024 else 4
    else:
        block_h, block_k = min(STREAM_BLOCK_H, full_k), STREAM_BLOCK_K
        num_warps = 8 if gates * block_b * block_h > 8192 else 4
    programs_h = triton.cdiv(hidden, block_h)
    # The grid barrier needs every program resident at once: at most one per SM.
    persistent = programs_h * programs_b <= sms and not force_per_step
    return LaunchPlan(block_b, block_h, block_k, programs_b, programs_h, resident, persistent,
                      num_warps)
