// A grid-wide barrier for persistent kernels: every block adds one to a global counter and
// waits until it reaches (round + 1) * gridDim.x. Only safe when every block of the grid is
// resident at once, which the launchers guarantee with a cooperative launch. The wait is
// bounded: a barrier that never completes is a bug, and trapping makes it fail loudly
// instead of hanging the device.
#pragma once

#include <cstdint>

namespace fastrnn::cuda {

// About 10 seconds of waiting at 256 ns per poll.
constexpr unsigned long long kBarrierMaxPolls = 40ull * 1000 * 1000;

__device__ __forceinline__ void grid_barrier(unsigned int* counter, unsigned int round) {
  __syncthreads();
  if (threadIdx.x == 0) {
    const unsigned int target = (round + 1) * gridDim.x;
    __threadfence();  // release this block's writes before arriving
    atomicAdd(counter, 1u);
    unsigned long long polls = 0;
    while (atomicAdd(counter, 0u) < target) {
      if (++polls > kBarrierMaxPolls) __trap();
      __nanosleep(256);
    }
    __threadfence();  // acquire the other blocks' writes
  }
  __syncthreads();
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;
}

}  // namespace fastrnn::cuda
