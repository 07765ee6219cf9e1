// Host launchers of the CUDA kernels (lstm_cuda.cuh, gru_cuda.cuh, rnn_cuda.cuh), torch-free: plain
// device pointers and a stream. Implemented and instantiated for float and double in
// csrc/kernels/rnn_kernels.cu. Grids are 1-D over the elements for the per-step kernels.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "fastrnn/common.h"

namespace fastrnn::cuda {

// Blocks and dynamic shared memory of a persistent launch; blocks == 0 when the shape does
// not fit on chip (all of W_hh spread over co-resident blocks) and the per-step path runs.
struct PersistentPlan {
  int blocks = 0;
  int units = 0;        // hidden units per block
  size_t smem = 0;      // bytes of W_hh rows per block
};

// gates: 4 (LSTM), 3 (GRU) or 1 (RNN); backward: plan the backward kernel instead of the
// forward.
template <typename T>
PersistentPlan plan_persistent(int gates, bool backward, const Dims& d, int device);

// Launches every step of the forward in one cooperative kernel; `barrier` must point at two
// zeroed unsigned ints, the grid barrier's counter and its error flag (grid_barrier.cuh: 1
// after the launch when a barrier timed out and every block left), `h_buf` at 2 * B * H
// elements of scratch. The same `barrier` for every persistent launcher below.
template <typename T>
cudaError_t lstm_forward_persistent(const PersistentPlan& plan, const Dims& d, const T* gates_x,
                                    const T* h0, const T* c0, const T* w_hh,
                                    const int64_t* lengths, T* y, T* h_n, T* c_n, T* ws,
                                    T* h_buf, unsigned int* barrier, cudaStream_t stream);

template <typename T>
cudaError_t gru_forward_persistent(const PersistentPlan& plan, const Dims& d, const T* gates_x,
                                   const T* h0, const T* w_hh, const T* b_hh,
                                   const int64_t* lengths, T* y, T* h_n, T* ws, T* h_buf,
                                   unsigned int* barrier, cudaStream_t stream);

// The Elman RNN's forward: ws holds x W_ih^T + b_ih + b_hh of every step on entry and the h
// state after every step on exit (rnn_cuda.cuh); relu: the activation is relu, else tanh.
template <typename T>
cudaError_t rnn_forward_persistent(const PersistentPlan& plan, const Dims& d, bool relu,
                                   const T* h0, const T* w_hh, const int64_t* lengths, T* y,
                                   T* h_n, T* ws, T* h_buf, unsigned int* barrier,
                                   cudaStream_t stream);

// Backward through all steps in one cooperative kernel (no projection). dh_state / dc_state
// hold the gradients of the final state on entry and those of the initial state on exit.
template <typename T>
cudaError_t lstm_backward_persistent(const PersistentPlan& plan, const Dims& d, const T* grad_y,
                                     const T* c0, const T* w_hh, const int64_t* lengths,
                                     const T* ws, T* dgates, T* dh_state, T* dc_state,
                                     unsigned int* barrier, cudaStream_t stream);

template <typename T>
cudaError_t gru_backward_persistent(const PersistentPlan& plan, const Dims& d, const T* grad_y,
                                    const T* h0, const T* y, const T* w_hh,
                                    const int64_t* lengths, const T* ws, T* d_input,
                                    T* d_hidden, T* dh_state, unsigned int* barrier,
                                    cudaStream_t stream);

// dh_state holds grad_hT on entry and dh0 on exit; d_pre (T, B, H) receives the gradient of
// every step's pre-activation.
template <typename T>
cudaError_t rnn_backward_persistent(const PersistentPlan& plan, const Dims& d, bool relu,
                                    const T* grad_y, const T* w_hh, const int64_t* lengths,
                                    const T* ws, T* d_pre, T* dh_state, unsigned int* barrier,
                                    cudaStream_t stream);

// Per-step kernels; the caller runs the recurrent GEMMs in between (cuBLAS).
template <typename T>
void lstm_forward_step(const Dims& d, int64_t t, const T* pre_t, T* c_n, T* h_n, T* out, T* ws_t,
                       const int64_t* lengths, bool proj, cudaStream_t stream);
template <typename T>
void lstm_projected_state(const Dims& d, int64_t t, T* y_t, T* h_n, const int64_t* lengths,
                          cudaStream_t stream);
template <typename T>
void lstm_projected_grad(const Dims& d, int64_t t, const T* dh_state, const T* gy_t, T* dy_t,
                         const int64_t* lengths, cudaStream_t stream);
template <typename T>
void lstm_backward_step(const Dims& d, int64_t t, const T* ws, const T* c0, const T* dh_state,
                        const T* gy_t, const T* dhidden, T* dc_state, T* dgates_t,
                        const int64_t* lengths, cudaStream_t stream);
template <typename T>
void select_active_rows(int64_t B, int64_t N, int64_t t, const T* next, T* state,
                        const int64_t* lengths, cudaStream_t stream);
template <typename T>
void gru_forward_step(const Dims& d, int64_t t, const T* xg_t, const T* hg, T* h_n, T* y_t,
                      T* ws_t, const int64_t* lengths, cudaStream_t stream);
template <typename T>
void gru_backward_step(const Dims& d, int64_t t, const T* ws_t, const T* h_prev_t,
                       const T* dh_state, const T* gy_t, T* d_input_t, T* d_hidden_t, T* dh_prev,
                       const int64_t* lengths, cudaStream_t stream);

template <typename T>
void rnn_forward_step(const Dims& d, int64_t t, bool relu, const T* hg, T* h_n, T* y_t, T* ws_t,
                      const int64_t* lengths, cudaStream_t stream);
template <typename T>
void rnn_backward_step(const Dims& d, int64_t t, bool relu, const T* ws_t, const T* dh_state,
                       const T* gy_t, T* d_pre_t, const int64_t* lengths, cudaStream_t stream);

}  // namespace fastrnn::cuda
