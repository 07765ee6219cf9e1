// The device-independent parts of the Elman RNN bindings (CPU in rnn.cpp, CUDA in
// cuda/rnn.cu): input checks, the nonlinearity, and the weight-gradient GEMMs over all steps.
#pragma once

#include <string_view>
#include <tuple>

#include "binding.h"

namespace fastrnn::binding {

// True for "relu", false for "tanh"; anything else is an error (as torch.nn.RNN's).
inline bool rnn_is_relu(const char* op, std::string_view nonlinearity) {
  TORCH_CHECK_VALUE(nonlinearity == "tanh" || nonlinearity == "relu", op,
                    ": Unknown nonlinearity '", nonlinearity, "'. Select from 'tanh' or 'relu'.");
  return nonlinearity == "relu";
}

// Checks what the kernels rely on; returns the layer's dimensions.
inline Dims check_rnn(const char* op, const Tensor& x, const Tensor& h0, const Tensor& w_ih,
                      const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                      const OptTensor& lengths) {
  TORCH_CHECK(x.dim() == 3, op, ": x must be 3-D (T, B, input_size), got ", x.dim(), "-D");
  TORCH_CHECK(x.size(0) > 0, op, ": x must have at least one time step");
  TORCH_CHECK(w_hh.dim() == 2, op, ": w_hh must be 2-D (H, H), got ", w_hh.sizes());
  const int64_t T = x.size(0), B = x.size(1), H = w_hh.size(0);
  check_shape(op, "w_ih", w_ih, {H, x.size(2)}, x);
  check_shape(op, "w_hh", w_hh, {H, H}, x);
  check_shape(op, "h0", h0, {B, H}, x);
  TORCH_CHECK(b_ih.has_value() == b_hh.has_value(), op, ": give both b_ih and b_hh, or neither");
  if (b_ih.has_value()) {
    check_shape(op, "b_ih", *b_ih, {H}, x);
    check_shape(op, "b_hh", *b_hh, {H}, x);
  }
  check_lengths(op, lengths, B, x);
  return {T, B, H, H};
}

inline Dims check_rnn_backward(const char* op, const Tensor& grad_y, const Tensor& grad_hT,
                               const Tensor& x, const Tensor& h0, const Tensor& w_ih,
                               const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                               const Tensor& y, const Tensor& workspace,
                               const OptTensor& lengths) {
  const Dims d = check_rnn(op, x, h0, w_ih, w_hh, b_ih, b_hh, lengths);
  check_shape(op, "y", y, {d.T, d.B, d.H}, x);
  check_shape(op, "grad_y", grad_y, {d.T, d.B, d.H}, x);
  check_shape(op, "grad_hT", grad_hT, {d.B, d.H}, x);
  const auto type = acc_type(x);
  TORCH_CHECK(workspace.sizes() == at::IntArrayRef({d.T, d.B, d.H}) &&
                  workspace.scalar_type() == type && workspace.device() == x.device(),
              op, ": workspace must be the (T, B, H) ", type,
              " tensor from ext_rnn_forward, got ", workspace.sizes(), " ",
              workspace.scalar_type());
  return d;
}

// b_ih + b_hh in the accumulation dtype (both enter the pre-activation the same way), or none.
inline OptTensor rnn_bias(const OptTensor& b_ih, const OptTensor& b_hh, at::ScalarType type) {
  if (!b_ih.has_value()) return std::nullopt;
  return acc(*b_ih, type) + acc(*b_hh, type);
}

// dW_ih, dW_hh and dbias from the pre-activation gradients d (T, B, H) and the saved states
// ws (T, B, H; h_{t-1} of step t is ws[t-1], or h0), in the input dtype. dW_hh is split at
// step 0 instead of concatenating h0 with ws[:-1] (a copy as large as the workspace).
inline std::tuple<Tensor, Tensor, Tensor> rnn_weight_gradients(const Dims& d, const Tensor& d_pre,
                                                               const Tensor& ws, const Tensor& x,
                                                               const Tensor& h0,
                                                               at::ScalarType type) {
  const int64_t rows = d.T * d.B;
  const Tensor flat = d_pre.view({rows, d.H});
  const auto out = x.scalar_type();
  Tensor dw_hh = at::mm(d_pre[0].t(), acc(h0, type));
  if (d.T > 1) {
    dw_hh.addmm_(flat.narrow(0, d.B, rows - d.B).t(), ws.view({rows, d.H}).narrow(0, 0, rows - d.B));
  }
  return {at::mm(flat.t(), acc(x, type).view({rows, x.size(2)})).to(out), dw_hh.to(out),
          flat.sum(0).to(out)};
}

}  // namespace fastrnn::binding
