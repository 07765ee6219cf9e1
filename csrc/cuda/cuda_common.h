// Helpers shared by the CUDA bindings.
#pragma once

#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
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

// A persistent launch's barrier words (grid_barrier.cuh), zeroed: the arrival counter and
// the error flag.
inline Tensor new_barrier(const Tensor& like) {
  return at::zeros({2}, like.options().dtype(at::kInt));
}

inline unsigned int* barrier_ptr(const Tensor& barrier) {
  return reinterpret_cast<unsigned int*>(barrier.data_ptr<int>());
}

// Barrier timeouts are reported the way fastrnn/errors.py reports the Triton kernels', without
// stalling the stream: after each persistent launch its error flag is copied to pinned host
// memory behind the kernel and an event recorded; the next extension call on CUDA raises the
// RuntimeError for every such launch that has completed. Nothing is recorded while a CUDA
// graph is captured (a replay would not refresh the copy).
struct PendingBarrier {
  Tensor host;        // the barrier words, copied once `done` has completed
  cudaEvent_t done;   // destroyed when the entry is looked at
  std::string op;
};

inline std::mutex& pending_barriers_mutex() {
  static std::mutex mutex;
  return mutex;
}

// Never destroyed: a static vector's destructor would free its pinned tensors at process exit,
// after CUDA has shut down, and that aborts the process (seen on the H200 machine: "terminate
// called" from ~vector<PendingBarrier> at the end of a test run). The OS reclaims it at exit.
inline std::vector<PendingBarrier>& pending_barriers() {
  static auto* pending = new std::vector<PendingBarrier>();
  return *pending;
}

inline void report_barrier(const Tensor& barrier, const char* op) {
  if (c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None) return;
  Tensor host = at::empty({2}, barrier.options().device(at::kCPU).pinned_memory(true));
  host.copy_(barrier, /*non_blocking=*/true);
  cudaEvent_t done;
  C10_CUDA_CHECK(cudaEventCreateWithFlags(&done, cudaEventDisableTiming));
  C10_CUDA_CHECK(cudaEventRecord(done, c10::cuda::getCurrentCUDAStream()));
  const std::lock_guard<std::mutex> lock(pending_barriers_mutex());
  pending_barriers().push_back(PendingBarrier{std::move(host), done, op});
}

// Raises the RuntimeError of the first reported launch whose barrier timed out, among those
// that have completed (with `wait`, among all of them, after waiting for each: what
// fastrnn.check_errors() asks for); each is forgotten once looked at.
inline void raise_barrier_timeouts(bool wait = false) {
  std::vector<std::string> timed_out;
  {
    const std::lock_guard<std::mutex> lock(pending_barriers_mutex());
    auto& pending = pending_barriers();
    for (auto it = pending.begin(); it != pending.end();) {
      const cudaError_t state = wait ? cudaEventSynchronize(it->done) : cudaEventQuery(it->done);
      if (state == cudaErrorNotReady) {
        ++it;
        continue;
      }
      C10_CUDA_CHECK(state);
      if (it->host.data_ptr<int>()[1] != 0) timed_out.push_back(it->op);
      cudaEventDestroy(it->done);
      it = pending.erase(it);
    }
  }
  TORCH_CHECK(timed_out.empty(), timed_out.front(),
              ": the grid barrier of the CUDA extension's persistent kernel timed out after about "
              "a second: not all of its blocks were resident on the GPU at once. The results of "
              "that call are invalid. Set FASTRNN_CUDA_PERSISTENT=0 (the per-step kernels) or "
              "FASTRNN_BACKEND=reference to avoid the persistent kernels.");
}

// Whether a persistent launch started; if so, its barrier is reported (report_barrier). A
// cooperative launch that did not fit after all leaves an error to clear; the caller then
// runs the per-step path.
inline bool launched(cudaError_t err, const Tensor& barrier, const char* op) {
  if (err != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  report_barrier(barrier, op);
  return true;
}

inline void check_launch(const char* op) {
  const cudaError_t err = cudaGetLastError();
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

}  // namespace fastrnn::binding
