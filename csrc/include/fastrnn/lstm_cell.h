// LSTM gate math for one (batch, hidden unit) element, on host and device. Gate order
// i, f, g, o as torch.nn.LSTM; the workspace row of a step holds i, f, g, o, c (5H).
#pragma once

#include <cstdint>

#include "fastrnn/common.h"

namespace fastrnn {

// Forward. `pre` points at the row's 4H pre-activations (x W_ih^T + h W_hh^T + biases).
// Writes the row's activations and c into `ws` (5H) and returns c and o * tanh(c).
template <typename T>
FASTRNN_HD void lstm_cell_forward(const T* pre, T c_prev, int64_t j, int64_t H, T* ws, T* c_out,
                                  T* h_out) {
  const T i = sigmoid(pre[j]);
  const T f = sigmoid(pre[H + j]);
  const T g = tanh_act(pre[2 * H + j]);
  const T o = sigmoid(pre[3 * H + j]);
  const T c = f * c_prev + i * g;
  ws[j] = i;
  ws[H + j] = f;
  ws[2 * H + j] = g;
  ws[3 * H + j] = o;
  ws[4 * H + j] = c;
  *c_out = c;
  *h_out = o * tanh_act(c);
}

// Backward. dh: gradient reaching o * tanh(c) this step; dc_next: gradient reaching c from
// later steps. Writes the four gate pre-activation gradients (zero when inactive) into
// `dgates` (4H) and returns the gradient reaching c_prev.
template <typename T>
FASTRNN_HD T lstm_cell_backward(const T* ws, T c_prev, T dh, T dc_next, bool active, int64_t j,
                                int64_t H, T* dgates) {
  const T i = ws[j], f = ws[H + j], g = ws[2 * H + j], o = ws[3 * H + j], c = ws[4 * H + j];
  const T tanh_c = tanh_act(c);
  const T dc = dc_next + dh * o * (T(1) - tanh_c * tanh_c);
  dgates[j] = active ? dc * g * i * (T(1) - i) : T(0);
  dgates[H + j] = active ? dc * c_prev * f * (T(1) - f) : T(0);
  dgates[2 * H + j] = active ? dc * i * (T(1) - g * g) : T(0);
  dgates[3 * H + j] = active ? dh * tanh_c * o * (T(1) - o) : T(0);
  return active ? dc * f : dc_next;
}

}  // namespace fastrnn
