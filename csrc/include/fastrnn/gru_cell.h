// GRU gate math for one (batch, hidden unit) element, on host and device. Gate order
// r, z, n as torch.nn.GRU, with b_hn inside the reset product; the workspace row of a
// step holds r, z, n and h W_hn + b_hn (4H).
#pragma once

#include <cstdint>

#include "fastrnn/common.h"

namespace fastrnn {

// Forward. xg: the row's x W_ih^T + b_ih (3H); hg: h W_hh^T + b_hh (3H). Returns h'.
template <typename T>
FASTRNN_HD T gru_cell_forward(const T* xg, const T* hg, T h_prev, int64_t j, int64_t H, T* ws) {
  const T r = sigmoid(xg[j] + hg[j]);
  const T z = sigmoid(xg[H + j] + hg[H + j]);
  const T hn = hg[2 * H + j];
  const T n = tanh_act(xg[2 * H + j] + r * hn);
  ws[j] = r;
  ws[H + j] = z;
  ws[2 * H + j] = n;
  ws[3 * H + j] = hn;
  return (T(1) - z) * n + z * h_prev;
}

// Backward. dh: gradient reaching h' this step. Writes the gradients of the input-side
// (3H, x W_ih^T + b_ih) and hidden-side (3H, h W_hh^T + b_hh) pre-activations, zero when
// inactive, and returns the direct part dh * z of the gradient reaching h_prev.
template <typename T>
FASTRNN_HD T gru_cell_backward(const T* ws, T h_prev, T dh, bool active, int64_t j, int64_t H,
                               T* d_input, T* d_hidden) {
  const T r = ws[j], z = ws[H + j], n = ws[2 * H + j], hn = ws[3 * H + j];
  const T dn = active ? dh * (T(1) - z) * (T(1) - n * n) : T(0);
  const T dr = dn * hn * r * (T(1) - r);
  const T dz = active ? dh * (h_prev - n) * z * (T(1) - z) : T(0);
  d_input[j] = dr;
  d_input[H + j] = dz;
  d_input[2 * H + j] = dn;
  d_hidden[j] = dr;
  d_hidden[H + j] = dz;
  d_hidden[2 * H + j] = dn * r;
  return dh * z;
}

}  // namespace fastrnn
