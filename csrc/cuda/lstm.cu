// CUDA LSTM layer: the input projection and weight gradients as cuBLAS GEMMs over all
// steps; the forward and backward recurrences each in one persistent launch when W_hh fits
// on chip (no projection), else per step (cuBLAS GEMM + fused gate kernel).
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "cuda/cuda_common.h"
#include "fastrnn/cuda_launch.h"
#include "lstm_common.h"

namespace fastrnn::binding {
namespace {

constexpr const char* kForward = "fastrnn::ext_lstm_forward";
constexpr const char* kBackward = "fastrnn::ext_lstm_backward";

template <typename T>
bool try_forward_persistent(const Dims& d, const Tensor& gates, const Tensor& h0,
                            const Tensor& c0, const Tensor& w_hh, const OptTensor& lens,
                            Tensor& y, Tensor& h_n, Tensor& c_n, Tensor& ws) {
  if (!persistent_enabled()) return false;
  const auto plan = cuda::plan_persistent<T>(4, /*backward=*/false, d, y.get_device());
  if (plan.blocks == 0) return false;
  Tensor h_buf = at::empty({2, d.B, d.H}, y.options());
  const Tensor barrier = new_barrier(y);
  return launched(cuda::lstm_forward_persistent<T>(
      plan, d, gates.data_ptr<T>(), h0.data_ptr<T>(), c0.data_ptr<T>(), w_hh.data_ptr<T>(),
      ptr_or_null<int64_t>(lens), y.data_ptr<T>(), h_n.data_ptr<T>(), c_n.data_ptr<T>(),
      ws.data_ptr<T>(), h_buf.data_ptr<T>(),
      barrier_ptr(barrier), c10::cuda::getCurrentCUDAStream()),
      barrier, kForward);
}

template <typename T>
void forward_per_step(const Dims& d, Tensor& gates, const Tensor& h0, const Tensor& c0,
                      const Tensor& w_hh, const OptTensor& w_hr, const OptTensor& lens,
                      Tensor& y, Tensor& h_n, Tensor& c_n, Tensor& ws) {
  const auto stream = c10::cuda::getCurrentCUDAStream();
  h_n.copy_(h0);
  c_n.copy_(c0);
  const bool proj = w_hr.has_value();
  Tensor hidden = at::empty({d.B, d.H}, y.options());
  const Tensor pre = gates.view({d.T, d.B, 4 * d.H});
  for (int64_t t = 0; t < d.T; ++t) {
    Tensor pre_t = pre[t];
    pre_t.addmm_(h_n, w_hh.t());
    cuda::lstm_forward_step<T>(d, t, pre_t.data_ptr<T>(), c_n.data_ptr<T>(), h_n.data_ptr<T>(),
                               proj ? hidden.data_ptr<T>() : step_ptr<T>(y, t),
                               step_ptr<T>(ws, t), ptr_or_null<int64_t>(lens), proj, stream);
    if (proj) {
      Tensor y_t = y[t];
      at::mm_out(y_t, hidden, w_hr->t());
      cuda::lstm_projected_state<T>(d, t, y_t.data_ptr<T>(), h_n.data_ptr<T>(),
                                    ptr_or_null<int64_t>(lens), stream);
    }
  }
  check_launch(kForward);
}

template <typename T>
bool try_backward_persistent(const Dims& d, const Tensor& grad_y, const Tensor& c0,
                             const Tensor& w_hh, const OptTensor& lens, const Tensor& ws,
                             Tensor& dgates, Tensor& dh_state, Tensor& dc_state) {
  if (!persistent_enabled()) return false;
  const auto plan = cuda::plan_persistent<T>(4, /*backward=*/true, d, ws.get_device());
  if (plan.blocks == 0) return false;
  const Tensor barrier = new_barrier(ws);
  return launched(cuda::lstm_backward_persistent<T>(
      plan, d, grad_y.data_ptr<T>(), c0.data_ptr<T>(), w_hh.data_ptr<T>(),
      ptr_or_null<int64_t>(lens), ws.data_ptr<T>(), dgates.data_ptr<T>(), dh_state.data_ptr<T>(),
      dc_state.data_ptr<T>(), barrier_ptr(barrier), c10::cuda::getCurrentCUDAStream()),
      barrier, kBackward);
}

std::tuple<Tensor, Tensor, Tensor, Tensor> lstm_forward_cuda(
    const Tensor& x, const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr,
    const OptTensor& lengths) {
  const Dims d = check_lstm(kForward, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths);
  const c10::cuda::CUDAGuard guard(x.device());
  raise_barrier_timeouts();
  const auto type = acc_type(x);
  const auto opts = x.options().dtype(type);
  Tensor gates = lstm_input_gates(d, x, w_ih, b_ih, b_hh, type);
  const Tensor h0_a = acc(h0, type), c0_a = acc(c0, type), w_hh_a = acc(w_hh, type);
  const OptTensor w_hr_a = acc(w_hr, type);
  const OptTensor lens = lengths.has_value() ? OptTensor(lengths->contiguous()) : std::nullopt;
  Tensor y = at::empty({d.T, d.B, d.P}, opts);
  Tensor h_n = at::empty({d.B, d.P}, opts), c_n = at::empty({d.B, d.H}, opts);
  Tensor ws = at::empty({d.T, d.B, 5 * d.H}, opts);
  AT_DISPATCH_FLOATING_TYPES(type, "ext_lstm_forward_cuda", [&] {
    if (w_hr.has_value() ||
        !try_forward_persistent<scalar_t>(d, gates, h0_a, c0_a, w_hh_a, lens, y, h_n, c_n, ws)) {
      forward_per_step<scalar_t>(d, gates, h0_a, c0_a, w_hh_a, w_hr_a, lens, y, h_n, c_n, ws);
    }
  });
  return {y.to(x.scalar_type()), h_n.to(x.scalar_type()), c_n.to(x.scalar_type()), ws};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> lstm_backward_cuda(
    const Tensor& grad_y, const Tensor& grad_hT, const Tensor& grad_cT, const Tensor& x,
    const Tensor& h0, const Tensor& c0, const Tensor& w_ih, const Tensor& w_hh,
    const OptTensor& b_ih, const OptTensor& b_hh, const OptTensor& w_hr, const Tensor& y,
    const Tensor& workspace, const OptTensor& lengths) {
  const Dims d = check_lstm_backward(kBackward, grad_y, grad_hT, grad_cT, x, h0, c0, w_ih, w_hh,
                                     b_ih, b_hh, w_hr, y, workspace, lengths);
  const c10::cuda::CUDAGuard guard(x.device());
  raise_barrier_timeouts();
  const auto type = acc_type(x);
  const auto opts = x.options().dtype(type);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const Tensor grad_y_a = acc(grad_y, type), c0_a = acc(c0, type), w_hh_a = acc(w_hh, type);
  const Tensor ws = workspace.contiguous();
  const OptTensor w_hr_a = acc(w_hr, type);
  const OptTensor lens = lengths.has_value() ? OptTensor(lengths->contiguous()) : std::nullopt;
  Tensor dh_state = acc(grad_hT, type).clone(), dc_state = acc(grad_cT, type).clone();
  Tensor dgates = at::empty({d.T, d.B, 4 * d.H}, opts);
  Tensor dy = w_hr.has_value() ? at::empty({d.T, d.B, d.P}, opts) : Tensor();
  Tensor dhidden = at::empty({d.B, d.H}, opts), dh_next = at::empty({d.B, d.P}, opts);
  AT_DISPATCH_FLOATING_TYPES(type, "ext_lstm_backward_cuda", [&] {
    using T = scalar_t;
    if (!w_hr.has_value() && try_backward_persistent<T>(d, grad_y_a, c0_a, w_hh_a, lens, ws,
                                                        dgates, dh_state, dc_state)) {
      return;
    }
    const int64_t* lens_ptr = ptr_or_null<int64_t>(lens);
    for (int64_t t = d.T - 1; t >= 0; --t) {
      const T* gy_t = step_ptr<T>(grad_y_a, t);
      if (w_hr.has_value()) {
        cuda::lstm_projected_grad<T>(d, t, dh_state.data_ptr<T>(), gy_t, step_ptr<T>(dy, t),
                                     lens_ptr, stream);
        at::mm_out(dhidden, dy[t], *w_hr_a);
      }
      cuda::lstm_backward_step<T>(d, t, ws.data_ptr<T>(), c0_a.data_ptr<T>(),
                                  dh_state.data_ptr<T>(), gy_t,
                                  w_hr.has_value() ? dhidden.data_ptr<T>() : nullptr,
                                  dc_state.data_ptr<T>(), step_ptr<T>(dgates, t), lens_ptr,
                                  stream);
      at::mm_out(dh_next, dgates[t], w_hh_a);
      cuda::select_active_rows<T>(d.B, d.P, t, dh_next.data_ptr<T>(), dh_state.data_ptr<T>(),
                                  lens_ptr, stream);
    }
    check_launch(kBackward);
  });
  auto [dx, dw_ih, dw_hh, dbias, dw_hr] =
      lstm_backward_gemms(d, dgates, dy, ws, x, h0, w_ih, w_hr, y, type);
  const auto out = x.scalar_type();
  return {dx, dh_state.to(out), dc_state.to(out), dw_ih, dw_hh, dbias, dw_hr};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CUDA, m) {
  m.impl("ext_lstm_forward", &lstm_forward_cuda);
  m.impl("ext_lstm_backward", &lstm_backward_cuda);
}

}  // namespace fastrnn::binding
