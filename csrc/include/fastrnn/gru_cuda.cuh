// GRU layer kernels for CUDA, torch-free; the same two forms as lstm_cuda.cuh (persistent
// over all steps with W_hh slices in shared memory, or per step after a cuBLAS GEMM).
// Gate math is gru_cell.h, shared with the CPU kernels.
#pragma once

#include <cstdint>

#include "fastrnn/common.h"
#include "fastrnn/grid_barrier.cuh"
#include "fastrnn/gru_cell.h"
#include "fastrnn/lstm_cuda.cuh"

namespace fastrnn::cuda {

// One step of gate math after hg = h W_hh^T + b_hh (B, 3H).
template <typename T>
__global__ void gru_forward_step_kernel(Dims d, int64_t t, const T* xg_t, const T* hg, T* h_n,
                                        T* y_t, T* ws_t, const int64_t* lengths) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= d.B * d.H) return;
  const int64_t b = idx / d.H, j = idx % d.H;
  const bool active = active_at(lengths, b, t);
  const T h = gru_cell_forward(xg_t + b * 3 * d.H, hg + b * 3 * d.H, h_n[idx], j, d.H,
                               ws_t + b * 4 * d.H);
  y_t[idx] = active ? h : T(0);
  if (active) h_n[idx] = h;
}

// Backward gate math of step t; dh_prev receives the direct part dh * z, to which the
// binding adds d_hidden_t W_hh.
template <typename T>
__global__ void gru_backward_step_kernel(Dims d, int64_t t, const T* ws_t, const T* h_prev_t,
                                         const T* dh_state, const T* gy_t, T* d_input_t,
                                         T* d_hidden_t, T* dh_prev, const int64_t* lengths) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= d.B * d.H) return;
  const int64_t b = idx / d.H, j = idx % d.H;
  const bool active = active_at(lengths, b, t);
  const T dh = dh_state[idx] + (active ? gy_t[idx] : T(0));
  dh_prev[idx] = gru_cell_backward(ws_t + b * 4 * d.H, h_prev_t[idx], dh, active, j, d.H,
                                   d_input_t + b * 3 * d.H, d_hidden_t + b * 3 * d.H);
}

// The whole forward recurrence in one launch. Shared memory: the block's 3 x units rows
// of W_hh (gate-major). h_buf: (2, B, H) double buffer. b_hh may be null.
template <typename T>
__global__ void gru_forward_persistent_kernel(Dims d, int units, const T* gates_x, const T* h0,
                                              const T* w_hh, const T* b_hh,
                                              const int64_t* lengths, T* y, T* h_n, T* ws,
                                              T* h_buf, unsigned int* barrier) {
  extern __shared__ __align__(16) unsigned char smem_raw[];  // 16: room for double
  T* w = reinterpret_cast<T*>(smem_raw);
  const int64_t B = d.B, H = d.H;
  const int64_t j0 = blockIdx.x * int64_t(units);
  const int64_t mine = j0 + units <= H ? units : H - j0;
  for (int64_t idx = threadIdx.x; idx < 3 * mine * H; idx += blockDim.x) {
    const int64_t row = idx / H, q = idx % H, k = row / mine, u = row % mine;
    w[(k * units + u) * H + q] = w_hh[(k * H + j0 + u) * H + q];
  }
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
      T acc[3] = {T(0), T(0), T(0)};
      for (int64_t q = lane; q < H; q += 32) {
        const T hv = __ldcg(h_prev + b * H + q);
        for (int k = 0; k < 3; ++k) acc[k] += hv * w[(k * units + u) * H + q];
      }
      for (int k = 0; k < 3; ++k) acc[k] = warp_sum(acc[k]);
      if (lane == 0) {
        const T* xg_row = gates_x + (t * B + b) * 3 * H;
        T xg[3], hg[3], ws4[4];
        for (int k = 0; k < 3; ++k) {
          xg[k] = xg_row[k * H + j];
          hg[k] = acc[k] + (b_hh ? b_hh[k * H + j] : T(0));
        }
        const T hp = __ldcg(h_prev + b * H + j);
        const T h = gru_cell_forward(xg, hg, hp, 0, 1, ws4);
        T* ws_b = ws + (t * B + b) * 4 * H;
        for (int k = 0; k < 4; ++k) ws_b[k * H + j] = ws4[k];
        const bool active = active_at(lengths, b, t);
        h_next[b * H + j] = active ? h : hp;
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

// The whole backward recurrence in one launch; the structure of the LSTM's (block i owns
// units [i U, (i+1) U) and the 3H x U columns of W_hh for them). y: the forward output,
// h_{t-1} of active steps. dh_state holds grad_hT on entry and dh0 on exit.
template <typename T>
__global__ void gru_backward_persistent_kernel(Dims d, int units, const T* grad_y, const T* h0,
                                               const T* y, const T* w_hh,
                                               const int64_t* lengths, const T* ws, T* d_input,
                                               T* d_hidden, T* dh_state, unsigned int* barrier) {
  extern __shared__ __align__(16) unsigned char smem_raw[];  // 16: room for double
  T* w = reinterpret_cast<T*>(smem_raw);
  const int64_t B = d.B, H = d.H;
  const int64_t j0 = blockIdx.x * int64_t(units);
  const int64_t mine = j0 + units <= H ? units : H - j0;
  // Column u of the slice is contiguous in shared memory, so the lanes of a warp reading
  // consecutive rows r hit consecutive banks.
  for (int64_t idx = threadIdx.x; idx < 3 * H * mine; idx += blockDim.x) {
    const int64_t r = idx / mine, u = idx % mine;
    w[u * 3 * H + r] = w_hh[r * H + j0 + u];
  }
  __syncthreads();
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  unsigned int round = 0;
  for (int64_t t = d.T - 1; t >= 0; --t) {
    for (int64_t idx = threadIdx.x; idx < B * mine; idx += blockDim.x) {
      const int64_t b = idx / mine, j = j0 + idx % mine;
      T* di_b = d_input + (t * B + b) * 3 * H;
      T* dhid_b = d_hidden + (t * B + b) * 3 * H;
      if (!active_at(lengths, b, t)) {
        for (int k = 0; k < 3; ++k) di_b[k * H + j] = dhid_b[k * H + j] = T(0);
        continue;
      }
      const T h_prev = t > 0 ? y[((t - 1) * B + b) * H + j] : h0[b * H + j];
      const T dh = dh_state[b * H + j] + grad_y[(t * B + b) * H + j];
      // The direct part dh * z now; phase 2 adds d_hidden_t W_hh.
      dh_state[b * H + j] = gru_cell_backward(ws + (t * B + b) * 4 * H, h_prev, dh, true, j, H,
                                              di_b, dhid_b);
    }
    if (!grid_barrier(barrier, round++)) return;  // aborted: every block leaves
    for (int64_t pair = warp; pair < B * mine; pair += warps) {
      const int64_t b = pair / mine, u = pair % mine;
      if (!active_at(lengths, b, t)) continue;  // the whole warp skips: dh stays
      const T* dhid_b = d_hidden + (t * B + b) * 3 * H;
      T acc = T(0);
      for (int64_t r = lane; r < 3 * H; r += 32) acc += __ldcg(dhid_b + r) * w[u * 3 * H + r];
      acc = warp_sum(acc);
      if (lane == 0) dh_state[b * H + j0 + u] += acc;
    }
    __syncthreads();  // phase 1 of the next step reads what other warps wrote
  }
}

}  // namespace fastrnn::cuda
