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

// One step (single_step): x W_ih^T + b_ih and h0 W_hh^T + b_hh, then the gate math per row.
// At a small batch the products run on step_products, with the r and z pre-activations
// summed in the same pass (their x and h parts are only ever added): gates_x then holds
// r, z sums and x W_in^T + b_in, and gates_h zeros and h W_hn^T + b_hn, which is what
// gru_forward_row reads. Larger batches use BLAS.
std::tuple<Tensor, Tensor, Tensor> gru_step_cpu(const Dims& d, const Tensor& x, const Tensor& h0,
                                                const Tensor& w_ih, const Tensor& w_hh,
                                                const OptTensor& b_ih, const OptTensor& b_hh) {
  const auto type = acc_type(x);
  const int64_t B = d.B, H = d.H, I = x.size(2);
  const Tensor x_a = acc(x, type), h0_a = acc(h0, type);
  const Tensor w_ih_a = acc(w_ih, type), w_hh_a = acc(w_hh, type);
  const OptTensor b_ih_a = acc(b_ih, type), b_hh_a = acc(b_hh, type);
  Tensor gates_x, gates_h;  // (B, 3H) rows, at row stride 6H (dot path) or 3H (BLAS)
  int64_t ld = 3 * H;
  if (step_on_dot_products(d)) {
    ld = 6 * H;
    const Tensor gates = at::empty({B, 6 * H}, x_a.options());
    gates_x = gates.narrow(1, 0, 3 * H);
    gates_h = gates.narrow(1, 3 * H, 3 * H);
    AT_DISPATCH_FLOATING_TYPES(type, "ext_gru_step_products", [&] {
      const scalar_t* wi = w_ih_a.data_ptr<scalar_t>();
      const scalar_t* wh = w_hh_a.data_ptr<scalar_t>();
      const scalar_t* xv = x_a.data_ptr<scalar_t>();
      const scalar_t* hv = h0_a.data_ptr<scalar_t>();
      scalar_t* g = gates.data_ptr<scalar_t>();
      for (int64_t b = 0; b < B; ++b) std::fill(g + b * ld + 3 * H, g + b * ld + 5 * H, 0);
      step_products<scalar_t>(2 * H, B, wi, xv, I, wh, hv, H, ptr_or_null<scalar_t>(b_ih_a),
                              ptr_or_null<scalar_t>(b_hh_a), g, ld, AtenFor());
      step_products<scalar_t>(H, B, wi + 2 * H * I, xv, I, nullptr, nullptr, 0,
                              ptr_or_null<scalar_t>(b_ih_a, 2 * H), nullptr, g + 2 * H, ld,
                              AtenFor());
      step_products<scalar_t>(H, B, nullptr, nullptr, 0, wh + 2 * H * H, hv, H, nullptr,
                              ptr_or_null<scalar_t>(b_hh_a, 2 * H), g + 5 * H, ld, AtenFor());
    });
  } else {
    gates_x = linear_all_steps(x_a.view({B, I}), w_ih_a, b_ih_a);
    gates_h = linear_all_steps(h0_a, w_hh_a, b_hh_a);
  }
  Tensor h_n = h0_a.clone(at::MemoryFormat::Contiguous);
  Tensor y = at::empty({1, B, H}, x_a.options());
  Tensor workspace = at::empty({1, B, 4 * H}, x_a.options());
  AT_DISPATCH_FLOATING_TYPES(type, "ext_gru_step", [&] {
    const scalar_t* xg = gates_x.data_ptr<scalar_t>();
    const scalar_t* hg = gates_h.data_ptr<scalar_t>();
    scalar_t* h = h_n.data_ptr<scalar_t>();
    scalar_t* ws = workspace.data_ptr<scalar_t>();
    scalar_t* out = y.data_ptr<scalar_t>();
    for_each_row_piece(AtenFor(), B, H, [&](int64_t b, int64_t j0, int64_t j1) {
      gru_forward_row(xg + b * ld, hg + b * ld, h + b * H, ws + b * 4 * H, out + b * H, j0, j1,
                      H);
    });
  });
  return {in_dtype(y, x.scalar_type()), in_dtype(h_n, x.scalar_type()), workspace};
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
  // The packed recurrence packs W_hh from its own layout; only the unpacked one multiplies
  // by W_hh^T.
  bool packed = false;
  AT_DISPATCH_FLOATING_TYPES(type, "gru_packed_ok", [&] { packed = gru_packed_ok<scalar_t>(d); });
  const Tensor w_hh_a = acc(w_hh, type).contiguous();
  const Tensor w_hh_t = packed ? Tensor() : w_hh_a.t().contiguous();
  const OptTensor b_hh_a = acc(b_hh, type);
  const OptTensor lens = lengths.has_value() ? OptTensor(lengths->contiguous()) : std::nullopt;
  Tensor y = at::empty({d.T, d.B, d.H}, opts), h_n = at::empty({d.B, d.H}, opts);
  Tensor workspace = at::empty({d.T, d.B, 4 * d.H}, opts);
  Tensor gates_h = at::empty({d.B, 3 * d.H}, opts);
  AT_DISPATCH_FLOATING_TYPES(type, "ext_gru_forward", [&] {
    GruForward<scalar_t> a{d,
                           gates_x.data_ptr<scalar_t>(),
                           h0_a.data_ptr<scalar_t>(),
                           w_hh_t.defined() ? w_hh_t.data_ptr<scalar_t>() : nullptr,
                           ptr_or_null<scalar_t>(b_hh_a),
                           ptr_or_null<int64_t>(lens),
                           y.data_ptr<scalar_t>(),
                           h_n.data_ptr<scalar_t>(),
                           workspace.data_ptr<scalar_t>(),
                           gates_h.data_ptr<scalar_t>(),
                           w_hh_a.data_ptr<scalar_t>()};
    gru_forward(a, AtenGemm(), AtenFor());
  });
  return {in_dtype(y, x.scalar_type()), in_dtype(h_n, x.scalar_type()), workspace};
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
