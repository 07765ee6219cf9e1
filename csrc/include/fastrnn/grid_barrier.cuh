// A grid-wide barrier for persistent kernels: every block adds one to a global counter and
// waits until it reaches (round + 1) * gridDim.x. Only safe when every block of the grid is
// resident at once, which the launchers arrange with a cooperative launch.
//
// The wait is bounded, and a barrier that never completes is reported the way the Triton
// kernels report theirs (fastrnn/ops/recurrent/common.py): the block that gives up raises
// the counter to kBarrierAbort and sets the error flag; every block then leaves its kernel
// (grid_barrier returns false), and the binding raises a RuntimeError that names the cause
// (csrc/cuda/cuda_common.h). It never traps, which would end the process's CUDA context.
#pragma once

#include <cstdint>

namespace fastrnn::cuda {

// Polls before a wait gives up: about one to two seconds, a poll being a 256 ns sleep and
// an L2 atomic round trip (0.3-0.6 us on sm_80 / sm_90); a wait between two steps of a
// healthy launch takes microseconds.
constexpr unsigned long long kBarrierMaxPolls = 1ull << 21;
// The value the block that gives up raises the counter to, with an atomic max. Arrivals
// alone stay below it (plan_persistent admits at most kBarrierMaxArrivals in a launch),
// any number of aborts leave it there, and the arrivals after an abort add at most
// kBarrierMaxArrivals more: the unsigned counter never wraps.
constexpr unsigned int kBarrierAbort = 1u << 31;
constexpr unsigned long long kBarrierMaxArrivals = 1ull << 30;

// barrier[0]: the arrival counter, barrier[1]: the error flag (both zero before the
// launch). Returns true when every block arrived, false when the launch was aborted (this
// block polled kBarrierMaxPolls times in vain, or another block had aborted); the same
// value in every thread of the block, so a kernel may `return` on false.
__device__ __forceinline__ bool grid_barrier(unsigned int* barrier, unsigned int round) {
  bool ok = true;
  __syncthreads();
  if (threadIdx.x == 0) {
    const unsigned int target = (round + 1) * gridDim.x;
    __threadfence();  // release this block's writes before arriving
    unsigned int count = atomicAdd(barrier, 1u) + 1u;
    unsigned long long polls = 0;
    while (count < target && polls < kBarrierMaxPolls) {
      __nanosleep(256);
      count = atomicAdd(barrier, 0u);
      ++polls;
    }
    if (count < target) {
      atomicMax(barrier, kBarrierAbort);
      atomicExch(barrier + 1, 1u);
    }
    __threadfence();  // acquire the other blocks' writes
    ok = count >= target && count < kBarrierAbort;
  }
  // Waits for thread 0 and gives every thread its answer.
  return __syncthreads_and(ok) != 0;
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

}  // namespace fastrnn::cuda
