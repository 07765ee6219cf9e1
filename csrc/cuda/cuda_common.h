// Helpers shared by the CUDA bindings.
#pragma once

#include <cstdlib>
#include <cstring>

#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include "binding.h"

namespace fastrnn::binding {

// FASTRNN_CUDA_PERSISTENT=0 forces the per-step kernels (tests use it to cover both paths).
inline bool persistent_enabled() {
  const char* value = std::getenv("FASTRNN_CUDA_PERSISTENT");
  return value == nullptr || std::strcmp(value, "0") != 0;
}

// `t`'s row block [t] of a (T, B, N) tensor, as a pointer.
template <typename T>
T* step_ptr(const Tensor& all, int64_t t) {
  return all.data_ptr<T>() + t * all.size(1) * all.size(2);
}

inline void check_launch(const char* op) {
  const cudaError_t err = cudaGetLastError();
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

}  // namespace fastrnn::binding
