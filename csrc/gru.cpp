// CPU GRU layer: the input projection and weight gradients as GEMMs over all steps, the
// recurrence in the header kernels (csrc/include/fastrnn/gru_cpu.h).
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "binding.h"
#include "fastrnn/gru_cpu.h"

namespace fastrnn::binding {
namespace {

constexpr const char* kForward = "fastrnn::ext_gru_forward";
constexpr const char* kBackward = "fastrnn::ext_gru_backward";

// Checks what the kernels rely on; returns the layer's dimensions.
Dims check_gru(const char* op, const Tensor& x, const Tensor& h0, const Tensor& w_ih,
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

std::tuple<Tensor, Tensor, Tensor> gru_forward_cpu(const Tensor& x, const Tensor& h0,
                                                   const Tensor& w_ih, const Tensor& w_hh,
                                                   const OptTensor& b_ih, const OptTensor& b_hh,
                                                   const OptTensor& lengths) {
  const Dims d = check_gru(kForward, x, h0, w_ih, w_hh, b_ih, b_hh, lengths);
  const auto type = acc_type(x);
  const auto opts = x.options().dtype(type);
  const Tensor gates_x =
      linear_all_steps(acc(x, type).view({d.T * d.B, -1}), acc(w_ih, type), acc(b_ih, type));
  const Tensor h0_a = acc(h0, type);
  const Tensor w_hh_t = acc(w_hh, type).t().contiguous();
  const OptTensor b_hh_a = acc(b_hh, type);
  const OptTensor lens = lengths.has_value() ? OptTensor(lengths->contiguous()) : std::nullopt;
  Tensor y = at::empty({d.T, d.B, d.H}, opts), h_n = at::empty({d.B, d.H}, opts);
  Tensor workspace = at::empty({d.T, d.B, 4 * d.H}, opts);
  Tensor gates_h = at::empty({d.B, 3 * d.H}, opts);
  AT_DISPATCH_FLOATING_TYPES(type, "ext_gru_forward", [&] {
    GruForward<scalar_t> a{d,
                           gates_x.data_ptr<scalar_t>(),
                           h0_a.data_ptr<scalar_t>(),
                           w_hh_t.data_ptr<scalar_t>(),
                           ptr_or_null<scalar_t>(b_hh_a),
                           ptr_or_null<int64_t>(lens),
                           y.data_ptr<scalar_t>(),
                           h_n.data_ptr<scalar_t>(),
                           workspace.data_ptr<scalar_t>(),
                           gates_h.data_ptr<scalar_t>()};
    gru_forward(a, AtenGemm(), AtenFor());
  });
  return {y.to(x.scalar_type()), h_n.to(x.scalar_type()), workspace};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_backward_cpu(
    const Tensor& grad_y, const Tensor& grad_hT, const Tensor& x, const Tensor& h0,
    const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
    const Tensor& y, const Tensor& workspace, const OptTensor& lengths) {
  const Dims d = check_gru(kBackward, x, h0, w_ih, w_hh, b_ih, b_hh, lengths);
  check_shape(kBackward, "y", y, {d.T, d.B, d.H}, x);
  check_shape(kBackward, "grad_y", grad_y, {d.T, d.B, d.H}, x);
  check_shape(kBackward, "grad_hT", grad_hT, {d.B, d.H}, x);
  const auto type = acc_type(x);
  TORCH_CHECK(workspace.sizes() == at::IntArrayRef({d.T, d.B, 4 * d.H}) &&
                  workspace.scalar_type() == type,
              kBackward, ": workspace must be the (T, B, 4H) ", type,
              " tensor from ext_gru_forward, got ", workspace.sizes(), " ",
              workspace.scalar_type());
  const auto opts = x.options().dtype(type);
  const Tensor grad_y_a = acc(grad_y, type), grad_hT_a = acc(grad_hT, type);
  const Tensor h0_a = acc(h0, type), y_a = acc(y, type), w_hh_a = acc(w_hh, type);
  const Tensor ws = workspace.contiguous();
  const OptTensor lens = lengths.has_value() ? OptTensor(lengths->contiguous()) : std::nullopt;
  Tensor d_input = at::empty({d.T, d.B, 3 * d.H}, opts);
  Tensor d_hidden = at::empty({d.T, d.B, 3 * d.H}, opts);
  Tensor dh0 = at::empty({d.B, d.H}, opts), dh_prev = at::empty({d.B, d.H}, opts);
  AT_DISPATCH_FLOATING_TYPES(type, "ext_gru_backward", [&] {
    GruBackward<scalar_t> a{d,
                            grad_y_a.data_ptr<scalar_t>(),
                            grad_hT_a.data_ptr<scalar_t>(),
                            h0_a.data_ptr<scalar_t>(),
                            y_a.data_ptr<scalar_t>(),
                            w_hh_a.data_ptr<scalar_t>(),
                            ptr_or_null<int64_t>(lens),
                            ws.data_ptr<scalar_t>(),
                            d_input.data_ptr<scalar_t>(),
                            d_hidden.data_ptr<scalar_t>(),
                            dh0.data_ptr<scalar_t>(),
                            dh_prev.data_ptr<scalar_t>()};
    gru_backward(a, AtenGemm(), AtenFor());
  });
  // Everything left is a GEMM over all steps at once.
  const Tensor gi = d_input.view({d.T * d.B, 3 * d.H});
  const Tensor gh = d_hidden.view({d.T * d.B, 3 * d.H});
  const Tensor h_prev = at::cat({h0_a.unsqueeze(0), y_a.narrow(0, 0, d.T - 1)});
  const auto out = x.scalar_type();
  return {at::mm(gi, acc(w_ih, type)).view({d.T, d.B, -1}).to(out),
          dh0.to(out),
          at::mm(gi.t(), acc(x, type).view({d.T * d.B, -1})).to(out),
          at::mm(gh.t(), h_prev.view({d.T * d.B, d.H})).to(out),
          gi.sum(0).to(out),
          gh.sum(0).to(out)};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CPU, m) {
  m.impl("ext_gru_forward", &gru_forward_cpu);
  m.impl("ext_gru_backward", &gru_backward_cpu);
}

}  // namespace fastrnn::binding
