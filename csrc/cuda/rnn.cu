// CUDA Elman RNN layer: the input projection and weight gradients as cuBLAS GEMMs over all
// steps; the forward and backward recurrences each in one persistent launch when W_hh fits
// on chip, else per step (cuBLAS GEMM + pointwise kernel).
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include "cuda/cuda_common.h"
#include "fastrnn/cuda_launch.h"
#include "rnn_common.h"

namespace fastrnn::binding {
namespace {

constexpr const char* kForward = "fastrnn::ext_rnn_forward";
constexpr const char* kBackward = "fastrnn::ext_rnn_backward";

template <typename T>
bool try_forward_persistent(const Dims& d, bool relu, const Tensor& h0, const Tensor& w_hh,
                            const OptTensor& lens, Tensor& y, Tensor& h_n, Tensor& ws) {
  if (!persistent_enabled()) return false;
  const auto plan = cuda::plan_persistent<T>(1, /*backward=*/false, d, y.get_device());
  if (plan.blocks == 0) return false;
  Tensor h_buf = at::empty({2, d.B, d.H}, y.options());
  const Tensor barrier = new_barrier(y);
  return launched(cuda::rnn_forward_persistent<T>(
      plan, d, relu, h0.data_ptr<T>(), w_hh.data_ptr<T>(), ptr_or_null<int64_t>(lens),
      y.data_ptr<T>(), h_n.data_ptr<T>(), ws.data_ptr<T>(), h_buf.data_ptr<T>(),
      barrier_ptr(barrier), c10::cuda::getCurrentCUDAStream()),
      barrier, kForward);
}

template <typename T>
void forward_per_step(const Dims& d, bool relu, const Tensor& h0, const Tensor& w_hh,
                      const OptTensor& lens, Tensor& y, Tensor& h_n, Tensor& ws) {
  const auto stream = c10::cuda::getCurrentCUDAStream();
  h_n.copy_(h0);
  Tensor hg = at::empty({d.B, d.H}, y.options());
  for (int64_t t = 0; t < d.T; ++t) {
    at::mm_out(hg, h_n, w_hh.t());
    cuda::rnn_forward_step<T>(d, t, relu, hg.data_ptr<T>(), h_n.data_ptr<T>(), step_ptr<T>(y, t),
                              step_ptr<T>(ws, t), ptr_or_null<int64_t>(lens), stream);
  }
  check_launch(kForward);
}

template <typename T>
bool try_backward_persistent(const Dims& d, bool relu, const Tensor& grad_y, const Tensor& w_hh,
                             const OptTensor& lens, const Tensor& ws, Tensor& d_pre,
                             Tensor& dh_state) {
  if (!persistent_enabled()) return false;
  const auto plan = cuda::plan_persistent<T>(1, /*backward=*/true, d, ws.get_device());
  if (plan.blocks == 0) return false;
  const Tensor barrier = new_barrier(ws);
  return launched(cuda::rnn_backward_persistent<T>(
      plan, d, relu, grad_y.data_ptr<T>(), w_hh.data_ptr<T>(), ptr_or_null<int64_t>(lens),
      ws.data_ptr<T>(), d_pre.data_ptr<T>(), dh_state.data_ptr<T>(),
      barrier_ptr(barrier), c10::cuda::getCurrentCUDAStream()),
      barrier, kBackward);
}

template <typename T>
void backward_per_step(const Dims& d, bool relu, const Tensor& grad_y, const Tensor& w_hh,
                       const OptTensor& lens, const Tensor& ws, Tensor& d_pre, Tensor& dh_state) {
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t* lens_ptr = ptr_or_null<int64_t>(lens);
  Tensor dh_prev = at::empty({d.B, d.H}, ws.options());
  for (int64_t t = d.T - 1; t >= 0; --t) {
    cuda::rnn_backward_step<T>(d, t, relu, step_ptr<T>(ws, t), dh_state.data_ptr<T>(),
                               step_ptr<T>(grad_y, t), step_ptr<T>(d_pre, t), lens_ptr, stream);
    at::mm_out(dh_prev, d_pre[t], w_hh);  // d_pre_t W_hh
    cuda::select_active_rows<T>(d.B, d.H, t, dh_prev.data_ptr<T>(), dh_state.data_ptr<T>(),
                                lens_ptr, stream);
  }
  check_launch(kBackward);
}

std::tuple<Tensor, Tensor, Tensor> rnn_forward_cuda(const Tensor& x, const Tensor& h0,
                                                    const Tensor& w_ih, const Tensor& w_hh,
                                                    const OptTensor& b_ih, const OptTensor& b_hh,
                                                    const OptTensor& lengths,
                                                    c10::string_view nonlinearity) {
  const Dims d = check_rnn(kForward, x, h0, w_ih, w_hh, b_ih, b_hh, lengths);
  const bool relu = rnn_is_relu(kForward, nonlinearity);
  const c10::cuda::CUDAGuard guard(x.device());
  raise_barrier_timeouts();
  const auto type = acc_type(x);
  const auto opts = x.options().dtype(type);
  // x W_ih^T + b_ih + b_hh of every step, which the recurrence overwrites with h_t.
  Tensor ws = linear_all_steps(acc(x, type).view({d.T * d.B, x.size(2)}), acc(w_ih, type),
                               rnn_bias(b_ih, b_hh, type))
                  .view({d.T, d.B, d.H});
  const Tensor h0_a = acc(h0, type), w_hh_a = acc(w_hh, type);
  const OptTensor lens = lengths.has_value() ? OptTensor(lengths->contiguous()) : std::nullopt;
  Tensor y = at::empty({d.T, d.B, d.H}, opts), h_n = at::empty({d.B, d.H}, opts);
  AT_DISPATCH_FLOATING_TYPES(type, "ext_rnn_forward_cuda", [&] {
    if (!try_forward_persistent<scalar_t>(d, relu, h0_a, w_hh_a, lens, y, h_n, ws)) {
      forward_per_step<scalar_t>(d, relu, h0_a, w_hh_a, lens, y, h_n, ws);
    }
  });
  return {y.to(x.scalar_type()), h_n.to(x.scalar_type()), ws};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> rnn_backward_cuda(
    const Tensor& grad_y, const Tensor& grad_hT, const Tensor& x, const Tensor& h0,
    const Tensor& w_ih, const Tensor& w_hh, const OptTensor& b_ih, const OptTensor& b_hh,
    const Tensor& y, const Tensor& workspace, const OptTensor& lengths,
    c10::string_view nonlinearity) {
  const Dims d = check_rnn_backward(kBackward, grad_y, grad_hT, x, h0, w_ih, w_hh, b_ih, b_hh, y,
                                    workspace, lengths);
  const bool relu = rnn_is_relu(kBackward, nonlinearity);
  const c10::cuda::CUDAGuard guard(x.device());
  raise_barrier_timeouts();
  const auto type = acc_type(x);
  const Tensor grad_y_a = acc(grad_y, type), w_hh_a = acc(w_hh, type);
  const Tensor ws = workspace.contiguous();
  const OptTensor lens = lengths.has_value() ? OptTensor(lengths->contiguous()) : std::nullopt;
  Tensor dh_state = acc(grad_hT, type).clone();
  Tensor d_pre = at::empty({d.T, d.B, d.H}, x.options().dtype(type));
  AT_DISPATCH_FLOATING_TYPES(type, "ext_rnn_backward_cuda", [&] {
    if (!try_backward_persistent<scalar_t>(d, relu, grad_y_a, w_hh_a, lens, ws, d_pre,
                                           dh_state)) {
      backward_per_step<scalar_t>(d, relu, grad_y_a, w_hh_a, lens, ws, d_pre, dh_state);
    }
  });
  auto [dw_ih, dw_hh, dbias] = rnn_weight_gradients(d, d_pre, ws, x, h0, type);
  const auto out = x.scalar_type();
  const Tensor dx = at::mm(d_pre.view({d.T * d.B, d.H}), acc(w_ih, type));
  return {dx.view({d.T, d.B, x.size(2)}).to(out), dh_state.to(out), dw_ih, dw_hh, dbias};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CUDA, m) {
  m.impl("ext_rnn_forward", &rnn_forward_cuda);
  m.impl("ext_rnn_backward", &rnn_backward_cuda);
}

}  // namespace fastrnn::binding
