// A small row-major GEMM for the per-step recurrent products, C (+)= A B with A (M, K),
// B (K, N), C (M, N). Written so the inner loop runs along contiguous rows of B and C and
// vectorises; blocked along N so a slice of B stays in cache while every row of A uses it.
// The torch binding uses it for small products, where a BLAS call costs more than the work.
#pragma once

#include <algorithm>
#include <cstdint>

#include "fastrnn/common.h"

namespace fastrnn {

// Columns [n0, n1) of C = A B (accumulate: C += A B). Leading dimensions are the row strides.
template <typename T>
FASTRNN_CPU_CLONES void gemm_nn_columns(int64_t M, int64_t K, int64_t n0, int64_t n1, const T* A,
                                        int64_t lda, const T* B, int64_t ldb, T* C, int64_t ldc,
                                        bool accumulate) {
  constexpr int64_t kBlockN = 256;
  for (int64_t nb = n0; nb < n1; nb += kBlockN) {
    const int64_t ne = std::min(nb + kBlockN, n1);
    for (int64_t m = 0; m < M; ++m) {
      T* c = C + m * ldc;
      if (!accumulate) {
        for (int64_t n = nb; n < ne; ++n) c[n] = T(0);
      }
      const T* a = A + m * lda;
      // Four rows of B per pass over the row of C: a quarter of the loads and stores of C.
      int64_t k = 0;
      for (; k + 4 <= K; k += 4) {
        const T a0 = a[k], a1 = a[k + 1], a2 = a[k + 2], a3 = a[k + 3];
        const T* b0 = B + k * ldb;
        const T* b1 = b0 + ldb;
        const T* b2 = b1 + ldb;
        const T* b3 = b2 + ldb;
        FASTRNN_SIMD
        for (int64_t n = nb; n < ne; ++n) c[n] += a0 * b0[n] + a1 * b1[n] + a2 * b2[n] + a3 * b3[n];
      }
      for (; k < K; ++k) {
        const T ak = a[k];
        const T* b = B + k * ldb;
        FASTRNN_SIMD
        for (int64_t n = nb; n < ne; ++n) c[n] += ak * b[n];
      }
    }
  }
}

// C (+)= A B split over column blocks with `parallel_for`.
template <typename T, typename For = SerialFor>
void gemm_nn(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B, int64_t ldb,
             T* C, int64_t ldc, bool accumulate, const For& parallel_for = For()) {
  // Grain in columns: enough work per task (~256K multiply-adds) to pay for waking a thread.
  const int64_t grain = std::max<int64_t>(16, (int64_t(1) << 18) / std::max<int64_t>(1, M * K));
  parallel_for(0, N, grain, [&](int64_t n0, int64_t n1) {
    gemm_nn_columns(M, K, n0, n1, A, lda, B, ldb, C, ldc, accumulate);
  });
}

}  // namespace fastrnn
