// CPU GRU layer: the input projection and weight gradients as GEMMs over all steps, the
// recurrence in the header kernels (csrc/include/fastrnn/gru_cpu.h).
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "binding.h"
#include "cpu_all_steps.h"
#include "gru_common.h"
#include "fastrnn/gru_cpu.h"

namespace fastrnn::binding {
namespace {

constexpr const char* kForward = "fastrnn::ext_gru_forward";
constexpr const char* kBackward = "fastrnn::ext_gru_backward";

// One step (single_step): x W_ih^T + b_ih and h0 W_hh^T + b_hh on BLAS, then the gate math
// per row.
std::tuple<Tensor, Tensor, Tensor> gru_step_cpu(const Dims& d, const Tensor& x, const Tensor& h0,
                                                const Tensor& w_ih, const Tensor& w_hh,
                                                const OptTensor& b_ih, const OptTensor& b_hh) {
  const auto type = acc_type(x);
  const Tensor h0_a = acc(h0, type);
  const Tensor gates_x = linear_all_steps(acc(x, type).view({d.B, x.size(2)}), acc(w_ih, type),
                                          acc(b_ih, type));
  const Tensor gates_h = linear_all_steps(h0_a, acc(w_hh, type), acc(b_hh, type));
  Tensor h_n = h0_a.clone(at::MemoryFormat::Contiguous);
  Tensor y = at::empty({1, d.B, d.H}, gates_x.options());
  Tensor workspace = at::empty({1, d.B, 4 * d.H}, gates_x.options());
  AT_DISPATCH_FLOATING_TYPES(type, "ext_gru_step", [&] {
    const scalar_t* xg = gates_x.data_ptr<scalar_t>();
    const scalar_t* hg = gates_h.data_ptr<scalar_t>();
    scalar_t* h = h_n.data_ptr<scalar_t>();
    scalar_t* ws = workspace.data_ptr<scalar_t>();
    scalar_t* out = y.data_ptr<scalar_t>();
    for_each_row_piece(AtenFor(), d.B, d.H, [&](int64_t b, int64_t j0, int64_t j1) {
      gru_forward_row(xg + b * 3 * d.H, hg + b * 3 * d.H, h + b * d.H, ws + b * 4 * d.H,
                      out + b * d.H, j0, j1, d.H);
    });
  });
  return {y.to(x.scalar_type()), h_n.to(x.scalar_type()), workspace};
}

std::tuple<Tensor, Tensor, Tensor> gru_forward_cpu(const Tensor& x, const Tensor& h0,
                                                   const Tensor& w_ih, const Tensor& w_hh,
                                                   const OptTensor& b_ih, const OptTensor& b_hh,
                                                   const OptTensor& lengths) {
  const Dims d = check_gru(kForward, x, h0, w_ih, w_hh, b_ih, b_hh, lengths);
  if (single_step(d, lengths)) return gru_step_cpu(d, x, h0, w_ih, w_hh, b_ih, b_hh);
  const auto type = acc_type(x);
  const auto opts = x.options().dtype(type);
  const Tensor gates_x = input_gates_all_steps(acc(x, type).view({d.T * d.B, x.size(2)}),
                                               acc(w_ih, type), acc(b_ih, type), 3);
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
  const Dims d = check_gru_backward(kBackward, grad_y, grad_hT, x, h0, w_ih, w_hh, b_ih, b_hh, y,
                                    workspace, lengths);
  const auto type = acc_type(x);
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
  auto [unused, dw_ih, dw_hh, db_ih, db_hh] =
      gru_backward_gemms(d, d_input, d_hidden, x, h0, w_ih, y, type, /*want_dx=*/false);
  const Tensor dx = matmul_all_steps(d_input.view({d.T * d.B, 3 * d.H}), acc(w_ih, type));
  const auto out = x.scalar_type();
  return {dx.view({d.T, d.B, x.size(2)}).to(out), dh0.to(out), dw_ih, dw_hh, db_ih, db_hh};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CPU, m) {
  m.impl("ext_gru_forward", &gru_forward_cpu);
  m.impl("ext_gru_backward", &gru_backward_cpu);
}

}  // namespace fastrnn::binding
