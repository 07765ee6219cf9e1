// Elman RNN math for one (batch, hidden unit) element, on host and device, as torch.nn.RNN:
// h' = act(x W_ih^T + b_ih + h W_hh^T + b_hh) with act tanh or relu. The workspace row of a
// step holds h' (H): the activation's derivative is written with its output, so backward
// needs nothing else.
#pragma once

#include "fastrnn/common.h"

namespace fastrnn {

// The activation, chosen at compile time so the CPU loops vectorise without a select.
template <bool kRelu, typename T>
FASTRNN_HD T rnn_activation(T pre) {
  if constexpr (kRelu) {
    return pre > T(0) ? pre : T(0);
  } else {
    return tanh_act(pre);
  }
}

// d act / d pre from the output h = act(pre): 1 - h^2 for tanh; for relu 1 where h > 0, else
// 0 (torch's relu backward gives 0 at pre = 0 too).
template <bool kRelu, typename T>
FASTRNN_HD T rnn_activation_grad(T h) {
  if constexpr (kRelu) {
    return h > T(0) ? T(1) : T(0);
  } else {
    return T(1) - h * h;
  }
}

// Run-time choice, for the CUDA kernels (one kernel for both; the branch is uniform).
template <typename T>
FASTRNN_HD T rnn_activation(T pre, bool relu) {
  return relu ? rnn_activation<true>(pre) : rnn_activation<false>(pre);
}

template <typename T>
FASTRNN_HD T rnn_activation_grad(T h, bool relu) {
  return relu ? rnn_activation_grad<true>(h) : rnn_activation_grad<false>(h);
}

}  // namespace fastrnn
