// GRU layer forward and backward through time on the CPU, one direction, time-major.
// As for the LSTM, the caller does the GEMMs over all steps; these loops run the
// recurrence: per step one recurrent GEMM and the fused gate math, split over threads.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "fastrnn/common.h"
#include "fastrnn/gru_cell.h"
#include "fastrnn/recurrence.h"

namespace fastrnn {

// Gate math of units [j0, j1) of one active row: h (H) is updated in place and copied to
// y; r, z, n, h W_hn + b_hn into the workspace row. Separate from the padded case so the
// loop has no selects and vectorises.
template <typename T>
FASTRNN_CPU_CLONES void gru_forward_row(const T* xg, const T* hg, T* h, T* ws, T* y, int64_t j0,
                                        int64_t j1, int64_t H) {
  FASTRNN_SIMD
  for (int64_t j = j0; j < j1; ++j) {
    const T h_new = gru_cell_forward(xg, hg, h[j], j, H, ws);
    h[j] = h_new;
    y[j] = h_new;
  }
}

// Backward gate math of units [j0, j1) of one active row; dh_prev receives dh * z.
template <typename T>
FASTRNN_CPU_CLONES void gru_backward_row(const T* ws, const T* h_prev, const T* dh, const T* gy,
                                         T* dh_prev, T* d_input, T* d_hidden, int64_t j0,
                                         int64_t j1, int64_t H) {
  FASTRNN_SIMD
  for (int64_t j = j0; j < j1; ++j) {
    dh_prev[j] = gru_cell_backward(ws, h_prev[j], dh[j] + gy[j], true, j, H, d_input, d_hidden);
  }
}

template <typename T>
struct GruForward {
  Dims d;                    // P == H
  const T* gates_x;          // (T, B, 3H): x W_ih^T + b_ih
  const T* h0;               // (B, H)
  const T* w_hh_t;           // (H, 3H): W_hh transposed
  const T* b_hh;             // (3H,) or null
  const int64_t* lengths;    // (B,) or null
  T* y;                      // (T, B, H) out; zero at padded steps
  T* h_n;                    // (B, H) out: the running h state
  T* workspace;              // (T, B, 4H) out: r, z, n, h W_hn + b_hn of every step
  T* gates_h;                // (B, 3H) scratch: h W_hh^T + b_hh
};

template <typename T, typename Gemm, typename For>
void gru_forward(const GruForward<T>& a, const Gemm& gemm, const For& parallel_for) {
  const int64_t B = a.d.B, H = a.d.H;
  std::memcpy(a.h_n, a.h0, sizeof(T) * B * H);
  for (int64_t t = 0; t < a.d.T; ++t) {
    const T* xg_t = a.gates_x + t * B * 3 * H;
    T* y_t = a.y + t * B * H;
    T* ws_t = a.workspace + t * B * 4 * H;
    for (int64_t b = 0; b < B; ++b) {
      T* hg_b = a.gates_h + b * 3 * H;
      if (a.b_hh) {
        std::memcpy(hg_b, a.b_hh, sizeof(T) * 3 * H);
      } else {
        std::memset(hg_b, 0, sizeof(T) * 3 * H);
      }
    }
    gemm(B, 3 * H, H, a.h_n, H, a.w_hh_t, 3 * H, a.gates_h, 3 * H, /*accumulate=*/true);
    for_each_row_piece(parallel_for, B, H, [&](int64_t b, int64_t j0, int64_t j1) {
      T* ws_b = ws_t + b * 4 * H;
      T* y_b = y_t + b * H;
      if (!step_active(a.lengths, b, t)) {
        // A finished sequence: its state stays, its output is zero, its workspace row is
        // never read.
        for (int k = 0; k < 4; ++k) std::fill(ws_b + k * H + j0, ws_b + k * H + j1, T(0));
        std::fill(y_b + j0, y_b + j1, T(0));
        return;
      }
      gru_forward_row(xg_t + b * 3 * H, a.gates_h + b * 3 * H, a.h_n + b * H, ws_b, y_b, j0, j1,
                      H);
    });
  }
}

template <typename T>
struct GruBackward {
  Dims d;                    // P == H
  const T* grad_y;           // (T, B, H); ignored at padded steps
  const T* grad_hn;          // (B, H)
  const T* h0;               // (B, H)
  const T* y;                // (T, B, H) from gru_forward: h_{t-1} of active steps
  const T* w_hh;             // (3H, H)
  const int64_t* lengths;    // (B,) or null
  const T* workspace;        // (T, B, 4H) from gru_forward
  T* d_input;                // (T, B, 3H) out: gradient of x W_ih^T + b_ih
  T* d_hidden;               // (T, B, 3H) out: gradient of h W_hh^T + b_hh
  T* dh0;                    // (B, H) out: the running gradient of the h state
  T* dh_prev;                // (B, H) scratch: gradient reaching h_{t-1} through step t
};

template <typename T, typename Gemm, typename For>
void gru_backward(const GruBackward<T>& a, const Gemm& gemm, const For& parallel_for) {
  const int64_t B = a.d.B, H = a.d.H;
  std::memcpy(a.dh0, a.grad_hn, sizeof(T) * B * H);
  for (int64_t t = a.d.T - 1; t >= 0; --t) {
    const T* gy_t = a.grad_y + t * B * H;
    const T* ws_t = a.workspace + t * B * 4 * H;
    const T* h_prev_t = t > 0 ? a.y + (t - 1) * B * H : a.h0;
    T* di_t = a.d_input + t * B * 3 * H;
    T* dhid_t = a.d_hidden + t * B * 3 * H;
    for_each_row_piece(parallel_for, B, H, [&](int64_t b, int64_t j0, int64_t j1) {
      T* di_b = di_t + b * 3 * H;
      T* dhid_b = dhid_t + b * 3 * H;
      if (!step_active(a.lengths, b, t)) {
        // Nothing flows through a padded step (dh_prev is not used for this row).
        for (int k = 0; k < 3; ++k) {
          std::fill(di_b + k * H + j0, di_b + k * H + j1, T(0));
          std::fill(dhid_b + k * H + j0, dhid_b + k * H + j1, T(0));
        }
        return;
      }
      gru_backward_row(ws_t + b * 4 * H, h_prev_t + b * H, a.dh0 + b * H, gy_t + b * H,
                       a.dh_prev + b * H, di_b, dhid_b, j0, j1, H);
    });
    gemm(B, H, 3 * H, dhid_t, 3 * H, a.w_hh, H, a.dh_prev, H, /*accumulate=*/true);
    for (int64_t b = 0; b < B; ++b) {
      if (step_active(a.lengths, b, t)) {
        std::memcpy(a.dh0 + b * H, a.dh_prev + b * H, sizeof(T) * H);
      }
    }
  }
}

}  // namespace fastrnn
