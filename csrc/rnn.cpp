// CPU Elman RNN layer: the input projection, dx and the weight gradients as products over all
// steps, the recurrence in the header kernels (csrc/include/fastrnn/rnn_cpu.h).
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "binding.h"
#include "cpu_all_steps.h"
#include "rnn_common.h"
#include "fastrnn/rnn_cpu.h"

namespace fastrnn::binding {
namespace {

constexpr const char* kForward = "fastrnn::ext_rnn_forward";
constexpr const char* kBackward = "fastrnn::ext_rnn_backward";

// Runs fn<kRelu>() with the nonlinearity as a compile-time flag.
template <typename F>
void with_nonlinearity(bool relu, const F& fn) {
  if (relu) {
    fn(std::true_type());
  } else {
    fn(std::false_type());
  }
}

// h = act(x W_ih^T + h0 W_hh^T + bias) of units [j0, j1) of one row, into the workspace
// (the state), y and h_n alike.
template <bool kRelu, typename T>
FASTRNN_CPU_CLONES void rnn_step_row(const T* pre, T* ws, T* y, T* h_n, int64_t j0, int64_t j1) {
  FASTRNN_SIMD
  for (int64_t j = j0; j < j1; ++j) {
    const T h = rnn_activation<kRelu>(pre[j]);
    ws[j] = h;
    y[j] = h;
    h_n[j] = h;
  }
}

// One step (single_step): the pre-activation (step_products at a small batch, BLAS above),
// then the activation.
std::tuple<Tensor, Tensor, Tensor> rnn_step_cpu(const Dims& d, bool relu, const Tensor& x,
                                                const Tensor& h0, const Tensor& w_ih,
                                                const Tensor& w_hh, const OptTensor& b_ih,
                                                const OptTensor& b_hh) {
  const auto type = acc_type(x);
  const int64_t I = x.size(2);
  const Tensor x_a = acc(x, type), h0_a = acc(h0, type);
  const Tensor w_ih_a = acc(w_ih, type), w_hh_a = acc(w_hh, type);
  Tensor pre;
  if (step_on_dot_products(d)) {
    const OptTensor b_ih_a = acc(b_ih, type), b_hh_a = acc(b_hh, type);
    pre = at::empty({d.B, d.H}, x_a.options());
    AT_DISPATCH_FLOATING_TYPES(type, "ext_rnn_step_products", [&] {
      step_products<scalar_t>(d.H, d.B, w_ih_a.data_ptr<scalar_t>(), x_a.data_ptr<scalar_t>(), I,
                              w_hh_a.data_ptr<scalar_t>(), h0_a.data_ptr<scalar_t>(), d.H,
                              ptr_or_null<scalar_t>(b_ih_a), ptr_or_null<scalar_t>(b_hh_a),
                              pre.data_ptr<scalar_t>(), d.H, AtenFor());
    });
  } else {
    pre = linear_all_steps(x_a.view({d.B, I}), w_ih_a, rnn_bias(b_ih, b_hh, type));
    pre.addmm_(h0_a, w_hh_a.t());
  }
  Tensor workspace = at::empty({1, d.B, d.H}, pre.options());
  Tensor y = at::empty({1, d.B, d.H}, pre.options()), h_n = at::empty({d.B, d.H}, pre.options());
  AT_DISPATCH_FLOATING_TYPES(type, "ext_rnn_step", [&] {
    with_nonlinearity(relu, [&](auto is_relu) {
      constexpr bool kRelu = decltype(is_relu)::value;
      const scalar_t* p = pre.data_ptr<scalar_t>();
      scalar_t* ws = workspace.data_ptr<scalar_t>();
      scalar_t* out = y.data_ptr<scalar_t>();
      scalar_t* h = h_n.data_ptr<scalar_t>();
      for_each_row_piece(AtenFor(), d.B, d.H, [&](int64_t b, int64_t j0, int64_t j1) {
        const int64_t row = b * d.H;
        rnn_step_row<kRelu>(p + row, ws + row, out + row, h + row, j0, j1);
      });
    });
  });
  return {in_dtype(y, x.scalar_type()), in_dtype(h_n, x.scalar_type()), workspace};
}

std::tuple<Tensor, Tensor, Tensor> rnn_forward_cpu(const Tensor& x, const Tensor& h0,
                                                   const Tensor& w_ih, const Tensor& w_hh,
                                                   const OptTensor& b_ih, const OptTensor& b_hh,
                                                   const OptTensor& lengths,
                                                   c10::string_view nonlinearity) {
  const Dims d = check_rnn(kForward, x, h0, w_ih, w_hh, b_ih, b_hh, lengths);
  const bool relu = rnn_is_relu(kForward, nonlinearity);
  if (single_step(d, lengths)) return rnn_step_cpu(d, relu, x, h0, w_ih, w_hh, b_ih, b_hh);
  const auto type = acc_type(x);
  const auto opts = x.options().dtype(type);
  // x W_ih^T of every step, written straight into the workspace, which the recurrence then
  // overwrites step by step with h_t (the bias is added there, in the same pass).
  Tensor workspace = matmul_all_steps(acc(x, type).view({d.T * d.B, x.size(2)}),
                                      acc(w_ih, type).t().contiguous())
                         .view({d.T, d.B, d.H});
  const Tensor h0_a = acc(h0, type);
  const Tensor w_hh_t = acc(w_hh, type).t().contiguous();
  const OptTensor bias = rnn_bias(b_ih, b_hh, type);
  const OptTensor lens = lengths.has_value() ? OptTensor(lengths->contiguous()) : std::nullopt;
  Tensor y = at::empty({d.T, d.B, d.H}, opts), h_n = at::empty({d.B, d.H}, opts);
  AT_DISPATCH_FLOATING_TYPES(type, "ext_rnn_forward", [&] {
    const RnnForward<scalar_t> a{d,
                                 h0_a.data_ptr<scalar_t>(),
                                 w_hh_t.data_ptr<scalar_t>(),
                                 ptr_or_null<scalar_t>(bias),
                                 ptr_or_null<int64_t>(lens),
                                 workspace.data_ptr<scalar_t>(),
                                 y.data_ptr<scalar_t>(),
                                 h_n.data_ptr<scalar_t>()};
    with_nonlinearity(relu, [&](auto is_relu) { rnn_forward<decltype(is_relu)::value>(a, AtenFor()); });
  });
  return {in_dtype(y, x.scalar_type()), in_dtype(h_n, x.scalar_type()), workspace};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> rnn_backward_cpu(
    const Tensor& grad_y, const Tensor& grad_hT, const Tensor& x, const Tensor& h0,
    const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
    const Tensor& y, const Tensor& workspace, const OptTensor& lengths,
    c10::string_view nonlinearity) {
  const Dims d = check_rnn_backward(kBackward, grad_y, grad_hT, x, h0, w_ih, w_hh, b_ih, b_hh, y,
                                    workspace, lengths);
  const bool relu = rnn_is_relu(kBackward, nonlinearity);
  const auto type = acc_type(x);
  const auto opts = x.options().dtype(type);
  const Tensor grad_y_a = acc(grad_y, type), grad_hT_a = acc(grad_hT, type);
  const Tensor w_hh_a = acc(w_hh, type), ws = workspace.contiguous();
  const OptTensor lens = lengths.has_value() ? OptTensor(lengths->contiguous()) : std::nullopt;
  Tensor d_pre = at::empty({d.T, d.B, d.H}, opts), dh0 = at::empty({d.B, d.H}, opts);
  AT_DISPATCH_FLOATING_TYPES(type, "ext_rnn_backward", [&] {
    const RnnBackward<scalar_t> a{d,
                                  grad_y_a.data_ptr<scalar_t>(),
                                  grad_hT_a.data_ptr<scalar_t>(),
                                  w_hh_a.data_ptr<scalar_t>(),
                                  ptr_or_null<int64_t>(lens),
                                  ws.data_ptr<scalar_t>(),
                                  d_pre.data_ptr<scalar_t>(),
                                  dh0.data_ptr<scalar_t>()};
    with_nonlinearity(relu, [&](auto is_relu) { rnn_backward<decltype(is_relu)::value>(a, AtenFor()); });
  });
  auto [dw_ih, dw_hh, dbias] = rnn_weight_gradients(d, d_pre, ws, x, h0, type);
  const Tensor dx = matmul_all_steps(d_pre.view({d.T * d.B, d.H}), acc(w_ih, type));
  const auto out = x.scalar_type();
  return {dx.view({d.T, d.B, x.size(2)}).to(out), dh0.to(out), dw_ih, dw_hh, dbias};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CPU, m) {
  m.impl("ext_rnn_forward", &rnn_forward_cpu);
  m.impl("ext_rnn_backward", &rnn_backward_cpu);
}

}  // namespace fastrnn::binding
