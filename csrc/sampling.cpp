// CPU sampler: the torch binding of csrc/include/fastrnn/sampling_cpu.h, rows in parallel
// on torch's thread pool, one reusable workspace per thread (no tensor is allocated but
// the outputs). Parameters arrive checked and broadcast by fastrnn/ops/sampling/op.py;
// the checks here guard the op when it is called directly.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "binding.h"
#include "fastrnn/sampling_cpu.h"

namespace fastrnn::binding {
namespace {

using sampling::RowParams;
using sampling::Workspace;

void check_row_param(const char* op, const char* name, const Tensor& t, int64_t B,
                     at::ScalarType type) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == B, op, ": ", name, " must have shape (", B,
              ",), got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == type, op, ": ", name, " must be ", type, ", got ",
              t.scalar_type());
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " must be on the CPU, got ", t.device());
}

// The per-row parameters as contiguous tensors, read row by row.
struct Params {
  Tensor temperature, top_k, top_p, min_p;

  Params(const char* op, const Tensor& logits, const Tensor& t, const Tensor& k,
         const Tensor& p, const Tensor& m) {
    TORCH_CHECK(logits.dim() == 2, op, ": logits must be 2-D (B, V), got ", logits.dim(), "-D");
    TORCH_CHECK(logits.device().is_cpu(), op, ": logits must be on the CPU");
    TORCH_CHECK(at::isFloatingType(logits.scalar_type()), op, ": logits must be floating point");
    TORCH_CHECK(logits.size(1) >= 1 && logits.size(1) <= INT32_MAX, op,
                ": V must lie in [1, 2^31 - 1], got ", logits.size(1));
    const int64_t B = logits.size(0);
    check_row_param(op, "temperature", t, B, at::kFloat);
    check_row_param(op, "top_k", k, B, at::kLong);
    check_row_param(op, "top_p", p, B, at::kDouble);
    check_row_param(op, "min_p", m, B, at::kFloat);
    temperature = t.contiguous();
    top_k = k.contiguous();
    top_p = p.contiguous();
    min_p = m.contiguous();
  }

  RowParams row(int64_t i) const {
    return {temperature.data_ptr<float>()[i], top_k.data_ptr<int64_t>()[i],
            top_p.data_ptr<double>()[i], min_p.data_ptr<float>()[i]};
  }
};

Workspace& thread_workspace() {
  thread_local Workspace ws;
  return ws;
}

// Logits with unit stride along V (a copy only when they are not).
Tensor rows_of(const Tensor& logits) {
  return logits.stride(1) == 1 ? logits : logits.contiguous();
}

std::tuple<Tensor, Tensor> sample_cpu(const Tensor& logits_in, const Tensor& temperature,
                                      const Tensor& top_k, const Tensor& top_p,
                                      const Tensor& min_p, const Tensor& uniform) {
  constexpr const char* op = "fastrnn::ext_sampling_forward";
  const Params params(op, logits_in, temperature, top_k, top_p, min_p);
  const Tensor logits = rows_of(logits_in);
  const int64_t B = logits.size(0), V = logits.size(1);
  check_row_param(op, "uniform", uniform, B, at::kDouble);
  const Tensor u = uniform.contiguous();
  Tensor tokens = at::empty({B}, logits.options().dtype(at::kLong));
  Tensor status = at::empty({B}, logits.options().dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), op, [&] {
    const scalar_t* x = logits.data_ptr<scalar_t>();
    const int64_t stride = logits.stride(0);
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      Workspace& ws = thread_workspace();
      for (int64_t i = begin; i < end; ++i) {
        status.data_ptr<int32_t>()[i] =
            sampling::sample_row(x + i * stride, V, params.row(i), u.data_ptr<double>()[i],
                                 tokens.data_ptr<int64_t>() + i, ws);
      }
    });
  });
  return {tokens, status};
}

std::tuple<Tensor, Tensor> mask_cpu(const Tensor& logits_in, const Tensor& temperature,
                                    const Tensor& top_k, const Tensor& top_p,
                                    const Tensor& min_p) {
  constexpr const char* op = "fastrnn::ext_sampling_mask";
  const Params params(op, logits_in, temperature, top_k, top_p, min_p);
  const Tensor logits = rows_of(logits_in);
  const int64_t B = logits.size(0), V = logits.size(1);
  Tensor mask = at::empty({B, V}, logits.options().dtype(at::kBool));
  Tensor status = at::empty({B}, logits.options().dtype(at::kInt));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), op, [&] {
    const scalar_t* x = logits.data_ptr<scalar_t>();
    const int64_t stride = logits.stride(0);
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      Workspace& ws = thread_workspace();
      for (int64_t i = begin; i < end; ++i) {
        status.data_ptr<int32_t>()[i] = sampling::kept_mask_row(
            x + i * stride, V, params.row(i), mask.data_ptr<bool>() + i * V, ws);
      }
    });
  });
  return {mask, status};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastrnn, CPU, m) {
  m.impl("ext_sampling_forward", &sample_cpu);
  m.impl("ext_sampling_mask", &mask_cpu);
}

}  // namespace fastrnn::binding
