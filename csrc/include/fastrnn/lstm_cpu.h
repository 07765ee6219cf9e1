// LSTM layer forward and backward through time on the CPU, one direction, time-major.
// The input projection x W_ih^T and the weight gradients are large GEMMs over all steps
// that the caller does (BLAS); these loops run the recurrence: per step one recurrent
// GEMM (through the `gemm` callable) and the fused gate math, split over threads.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "fastrnn/common.h"
#include "fastrnn/lstm_cell.h"
#include "fastrnn/packed_gemm.h"
#include "fastrnn/recurrence.h"

namespace fastrnn {

// Gate math of units [j0, j1) of one active row: pre (4H) -> workspace row (5H), the new
// c in place in c (H), o * tanh(c) into out (H). Separate from the padded case so the loop
// has no selects or conditional loads and vectorises.
template <typename T>
FASTRNN_CPU_CLONES void lstm_forward_row(const T* pre, T* c, T* ws, T* out, int64_t j0,
                                         int64_t j1, int64_t H) {
  FASTRNN_SIMD
  for (int64_t j = j0; j < j1; ++j) {
    T c_new, h;
    lstm_cell_forward(pre, c[j], j, H, ws, &c_new, &h);
    c[j] = c_new;
    out[j] = h;
  }
}

// Backward gate math of units [j0, j1) of one active row: dh (+ gy when given) is the
// gradient reaching o * tanh(c); dc (H) is updated in place; gate gradients into dgates.
template <typename T>
FASTRNN_CPU_CLONES void lstm_backward_row(const T* ws, const T* c_prev, const T* dh,
                                          const T* gy, T* dc, T* dgates, int64_t j0, int64_t j1,
                                          int64_t H) {
  if (gy) {
    FASTRNN_SIMD
    for (int64_t j = j0; j < j1; ++j) {
      dc[j] = lstm_cell_backward(ws, c_prev[j], dh[j] + gy[j], dc[j], true, j, H, dgates);
    }
  } else {
    FASTRNN_SIMD
    for (int64_t j = j0; j < j1; ++j) {
      dc[j] = lstm_cell_backward(ws, c_prev[j], dh[j], dc[j], true, j, H, dgates);
    }
  }
}

// The forward gate math of one panel's kLanes<T> units [j0, j0 + L) for every row, right
// after the panel's product `out` (B, 4L): pre-activations are `out` plus row b of pre
// (4H each, rows pre_stride apart: the step's input gates, or with stride 0 the bias);
// writes c, y, the next h and, with kWorkspace, the workspace (inference keeps none: five
// stores per unit less). A clone of its own, so the whole epilogue runs with the widest
// vectors.
template <bool kWorkspace, typename T>
FASTRNN_CPU_CLONES void lstm_forward_panel(int64_t B, const T* out, const T* pre,
                                           int64_t pre_stride, T* ws_t, T* c, T* y_t,
                                           const T* h_prev, T* h_next, const int64_t* lengths,
                                           int64_t t, int64_t j0, int64_t H, int64_t P) {
  constexpr int64_t L = kLanes<T>, W = 4 * L;
  for (int64_t b = 0; b < B; ++b) {
    T* ws_b = kWorkspace ? ws_t + b * 5 * H + j0 : nullptr;
    T* y_b = y_t + b * P + j0;
    T* h_b = h_next + b * P + j0;
    if (!step_active(lengths, b, t)) {
      // A finished sequence: its state stays, its output is zero.
      if (kWorkspace) {
        for (int k = 0; k < 5; ++k) std::fill(ws_b + k * H, ws_b + k * H + L, T(0));
      }
      std::fill(y_b, y_b + L, T(0));
      std::copy(h_prev + b * P + j0, h_prev + b * P + j0 + L, h_b);
      continue;
    }
    const T* pre_b = pre + b * pre_stride + j0;
    const T* o_b = out + b * W;
    T* c_b = c + b * H + j0;
    FASTRNN_SIMD
    for (int64_t l = 0; l < L; ++l) {
      const T i = sigmoid(pre_b[l] + o_b[l]);
      const T f = sigmoid(pre_b[H + l] + o_b[L + l]);
      const T g = tanh_act(pre_b[2 * H + l] + o_b[2 * L + l]);
      const T o = sigmoid(pre_b[3 * H + l] + o_b[3 * L + l]);
      const T c_new = f * c_b[l] + i * g;
      const T h = o * tanh_act(c_new);
      if (kWorkspace) {
        ws_b[l] = i;
        ws_b[H + l] = f;
        ws_b[2 * H + l] = g;
        ws_b[3 * H + l] = o;
        ws_b[4 * H + l] = c_new;
      }
      c_b[l] = c_new;
      y_b[l] = h;
      h_b[l] = h;
    }
  }
}

template <typename T>
struct LstmForward {
  Dims d;
  T* gates;                  // (T, B, 4H) in: x W_ih^T + b_ih + b_hh; h W_hh^T is added in place
  const T* h0;               // (B, P)
  const T* c0;               // (B, H)
  const T* w_hh_t;           // (P, 4H): W_hh transposed (the unpacked path; may be null
                             //   where lstm_packed_ok)
  const T* w_hr_t;           // (H, P): W_hr transposed, or null without projection
  const int64_t* lengths;    // (B,) or null
  T* y;                      // (T, B, P) out; zero at padded steps
  T* h_n;                    // (B, P) out: the running h state
  T* c_n;                    // (B, H) out: the running c state
  T* workspace;              // (T, B, 5H) out: i, f, g, o, c of every step; or null (no
                             //   gradient will be taken): each step writes a scratch row
  T* hidden;                 // (B, H) scratch for o * tanh(c) before projection (w_hr_t only)
  // The packed path's alternative to `gates` (which may then be null): x_t W_ih^T enters
  // each step's product with h, and the bias the gate math.
  const T* x = nullptr;      // (T, B, I), or null: use gates
  const T* w_ih = nullptr;   // (4H, I): W_ih, with x
  const T* bias = nullptr;   // (4H): b_ih + b_hh, or null
  int64_t I = 0;
  const T* w_hh = nullptr;   // (4H, P): W_hh as PyTorch keeps it, which the packed path packs
};

// Step t's workspace rows (B, 5H): in a.workspace, or without one the scratch `step_ws`
// (B x 5H, rewritten every step), so that inference writes no (T, B, 5H) tensor (for
// B=64, T=100, H=256 fp32: 33 MB through the memory system per call).
template <typename T>
T* step_workspace(const LstmForward<T>& a, std::vector<T>& step_ws, int64_t t) {
  return a.workspace ? a.workspace + t * a.d.B * 5 * a.d.H : step_ws.data();
}

// Panels of kLanes<T> hidden units: each holds the units' four gate columns (i, f, g, o).
template <typename T>
bool lstm_packed_ok(const Dims& d, bool projection) {
  return !projection && d.H % kLanes<T> == 0;
}

// Forward without projection, H a multiple of the vector width: the weights packed once
// into panels of kLanes<T> units x 4 gates; per step, each panel's product and then the
// gate math of its units, split over panels. With a.x the panels hold [W_ih; W_hh]^T and
// the product is [x_t, h_{t-1}] times them, so the input projection needs no pass (and no
// (T, B, 4H) buffer) of its own; else W_hh^T, and the input gates come from a.gates. h is
// double-buffered as panels read the whole previous h.
template <typename T, typename For>
void lstm_forward_packed(const LstmForward<T>& a, const For& parallel_for) {
  const int64_t B = a.d.B, H = a.d.H, P = a.d.P, I = a.x ? a.I : 0, K = I + P;
  constexpr int64_t L = kLanes<T>;
  const int64_t panels = H / L, W = 4 * L;
  const std::vector<T> packed = pack_gate_panels(a.x ? a.w_ih : a.w_hh, a.x ? I : P, H, 4,
                                                 a.x ? a.w_hh : nullptr, a.x ? P : 0);
  const std::vector<T> zero_bias(static_cast<size_t>(a.x && !a.bias ? 4 * H : 0), T(0));
  const T* bias = a.bias ? a.bias : zero_bias.data();
  std::vector<T> hbuf(static_cast<size_t>(2 * B * P));
  std::vector<T> scratch(static_cast<size_t>(B * 4 * H));
  std::memcpy(hbuf.data(), a.h0, sizeof(T) * B * P);
  std::memcpy(a.c_n, a.c0, sizeof(T) * B * H);
  run_panel_steps(parallel_for, a.d.T, panels, B * K * 4 * H, [&](int64_t t, int64_t p) {
    const T* h_prev = hbuf.data() + (t & 1) * B * P;
    T* h_next = hbuf.data() + ((t + 1) & 1) * B * P;
    T* out = scratch.data() + p * B * W;
    const T* panel = packed.data() + p * K * W;
    if (a.x) {
      packed_gemm4_pair(B, a.x + t * B * I, I, I, h_prev, P, P, panel, out);
    } else {
      packed_gemm4(B, h_prev, P, P, panel, out);
    }
    const T* pre = a.x ? bias : a.gates + t * B * 4 * H;
    const int64_t pre_stride = a.x ? 0 : 4 * H;
    if (a.workspace) {
      lstm_forward_panel<true>(B, out, pre, pre_stride, a.workspace + t * B * 5 * H, a.c_n,
                               a.y + t * B * P, h_prev, h_next, a.lengths, t, p * L, H, P);
    } else {
      lstm_forward_panel<false>(B, out, pre, pre_stride, static_cast<T*>(nullptr), a.c_n,
                                a.y + t * B * P, h_prev, h_next, a.lengths, t, p * L, H, P);
    }
  });
  std::memcpy(a.h_n, hbuf.data() + (a.d.T & 1) * B * P, sizeof(T) * B * P);
}

template <typename T, typename Gemm, typename For>
void lstm_forward(const LstmForward<T>& a, const Gemm& gemm, const For& parallel_for) {
  const int64_t B = a.d.B, H = a.d.H, P = a.d.P;
  if (lstm_packed_ok<T>(a.d, a.w_hr_t != nullptr)) {
    lstm_forward_packed(a, parallel_for);
    return;
  }
  std::vector<T> step_ws(static_cast<size_t>(a.workspace ? 0 : B * 5 * H));
  std::memcpy(a.h_n, a.h0, sizeof(T) * B * P);
  std::memcpy(a.c_n, a.c0, sizeof(T) * B * H);
  for (int64_t t = 0; t < a.d.T; ++t) {
    T* pre = a.gates + t * B * 4 * H;
    T* y_t = a.y + t * B * P;
    T* ws_t = step_workspace(a, step_ws, t);
    gemm(B, 4 * H, P, a.h_n, P, a.w_hh_t, 4 * H, pre, 4 * H, /*accumulate=*/true);
    for_each_row_piece(parallel_for, B, H, [&](int64_t b, int64_t j0, int64_t j1) {
      T* ws_b = ws_t + b * 5 * H;
      T* out_b = a.w_hr_t ? a.hidden + b * H : y_t + b * P;
      if (!step_active(a.lengths, b, t)) {
        // A finished sequence: its state stays, its output is zero (with projection the
        // rows are zeroed after the GEMM), its workspace row is never read.
        std::fill(ws_b + j0, ws_b + j1, T(0));
        for (int k = 1; k < 5; ++k) std::fill(ws_b + k * H + j0, ws_b + k * H + j1, T(0));
        if (!a.w_hr_t) std::fill(out_b + j0, out_b + j1, T(0));
        return;
      }
      lstm_forward_row(pre + b * 4 * H, a.c_n + b * H, ws_b, out_b, j0, j1, H);
      if (!a.w_hr_t) std::copy(out_b + j0, out_b + j1, a.h_n + b * P + j0);
    });
    if (a.w_hr_t) {
      gemm(B, P, H, a.hidden, H, a.w_hr_t, P, y_t, P, /*accumulate=*/false);
      for (int64_t b = 0; b < B; ++b) {
        T* y_b = y_t + b * P;
        if (step_active(a.lengths, b, t)) {
          std::memcpy(a.h_n + b * P, y_b, sizeof(T) * P);
        } else {
          std::memset(y_b, 0, sizeof(T) * P);
        }
      }
    }
  }
}

template <typename T>
struct LstmBackward {
  Dims d;
  const T* grad_y;           // (T, B, P); ignored at padded steps
  const T* grad_hn;          // (B, P)
  const T* grad_cn;          // (B, H)
  const T* c0;               // (B, H)
  const T* w_hh;             // (4H, P)
  const T* w_hr;             // (P, H), or null without projection
  const int64_t* lengths;    // (B,) or null
  const T* workspace;        // (T, B, 5H) from lstm_forward
  T* dgates;                 // (T, B, 4H) out: gradients of the gate pre-activations
  T* dh0;                    // (B, P) out: the running gradient of the h state
  T* dc0;                    // (B, H) out: the running gradient of the c state
  T* dy;                     // (T, B, P) out with w_hr: gradient reaching the projected h
                             //   (zero at padded steps), for dW_hr; null without w_hr
  T* dhidden;                // (B, H) scratch with w_hr: gradient reaching o * tanh(c)
  T* dh_next;                // (B, P) scratch: dgates_t W_hh
};

// Units [j0, j1) of row b at step t: the gate gradients from dh (+ gy when not null) and
// the carried dc; a padded step (t past the row's length) passes nothing through, so its
// gate gradients are zero and the c gradient stays.
template <typename T>
void lstm_backward_piece(const LstmBackward<T>& a, int64_t t, int64_t b, int64_t j0, int64_t j1,
                         const T* dh, const T* gy) {
  const int64_t B = a.d.B, H = a.d.H;
  T* dg_b = a.dgates + (t * B + b) * 4 * H;
  if (!step_active(a.lengths, b, t)) {
    for (int k = 0; k < 4; ++k) std::fill(dg_b + k * H + j0, dg_b + k * H + j1, T(0));
    return;
  }
  const T* ws_b = a.workspace + (t * B + b) * 5 * H;
  const T* c_prev = t > 0 ? ws_b - B * 5 * H + 4 * H : a.c0 + b * H;
  lstm_backward_row(ws_b, c_prev, dh, gy, a.dc0 + b * H, dg_b, j0, j1, H);
}

// Backward without projection, H a multiple of 4 vector widths: W_hh (4H, H) packed once
// into column panels of 4 * kLanes<T> units. Step t's gradient reaching h of unit j is
// dgates_{t+1} W_hh[:, j] (K = 4H), and it feeds only unit j's gate math at step t, so per
// step each panel computes its units' dh and then their backward gate math, split over
// panels (dgates_{t+1} is complete before step t starts).
template <typename T, typename For>
void lstm_backward_packed(const LstmBackward<T>& a, const For& parallel_for) {
  const int64_t B = a.d.B, H = a.d.H, P = a.d.P, K = 4 * H;
  constexpr int64_t W = 4 * kLanes<T>;
  const int64_t panels = P / W;
  const std::vector<T> packed = pack_column_panels(a.w_hh, K, P, W);
  std::vector<T> scratch(static_cast<size_t>(B * P));
  std::memcpy(a.dh0, a.grad_hn, sizeof(T) * B * P);
  std::memcpy(a.dc0, a.grad_cn, sizeof(T) * B * H);
  // dh of the panel's units from dgates of step `next` (rows still active there).
  auto dh_from = [&](int64_t next, int64_t p) {
    T* out = scratch.data() + p * B * W;
    packed_gemm4(B, a.dgates + next * B * 4 * H, 4 * H, K, packed.data() + p * K * W, out);
    for (int64_t b = 0; b < B; ++b) {
      if (step_active(a.lengths, b, next)) {
        std::memcpy(a.dh0 + b * P + p * W, out + b * W, sizeof(T) * W);
      }
    }
  };
  // Step s runs t = T-1-s; a last step takes dh0 from step 0.
  run_panel_steps(parallel_for, a.d.T + 1, panels, B * K * P, [&](int64_t s, int64_t p) {
    const int64_t t = a.d.T - 1 - s;
    if (t + 1 < a.d.T) dh_from(t + 1, p);
    if (t < 0) return;
    const T* gy_t = a.grad_y + t * B * P;
    for (int64_t b = 0; b < B; ++b) {
      lstm_backward_piece(a, t, b, p * W, (p + 1) * W, a.dh0 + b * P, gy_t + b * P);
    }
  });
}

template <typename T, typename Gemm, typename For>
void lstm_backward(const LstmBackward<T>& a, const Gemm& gemm, const For& parallel_for) {
  const int64_t B = a.d.B, H = a.d.H, P = a.d.P;
  if (a.w_hr == nullptr && H % (4 * kLanes<T>) == 0) {
    lstm_backward_packed(a, parallel_for);
    return;
  }
  std::memcpy(a.dh0, a.grad_hn, sizeof(T) * B * P);
  std::memcpy(a.dc0, a.grad_cn, sizeof(T) * B * H);
  for (int64_t t = a.d.T - 1; t >= 0; --t) {
    const T* gy_t = a.grad_y + t * B * P;
    T* dg_t = a.dgates + t * B * 4 * H;
    if (a.w_hr) {
      T* dy_t = a.dy + t * B * P;
      for (int64_t b = 0; b < B; ++b) {
        const bool active = step_active(a.lengths, b, t);
        for (int64_t p = 0; p < P; ++p) {
          dy_t[b * P + p] = active ? a.dh0[b * P + p] + gy_t[b * P + p] : T(0);
        }
      }
      gemm(B, H, P, dy_t, P, a.w_hr, H, a.dhidden, H, /*accumulate=*/false);
    }
    for_each_row_piece(parallel_for, B, H, [&](int64_t b, int64_t j0, int64_t j1) {
      // The gradient reaching o * tanh(c): through the projection, or straight from h.
      if (a.w_hr) {
        lstm_backward_piece(a, t, b, j0, j1, a.dhidden + b * H, static_cast<const T*>(nullptr));
      } else {
        lstm_backward_piece(a, t, b, j0, j1, a.dh0 + b * P, gy_t + b * P);
      }
    });
    gemm(B, P, 4 * H, dg_t, 4 * H, a.w_hh, P, a.dh_next, P, /*accumulate=*/false);
    for (int64_t b = 0; b < B; ++b) {
      if (step_active(a.lengths, b, t)) {
        std::memcpy(a.dh0 + b * P, a.dh_next + b * P, sizeof(T) * P);
      }
    }
  }
}

}  // namespace fastrnn
