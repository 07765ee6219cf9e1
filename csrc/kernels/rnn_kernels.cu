// Host launchers of the CUDA LSTM/GRU/RNN kernels, instantiated for float and double.
// Torch-free: CMake builds it alone with nvcc; setup.py links it into fastrnn._C.
#include <algorithm>

#include "fastrnn/cuda_launch.h"
#include "fastrnn/gru_cuda.cuh"
#include "fastrnn/lstm_cuda.cuh"
#include "fastrnn/rnn_cuda.cuh"

namespace fastrnn::cuda {
namespace {

constexpr int kStepThreads = 256;
constexpr int kPersistentThreads = 256;

// Launches an elementwise kernel over n elements (none for an empty batch, where a grid of
// zero blocks would be a launch error).
template <typename... Params, typename... Args>
void launch_elementwise(void (*kernel)(Params...), int64_t n, cudaStream_t stream,
                        Args... args) {
  if (n == 0) return;
  const int blocks = static_cast<int>((n + kStepThreads - 1) / kStepThreads);
  kernel<<<blocks, kStepThreads, 0, stream>>>(args...);
}

template <typename Kernel>
cudaError_t launch_cooperative(Kernel kernel, const PersistentPlan& plan, void** args,
                               cudaStream_t stream) {
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(plan.smem));
  if (err != cudaSuccess) return err;
  return cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), dim3(plan.blocks),
                                     dim3(kPersistentThreads), args, plan.smem, stream);
}

template <typename T>
const void* persistent_kernel(int gates, bool backward) {
  if (gates == 4) {
    return backward ? reinterpret_cast<const void*>(&lstm_backward_persistent_kernel<T>)
                    : reinterpret_cast<const void*>(&lstm_forward_persistent_kernel<T>);
  }
  if (gates == 3) {
    return backward ? reinterpret_cast<const void*>(&gru_backward_persistent_kernel<T>)
                    : reinterpret_cast<const void*>(&gru_forward_persistent_kernel<T>);
  }
  return backward ? reinterpret_cast<const void*>(&rnn_backward_persistent_kernel<T>)
                  : reinterpret_cast<const void*>(&rnn_forward_persistent_kernel<T>);
}

}  // namespace

template <typename T>
PersistentPlan plan_persistent(int gates, bool backward, const Dims& d, int device) {
  PersistentPlan plan;
  if (d.P != d.H || d.B == 0) return plan;  // the projection (and an empty batch) run per step
  cudaDeviceProp prop;
  if (cudaGetDeviceProperties(&prop, device) != cudaSuccess || !prop.cooperativeLaunch) {
    return plan;
  }
  const size_t max_smem = prop.sharedMemPerBlockOptin;
  // One unit's rows (forward) or columns (backward) of W_hh.
  const size_t row_bytes = size_t(gates) * d.H * sizeof(T);
  // Fewest units per block (most blocks) such that all blocks are co-resident; a block
  // per SM keeps the whole shared memory of an SM for its W_hh rows.
  const int64_t max_blocks = prop.multiProcessorCount;
  const int64_t units = (d.H + max_blocks - 1) / max_blocks;
  const size_t smem = units * row_bytes;
  if (smem > max_smem) return plan;
  const void* kernel = persistent_kernel<T>(gates, backward);
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(smem)) != cudaSuccess) {
    return plan;
  }
  int per_sm = 0;
  if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kPersistentThreads, smem) !=
          cudaSuccess ||
      per_sm < 1) {
    return plan;
  }
  const int64_t blocks = (d.H + units - 1) / units;
  // A barrier per step (and one before the forward's first): the arrivals must stay below
  // the abort value (grid_barrier.cuh); longer sequences run per step.
  if (static_cast<unsigned long long>(d.T + 1) * blocks > kBarrierMaxArrivals) return plan;
  plan.units = static_cast<int>(units);
  plan.blocks = static_cast<int>(blocks);
  plan.smem = smem;
  return plan;
}

template <typename T>
cudaError_t lstm_forward_persistent(const PersistentPlan& plan, const Dims& d, const T* gates_x,
                                    const T* h0, const T* c0, const T* w_hh,
                                    const int64_t* lengths, T* y, T* h_n, T* c_n, T* ws,
                                    T* h_buf, unsigned int* barrier, cudaStream_t stream) {
  Dims dims = d;
  int units = plan.units;
  void* args[] = {&dims, &units, &gates_x, &h0, &c0, &w_hh, &lengths, &y, &h_n, &c_n, &ws,
                  &h_buf, &barrier};
  return launch_cooperative(&lstm_forward_persistent_kernel<T>, plan, args, stream);
}

template <typename T>
cudaError_t gru_forward_persistent(const PersistentPlan& plan, const Dims& d, const T* gates_x,
                                   const T* h0, const T* w_hh, const T* b_hh,
                                   const int64_t* lengths, T* y, T* h_n, T* ws, T* h_buf,
                                   unsigned int* barrier, cudaStream_t stream) {
  Dims dims = d;
  int units = plan.units;
  void* args[] = {&dims, &units, &gates_x, &h0, &w_hh, &b_hh, &lengths, &y, &h_n, &ws,
                  &h_buf, &barrier};
  return launch_cooperative(&gru_forward_persistent_kernel<T>, plan, args, stream);
}

template <typename T>
cudaError_t lstm_backward_persistent(const PersistentPlan& plan, const Dims& d, const T* grad_y,
                                     const T* c0, const T* w_hh, const int64_t* lengths,
                                     const T* ws, T* dgates, T* dh_state, T* dc_state,
                                     unsigned int* barrier, cudaStream_t stream) {
  Dims dims = d;
  int units = plan.units;
  void* args[] = {&dims, &units, &grad_y, &c0, &w_hh, &lengths, &ws, &dgates, &dh_state,
                  &dc_state, &barrier};
  return launch_cooperative(&lstm_backward_persistent_kernel<T>, plan, args, stream);
}

template <typename T>
cudaError_t gru_backward_persistent(const PersistentPlan& plan, const Dims& d, const T* grad_y,
                                    const T* h0, const T* y, const T* w_hh,
                                    const int64_t* lengths, const T* ws, T* d_input,
                                    T* d_hidden, T* dh_state, unsigned int* barrier,
                                    cudaStream_t stream) {
  Dims dims = d;
  int units = plan.units;
  void* args[] = {&dims, &units, &grad_y, &h0, &y, &w_hh, &lengths, &ws, &d_input, &d_hidden,
                  &dh_state, &barrier};
  return launch_cooperative(&gru_backward_persistent_kernel<T>, plan, args, stream);
}

template <typename T>
cudaError_t rnn_forward_persistent(const PersistentPlan& plan, const Dims& d, bool relu,
                                   const T* h0, const T* w_hh, const int64_t* lengths, T* y,
                                   T* h_n, T* ws, T* h_buf, unsigned int* barrier,
                                   cudaStream_t stream) {
  Dims dims = d;
  int units = plan.units;
  void* args[] = {&dims, &units, &relu, &h0, &w_hh, &lengths, &y, &h_n, &ws, &h_buf, &barrier};
  return launch_cooperative(&rnn_forward_persistent_kernel<T>, plan, args, stream);
}

template <typename T>
cudaError_t rnn_backward_persistent(const PersistentPlan& plan, const Dims& d, bool relu,
                                    const T* grad_y, const T* w_hh, const int64_t* lengths,
                                    const T* ws, T* d_pre, T* dh_state, unsigned int* barrier,
                                    cudaStream_t stream) {
  Dims dims = d;
  int units = plan.units;
  void* args[] = {&dims, &units, &relu, &grad_y, &w_hh, &lengths, &ws, &d_pre, &dh_state,
                  &barrier};
  return launch_cooperative(&rnn_backward_persistent_kernel<T>, plan, args, stream);
}

template <typename T>
void lstm_forward_step(const Dims& d, int64_t t, const T* pre_t, T* c_n, T* h_n, T* out, T* ws_t,
                       const int64_t* lengths, bool proj, cudaStream_t stream) {
  launch_elementwise(&lstm_forward_step_kernel<T>, d.B * d.H, stream,
                     d, t, pre_t, c_n, h_n, out, ws_t, lengths, proj);
}

template <typename T>
void lstm_projected_state(const Dims& d, int64_t t, T* y_t, T* h_n, const int64_t* lengths,
                          cudaStream_t stream) {
  launch_elementwise(&lstm_projected_state_kernel<T>, d.B * d.P, stream, d, t, y_t, h_n, lengths);
}

template <typename T>
void lstm_projected_grad(const Dims& d, int64_t t, const T* dh_state, const T* gy_t, T* dy_t,
                         const int64_t* lengths, cudaStream_t stream) {
  launch_elementwise(&lstm_projected_grad_kernel<T>, d.B * d.P, stream,
                     d, t, dh_state, gy_t, dy_t, lengths);
}

template <typename T>
void lstm_backward_step(const Dims& d, int64_t t, const T* ws, const T* c0, const T* dh_state,
                        const T* gy_t, const T* dhidden, T* dc_state, T* dgates_t,
                        const int64_t* lengths, cudaStream_t stream) {
  launch_elementwise(&lstm_backward_step_kernel<T>, d.B * d.H, stream,
                     d, t, ws, c0, dh_state, gy_t, dhidden, dc_state, dgates_t, lengths);
}

template <typename T>
void select_active_rows(int64_t B, int64_t N, int64_t t, const T* next, T* state,
                        const int64_t* lengths, cudaStream_t stream) {
  launch_elementwise(&select_active_rows_kernel<T>, B * N, stream, B, N, t, next, state, lengths);
}

template <typename T>
void gru_forward_step(const Dims& d, int64_t t, const T* xg_t, const T* hg, T* h_n, T* y_t,
                      T* ws_t, const int64_t* lengths, cudaStream_t stream) {
  launch_elementwise(&gru_forward_step_kernel<T>, d.B * d.H, stream,
                     d, t, xg_t, hg, h_n, y_t, ws_t, lengths);
}

template <typename T>
void gru_backward_step(const Dims& d, int64_t t, const T* ws_t, const T* h_prev_t,
                       const T* dh_state, const T* gy_t, T* d_input_t, T* d_hidden_t, T* dh_prev,
                       const int64_t* lengths, cudaStream_t stream) {
  launch_elementwise(&gru_backward_step_kernel<T>, d.B * d.H, stream,
                     d, t, ws_t, h_prev_t, dh_state, gy_t, d_input_t, d_hidden_t, dh_prev, lengths);
}

template <typename T>
void rnn_forward_step(const Dims& d, int64_t t, bool relu, const T* hg, T* h_n, T* y_t, T* ws_t,
                      const int64_t* lengths, cudaStream_t stream) {
  launch_elementwise(&rnn_forward_step_kernel<T>, d.B * d.H, stream,
                     d, t, relu, hg, h_n, y_t, ws_t, lengths);
}

template <typename T>
void rnn_backward_step(const Dims& d, int64_t t, bool relu, const T* ws_t, const T* dh_state,
                       const T* gy_t, T* d_pre_t, const int64_t* lengths, cudaStream_t stream) {
  launch_elementwise(&rnn_backward_step_kernel<T>, d.B * d.H, stream,
                     d, t, relu, ws_t, dh_state, gy_t, d_pre_t, lengths);
}

#define FASTRNN_INSTANTIATE(T)                                                                  \
  template PersistentPlan plan_persistent<T>(int, bool, const Dims&, int);                      \
  template cudaError_t lstm_backward_persistent<T>(const PersistentPlan&, const Dims&, const T*, \
                                                   const T*, const T*, const int64_t*, const T*, \
                                                   T*, T*, T*, unsigned int*, cudaStream_t);     \
  template cudaError_t gru_backward_persistent<T>(const PersistentPlan&, const Dims&, const T*,  \
                                                  const T*, const T*, const T*, const int64_t*,  \
                                                  const T*, T*, T*, T*, unsigned int*,           \
                                                  cudaStream_t);                                 \
  template cudaError_t lstm_forward_persistent<T>(const PersistentPlan&, const Dims&, const T*, \
                                                  const T*, const T*, const T*, const int64_t*, \
                                                  T*, T*, T*, T*, T*, unsigned int*,            \
                                                  cudaStream_t);                                \
  template cudaError_t gru_forward_persistent<T>(const PersistentPlan&, const Dims&, const T*,  \
                                                 const T*, const T*, const T*, const int64_t*,  \
                                                 T*, T*, T*, T*, unsigned int*, cudaStream_t);  \
  template void lstm_forward_step<T>(const Dims&, int64_t, const T*, T*, T*, T*, T*,            \
                                     const int64_t*, bool, cudaStream_t);                       \
  template void lstm_projected_state<T>(const Dims&, int64_t, T*, T*, const int64_t*,           \
                                        cudaStream_t);                                          \
  template void lstm_projected_grad<T>(const Dims&, int64_t, const T*, const T*, T*,            \
                                       const int64_t*, cudaStream_t);                           \
  template void lstm_backward_step<T>(const Dims&, int64_t, const T*, const T*, const T*,       \
                                      const T*, const T*, T*, T*, const int64_t*, cudaStream_t); \
  template void select_active_rows<T>(int64_t, int64_t, int64_t, const T*, T*, const int64_t*,  \
                                      cudaStream_t);                                            \
  template void gru_forward_step<T>(const Dims&, int64_t, const T*, const T*, T*, T*, T*,       \
                                    const int64_t*, cudaStream_t);                              \
  template void gru_backward_step<T>(const Dims&, int64_t, const T*, const T*, const T*,        \
                                     const T*, T*, T*, T*, const int64_t*, cudaStream_t);      \
  template cudaError_t rnn_forward_persistent<T>(const PersistentPlan&, const Dims&, bool,      \
                                                 const T*, const T*, const int64_t*, T*, T*,    \
                                                 T*, T*, unsigned int*, cudaStream_t);          \
  template cudaError_t rnn_backward_persistent<T>(const PersistentPlan&, const Dims&, bool,     \
                                                  const T*, const T*, const int64_t*, const T*, \
                                                  T*, T*, unsigned int*, cudaStream_t);         \
  template void rnn_forward_step<T>(const Dims&, int64_t, bool, const T*, T*, T*, T*,           \
                                    const int64_t*, cudaStream_t);                              \
  template void rnn_backward_step<T>(const Dims&, int64_t, bool, const T*, const T*, const T*,  \
                                     T*, const int64_t*, cudaStream_t);

FASTRNN_INSTANTIATE(float)
FASTRNN_INSTANTIATE(double)
#undef FASTRNN_INSTANTIATE

}  // namespace fastrnn::cuda
