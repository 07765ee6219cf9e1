// The CPU bindings' products over all steps (input projection, dx): the packed kernel of
// csrc/include/fastrnn/recurrence.h for large ones, BLAS otherwise. CPU only: the CUDA
// bindings share lstm_common.h / gru_common.h but not this.
#pragma once

#include <ATen/Dispatch.h>

#include "binding.h"
#include "fastrnn/recurrence.h"
#include "fastrnn/step_cpu.h"

namespace fastrnn::binding {

// Products over all steps of at least this many multiply-adds run on the packed kernel
// (csrc/include/fastrnn/recurrence.h): faster than MKL's GEMM there (T=128, B=32, I=H=512
// fp32: ~54 vs ~42 GMAC/s on one core, bias added in the same pass); below it, MKL is as
// fast and packing the weights and starting a team do not pay (T=256, B=1, I=H=128).
constexpr int64_t kPackedAllStepsMinWork = int64_t(1) << 26;

// Whether a product over all steps of `work` multiply-adds runs on the packed kernels: large
// enough (above), on a CPU running the AVX-512 tile. With AVX2's tile they only match MKL
// (one core of a Zen 3 EPYC, fp32: (64, 512) x (512, 1024) per step 37 against 36-38
// GMAC/s; a^T b, (M, N) = (1024, 320..512): 30 against 36-38), so BLAS runs those.
inline bool packed_all_steps(int64_t work) {
  return work >= kPackedAllStepsMinWork && cpu_vector_bytes() == 64;
}

// x W^T + bias for all rows at once, x (N, I) and W (G * H, I) contiguous in the
// accumulation dtype: the packed kernel when H % 16 (fp32; 8 fp64) == 0 and
// packed_all_steps, else BLAS.
inline Tensor input_gates_all_steps(const Tensor& x2d, const Tensor& w, const OptTensor& bias,
                                    int64_t G) {
  const int64_t N = x2d.size(0), I = x2d.size(1), H = w.size(0) / G;
  const int64_t lanes = 64 / static_cast<int64_t>(x2d.element_size());
  if (H % lanes != 0 || !packed_all_steps(N * I * G * H)) {
    return linear_all_steps(x2d, w, bias);
  }
  Tensor gates = at::empty({N, G * H}, x2d.options());
  AT_DISPATCH_FLOATING_TYPES(x2d.scalar_type(), "input_gates_packed", [&] {
    input_gates_packed<scalar_t>(N, I, H, G, x2d.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
                                 bias.has_value() ? bias->data_ptr<scalar_t>() : nullptr,
                                 gates.data_ptr<scalar_t>(), AtenFor());
  });
  return gates;
}

// a (M, K) @ b (K, N), both contiguous in the accumulation dtype: the packed kernel when
// N % 64 (fp32; 32 fp64) == 0 and packed_all_steps, else BLAS. For dx = dgates W_ih.
inline Tensor matmul_all_steps(const Tensor& a, const Tensor& b) {
  const int64_t M = a.size(0), K = a.size(1), N = b.size(1);
  const int64_t width = 4 * 64 / static_cast<int64_t>(a.element_size());
  if (N % width != 0 || !packed_all_steps(M * N * K)) return at::mm(a, b);
  Tensor c = at::empty({M, N}, a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "packed_matmul", [&] {
    packed_matmul<scalar_t>(M, N, K, a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(),
                            c.data_ptr<scalar_t>(), AtenFor());
  });
  return c;
}

// Largest a^T b result (bytes) the packed kernel takes: it keeps the sums in a scratch of
// that size that every K chunk reads and writes, which stops paying once the scratch leaves
// L2. One core of a Zen 4 EPYC (1 MB L2), fp32, K = T * B rows, interleaved with MKL's
// at::mm(a.t(), b): (M, N) = (1024, 320), (1024, 384), (1024, 512): 48-49 GMAC/s against
// MKL's 43-45; (2048, 1024), 8 MB: 34 against 44.
constexpr int64_t kPackedTnMaxOutBytes = int64_t(2) << 20;

// a^T b for a (K, M) and b (K, N), both contiguous in the accumulation dtype: the packed
// kernel when M % 4 == 0, packed_all_steps and its result small enough (above), else
// BLAS. For the weight gradients dgates^T [x, h] over all steps.
inline Tensor matmul_tn_all_steps(const Tensor& a, const Tensor& b) {
  const int64_t K = a.size(0), M = a.size(1), N = b.size(1);
  if (M % kPackedRows != 0 || !packed_all_steps(M * N * K) ||
      M * N * static_cast<int64_t>(a.element_size()) > kPackedTnMaxOutBytes) {
    return at::mm(a.t(), b);
  }
  Tensor c = at::empty({M, N}, a.options());
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "packed_matmul_tn", [&] {
    packed_matmul_tn<scalar_t>(M, N, K, a.data_ptr<scalar_t>(), b.data_ptr<scalar_t>(),
                               c.data_ptr<scalar_t>(), AtenFor());
  });
  return c;
}

}  // namespace fastrnn::binding

namespace fastrnn::binding {

// One step of a stream or a decoder (T == 1, no lengths, so every row runs): the bindings
// then skip the recurrence's set-up and compute the step's products on BLAS straight from
// the weights (transposed views, nothing copied). For one step, transposing and packing
// W_hh would cost several times the product itself (LSTM H=256, B=1, fp32, one core of a
// Zen 4 EPYC: W_hh.t().contiguous() 154 us, the product 28 us).
inline bool single_step(const Dims& d, const OptTensor& lengths) {
  return d.T == 1 && !lengths.has_value();
}

// Batch sizes up to which a single step's products run on step_products
// (csrc/include/fastrnn/step_cpu.h: dot products of the weights' own rows, bound by reading
// them once) rather than on BLAS, which is faster once many rows share each weight load.
// Measured (whole op, GRU(64, 256), fp32, one core of an AVX-512 EPYC, interleaved): B=1
// 25 us, B=4 62 us on dot products; B=5 81 us, B=8 86 us on BLAS (dot products grow by
// ~12 us a row, so they would lose from B ~ 6 on).
constexpr int64_t kStepDotMaxBatch = 4;

inline bool step_on_dot_products(const Dims& d) { return d.B <= kStepDotMaxBatch; }

}  // namespace fastrnn::binding
