// Elman RNN layer kernels for CUDA, torch-free; the same two forms as lstm_cuda.cuh and
// gru_cuda.cuh (persistent over all steps with W_hh slices in shared memory and a grid
// barrier per step, or per step after a cuBLAS GEMM), with one gate. The activation is
// rnn_cell.h, shared with the CPU kernels; `relu` picks it at run time (uniform branch).
//
// The workspace ws (T, B, H) enters holding x W_ih^T + b_ih + b_hh of every step (the
// binding's GEMM) and leaves holding the h state after every step, as on the CPU.
#pragma once

#include <cstdint>

#include "fastrnn/common.h"
#include "fastrnn/grid_barrier.cuh"
#include "fastrnn/lstm_cuda.cuh"
#include "fastrnn/rnn_cell.h"

namespace fastrnn::cuda {

// One step after hg = h W_hh^T (B, H): h = act(ws_t + hg). Finished rows keep their state
// (written to ws_t too) and output zero.
template <typename T>
__global__ void rnn_forward_step_kernel(Dims d, int64_t t, bool relu, const T* hg, T* h_n, T* y_t,
                                        T* ws_t, const int64_t* lengths) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= d.B * d.H) return;
  if (!active_at(lengths, idx / d.H, t)) {
    ws_t[idx] = h_n[idx];
    y_t[idx] = T(0);
    return;
  }
  const T h = rnn_activation(ws_t[idx] + hg[idx], relu);
  ws_t[idx] = h;
  y_t[idx] = h;
  h_n[idx] = h;
}

// Backward of step t: d_pre_t = (dh + grad_y_t) * act'(h_t), zero for finished rows; the
// binding then forms d_pre_t W_hh, the gradient reaching h_{t-1}.
template <typename T>
__global__ void rnn_backward_step_kernel(Dims d, int64_t t, bool relu, const T* ws_t,
                                         const T* dh_state, const T* gy_t, T* d_pre_t,
                                         const int64_t* lengths) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= d.B * d.H) return;
  d_pre_t[idx] = active_at(lengths, idx / d.H, t)
                     ? (dh_state[idx] + gy_t[idx]) * rnn_activation_grad(ws_t[idx], relu)
                     : T(0);
}

// The whole forward recurrence in one launch. Block i owns units [i U, (i+1) U) and keeps
// their U rows of W_hh in shared memory; blocks exchange h_t through the double buffer
// h_buf (2, B, H) with a grid barrier per step.
template <typename T>
__global__ void rnn_forward_persistent_kernel(Dims d, int units, bool relu, const T* h0,
                                              const T* w_hh, const int64_t* lengths, T* y,
                                              T* h_n, T* ws, T* h_buf, unsigned int* barrier) {
  extern __shared__ __align__(16) unsigned char smem_raw[];  // 16: room for double
  T* w = reinterpret_cast<T*>(smem_raw);
  const int64_t B = d.B, H = d.H;
  const int64_t j0 = blockIdx.x * int64_t(units);
  const int64_t mine = j0 + units <= H ? units : H - j0;
  for (int64_t idx = threadIdx.x; idx < mine * H; idx += blockDim.x) w[idx] = w_hh[j0 * H + idx];
  for (int64_t idx = threadIdx.x; idx < B * mine; idx += blockDim.x) {
    const int64_t b = idx / mine, j = j0 + idx % mine;
    h_buf[b * H + j] = h0[b * H + j];
  }
  unsigned int round = 0;
  if (!grid_barrier(barrier, round++)) return;  // aborted: every block leaves
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  for (int64_t t = 0; t < d.T; ++t) {
    const T* h_prev = h_buf + (t & 1) * B * H;
    T* h_next = h_buf + ((t + 1) & 1) * B * H;
    for (int64_t pair = warp; pair < B * mine; pair += warps) {
      const int64_t b = pair / mine, u = pair % mine, j = j0 + u;
      T acc = T(0);
      for (int64_t q = lane; q < H; q += 32) acc += __ldcg(h_prev + b * H + q) * w[u * H + q];
      acc = warp_sum(acc);
      if (lane == 0) {
        const int64_t at = (t * B + b) * H + j;
        const T hp = __ldcg(h_prev + b * H + j);
        const bool active = active_at(lengths, b, t);
        const T h = active ? rnn_activation(ws[at] + acc, relu) : hp;
        ws[at] = h;
        h_next[b * H + j] = h;
        y[at] = active ? h : T(0);
      }
    }
    if (!grid_barrier(barrier, round++)) return;  // aborted: every block leaves
  }
  const T* h_last = h_buf + (d.T & 1) * B * H;
  for (int64_t idx = threadIdx.x; idx < B * mine; idx += blockDim.x) {
    const int64_t b = idx / mine, j = j0 + idx % mine;
    h_n[b * H + j] = __ldcg(h_last + b * H + j);
  }
}

// The whole backward recurrence in one launch: block i owns units [i U, (i+1) U) and the
// H x U columns of W_hh for them. Per step, phase 1 forms d_pre_t of the block's units,
// the grid barrier publishes them, phase 2 forms dh_{t-1} = d_pre_t W_hh of the block's
// units (rows still active at t). dh_state holds grad_hT on entry and dh0 on exit.
template <typename T>
__global__ void rnn_backward_persistent_kernel(Dims d, int units, bool relu, const T* grad_y,
                                               const T* w_hh, const int64_t* lengths,
                                               const T* ws, T* d_pre, T* dh_state,
                                               unsigned int* barrier) {
  extern __shared__ __align__(16) unsigned char smem_raw[];  // 16: room for double
  T* w = reinterpret_cast<T*>(smem_raw);
  const int64_t B = d.B, H = d.H;
  const int64_t j0 = blockIdx.x * int64_t(units);
  const int64_t mine = j0 + units <= H ? units : H - j0;
  // Column u of the slice is contiguous in shared memory, so the lanes of a warp reading
  // consecutive rows r hit consecutive banks.
  for (int64_t idx = threadIdx.x; idx < H * mine; idx += blockDim.x) {
    const int64_t r = idx / mine, u = idx % mine;
    w[u * H + r] = w_hh[r * H + j0 + u];
  }
  __syncthreads();
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  unsigned int round = 0;
  for (int64_t t = d.T - 1; t >= 0; --t) {
    for (int64_t idx = threadIdx.x; idx < B * mine; idx += blockDim.x) {
      const int64_t b = idx / mine, j = j0 + idx % mine, at = (t * B + b) * H + j;
      d_pre[at] = active_at(lengths, b, t)
                      ? (dh_state[b * H + j] + grad_y[at]) * rnn_activation_grad(ws[at], relu)
                      : T(0);
    }
    if (!grid_barrier(barrier, round++)) return;  // aborted: every block leaves
    for (int64_t pair = warp; pair < B * mine; pair += warps) {
      const int64_t b = pair / mine, u = pair % mine;
      if (!active_at(lengths, b, t)) continue;  // the whole warp skips: dh stays
      const T* d_b = d_pre + (t * B + b) * H;
      T acc = T(0);
      for (int64_t r = lane; r < H; r += 32) acc += __ldcg(d_b + r) * w[u * H + r];
      acc = warp_sum(acc);
      if (lane == 0) dh_state[b * H + j0 + u] = acc;
    }
    __syncthreads();  // phase 1 of the next step reads what other warps wrote
  }
}

}  // namespace fastrnn::cuda
