// Shared helpers for fastrnn's torch-free kernels: scalar activations usable on host and
// device, the layer dimensions, and a serial "parallel for" for builds without a thread pool.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define FASTRNN_HD __host__ __device__ __forceinline__
#else
#define FASTRNN_HD inline
#endif

// Marks a loop whose iterations are independent so the compiler vectorises it (with
// -fopenmp-simd; without it the pragma is ignored and the loop stays correct).
#if defined(_OPENMP) || defined(FASTRNN_OPENMP_SIMD)
#define FASTRNN_SIMD _Pragma("omp simd")
#else
#define FASTRNN_SIMD
#endif

// Builds a CPU function for AVX-512, AVX2 and baseline x86-64 and picks one at load time
// (GCC/Clang function multi-versioning), so one build runs well on any x86-64 machine.
// Used on the hot loops only: the recurrent GEMM and the per-row gate math.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__CUDACC__) && defined(__linux__)
#define FASTRNN_CPU_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FASTRNN_CPU_CLONES
#endif

namespace fastrnn {

// exp(x) - 1 and exp(x) for float, written so that compilers vectorise them (no libm call,
// no errno): Cody-Waite range reduction x = k ln2 + r with |r| <= ln2/2, exp(r) - 1 =
// r + r^2 P(r) with P Cephes' degree-5 expf polynomial, then exp(x) - 1 = 2^k (exp(r) - 1)
// + (2^k - 1): no cancellation near 0, where k = 0 and r = x. x is clamped to [-87, 88],
// which covers every value sigmoid/tanh need; relative error below 2e-7.
struct ExpParts {
  float em1_r;  // exp(r) - 1
  float two_k;  // 2^k
};

FASTRNN_HD ExpParts exp_parts(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  // k = round(x / ln2): adding 1.5 * 2^23 rounds x / ln2 to an integer held in the low
  // mantissa bits, and subtracting it again gives k as a float (two vector ops, where a
  // conversion to int and back with a floor correction took five).
  const float shifted = x * 1.44269504088896341f + 12582912.0f;
  const float k = shifted - 12582912.0f;
  float r = x - k * 0.693359375f;
  r = r + k * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  // 2^k from the exponent bits: the low 9 bits of shifted's bit pattern are k mod 512, so
  // (bits + 127) << 23 is k + 127 in the exponent field (k lies in [-126, 127] after the
  // clamp).
  union { float f; uint32_t u; } two_k;
  two_k.f = shifted;
  two_k.u = (two_k.u + 127u) << 23;
  return {p * r * r + r, two_k.f};
}

FASTRNN_HD float fast_exp(float x) {
  const ExpParts e = exp_parts(x);
  return (e.em1_r + 1.0f) * e.two_k;
}

FASTRNN_HD float fast_expm1(float x) {
  const ExpParts e = exp_parts(x);
  return e.two_k * e.em1_r + (e.two_k - 1.0f);
}

FASTRNN_HD double fast_exp(double x) { return std::exp(x); }

template <typename T>
FASTRNN_HD T sigmoid(T x) {
  return T(1) / (T(1) + fast_exp(-x));
}

// float tanh from one e^2|x| - 1 = m (fast_expm1, accurate near 0) and one division:
// m / (m + 2) below |x| = 0.55, 1 - 2 / (m + 2) from there, where tanh >= 0.5 and the
// subtraction loses nothing; the sign is x's (tanh(-0) = -0). Within 2 ulp, 0.27 ulp on
// average over [-8, 8] (tests/cpp/test_cpu_kernels.cpp); saturates to +-1 without
// overflow (2|x| is clamped to 88, e^88 < FLT_MAX / 2). m / (m + 2) alone averaged 0.5 ulp
// and took a GRU layer's fp32 weight gradients past their bound in
// tests/test_torch_module_recipe.py; 1 - 2 / (e^2x + 1) alone errs by up to an ulp of 1
// near 0 (an Elman layer's fp32 output 4x and its weight gradients up to 17x less accurate
// than torch.nn's). The Taylor series below 0.55 blended with the second form (the Triton
// kernels' tanh, fastrnn/ops/recurrent/common.py) is as accurate and cost a fifth more per
// LSTM gate-math row.
FASTRNN_HD float tanh_act(float x) {
  const float magnitude = std::fabs(x);
  const float m = fast_expm1(2.0f * magnitude);
  const bool small = magnitude < 0.55f;
  const float quotient = (small ? m : 2.0f) / (m + 2.0f);
  return std::copysign(small ? quotient : 1.0f - quotient, x);
}

FASTRNN_HD double tanh_act(double x) { return std::tanh(x); }

// Sizes of one layer, one direction. P is the size of h (proj_size, or H without one).
struct Dims {
  int64_t T, B, H, P;
};

// Runs fn(begin, end) over [begin, end) on the calling thread: the default where no thread
// pool is given (C++ unit tests); the torch binding passes at::parallel_for instead.
struct SerialFor {
  template <typename F>
  void operator()(int64_t begin, int64_t end, int64_t /*grain*/, const F& fn) const {
    if (begin < end) fn(begin, end);
  }
  int num_threads() const { return 1; }
};

}  // namespace fastrnn
