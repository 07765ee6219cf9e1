// The device-independent parts of the LSTM bindings (CPU in lstm.cpp, CUDA in
// cuda/lstm.cu): input checks, and the GEMMs over all steps around the recurrence.
#pragma once

#include <tuple>

#include "binding.h"

namespace fastrnn::binding {

// Checks what the kernels rely on; returns the layer's dimensions.
inline Dims check_lstm(const char* op, const Tensor& x, const Tensor& h0, const Tensor& c0,
                       const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                       const OptTensor& b_hh, const OptTensor& w_hr, const OptTensor& lengths) {
  TORCH_CHECK(x.dim() == 3, op, ": x must be 3-D (T, B, input_size), got ", x.dim(), "-D");
  TORCH_CHECK(x.size(0) > 0, op, ": x must have at least one time step");
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) % 4 == 0, op,
              ": w_hh must be 2-D with 4*hidden_size rows, got ", w_hh.sizes());
  const int64_t T = x.size(0), B = x.size(1), H = w_hh.size(0) / 4;
  TORCH_CHECK(!w_hr.has_value() || w_hr->dim() == 2, op, ": w_hr must be 2-D (proj_size, H)");
  const int64_t P = w_hr.has_value() ? w_hr->size(0) : H;
  check_shape(op, "w_ih", w_ih, {4 * H, x.size(2)}, x);
  check_shape(op, "w_hh", w_hh, {4 * H, P}, x);
  check_shape(op, "h0", h0, {B, P}, x);
  check_shape(op, "c0", c0, {B, H}, x);
  TORCH_CHECK(b_ih.has_value() == b_hh.has_value(), op, ": give both b_ih and b_hh, or neither");
  if (b_ih.has_value()) {
    check_shape(op, "b_ih", *b_ih, {4 * H}, x);
    check_shape(op, "b_hh", *b_hh, {4 * H}, x);
  }
  if (w_hr.has_value()) check_shape(op, "w_hr", *w_hr, {P, H}, x);
  check_lengths(op, lengths, B, x);
  return {T, B, H, P};
}

inline Dims check_lstm_backward(const char* op, const Tensor& grad_y, const Tensor& grad_hT,
                                const Tensor& grad_cT, const Tensor& x, const Tensor& h0,
                                const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                                const OptTensor& b_ih, const OptTensor& b_hh,
                                const OptTensor& w_hr, const Tensor& y, const Tensor& workspace,
                                const OptTensor& lengths) {
  const Dims d = check_lstm(op, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths);
  check_shape(op, "y", y, {d.T, d.B, d.P}, x);
  check_shape(op, "grad_y", grad_y, {d.T, d.B, d.P}, x);
  check_shape(op, "grad_hT", grad_hT, {d.B, d.P}, x);
  check_shape(op, "grad_cT", grad_cT, {d.B, d.H}, x);
  const auto type = acc_type(x);
  TORCH_CHECK(workspace.sizes() == at::IntArrayRef({d.T, d.B, 5 * d.H}) &&
                  workspace.scalar_type() == type && workspace.device() == x.device(),
              op, ": workspace must be the (T, B, 5H) ", type,
              " tensor from ext_lstm_forward, got ", workspace.sizes(), " ",
              workspace.scalar_type());
  return d;
}

// b_ih + b_hh in the accumulation dtype (both enter the gates the same way), or none.
inline OptTensor lstm_gate_bias(const OptTensor& b_ih, const OptTensor& b_hh, at::ScalarType type) {
  if (!b_ih.has_value()) return std::nullopt;
  return acc(*b_ih, type) + acc(*b_hh, type);
}

// x W_ih^T + b_ih + b_hh for all steps at once: (T * B, 4H) in the accumulation dtype.
inline Tensor lstm_input_gates(const Dims& d, const Tensor& x, const Tensor& w_ih,
                               const OptTensor& b_ih, const OptTensor& b_hh, at::ScalarType type) {
  return linear_all_steps(acc(x, type).view({d.T * d.B, x.size(2)}), acc(w_ih, type),
                          lstm_gate_bias(b_ih, b_hh, type));
}

// a^T b on BLAS.
inline Tensor mm_tn(const Tensor& a, const Tensor& b) { return at::mm(a.t(), b); }

// What is left of backward once the recurrence produced the gate gradients (T, B, 4H):
// dx (undefined when !want_dx: the caller computes it), dW_ih, dW_hh, dbias and dW_hr
// (empty without projection), each a GEMM or a sum over all steps at once, in the input
// dtype. dy: gradient reaching the projected h (T, B, P). a_t_b(a, b) computes a^T b for
// the weight gradients.
inline std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward_gemms(
    const Dims& d, const Tensor& dgates, const Tensor& dy, const Tensor& ws, const Tensor& x,
    const Tensor& h0, const Tensor& w_ih, const OptTensor& w_hr, const Tensor& y,
    at::ScalarType type, bool want_dx = true,
    Tensor (*a_t_b)(const Tensor&, const Tensor&) = mm_tn) {
  const Tensor flat = dgates.view({d.T * d.B, 4 * d.H});
  const int64_t I = x.size(2);
  // Both weight gradients from one GEMM, dgates^T [x_t, h_{t-1}]: one pass over dgates
  // instead of two (T=64, B=32, I=64, H=256 fp32, one core of an AVX-512 EPYC, MKL:
  // 15.0 ms against 17.6 for the two products and the concatenation of h_{t-1}).
  Tensor xh = at::empty({d.T, d.B, I + d.P}, flat.options());
  xh.narrow(2, 0, I).copy_(x);
  xh.narrow(2, I, d.P)[0].copy_(h0);
  if (d.T > 1) xh.narrow(2, I, d.P).narrow(0, 1, d.T - 1).copy_(y.narrow(0, 0, d.T - 1));
  const Tensor dw = a_t_b(flat, xh.view({d.T * d.B, I + d.P}));
  const auto out = x.scalar_type();
  Tensor dw_hr = at::empty({0}, x.options());
  if (w_hr.has_value()) {
    // o * tanh(c) of every step, the input of the projection.
    const Tensor hidden_all = ws.narrow(2, 3 * d.H, d.H) * at::tanh(ws.narrow(2, 4 * d.H, d.H));
    dw_hr = at::mm(dy.view({d.T * d.B, d.P}).t(), hidden_all.reshape({d.T * d.B, d.H})).to(out);
  }
  return {want_dx ? at::mm(flat, acc(w_ih, type)).view({d.T, d.B, I}).to(out) : Tensor(),
          dw.narrow(1, 0, I).to(out).contiguous(),
          dw.narrow(1, I, d.P).to(out).contiguous(),
          flat.sum(0).to(out),
          dw_hr};
}

}  // namespace fastrnn::binding
