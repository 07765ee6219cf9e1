// The autograd formulas of the extension's forward ops (fastrnn::ext_{lstm,gru,rnn}_forward),
// registered at the Autograd key in C++ for every device.
//
// Why C++: a formula registered from Python (torch.library.register_autograd) puts a Python
// kernel at the Autograd key, which runs on every call, no_grad included, and costs more than
// a whole decode step's kernel (GRU(64, 256), B=1, T=1 on one core: ~6 us of the op's ~41 us).
// Here a call that needs no gradient (grad mode off, or no input requiring grad) goes
// straight to the device kernel; one that does runs a torch::autograd::Function whose
// backward calls fastrnn::ext_*_backward, as the Python formula in fastrnn/ops/<op>/op.py
// (setup_context / input_gradients) does for the Python layer ops: the workspace is not
// differentiable, unused output gradients arrive undefined and are replaced by zeros, and
// y is saved as an output (so changing it in place before backward raises).
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <tuple>

#include "layer_ops.h"

namespace fastrnn::binding {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

bool requires_grad(const Tensor& t) { return t.requires_grad(); }
bool requires_grad(const OptTensor& t) { return t.has_value() && t->requires_grad(); }

template <typename... Ts>
bool needs_grad(const Ts&... tensors) {
  return at::GradMode::is_enabled() && (requires_grad(tensors) || ...);
}

Tensor or_undefined(const OptTensor& t) { return t.has_value() ? *t : Tensor(); }

OptTensor as_optional(const Tensor& t) { return t.defined() ? OptTensor(t) : std::nullopt; }

// grad (contiguous), or zeros like `like` where autograd passed none.
Tensor grad_or_zeros(const Tensor& grad, const Tensor& like) {
  return grad.defined() ? grad.contiguous() : at::zeros_like(like);
}

// --- LSTM -----------------------------------------------------------------------------
using LstmBackwardSig = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
    const Tensor&, const Tensor&, const OptTensor&, const OptTensor&, const OptTensor&,
    const Tensor&, const Tensor&, const OptTensor&);

LstmOut lstm_forward_kernel(const Tensor& x, const Tensor& h0, const Tensor& c0,
                            const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                            const OptTensor& b_hh, const OptTensor& w_hr,
                            const OptTensor& lengths) {
  static const auto op = find_op<LstmForwardSig>("fastrnn::ext_lstm_forward");
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return op.call(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths);
}

struct LstmFunction : torch::autograd::Function<LstmFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& h0,
                               const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
                               const OptTensor& b_ih, const OptTensor& b_hh,
                               const OptTensor& w_hr, const OptTensor& lengths) {
    auto [y, h_n, c_n, workspace] =
        lstm_forward_kernel(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths);
    ctx->mark_non_differentiable({workspace});
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({x, h0, c0, w_ih, w_hh, or_undefined(b_ih), or_undefined(b_hh),
                            or_undefined(w_hr), or_undefined(lengths), y, workspace});
    return {y, h_n, c_n, workspace};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_op<LstmBackwardSig>("fastrnn::ext_lstm_backward");
    const variable_list s = ctx->get_saved_variables();
    const Tensor &x = s[0], &h0 = s[1], &c0 = s[2], &w_ih = s[3], &w_hh = s[4];
    const OptTensor b_ih = as_optional(s[5]), b_hh = as_optional(s[6]), w_hr = as_optional(s[7]);
    const Tensor &y = s[9], &workspace = s[10];
    auto [dx, dh0, dc0, dw_ih, dw_hh, dbias, dw_hr] =
        op.call(grad_or_zeros(grads[0], y), grad_or_zeros(grads[1], h0),
                grad_or_zeros(grads[2], c0), x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, y,
                workspace, as_optional(s[8]));
    // One bias gradient serves b_ih and b_hh (the kernels add them).
    return {dx, dh0, dc0, dw_ih, dw_hh, b_ih ? dbias : Tensor(), b_hh ? dbias : Tensor(),
            w_hr ? dw_hr : Tensor(), Tensor()};
  }
};

LstmOut lstm_forward_autograd(const Tensor& x, const Tensor& h0, const Tensor& c0,
                              const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                              const OptTensor& b_hh, const OptTensor& w_hr,
                              const OptTensor& lengths) {
  if (!needs_grad(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr)) {
    return lstm_forward_kernel(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths);
  }
  const variable_list out = LstmFunction::apply(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths);
  return {out[0], out[1], out[2], out[3]};
}

// --- GRU ------------------------------------------------------------------------------
using GruBackwardSig = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
    const OptTensor&, const OptTensor&, const Tensor&, const Tensor&, const OptTensor&);

LayerOut gru_forward_kernel(const Tensor& x, const Tensor& h0, const Tensor& w_ih,
                            const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                            const OptTensor& lengths) {
  static const auto op = find_op<GruForwardSig>("fastrnn::ext_gru_forward");
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return op.call(x, h0, w_ih, w_hh, b_ih, b_hh, lengths);
}

struct GruFunction : torch::autograd::Function<GruFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& h0,
                               const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                               const OptTensor& b_hh, const OptTensor& lengths) {
    auto [y, h_n, workspace] = gru_forward_kernel(x, h0, w_ih, w_hh, b_ih, b_hh, lengths);
    ctx->mark_non_differentiable({workspace});
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({x, h0, w_ih, w_hh, or_undefined(b_ih), or_undefined(b_hh),
                            or_undefined(lengths), y, workspace});
    return {y, h_n, workspace};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_op<GruBackwardSig>("fastrnn::ext_gru_backward");
    const variable_list s = ctx->get_saved_variables();
    const Tensor &x = s[0], &h0 = s[1], &w_ih = s[2], &w_hh = s[3], &y = s[7];
    const OptTensor b_ih = as_optional(s[4]), b_hh = as_optional(s[5]);
    auto [dx, dh0, dw_ih, dw_hh, db_ih, db_hh] =
        op.call(grad_or_zeros(grads[0], y), grad_or_zeros(grads[1], h0), x, h0, w_ih, w_hh,
                b_ih, b_hh, y, s[8], as_optional(s[6]));
    return {dx, dh0, dw_ih, dw_hh, b_ih ? db_ih : Tensor(), b_hh ? db_hh : Tensor(), Tensor()};
  }
};

LayerOut gru_forward_autograd(const Tensor& x, const Tensor& h0, const Tensor& w_ih,
                              const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                              const OptTensor& lengths) {
  if (!needs_grad(x, h0, w_ih, w_hh, b_ih, b_hh)) {
    return gru_forward_kernel(x, h0, w_ih, w_hh, b_ih, b_hh, lengths);
  }
  const variable_list out = GruFunction::apply(x, h0, w_ih, w_hh, b_ih, b_hh, lengths);
  return {out[0], out[1], out[2]};
}

// --- Elman RNN ------------------------------------------------------------------------
using RnnBackwardSig = std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor>(
    const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
    const OptTensor&, const OptTensor&, const Tensor&, const Tensor&, const OptTensor&,
    c10::string_view);

LayerOut rnn_forward_kernel(const Tensor& x, const Tensor& h0, const Tensor& w_ih,
                            const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                            const OptTensor& lengths, c10::string_view nonlinearity) {
  static const auto op = find_op<RnnForwardSig>("fastrnn::ext_rnn_forward");
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  return op.call(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, nonlinearity);
}

struct RnnFunction : torch::autograd::Function<RnnFunction> {
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const Tensor& h0,
                               const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                               const OptTensor& b_hh, const OptTensor& lengths,
                               c10::string_view nonlinearity) {
    auto [y, h_n, workspace] =
        rnn_forward_kernel(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, nonlinearity);
    ctx->mark_non_differentiable({workspace});
    ctx->set_materialize_grads(false);
    ctx->save_for_backward({x, h0, w_ih, w_hh, or_undefined(b_ih), or_undefined(b_hh),
                            or_undefined(lengths), y, workspace});
    ctx->saved_data["nonlinearity"] = std::string(nonlinearity);
    return {y, h_n, workspace};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    static const auto op = find_op<RnnBackwardSig>("fastrnn::ext_rnn_backward");
    const variable_list s = ctx->get_saved_variables();
    const Tensor &x = s[0], &h0 = s[1], &w_ih = s[2], &w_hh = s[3], &y = s[7];
    const OptTensor b_ih = as_optional(s[4]), b_hh = as_optional(s[5]);
    const std::string nonlinearity = ctx->saved_data["nonlinearity"].toStringRef();
    auto [dx, dh0, dw_ih, dw_hh, dbias] =
        op.call(grad_or_zeros(grads[0], y), grad_or_zeros(grads[1], h0), x, h0, w_ih, w_hh, b_ih,
                b_hh, y, s[8], as_optional(s[6]), nonlinearity);
    // One bias gradient serves b_ih and b_hh (the kernels add them).
    return {dx,     dh0, dw_ih, dw_hh, b_ih ? dbias : Tensor(), b_hh ? dbias : Tensor(),
            Tensor(), Tensor()};
  }
};

LayerOut rnn_forward_autograd(const Tensor& x, const Tensor& h0, const Tensor& w_ih,
                              const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
                              const OptTensor& lengths, c10::string_view nonlinearity) {
  if (!needs_grad(x, h0, w_ih, w_hh, b_ih, b_hh)) {
    return rnn_forward_kernel(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, nonlinearity);
  }
  const variable_list out =
      RnnFunction::apply(x, h0, w_ih, w_hh, b_ih, b_hh, lengths, nonlinearity);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, Autograd, m) {
  m.impl("ext_lstm_forward", &lstm_forward_autograd);
  m.impl("ext_gru_forward", &gru_forward_autograd);
  m.impl("ext_rnn_forward", &rnn_forward_autograd);
}

}  // namespace fastrnn::binding
