// Elman RNN layer forward and backward through time on the CPU, one direction, time-major.
// The caller does the products over all steps (x W_ih^T before, dx and the weight gradients
// after); these loops run the recurrence on the packed kernels (packed_gemm.h,
// recurrence.h): W_hh packed once per call into column panels of 4 * kLanes<T> units, and per
// step each panel's product followed by its units' activation while they are in L1, the
// panels split over a thread team (run_panel_steps). Forward and backward are the same loop:
// the step's operand (h_{t-1} forward, the pre-activation gradient of step t+1 backward)
// times a panel of W_hh^T or W_hh.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "fastrnn/common.h"
#include "fastrnn/packed_gemm.h"
#include "fastrnn/recurrence.h"
#include "fastrnn/rnn_cell.h"

namespace fastrnn {

// Units per panel of the RNN's recurrent products: four vectors per panel row, so a register
// tile of 4 rows holds 16 independent accumulators, enough to hide the FMA latency (the
// LSTM/GRU forward panels get theirs from 4 or 3 gates of one vector each).
template <typename T>
constexpr int64_t kRnnPanel = 4 * kLanes<T>;

template <typename T>
struct RnnForward {
  Dims d;                    // P == H
  const T* h0;               // (B, H)
  const T* w_hh_t;           // (H, H): W_hh transposed
  const T* bias;             // (H,): b_ih + b_hh, or null without bias
  const int64_t* lengths;    // (B,) or null
  T* workspace;              // (T, B, H) in: x W_ih^T; out: the h state after every step
  T* y;                      // (T, B, H) out; zero at padded steps
  T* h_n;                    // (B, H) out
};

// The activation of units [j0, j0 + n) of every row at step t, after the panel's product
// `out` (B, kRnnPanel): h = act(x W_ih^T (in ws_t) + bias + out). Finished rows keep their
// state and output zero.
template <bool kRelu, typename T>
FASTRNN_CPU_CLONES void rnn_forward_panel(int64_t B, int64_t n, const T* out, const T* bias,
                                          T* ws_t, T* y_t, const T* h_prev, T* h_next,
                                          const int64_t* lengths, int64_t t, int64_t j0,
                                          int64_t H) {
  constexpr int64_t W = kRnnPanel<T>;
  for (int64_t b = 0; b < B; ++b) {
    T* ws_b = ws_t + b * H + j0;
    T* y_b = y_t + b * H + j0;
    T* h_b = h_next + b * H + j0;
    const T* hp = h_prev + b * H + j0;
    if (!step_active(lengths, b, t)) {
      std::copy(hp, hp + n, ws_b);
      std::copy(hp, hp + n, h_b);
      std::fill(y_b, y_b + n, T(0));
      continue;
    }
    const T* o = out + b * W;
    FASTRNN_SIMD
    for (int64_t l = 0; l < n; ++l) {
      const T h = rnn_activation<kRelu>(ws_b[l] + (bias[j0 + l] + o[l]));
      ws_b[l] = h;
      y_b[l] = h;
      h_b[l] = h;
    }
  }
}

template <bool kRelu, typename T, typename For>
void rnn_forward(const RnnForward<T>& a, const For& parallel_for) {
  const int64_t B = a.d.B, H = a.d.H;
  constexpr int64_t W = kRnnPanel<T>;
  const int64_t panels = (H + W - 1) / W;
  const std::vector<T> packed = pack_column_panels(a.w_hh_t, H, H, W);
  std::vector<T> bias(static_cast<size_t>(H), T(0));
  if (a.bias) std::copy(a.bias, a.bias + H, bias.begin());
  std::vector<T> hbuf(static_cast<size_t>(2 * B * H));  // h_{t-1} and h_t: panels read all of h
  std::vector<T> scratch(static_cast<size_t>(panels * B * W));
  std::memcpy(hbuf.data(), a.h0, sizeof(T) * B * H);
  run_panel_steps(parallel_for, a.d.T, panels, B * H * H, [&](int64_t t, int64_t p) {
    const T* h_prev = hbuf.data() + (t & 1) * B * H;
    T* h_next = hbuf.data() + ((t + 1) & 1) * B * H;
    T* out = scratch.data() + p * B * W;
    packed_gemm4(B, h_prev, H, H, packed.data() + p * H * W, out);
    rnn_forward_panel<kRelu>(B, std::min(W, H - p * W), out, bias.data(),
                             a.workspace + t * B * H, a.y + t * B * H, h_prev, h_next, a.lengths,
                             t, p * W, H);
  });
  std::memcpy(a.h_n, hbuf.data() + (a.d.T & 1) * B * H, sizeof(T) * B * H);
}

template <typename T>
struct RnnBackward {
  Dims d;                    // P == H
  const T* grad_y;           // (T, B, H); ignored at padded steps
  const T* grad_hn;          // (B, H)
  const T* w_hh;             // (H, H)
  const int64_t* lengths;    // (B,) or null
  const T* workspace;        // (T, B, H) from rnn_forward: h_t
  T* d_pre;                  // (T, B, H) out: gradient of each step's pre-activation
  T* dh;                     // (B, H) out: the running gradient of the h state (dh0 at the end)
};

// For the rows active at step `next`, the gradient reaching h_{next-1} of units
// [j0, j0 + n): `out`, that step's d_pre W_hh (rows finished by then keep theirs).
template <typename T>
void rnn_dh_from_next(int64_t B, int64_t n, const T* out, T* dh, const int64_t* lengths,
                      int64_t next, int64_t j0, int64_t H) {
  for (int64_t b = 0; b < B; ++b) {
    const T* o = out + b * kRnnPanel<T>;
    if (step_active(lengths, b, next)) std::copy(o, o + n, dh + b * H + j0);
  }
}

// d_pre of units [j0, j0 + n) of every row at step t: (dh + grad_y) * act'(h_t), zero for
// finished rows.
template <bool kRelu, typename T>
FASTRNN_CPU_CLONES void rnn_backward_panel(int64_t B, int64_t n, const T* ws_t, const T* dh,
                                           const T* gy_t, T* d_t, const int64_t* lengths,
                                           int64_t t, int64_t j0, int64_t H) {
  for (int64_t b = 0; b < B; ++b) {
    T* d_b = d_t + b * H + j0;
    if (!step_active(lengths, b, t)) {
      std::fill(d_b, d_b + n, T(0));
      continue;
    }
    const T* h_b = ws_t + b * H + j0;
    const T* dh_b = dh + b * H + j0;
    const T* gy_b = gy_t + b * H + j0;
    FASTRNN_SIMD
    for (int64_t l = 0; l < n; ++l) {
      d_b[l] = (dh_b[l] + gy_b[l]) * rnn_activation_grad<kRelu>(h_b[l]);
    }
  }
}

// Backward: step s runs t = T-1-s. Each panel first takes its units' gradient reaching h_t
// from step t+1 (d_pre_{t+1} W_hh, K = H), then their d_pre_t; a last step takes dh0 from
// d_pre_0.
template <bool kRelu, typename T, typename For>
void rnn_backward(const RnnBackward<T>& a, const For& parallel_for) {
  const int64_t B = a.d.B, H = a.d.H, steps = a.d.T;
  constexpr int64_t W = kRnnPanel<T>;
  const int64_t panels = (H + W - 1) / W;
  const std::vector<T> packed = pack_column_panels(a.w_hh, H, H, W);
  std::vector<T> scratch(static_cast<size_t>(panels * B * W));
  std::memcpy(a.dh, a.grad_hn, sizeof(T) * B * H);
  run_panel_steps(parallel_for, steps + 1, panels, B * H * H, [&](int64_t s, int64_t p) {
    const int64_t t = steps - 1 - s, j0 = p * W, n = std::min(W, H - j0);
    if (t + 1 < steps) {
      T* out = scratch.data() + p * B * W;
      packed_gemm4(B, a.d_pre + (t + 1) * B * H, H, H, packed.data() + p * H * W, out);
      rnn_dh_from_next(B, n, out, a.dh, a.lengths, t + 1, j0, H);
    }
    if (t >= 0) {
      rnn_backward_panel<kRelu>(B, n, a.workspace + t * B * H, a.dh, a.grad_y + t * B * H,
                                a.d_pre + t * B * H, a.lengths, t, j0, H);
    }
  });
}

}  // namespace fastrnn
