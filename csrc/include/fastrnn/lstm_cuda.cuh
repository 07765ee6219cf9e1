// LSTM layer kernels for CUDA, torch-free (the binding csrc/cuda/lstm.cu launches them;
// csrc/kernels/rnn_kernels.cu instantiates them). Two forms of the recurrence:
//  - persistent: one launch runs all T steps; block i owns hidden units [i U, (i+1) U),
//    keeps their 4U rows of W_hh in shared memory, and blocks exchange h_t through a
//    double buffer in global memory with a grid barrier per step (cooperative launch);
//  - per step (fallback for sizes that do not fit, and the projection): the binding adds
//    h W_hh^T with cuBLAS, then one pointwise kernel applies the gate math.
// Gate math is lstm_cell.h, shared with the CPU kernels.
#pragma once

#include <cstdint>

#include "fastrnn/common.h"
#include "fastrnn/grid_barrier.cuh"
#include "fastrnn/lstm_cell.h"

namespace fastrnn::cuda {

__device__ __forceinline__ bool active_at(const int64_t* lengths, int64_t b, int64_t t) {
  return lengths == nullptr || t < lengths[b];
}

// One step of gate math after pre_t = x W_ih^T + b + h W_hh^T (B, 4H). Without projection
// it writes y_t and the h state; with it, `out` receives o * tanh(c) for the projection GEMM.
template <typename T>
__global__ void lstm_forward_step_kernel(Dims d, int64_t t, const T* pre_t, T* c_n, T* h_n,
                                         T* out, T* ws_t, const int64_t* lengths, bool proj) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= d.B * d.H) return;
  const int64_t b = idx / d.H, j = idx % d.H;
  const bool active = active_at(lengths, b, t);
  T c, h;
  lstm_cell_forward(pre_t + b * 4 * d.H, c_n[idx], j, d.H, ws_t + b * 5 * d.H, &c, &h);
  if (active) c_n[idx] = c;
  if (proj) {
    out[idx] = h;
  } else {
    out[b * d.P + j] = active ? h : T(0);
    if (active) h_n[b * d.P + j] = h;
  }
}

// After the projection GEMM wrote y_t: active rows become the h state, padded rows zero.
template <typename T>
__global__ void lstm_projected_state_kernel(Dims d, int64_t t, T* y_t, T* h_n,
                                            const int64_t* lengths) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= d.B * d.P) return;
  if (active_at(lengths, idx / d.P, t)) {
    h_n[idx] = y_t[idx];
  } else {
    y_t[idx] = T(0);
  }
}

// Backward, with projection: the gradient reaching the projected h (zero when padded).
template <typename T>
__global__ void lstm_projected_grad_kernel(Dims d, int64_t t, const T* dh_state, const T* gy_t,
                                           T* dy_t, const int64_t* lengths) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= d.B * d.P) return;
  dy_t[idx] = active_at(lengths, idx / d.P, t) ? dh_state[idx] + gy_t[idx] : T(0);
}

// Backward gate math of step t: dgates_t and the c-state gradient. `dhidden` is the
// gradient reaching o * tanh(c) with projection (null without: dh_state + grad_y instead).
template <typename T>
__global__ void lstm_backward_step_kernel(Dims d, int64_t t, const T* ws, const T* c0,
                                          const T* dh_state, const T* gy_t, const T* dhidden,
                                          T* dc_state, T* dgates_t, const int64_t* lengths) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= d.B * d.H) return;
  const int64_t b = idx / d.H, j = idx % d.H;
  const bool active = active_at(lengths, b, t);
  const T* ws_b = ws + (t * d.B + b) * 5 * d.H;
  const T c_prev = t > 0 ? ws_b[-d.B * 5 * d.H + 4 * d.H + j] : c0[idx];
  const T dh = dhidden ? dhidden[idx] : dh_state[b * d.P + j] + (active ? gy_t[b * d.P + j] : T(0));
  dc_state[idx] = lstm_cell_backward(ws_b, c_prev, dh, dc_state[idx], active, j, d.H,
                                     dgates_t + b * 4 * d.H);
}

// state[b] = next[b] for rows active at step t (the recurrent gradient of h moves on).
template <typename T>
__global__ void select_active_rows_kernel(int64_t B, int64_t N, int64_t t, const T* next,
                                          T* state, const int64_t* lengths) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= B * N) return;
  if (active_at(lengths, idx / N, t)) state[idx] = next[idx];
}

// The whole forward recurrence in one launch (no projection, so P == H). Shared memory:
// the block's 4 x units rows of W_hh (gate-major). h_buf: (2, B, H) double buffer.
template <typename T>
__global__ void lstm_forward_persistent_kernel(Dims d, int units, const T* gates_x, const T* h0,
                                               const T* c0, const T* w_hh,
                                               const int64_t* lengths, T* y, T* h_n, T* c_n,
                                               T* ws, T* h_buf, unsigned int* barrier) {
  extern __shared__ __align__(16) unsigned char smem_raw[];  // 16: room for double
  T* w = reinterpret_cast<T*>(smem_raw);
  const int64_t B = d.B, H = d.H;
  const int64_t j0 = blockIdx.x * int64_t(units);
  const int64_t mine = j0 + units <= H ? units : H - j0;  // units this block owns
  for (int64_t idx = threadIdx.x; idx < 4 * mine * H; idx += blockDim.x) {
    const int64_t row = idx / H, q = idx % H, k = row / mine, u = row % mine;
    w[(k * units + u) * H + q] = w_hh[(k * H + j0 + u) * H + q];
  }
  for (int64_t idx = threadIdx.x; idx < B * mine; idx += blockDim.x) {
    const int64_t b = idx / mine, j = j0 + idx % mine;
    c_n[b * H + j] = c0[b * H + j];
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
      T acc[4] = {T(0), T(0), T(0), T(0)};
      for (int64_t q = lane; q < H; q += 32) {
        const T hv = __ldcg(h_prev + b * H + q);  // other blocks wrote it: skip L1
        for (int k = 0; k < 4; ++k) acc[k] += hv * w[(k * units + u) * H + q];
      }
      for (int k = 0; k < 4; ++k) acc[k] = warp_sum(acc[k]);
      if (lane == 0) {
        const T* xg = gates_x + (t * B + b) * 4 * H;
        T pre[4], ws5[5], c, h;
        for (int k = 0; k < 4; ++k) pre[k] = xg[k * H + j] + acc[k];
        lstm_cell_forward(pre, c_n[b * H + j], 0, 1, ws5, &c, &h);
        T* ws_b = ws + (t * B + b) * 5 * H;
        for (int k = 0; k < 5; ++k) ws_b[k * H + j] = ws5[k];
        const bool active = active_at(lengths, b, t);
        if (active) c_n[b * H + j] = c;
        h_next[b * H + j] = active ? h : __ldcg(h_prev + b * H + j);
        y[(t * B + b) * H + j] = active ? h : T(0);
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

// The whole backward recurrence in one launch (no projection). Block i owns hidden units
// [i U, (i+1) U) and keeps the columns of W_hh for them (4H x U) in shared memory. Per
// step: the gate gradients of its units (phase 1), a grid barrier, then dh of its units
// from the gate gradients of all units (phase 2). dh_state / dc_state hold grad_hT /
// grad_cT on entry and dh0 / dc0 on exit.
template <typename T>
__global__ void lstm_backward_persistent_kernel(Dims d, int units, const T* grad_y, const T* c0,
                                                const T* w_hh, const int64_t* lengths,
                                                const T* ws, T* dgates, T* dh_state,
                                                T* dc_state, unsigned int* barrier) {
  extern __shared__ __align__(16) unsigned char smem_raw[];  // 16: room for double
  T* w = reinterpret_cast<T*>(smem_raw);
  const int64_t B = d.B, H = d.H;
  const int64_t j0 = blockIdx.x * int64_t(units);
  const int64_t mine = j0 + units <= H ? units : H - j0;
  // Column u of the slice is contiguous in shared memory, so the lanes of a warp reading
  // consecutive rows r hit consecutive banks.
  for (int64_t idx = threadIdx.x; idx < 4 * H * mine; idx += blockDim.x) {
    const int64_t r = idx / mine, u = idx % mine;
    w[u * 4 * H + r] = w_hh[r * H + j0 + u];
  }
  __syncthreads();
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  unsigned int round = 0;
  for (int64_t t = d.T - 1; t >= 0; --t) {
    for (int64_t idx = threadIdx.x; idx < B * mine; idx += blockDim.x) {
      const int64_t b = idx / mine, j = j0 + idx % mine;
      T* dg_b = dgates + (t * B + b) * 4 * H;
      if (!active_at(lengths, b, t)) {
        for (int k = 0; k < 4; ++k) dg_b[k * H + j] = T(0);
        continue;
      }
      const T* ws_b = ws + (t * B + b) * 5 * H;
      const T c_prev = t > 0 ? ws_b[-B * 5 * H + 4 * H + j] : c0[b * H + j];
      const T dh = dh_state[b * H + j] + grad_y[(t * B + b) * H + j];
      dc_state[b * H + j] =
          lstm_cell_backward(ws_b, c_prev, dh, dc_state[b * H + j], true, j, H, dg_b);
    }
    if (!grid_barrier(barrier, round++)) return;  // aborted: every block leaves
    for (int64_t pair = warp; pair < B * mine; pair += warps) {
      const int64_t b = pair / mine, u = pair % mine;
      if (!active_at(lengths, b, t)) continue;  // the whole warp skips: dh stays
      const T* dg_b = dgates + (t * B + b) * 4 * H;
      T acc = T(0);
      for (int64_t r = lane; r < 4 * H; r += 32) acc += __ldcg(dg_b + r) * w[u * 4 * H + r];
      acc = warp_sum(acc);
      if (lane == 0) dh_state[b * H + j0 + u] = acc;
    }
    __syncthreads();  // phase 1 of the next step reads what other warps wrote
  }
}

}  // namespace fastrnn::cuda
