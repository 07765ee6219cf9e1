"""Pieces shared by the recurrent Triton kernels: cell ids, the grid barrier, launch plans.

A recurrent kernel runs a range of time steps in one launch. Its grid is
(programs along batch, programs along hidden); each program owns BLOCK_B batch rows and
BLOCK_H hidden units (all gates of those units), loads its slice of W_hh once and keeps it
in registers across the steps of the launch. When the hidden size is split across
programs, they exchange h_t (forward) or the gate gradients (backward) through global
memory and meet at a grid barrier once per step. The barrier needs every program of a
batch block resident at once, so a persistent launch never has more programs than SMs;
otherwise the launcher runs one step per launch (the launch boundary is the barrier).
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
# Bytes of W_hh one program keeps in registers across steps (half of an SM's 256 KiB
# register file); beyond this the tile spills, so the plan splits the hidden dimension
# further or runs one step per launch.
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
    block_k: int        # padded reduction length of the recurrent matmul
    programs_b: int
    programs_h: int
    persistent: bool    # all steps in one launch (else one launch per step)
    num_warps: int

    @property
    def grid(self):
        return (self.programs_b, self.programs_h)


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _pow2_at_least_16(n: int) -> int:
    return max(16, triton.next_power_of_2(n))


def plan_launch(batch: int, hidden: int, reduction: int, gates: int, device: torch.device,
                force_per_step: bool = False, element_size: int = 2) -> LaunchPlan:
    """Choose tiles and grid for `batch` rows, `hidden` units of `gates` gates each, and a
    recurrent matmul of length `reduction` (hidden for the forward, gates*hidden backward)."""
    block_k = _pow2_at_least_16(reduction)
    block_b = min(_pow2_at_least_16(batch), 64)
    programs_b = triton.cdiv(batch, block_b)
    if interpreting() or device.type != "cuda":
        block_h = _pow2_at_least_16(hidden)
        return LaunchPlan(block_b, block_h, block_k, programs_b, 1, not force_per_step, 4)
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    max_weights = MAX_RESIDENT_WEIGHT_BYTES // element_size
    block_h = _pow2_at_least_16(hidden)
    while block_h > 16 and gates * block_h * block_k > max_weights:
        block_h //= 2
    programs_h = triton.cdiv(hidden, block_h)
    fits = gates * block_h * block_k <= max_weights and programs_h * programs_b <= sms
    persistent = fits and not force_per_step
    # More warps, more registers for the resident tile: 4 warps spill past ~64 KiB of it.
    num_warps = 8 if gates * block_h * block_k * element_size > 64 * 1024 else 4
    return LaunchPlan(block_b, block_h, block_k, programs_b, programs_h, persistent, num_warps)

