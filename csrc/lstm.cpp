// CPU LSTM layer: the input projection and weight gradients as GEMMs over all steps, the
// recurrence in the header kernels (csrc/include/fastrnn/lstm_cpu.h).
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "binding.h"
#include "fastrnn/lstm_cpu.h"

namespace fastrnn::binding {
namespace {

constexpr const char* kForward = "fastrnn::ext_lstm_forward";
constexpr const char* kBackward = "fastrnn::ext_lstm_backward";

// Checks what the kernels rely on; returns the layer's dimensions.
Dims check_lstm(const char* op, const Tensor& x, const Tensor& h0, const Tensor& c0,
                const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih,
                const OptTensor& b_hh, const OptTensor& w_hr, const OptTensor& lengths) {
  TORCH_CHECK(x.dim() == 3, op, ": x must be 3-D (T, B, input_size), got ", x.dim(), "-D");
  TORCH_CHECK(x.size(0) > 0, op, ": x must have at least one time step");
  TORCH_CHECK(w_hh.dim() == 2 && w_hh.size(0) % 4 == 0, op,
              ": w_hh must be 2-D with 4*hidden_size rows, got ", w_hh.sizes());
  const int64_t T = x.size(0), B = x.size(1), H = w_hh.size(0) / 4;
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

std::tuple<Tensor, Tensor, Tensor, Tensor> lstm_forward_cpu(
    const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr,
    const OptTensor& lengths) {
  const Dims d = check_lstm(kForward, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths);
  const auto type = acc_type(x);
  const auto opts = x.options().dtype(type);
  OptTensor bias;
  if (b_ih.has_value()) bias = acc(*b_ih, type) + acc(*b_hh, type);
  Tensor gates = linear_all_steps(acc(x, type).view({d.T * d.B, -1}), acc(w_ih, type), bias);
  const Tensor h0_a = acc(h0, type), c0_a = acc(c0, type);
  const Tensor w_hh_t = acc(w_hh, type).t().contiguous();
  const OptTensor w_hr_t = w_hr.has_value() ? OptTensor(acc(*w_hr, type).t().contiguous())
                                            : std::nullopt;
  const OptTensor lens = lengths.has_value() ? OptTensor(lengths->contiguous()) : std::nullopt;
  Tensor y = at::empty({d.T, d.B, d.P}, opts);
  Tensor h_n = at::empty({d.B, d.P}, opts), c_n = at::empty({d.B, d.H}, opts);
  Tensor workspace = at::empty({d.T, d.B, 5 * d.H}, opts);
  Tensor hidden = at::empty({d.B, d.H}, opts);
  AT_DISPATCH_FLOATING_TYPES(type, "ext_lstm_forward", [&] {
    LstmForward<scalar_t> a{d,
                            gates.data_ptr<scalar_t>(),
                            h0_a.data_ptr<scalar_t>(),
                            c0_a.data_ptr<scalar_t>(),
                            w_hh_t.data_ptr<scalar_t>(),
                            ptr_or_null<scalar_t>(w_hr_t),
                            ptr_or_null<int64_t>(lens),
                            y.data_ptr<scalar_t>(),
                            h_n.data_ptr<scalar_t>(),
                            c_n.data_ptr<scalar_t>(),
                            workspace.data_ptr<scalar_t>(),
                            hidden.data_ptr<scalar_t>()};
    lstm_forward(a, AtenGemm(), AtenFor());
  });
  return {y.to(x.scalar_type()), h_n.to(x.scalar_type()), c_n.to(x.scalar_type()), workspace};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward_cpu(
    const Tensor& grad_y, const Tensor& grad_hT, const Tensor& grad_cT, const Tensor& x,
    const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr, const Tensor& y,
    const Tensor& workspace, const OptTensor& lengths) {
  const Dims d = check_lstm(kBackward, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths);
  check_shape(kBackward, "y", y, {d.T, d.B, d.P}, x);
  check_shape(kBackward, "grad_y", grad_y, {d.T, d.B, d.P}, x);
  check_shape(kBackward, "grad_hT", grad_hT, {d.B, d.P}, x);
  check_shape(kBackward, "grad_cT", grad_cT, {d.B, d.H}, x);
  const auto type = acc_type(x);
  TORCH_CHECK(workspace.sizes() == at::IntArrayRef({d.T, d.B, 5 * d.H}) &&
                  workspace.scalar_type() == type,
              kBackward, ": workspace must be the (T, B, 5H) ", type,
              " tensor from ext_lstm_forward, got ", workspace.sizes(), " ",
              workspace.scalar_type());
  const auto opts = x.options().dtype(type);
  const Tensor grad_y_a = acc(grad_y, type), grad_hT_a = acc(grad_hT, type);
  const Tensor grad_cT_a = acc(grad_cT, type), c0_a = acc(c0, type);
  const Tensor w_hh_a = acc(w_hh, type), ws = workspace.contiguous();
  const OptTensor w_hr_a = acc(w_hr, type);
  const OptTensor lens = lengths.has_value() ? OptTensor(lengths->contiguous()) : std::nullopt;
  Tensor dgates = at::empty({d.T, d.B, 4 * d.H}, opts);
  Tensor dh0 = at::empty({d.B, d.P}, opts), dc0 = at::empty({d.B, d.H}, opts);
  Tensor dy = w_hr.has_value() ? at::empty({d.T, d.B, d.P}, opts) : Tensor();
  Tensor dhidden = at::empty({d.B, d.H}, opts), dh_next = at::empty({d.B, d.P}, opts);
  AT_DISPATCH_FLOATING_TYPES(type, "ext_lstm_backward", [&] {
    LstmBackward<scalar_t> a{d,
                             grad_y_a.data_ptr<scalar_t>(),
                             grad_hT_a.data_ptr<scalar_t>(),
                             grad_cT_a.data_ptr<scalar_t>(),
                             c0_a.data_ptr<scalar_t>(),
                             w_hh_a.data_ptr<scalar_t>(),
                             ptr_or_null<scalar_t>(w_hr_a),
                             ptr_or_null<int64_t>(lens),
                             ws.data_ptr<scalar_t>(),
                             dgates.data_ptr<scalar_t>(),
                             dh0.data_ptr<scalar_t>(),
                             dc0.data_ptr<scalar_t>(),
                             dy.defined() ? dy.data_ptr<scalar_t>() : nullptr,
                             dhidden.data_ptr<scalar_t>(),
                             dh_next.data_ptr<scalar_t>()};
    lstm_backward(a, AtenGemm(), AtenFor());
  });
  // Everything left is a GEMM over all steps at once.
  const Tensor flat = dgates.view({d.T * d.B, 4 * d.H});
  const Tensor h_prev = at::cat({acc(h0, type).unsqueeze(0), acc(y, type).narrow(0, 0, d.T - 1)});
  const Tensor dx = at::mm(flat, acc(w_ih, type)).view({d.T, d.B, -1});
  const Tensor dw_ih = at::mm(flat.t(), acc(x, type).view({d.T * d.B, -1}));
  const Tensor dw_hh = at::mm(flat.t(), h_prev.view({d.T * d.B, d.P}));
  const Tensor dbias = flat.sum(0);
  Tensor dw_hr = at::empty({0}, x.options());
  if (w_hr.has_value()) {
    // o * tanh(c) of every step, the input of the projection.
    const Tensor hidden_all = ws.narrow(2, 3 * d.H, d.H) * at::tanh(ws.narrow(2, 4 * d.H, d.H));
    dw_hr = at::mm(dy.view({d.T * d.B, d.P}).t(), hidden_all.reshape({d.T * d.B, d.H}))
                .to(w_hr->scalar_type());
  }
  const auto out = x.scalar_type();
  return {dx.to(out), dh0.to(out), dc0.to(out), dw_ih.to(out), dw_hh.to(out), dbias.to(out), dw_hr};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CPU, m) {
  m.impl("ext_lstm_forward", &lstm_forward_cpu);
  m.impl("ext_lstm_backward", &lstm_backward_cpu);
}

}  // namespace fastrnn::binding
