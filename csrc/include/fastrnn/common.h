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

// exp for float that compilers vectorise (no libm call, no errno): Cody-Waite range
// reduction to exp(r) * 2^k with |r| <= ln2/2 and a degree-6 polynomial; relative error
// below 2e-7 over the clamped range, which covers every value sigmoid/tanh need.
FASTRNN_HD float fast_exp(float x) {
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
  p = p * r * r + r + 1.0f;
  // 2^k from the exponent bits: the low 9 bits of shifted's bit pattern are k mod 512, so
  // (bits + 127) << 23 is k + 127 in the exponent field (k lies in [-126, 127] after the
  // clamp).
  union { float f; uint32_t u; } two_k;
  two_k.f = shifted;
  two_k.u = (two_k.u + 127u) << 23;
  return p * two_k.f;
}

FASTRNN_HD double fast_exp(double x) { return std::exp(x); }

template <typename T>
FASTRNN_HD T sigmoid(T x) {
  return T(1) / (T(1) + fast_exp(-x));
}

// float tanh, as the Triton kernels' (fastrnn/ops/recurrent/common.py: tanh): x * P(x^2)
// below |x| = 0.55 (P: tanh's Taylor series to x^15, truncated there by under 0.2 ulp), else
// sign(x) * (1 - 2 / (exp(2|x|) + 1)), where tanh >= 0.5 and the subtraction loses nothing;
// saturates to +-1 without overflow. The one-liner 1 - 2 / (exp(2x) + 1) errs by up to an
// ulp of 1 near 0, where tanh is small: it made an Elman layer's fp32 output 4x and its
// weight gradients up to 17x less accurate than torch.nn's (tests/test_torch_module_recipe.py).
FASTRNN_HD float tanh_act(float x) {
  const float magnitude = std::fabs(x);
  const bool small = magnitude < 0.55f;
  const float xs = small ? x : 0.0f;  // the series' argument, kept where it converges
  const float x2 = xs * xs;
  float series = -929569.0f / 638512875.0f;
  series = series * x2 + 21844.0f / 6081075.0f;
  series = series * x2 - 1382.0f / 155925.0f;
  series = series * x2 + 62.0f / 2835.0f;
  series = series * x2 - 17.0f / 315.0f;
  series = series * x2 + 2.0f / 15.0f;
  series = series * x2 - 1.0f / 3.0f;
  series = xs * (1.0f + series * x2);
  const float tail = std::copysign(1.0f - 2.0f / (fast_exp(2.0f * magnitude) + 1.0f), x);
  // Blended by multiplying with exactly 1 and 0 (both terms finite, so the result is one of
  // them bit for bit): a select here let GCC sink `tail` into a branch it then could not
  // if-convert, which left every gate loop that calls tanh_act scalar (2x slower layers).
  const float use_series = small ? 1.0f : 0.0f;
  return series * use_series + tail * (1.0f - use_series);
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
