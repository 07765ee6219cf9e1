// The device-independent parts of the GRU bindings (CPU in gru.cpp, CUDA in cuda/gru.cu):
// input checks, and the GEMMs over all steps around the recurrence.
#pragma once

#include <tuple>

#include "binding.h"

namespace fastrnn::binding {

// Checks what the kernels rely on; returns the layer's dimensions.
inline Dims check_gru(const char* op, const Tensor& x, const Tensor& h0, const Tensor& w_ih,
                      const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                      const OptTensor& lengths) {
  TORCH_CHECK(x.dim() == 3, op, ": x must be 3-D (T, B, input_size), got ", x.dim(), "-D");
  TORCH_CHECK(x.size(0) > 0, op, ": x must have at least one time step");
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) % 3 == 0, op,
              ": w_hh must be 2-D with 3*hidden_size rows, got ", w_hh.sizes());
  const int64_t T = x.size(0), B = x.size(1), H = w_hh.size(0) / 3;
  check_shape(op, "w_ih", w_ih, {3 * H, x.size(2)}, x);
  check_shape(op, "w_hh", w_hh, {3 * H, H}, x);
  check_shape(op, "h0", h0, {B, H}, x);
  TORCH_CHECK(b_ih.has_value() == b_hh.has_value(), op, ": give both b_ih and b_hh, or neither");
  if (b_ih.has_value()) {
    check_shape(op, "b_ih", *b_ih, {3 * H}, x);
    check_shape(op, "b_hh", *b_hh, {3 * H}, x);
  }
  check_lengths(op, lengths, B, x);
  return {T, B, H, H};
}

inline Dims check_gru_backward(const char* op, const Tensor& grad_y, const Tensor& grad_hT,
                               const Tensor& x, const Tensor& h0, const Tensor& w_ih,
                               const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                               const Tensor& y, const Tensor& workspace,
                               const OptTensor& lengths) {
  const Dims d = check_gru(op, x, h0, w_ih, w_hh, b_ih, b_hh, lengths);
  check_shape(op, "y", y, {d.T, d.B, d.H}, x);
  check_shape(op, "grad_y", grad_y, {d.T, d.B, d.H}, x);
  check_shape(op, "grad_hT", grad_hT, {d.B, d.H}, x);
  const auto type = acc_type(x);
  TORCH_CHECK(workspace.sizes() == at::IntArrayRef({d.T, d.B, 4 * d.H}) &&
                  workspace.scalar_type() == type && workspace.device() == x.device(),
              op, ": workspace must be the (T, B, 4H) ", type,
              " tensor from ext_gru_forward, got ", workspace.sizes(), " ",
              workspace.scalar_type());
  return d;
}

// x W_ih^T + b_ih for all steps at once: (T * B, 3H) in the accumulation dtype.
inline Tensor gru_input_gates(const Dims& d, const Tensor& x, const Tensor& w_ih,
                              const OptTensor& b_ih, at::ScalarType type) {
  return linear_all_steps(acc(x, type).view({d.T * d.B, x.size(2)}), acc(w_ih, type),
                          acc(b_ih, type));
}

// What is left of backward once the recurrence produced the gradients of the input-side
// and hidden-side pre-activations (T, B, 3H each): dx (undefined when !want_dx: the caller
// computes it), dW_ih, dW_hh, db_ih, db_hh, each a GEMM or a sum over all steps at once, in
// the input dtype.
inline std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> gru_backward_gemms(
    const Dims& d, const Tensor& d_input, const Tensor& d_hidden, const Tensor& x,
    const Tensor& h0, const Tensor& w_ih, const Tensor& y, at::ScalarType type,
    bool want_dx = true) {
  const Tensor gi = d_input.view({d.T * d.B, 3 * d.H});
  const Tensor gh = d_hidden.view({d.T * d.B, 3 * d.H});
  const Tensor h_prev = at::cat({acc(h0, type).unsqueeze(0), acc(y, type).narrow(0, 0, d.T - 1)});
  const auto out = x.scalar_type();
  return {want_dx ? at::mm(gi, acc(w_ih, type)).view({d.T, d.B, x.size(2)}).to(out) : Tensor(),
          at::mm(gi.t(), acc(x, type).view({d.T * d.B, x.size(2)})).to(out),
          at::mm(gh.t(), h_prev.view({d.T * d.B, d.H})).to(out),
          gi.sum(0).to(out),
          gh.sum(0).to(out)};
}

}  // namespace fastrnn::binding
