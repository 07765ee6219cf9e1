// Helpers shared by the torch bindings: input checks, the accumulation dtype, and the
// GEMM / parallel-for callables the header recurrences run with on the CPU.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Optional.h>

#include "fastrnn/gemm.h"

namespace fastrnn::binding {

using at::Tensor;
using OptTensor = std::optional<Tensor>;

// State and gate math run in fp32 for fp16/bf16/fp32 inputs and in fp64 for fp64 inputs.
inline at::ScalarType acc_type(const Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// `t` in the accumulation dtype, contiguous (no copy when it already is; checked here first
// because two dispatcher calls cost about a microsecond, which a decode step notices).
inline Tensor acc(const Tensor& t, at::ScalarType type) {
  if (t.scalar_type() == type && t.is_contiguous()) return t;
  return t.to(type).contiguous();
}

// `t` converted back to the caller's dtype (itself when it already has it, without a
// dispatcher call).
inline Tensor in_dtype(const Tensor& t, at::ScalarType type) {
  return t.scalar_type() == type ? t : t.to(type);
}

inline OptTensor acc(const OptTensor& t, at::ScalarType type) {
  if (!t.has_value()) return std::nullopt;
  return acc(*t, type);
}

// Data pointer of an optional tensor (offset by `offset` elements), or null.
template <typename T>
const T* ptr_or_null(const OptTensor& t, int64_t offset = 0) {
  return t.has_value() ? t->data_ptr<T>() + offset : nullptr;
}

inline void check_shape(const char* op, const char* name, const Tensor& t,
                        at::IntArrayRef shape, const Tensor& x) {
  TORCH_CHECK(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
  TORCH_CHECK(t.device() == x.device(), op, ": ", name, " is on ", t.device(), " but x is on ",
              x.device());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), op, ": ", name, " has dtype ", t.scalar_type(),
              " but x has dtype ", x.scalar_type());
}

inline void check_lengths(const char* op, const OptTensor& lengths, int64_t B, const Tensor& x) {
  if (!lengths.has_value()) return;
  TORCH_CHECK(lengths->dim() == 1 && lengths->size(0) == B, op, ": lengths must have shape (",
              B, ",), got ", lengths->sizes());
  TORCH_CHECK(lengths->scalar_type() == at::kLong, op, ": lengths must be int64, got ",
              lengths->scalar_type());
  TORCH_CHECK(lengths->device() == x.device(), op, ": lengths is on ", lengths->device(),
              " but x is on ", x.device());
}

// x W^T (+ bias) over all rows at once: (N, I) x (G, I)^T -> (N, G) in one BLAS call.
inline Tensor linear_all_steps(const Tensor& x2d, const Tensor& w, const OptTensor& bias) {
  return bias.has_value() ? at::addmm(*bias, x2d, w.t()) : at::mm(x2d, w.t());
}

struct AtenFor {
  template <typename F>
  void operator()(int64_t begin, int64_t end, int64_t grain, const F& fn) const {
    at::parallel_for(begin, end, grain, fn);
  }
  int num_threads() const { return at::get_num_threads(); }
};

// The per-step recurrent GEMM: the header kernel for small products, where a BLAS call's
// fixed cost dominates, BLAS (through at::mm) above that.
struct AtenGemm {
  // Multiply-adds up to which the header kernel wins. Measured on one core of an AVX-512
  // x86 CPU (fp32, MKL behind at::mm): 1x512x128 3.8 us vs ~6 us, 1x1024x256 17 vs ~26 us,
  // 4x1024x256 67 vs ~69 us, 8x2048x512 594 vs ~320 us.
  static constexpr int64_t kHeaderGemmMaxWork = int64_t(1) << 19;

  template <typename T>
  void operator()(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B,
                  int64_t ldb, T* C, int64_t ldc, bool accumulate) const {
    if (M * N * K <= kHeaderGemmMaxWork) {
      gemm_nn(M, N, K, A, lda, B, ldb, C, ldc, accumulate, AtenFor());
      return;
    }
    const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
    const Tensor a = at::from_blob(const_cast<T*>(A), {M, K}, {lda, 1}, opts);
    const Tensor b = at::from_blob(const_cast<T*>(B), {K, N}, {ldb, 1}, opts);
    Tensor c = at::from_blob(C, {M, N}, {ldc, 1}, opts);
    if (accumulate) {
      c.addmm_(a, b);
    } else {
      at::mm_out(c, a, b);
    }
  }
};

}  // namespace fastrnn::binding
