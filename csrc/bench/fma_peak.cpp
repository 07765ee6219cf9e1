// The fp32 FMA peak of one core, the ceiling for any CPU GEMM: 12 independent chains of
// AVX-512 fused multiply-adds (enough to hide the FMA latency), in multiply-adds per second.
//
//   g++ -O3 -march=native csrc/bench/fma_peak.cpp -o /tmp/fma_peak && /tmp/fma_peak
#include <immintrin.h>

#include <chrono>
#include <cstdio>

int main() {
  constexpr int kChains = 12;
  constexpr long kIterations = 200000000;
  __m512 acc[kChains];
  for (int i = 0; i < kChains; ++i) acc[i] = _mm512_set1_ps(0.001f * i);
  const __m512 a = _mm512_set1_ps(0.9999f), b = _mm512_set1_ps(0.0001f);
  const auto start = std::chrono::steady_clock::now();
  for (long n = 0; n < kIterations; ++n) {
    for (int i = 0; i < kChains; ++i) acc[i] = _mm512_fmadd_ps(acc[i], a, b);
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  float sum = 0;  // printed so the chains are not optimised away
  for (int i = 0; i < kChains; ++i) sum += _mm512_reduce_add_ps(acc[i]);
  std::printf("%.1f GMAC/s fp32 on one core (checksum %g)\n",
              kIterations * kChains * 16.0 / seconds / 1e9, sum);
  return 0;
}
