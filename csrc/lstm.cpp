// CPU LSTM layer: the input projection and weight gradients as GEMMs over all steps, the
// recurrence in the header kernels (csrc/include/fastrnn/lstm_cpu.h).
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "binding.h"
#include "cpu_all_steps.h"
#include "lstm_common.h"
#include "fastrnn/lstm_cpu.h"

namespace fastrnn::binding {
namespace {

constexpr const char* kForward = "fastrnn::ext_lstm_forward";
constexpr const char* kBackward = "fastrnn::ext_lstm_backward";
constexpr const char* kInference = "fastrnn::ext_lstm_inference";

// Largest stacked [W_ih; W_hh] (bytes) the packed forward streams every step; past it the
// input projection runs first over all steps, reading W_ih once. One core of a Zen 4 EPYC
// (1 MB L2), fp32, forward against nn.LSTM's, median of interleaved ratios: I=H=512, B=32,
// T=128 (8 MB stacked) 1.02-1.04 streamed, 1.00 projected first; the step product alone
// runs at 55 GMAC/s with 8 MB of weights, 57 with 2 MB (I=H=256, where streaming wins).
constexpr int64_t kFusedInputMaxBytes = int64_t(4) << 20;

// One step (single_step): gates = x W_ih^T + h0 W_hh^T + b_ih + b_hh (step_products at a
// small batch, BLAS above), then the gate math per row, and with a projection
// y = (o * tanh(c)) W_hr^T.
std::tuple<Tensor, Tensor, Tensor, Tensor> lstm_step_cpu(
    const Dims& d, const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& w_ih,
    const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr) {
  const auto type = acc_type(x);
  const int64_t B = d.B, H = d.H, P = d.P, I = x.size(2);
  const Tensor x_a = acc(x, type), h0_a = acc(h0, type);
  const Tensor w_ih_a = acc(w_ih, type), w_hh_a = acc(w_hh, type);
  const OptTensor w_hr_a = acc(w_hr, type);
  const auto opts = x_a.options();
  const bool dot = step_on_dot_products(d);
  Tensor gates;
  if (dot) {
    const OptTensor b_ih_a = acc(b_ih, type), b_hh_a = acc(b_hh, type);
    gates = at::empty({B, 4 * H}, opts);
    AT_DISPATCH_FLOATING_TYPES(type, "ext_lstm_step_products", [&] {
      step_products<scalar_t>(4 * H, B, w_ih_a.data_ptr<scalar_t>(), x_a.data_ptr<scalar_t>(), I,
                              w_hh_a.data_ptr<scalar_t>(), h0_a.data_ptr<scalar_t>(), P,
                              ptr_or_null<scalar_t>(b_ih_a), ptr_or_null<scalar_t>(b_hh_a),
                              gates.data_ptr<scalar_t>(), 4 * H, AtenFor());
    });
  } else {
    gates = linear_all_steps(x_a.view({B, I}), w_ih_a, lstm_gate_bias(b_ih, b_hh, type));
    gates.addmm_(h0_a, w_hh_a.t());
  }
  Tensor c_n = acc(c0, type).clone(at::MemoryFormat::Contiguous);
  Tensor workspace = at::empty({1, B, 5 * H}, opts);
  Tensor hidden = at::empty({B, H}, opts);
  AT_DISPATCH_FLOATING_TYPES(type, "ext_lstm_step", [&] {
    const scalar_t* pre = gates.data_ptr<scalar_t>();
    scalar_t* c = c_n.data_ptr<scalar_t>();
    scalar_t* ws = workspace.data_ptr<scalar_t>();
    scalar_t* out = hidden.data_ptr<scalar_t>();
    for_each_row_piece(AtenFor(), B, H, [&](int64_t b, int64_t j0, int64_t j1) {
      lstm_forward_row(pre + b * 4 * H, c + b * H, ws + b * 5 * H, out + b * H, j0, j1, H);
    });
  });
  Tensor h_n = hidden;
  if (w_hr_a.has_value() && dot) {
    h_n = at::empty({B, P}, opts);
    AT_DISPATCH_FLOATING_TYPES(type, "ext_lstm_step_projection", [&] {
      step_products<scalar_t>(P, B, w_hr_a->data_ptr<scalar_t>(), hidden.data_ptr<scalar_t>(), H,
                              nullptr, nullptr, 0, nullptr, nullptr, h_n.data_ptr<scalar_t>(), P,
                              AtenFor());
    });
  } else if (w_hr_a.has_value()) {
    h_n = at::mm(hidden, w_hr_a->t());
  }
  const auto dtype = x.scalar_type();
  // y and h_n are distinct tensors (a custom op's outputs may not alias).
  return {in_dtype(h_n, dtype).unsqueeze(0), h_n.to(dtype, /*non_blocking=*/false, /*copy=*/true),
          in_dtype(c_n, dtype), workspace};
}

// The layer forward; without keep_workspace (no gradient will be taken) the workspace
// returned is undefined and the recurrence writes none.
std::tuple<Tensor, Tensor, Tensor, Tensor> lstm_forward_impl(
    const char* op, const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& w_ih,
    const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr,
    const OptTensor& lengths, bool keep_workspace) {
  const Dims d = check_lstm(op, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths);
  if (single_step(d, lengths)) return lstm_step_cpu(d, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr);
  const auto type = acc_type(x);
  const auto opts = x.options().dtype(type);
  const int64_t I = x.size(2);
  const Tensor x_a = acc(x, type).contiguous();
  const OptTensor bias = lstm_gate_bias(b_ih, b_hh, type);
  // The packed recurrence packs the weights from their own layout (only the unpacked one
  // multiplies by W_hh^T) and, unless they are too large, takes x_t into each step's
  // product; otherwise the input gates of all steps come first, from the CPU's own
  // projection (packed kernel for large products).
  bool packed = false;
  AT_DISPATCH_FLOATING_TYPES(type, "lstm_packed_ok",
                             [&] { packed = lstm_packed_ok<scalar_t>(d, w_hr.has_value()); });
  const bool fused_input =
      packed && (I + d.P) * 4 * d.H * x_a.element_size() <= kFusedInputMaxBytes;
  const Tensor gates = fused_input ? Tensor()
                                   : input_gates_all_steps(x_a.view({d.T * d.B, I}),
                                                           acc(w_ih, type), bias, 4);
  const Tensor w_ih_a = fused_input ? acc(w_ih, type).contiguous() : Tensor();
  const Tensor h0_a = acc(h0, type), c0_a = acc(c0, type);
  const Tensor w_hh_a = acc(w_hh, type).contiguous();
  const Tensor w_hh_t = packed ? Tensor() : w_hh_a.t().contiguous();
  const OptTensor w_hr_t = w_hr.has_value() ? OptTensor(acc(*w_hr, type).t().contiguous())
                                            : std::nullopt;
  const OptTensor lens = lengths.has_value() ? OptTensor(lengths->contiguous()) : std::nullopt;
  Tensor y = at::empty({d.T, d.B, d.P}, opts);
  Tensor h_n = at::empty({d.B, d.P}, opts), c_n = at::empty({d.B, d.H}, opts);
  Tensor workspace = keep_workspace ? at::empty({d.T, d.B, 5 * d.H}, opts) : Tensor();
  Tensor hidden = at::empty({d.B, d.H}, opts);
  AT_DISPATCH_FLOATING_TYPES(type, "ext_lstm_forward", [&] {
    LstmForward<scalar_t> a{d,
                            gates.defined() ? gates.data_ptr<scalar_t>() : nullptr,
                            h0_a.data_ptr<scalar_t>(),
                            c0_a.data_ptr<scalar_t>(),
                            w_hh_t.defined() ? w_hh_t.data_ptr<scalar_t>() : nullptr,
                            ptr_or_null<scalar_t>(w_hr_t),
                            ptr_or_null<int64_t>(lens),
                            y.data_ptr<scalar_t>(),
                            h_n.data_ptr<scalar_t>(),
                            c_n.data_ptr<scalar_t>(),
                            keep_workspace ? workspace.data_ptr<scalar_t>() : nullptr,
                            hidden.data_ptr<scalar_t>()};
    if (fused_input) {
      a.x = x_a.data_ptr<scalar_t>();
      a.w_ih = w_ih_a.data_ptr<scalar_t>();
      a.bias = ptr_or_null<scalar_t>(bias);
      a.I = I;
    }
    a.w_hh = w_hh_a.data_ptr<scalar_t>();
    lstm_forward(a, AtenGemm(), AtenFor());
  });
  const auto out = x.scalar_type();
  return {in_dtype(y, out), in_dtype(h_n, out), in_dtype(c_n, out), workspace};
}

std::tuple<Tensor, Tensor, Tensor, Tensor> lstm_forward_cpu(
    const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr,
    const OptTensor& lengths) {
  return lstm_forward_impl(kForward, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths,
                           /*keep_workspace=*/true);
}

std::tuple<Tensor, Tensor, Tensor> lstm_inference_cpu(
    const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr,
    const OptTensor& lengths) {
  auto [y, h_n, c_n, unused] = lstm_forward_impl(kInference, x, h0, c0, w_ih, w_hh, b_ih, b_hh,
                                                 w_hr, lengths, /*keep_workspace=*/false);
  return {y, h_n, c_n};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward_cpu(
    const Tensor& grad_y, const Tensor& grad_hT, const Tensor& grad_cT, const Tensor& x,
    const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr, const Tensor& y,
    const Tensor& workspace, const OptTensor& lengths) {
  const Dims d = check_lstm_backward(kBackward, grad_y, grad_hT, grad_cT, x, h0, c0, w_ih, w_hh,
                                     b_ih, b_hh, w_hr, y, workspace, lengths);
  const auto type = acc_type(x);
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
  auto [unused, dw_ih, dw_hh, dbias, dw_hr] =
      lstm_backward_gemms(d, dgates, dy, ws, x, h0, w_ih, w_hr, y, type, /*want_dx=*/false,
                          matmul_tn_all_steps);
  const Tensor dx = matmul_all_steps(dgates.view({d.T * d.B, 4 * d.H}), acc(w_ih, type));
  const auto out = x.scalar_type();
  return {dx.view({d.T, d.B, x.size(2)}).to(out), dh0.to(out), dc0.to(out), dw_ih, dw_hh, dbias,
          dw_hr};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CPU, m) {
  m.impl("ext_lstm_forward", &lstm_forward_cpu);
  m.impl("ext_lstm_inference", &lstm_inference_cpu);
  m.impl("ext_lstm_backward", &lstm_backward_cpu);
}

}  // namespace fastrnn::binding
