// CUDA GRU layer: the input projection and weight gradients as cuBLAS GEMMs over all
// steps; the forward and backward recurrences each in one persistent launch when W_hh fits
// on chip, else per step (cuBLAS GEMM + fused gate kernel).
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "cuda/cuda_common.h"
#include "fastrnn/cuda_launch.h"
#include "gru_common.h"

namespace fastrnn::binding {
namespace {

constexpr const char* kForward = "fastrnn::ext_gru_forward";
constexpr const char* kBackward = "fastrnn::ext_gru_backward";

template <typename T>
bool try_forward_persistent(const Dims& d, const Tensor& gates_x, const Tensor& h0,
                            const Tensor& w_hh, const OptTensor& b_hh, const OptTensor& lens,
                            Tensor& y, Tensor& h_n, Tensor& ws) {
  if (!persistent_enabled()) return false;
  const auto plan = cuda::plan_persistent<T>(3, /*backward=*/false, d, y.get_device());
  if (plan.blocks == 0) return false;
  Tensor h_buf = at::empty({2, d.B, d.H}, y.options());
  const Tensor barrier = new_barrier(y);
  return launched(cuda::gru_forward_persistent<T>(
      plan, d, gates_x.data_ptr<T>(), h0.data_ptr<T>(), w_hh.data_ptr<T>(),
      ptr_or_null<T>(b_hh), ptr_or_null<int64_t>(lens), y.data_ptr<T>(), h_n.data_ptr<T>(),
      ws.data_ptr<T>(), h_buf.data_ptr<T>(),
      barrier_ptr(barrier), c10::cuda::getCurrentCUDAStream()),
      barrier, kForward);
}

template <typename T>
void forward_per_step(const Dims& d, const Tensor& gates_x, const Tensor& h0, const Tensor& w_hh,
                      const OptTensor& b_hh, const OptTensor& lens, Tensor& y, Tensor& h_n,
                      Tensor& ws) {
  const auto stream = c10::cuda::getCurrentCUDAStream();
  h_n.copy_(h0);
  Tensor hg = at::empty({d.B, 3 * d.H}, y.options());
  for (int64_t t = 0; t < d.T; ++t) {
    if (b_hh.has_value()) {
      at::addmm_out(hg, *b_hh, h_n, w_hh.t());
    } else {
      at::mm_out(hg, h_n, w_hh.t());
    }
    cuda::gru_forward_step<T>(d, t, step_ptr<T>(gates_x, t), hg.data_ptr<T>(), h_n.data_ptr<T>(),
                              step_ptr<T>(y, t), step_ptr<T>(ws, t), ptr_or_null<int64_t>(lens),
                              stream);
  }
  check_launch(kForward);
}

template <typename T>
bool try_backward_persistent(const Dims& d, const Tensor& grad_y, const Tensor& h0,
                             const Tensor& y, const Tensor& w_hh, const OptTensor& lens,
                             const Tensor& ws, Tensor& d_input, Tensor& d_hidden,
                             Tensor& dh_state) {
  if (!persistent_enabled()) return false;
  const auto plan = cuda::plan_persistent<T>(3, /*backward=*/true, d, ws.get_device());
  if (plan.blocks == 0) return false;
  const Tensor barrier = new_barrier(ws);
  return launched(cuda::gru_backward_persistent<T>(
      plan, d, grad_y.data_ptr<T>(), h0.data_ptr<T>(), y.data_ptr<T>(), w_hh.data_ptr<T>(),
      ptr_or_null<int64_t>(lens), ws.data_ptr<T>(), d_input.data_ptr<T>(),
      d_hidden.data_ptr<T>(), dh_state.data_ptr<T>(),
      barrier_ptr(barrier), c10::cuda::getCurrentCUDAStream()),
      barrier, kBackward);
}

std::tuple<Tensor, Tensor, Tensor> gru_forward_cuda(const Tensor& x, const Tensor& h0,
                                                    const Tensor& w_ih, const Tensor& w_hh,
                                                    const OptTensor& b_ih, const OptTensor& b_hh,
                                                    const OptTensor& lengths) {
  const Dims d = check_gru(kForward, x, h0, w_ih, w_hh, b_ih, b_hh, lengths);
  const c10::cuda::CUDAGuard guard(x.device());
  raise_barrier_timeouts();
  const auto type = acc_type(x);
  const auto opts = x.options().dtype(type);
  const Tensor gates_x = gru_input_gates(d, x, w_ih, b_ih, type).view({d.T, d.B, 3 * d.H});
  const Tensor h0_a = acc(h0, type), w_hh_a = acc(w_hh, type);
  const OptTensor b_hh_a = acc(b_hh, type);
  const OptTensor lens = lengths.has_value() ? OptTensor(lengths->contiguous()) : std::nullopt;
  Tensor y = at::empty({d.T, d.B, d.H}, opts), h_n = at::empty({d.B, d.H}, opts);
  Tensor ws = at::empty({d.T, d.B, 4 * d.H}, opts);
  AT_DISPATCH_FLOATING_TYPES(type, "ext_gru_forward_cuda", [&] {
    if (!try_forward_persistent<scalar_t>(d, gates_x, h0_a, w_hh_a, b_hh_a, lens, y, h_n, ws)) {
      forward_per_step<scalar_t>(d, gates_x, h0_a, w_hh_a, b_hh_a, lens, y, h_n, ws);
    }
  });
  return {y.to(x.scalar_type()), h_n.to(x.scalar_type()), ws};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> gru_backward_cuda(
    const Tensor& grad_y, const Tensor& grad_hT, const Tensor& x, const Tensor& h0,
    const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
    const Tensor& y, const Tensor& workspace, const OptTensor& lengths) {
  const Dims d = check_gru_backward(kBackward, grad_y, grad_hT, x, h0, w_ih, w_hh, b_ih, b_hh, y,
                                    workspace, lengths);
  const c10::cuda::CUDAGuard guard(x.device());
  raise_barrier_timeouts();
  const auto type = acc_type(x);
  const auto opts = x.options().dtype(type);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const Tensor grad_y_a = acc(grad_y, type), h0_a = acc(h0, type), y_a = acc(y, type);
  const Tensor w_hh_a = acc(w_hh, type), ws = workspace.contiguous();
  const OptTensor lens = lengths.has_value() ? OptTensor(lengths->contiguous()) : std::nullopt;
  Tensor dh_state = acc(grad_hT, type).clone();
  Tensor d_input = at::empty({d.T, d.B, 3 * d.H}, opts);
  Tensor d_hidden = at::empty({d.T, d.B, 3 * d.H}, opts);
  Tensor dh_prev = at::empty({d.B, d.H}, opts);
  AT_DISPATCH_FLOATING_TYPES(type, "ext_gru_backward_cuda", [&] {
    using T = scalar_t;
    if (try_backward_persistent<T>(d, grad_y_a, h0_a, y_a, w_hh_a, lens, ws, d_input, d_hidden,
                                   dh_state)) {
      return;
    }
    const int64_t* lens_ptr = ptr_or_null<int64_t>(lens);
    for (int64_t t = d.T - 1; t >= 0; --t) {
      const T* h_prev_t = t > 0 ? step_ptr<T>(y_a, t - 1) : h0_a.data_ptr<T>();
      cuda::gru_backward_step<T>(d, t, step_ptr<T>(ws, t), h_prev_t, dh_state.data_ptr<T>(),
                                 step_ptr<T>(grad_y_a, t), step_ptr<T>(d_input, t),
                                 step_ptr<T>(d_hidden, t), dh_prev.data_ptr<T>(), lens_ptr,
                                 stream);
      dh_prev.addmm_(d_hidden[t], w_hh_a);  // + d_hidden_t W_hh
      cuda::select_active_rows<T>(d.B, d.H, t, dh_prev.data_ptr<T>(), dh_state.data_ptr<T>(),
                                  lens_ptr, stream);
    }
    check_launch(kBackward);
  });
  auto [dx, dw_ih, dw_hh, db_ih, db_hh] =
      gru_backward_gemms(d, d_input, d_hidden, x, h0, w_ih, y, type);
  return {dx, dh_state.to(x.scalar_type()), dw_ih, dw_hh, db_ih, db_hh};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CUDA, m) {
  m.impl("ext_gru_forward", &gru_forward_cuda);
  m.impl("ext_gru_backward", &gru_backward_cuda);
}

}  // namespace fastrnn::binding
