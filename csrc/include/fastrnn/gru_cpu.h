// GRU layer forward and backward through time on the CPU, one direction, time-major.
// As for the LSTM, the caller does the GEMMs over all steps; these loops run the
// recurrence: per step one recurrent GEMM and the fused gate math, split over threads.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "fastrnn/common.h"
#include "fastrnn/gru_cell.h"
#include "fastrnn/packed_gemm.h"
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
  const T* w_hh_t;           // (H, 3H): W_hh transposed (the unpacked path; may be null
                             //   where gru_packed_ok)
  const T* b_hh;             // (3H,) or null
  const int64_t* lengths;    // (B,) or null
  T* y;                      // (T, B, H) out; zero at padded steps
  T* h_n;                    // (B, H) out: the running h state
  T* workspace;              // (T, B, 4H) out: r, z, n, h W_hn + b_hn of every step
  T* gates_h;                // (B, 3H) scratch: h W_hh^T + b_hh
  const T* w_hh = nullptr;   // (3H, H): W_hh as PyTorch keeps it, which the packed path packs
};

// Whether gru_forward runs the packed recurrence (H a multiple of the vector width).
template <typename T>
bool gru_packed_ok(const Dims& d) {
  return d.H % kLanes<T> == 0;
}

// The forward gate math of one panel's kLanes<T> units [j0, j0 + L) for every row, right
// after the panel's recurrent product `out` (B, 3L): h W_hh^T + b_hh is `out` plus b_hh.
// Writes the workspace, y and the next h (h_prev stays for finished rows).
template <typename T>
FASTRNN_CPU_CLONES void gru_forward_panel(int64_t B, const T* out, const T* b_hh, const T* xg_t,
                                          T* ws_t, T* y_t, const T* h_prev, T* h_next,
                                          const int64_t* lengths, int64_t t, int64_t j0,
                                          int64_t H) {
  constexpr int64_t L = kLanes<T>, W = 3 * L;
  const T* br = b_hh + j0;
  const T* bz = b_hh + H + j0;
  const T* bn = b_hh + 2 * H + j0;
  for (int64_t b = 0; b < B; ++b) {
    T* ws_b = ws_t + b * 4 * H + j0;
    T* y_b = y_t + b * H + j0;
    T* h_b = h_next + b * H + j0;
    const T* hp = h_prev + b * H + j0;
    if (!step_active(lengths, b, t)) {
      // A finished sequence: its state stays, its output is zero.
      for (int k = 0; k < 4; ++k) std::fill(ws_b + k * H, ws_b + k * H + L, T(0));
      std::fill(y_b, y_b + L, T(0));
      std::copy(hp, hp + L, h_b);
      continue;
    }
    const T* xg = xg_t + b * 3 * H + j0;
    const T* o = out + b * W;
    FASTRNN_SIMD
    for (int64_t l = 0; l < L; ++l) {
      const T r = sigmoid(xg[l] + (br[l] + o[l]));
      const T z = sigmoid(xg[H + l] + (bz[l] + o[L + l]));
      const T hn = bn[l] + o[2 * L + l];
      const T n = tanh_act(xg[2 * H + l] + r * hn);
      const T h = (T(1) - z) * n + z * hp[l];
      ws_b[l] = r;
      ws_b[H + l] = z;
      ws_b[2 * H + l] = n;
      ws_b[3 * H + l] = hn;
      y_b[l] = h;
      h_b[l] = h;
    }
  }
}

// Forward with H a multiple of the vector width: W_hh packed once into panels of kLanes<T>
// units x 3 gates; per step, each panel's recurrent product and then its units' gate math,
// split over a thread team meeting once per step. h is double-buffered.
template <typename T, typename For>
void gru_forward_packed(const GruForward<T>& a, const For& parallel_for) {
  const int64_t B = a.d.B, H = a.d.H;
  constexpr int64_t L = kLanes<T>;
  const int64_t panels = H / L, W = 3 * L;
  const std::vector<T> packed = pack_gate_panels(a.w_hh, H, H, 3);
  std::vector<T> bias(static_cast<size_t>(3 * H), T(0));
  if (a.b_hh) std::copy(a.b_hh, a.b_hh + 3 * H, bias.begin());
  std::vector<T> hbuf(static_cast<size_t>(2 * B * H));
  std::vector<T> scratch(static_cast<size_t>(B * 3 * H));
  std::memcpy(hbuf.data(), a.h0, sizeof(T) * B * H);
  run_panel_steps(parallel_for, a.d.T, panels, B * H * 3 * H, [&](int64_t t, int64_t p) {
    const T* h_prev = hbuf.data() + (t & 1) * B * H;
    T* h_next = hbuf.data() + ((t + 1) & 1) * B * H;
    T* out = scratch.data() + p * B * W;
    packed_gemm3(B, h_prev, H, H, packed.data() + p * H * W, out);
    gru_forward_panel(B, out, bias.data(), a.gates_x + t * B * 3 * H, a.workspace + t * B * 4 * H,
                      a.y + t * B * H, h_prev, h_next, a.lengths, t, p * L, H);
  });
  std::memcpy(a.h_n, hbuf.data() + (a.d.T & 1) * B * H, sizeof(T) * B * H);
}

template <typename T, typename Gemm, typename For>
void gru_forward(const GruForward<T>& a, const Gemm& gemm, const For& parallel_for) {
  const int64_t B = a.d.B, H = a.d.H;
  if (gru_packed_ok<T>(a.d)) {
    gru_forward_packed(a, parallel_for);
    return;
  }
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

// For the rows active at step `next`, the gradient reaching h of units [j0, j0 + W):
// the direct part dh * z saved by step `next` plus `out`, that step's d_hidden W_hh.
template <typename T>
FASTRNN_CPU_CLONES void gru_dh_from_next(int64_t B, int64_t W, const T* out, const T* dh_direct,
                                         T* dh, const int64_t* lengths, int64_t next,
                                         int64_t j0, int64_t H) {
  for (int64_t b = 0; b < B; ++b) {
    if (!step_active(lengths, b, next)) continue;
    const T* o = out + b * W;
    const T* direct = dh_direct + b * H + j0;
    T* d = dh + b * H + j0;
    FASTRNN_SIMD
    for (int64_t l = 0; l < W; ++l) d[l] = direct[l] + o[l];
  }
}

// Backward gate math of units [j0, j0 + W) for every row of step t: input- and hidden-side
// pre-activation gradients (zero for finished rows), and the direct part dh * z of the
// gradient reaching h_{t-1} into dh_direct.
template <typename T>
FASTRNN_CPU_CLONES void gru_backward_panel(int64_t B, int64_t W, const T* ws_t, const T* h_prev_t,
                                           const T* dh, const T* gy_t, T* dh_direct, T* di_t,
                                           T* dhid_t, const int64_t* lengths, int64_t t,
                                           int64_t j0, int64_t H) {
  for (int64_t b = 0; b < B; ++b) {
    T* di_b = di_t + b * 3 * H;
    T* dhid_b = dhid_t + b * 3 * H;
    if (!step_active(lengths, b, t)) {
      for (int k = 0; k < 3; ++k) {
        std::fill(di_b + k * H + j0, di_b + k * H + j0 + W, T(0));
        std::fill(dhid_b + k * H + j0, dhid_b + k * H + j0 + W, T(0));
      }
      continue;
    }
    const T* ws_b = ws_t + b * 4 * H;
    const T* hp = h_prev_t + b * H;
    const T* dh_b = dh + b * H;
    const T* gy_b = gy_t + b * H;
    T* direct = dh_direct + b * H;
    FASTRNN_SIMD
    for (int64_t j = j0; j < j0 + W; ++j) {
      direct[j] = gru_cell_backward(ws_b, hp[j], dh_b[j] + gy_b[j], true, j, H, di_b, dhid_b);
    }
  }
}

// Backward with H a multiple of 4 vector widths: W_hh (3H, H) packed once into column
// panels of 4 * kLanes<T> units. The gradient reaching h_t of unit j is the direct part from
// step t+1 plus d_hidden_{t+1} W_hh[:, j] (K = 3H), and it feeds only unit j's gate math at
// step t, so per step each panel computes its units' dh and then their gate gradients,
// split over a thread team (d_hidden_{t+1} is complete before step t starts).
template <typename T, typename For>
void gru_backward_packed(const GruBackward<T>& a, const For& parallel_for) {
  const int64_t B = a.d.B, H = a.d.H, K = 3 * H;
  constexpr int64_t W = 4 * kLanes<T>;
  const int64_t panels = H / W;
  const std::vector<T> packed = pack_column_panels(a.w_hh, K, H, W);
  std::vector<T> scratch(static_cast<size_t>(B * H));
  std::vector<T> dh_direct(static_cast<size_t>(B * H));
  std::memcpy(a.dh0, a.grad_hn, sizeof(T) * B * H);
  // dh of the panel's units from step `next` (rows still active there).
  auto dh_from = [&](int64_t next, int64_t p) {
    T* out = scratch.data() + p * B * W;
    packed_gemm4(B, a.d_hidden + next * B * 3 * H, 3 * H, K, packed.data() + p * K * W, out);
    gru_dh_from_next(B, W, out, dh_direct.data(), a.dh0, a.lengths, next, p * W, H);
  };
  // Step s runs t = T-1-s; a last step takes dh0 from step 0.
  run_panel_steps(parallel_for, a.d.T + 1, panels, B * K * H, [&](int64_t s, int64_t p) {
    const int64_t t = a.d.T - 1 - s;
    if (t + 1 < a.d.T) dh_from(t + 1, p);
    if (t < 0) return;
    const T* h_prev_t = t > 0 ? a.y + (t - 1) * B * H : a.h0;
    gru_backward_panel(B, W, a.workspace + t * B * 4 * H, h_prev_t, a.dh0, a.grad_y + t * B * H,
                       dh_direct.data(), a.d_input + t * B * 3 * H, a.d_hidden + t * B * 3 * H,
                       a.lengths, t, p * W, H);
  });
}

template <typename T, typename Gemm, typename For>
void gru_backward(const GruBackward<T>& a, const Gemm& gemm, const For& parallel_for) {
  const int64_t B = a.d.B, H = a.d.H;
  if (H % (4 * kLanes<T>) == 0) {
    gru_backward_packed(a, parallel_for);
    return;
  }
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
