// Loop helpers shared by the CPU recurrences.
#pragma once

#include <algorithm>
#include <cstdint>

#include "fastrnn/common.h"
#include "fastrnn/gemm.h"

namespace fastrnn {

// Runs fn(b, j0, j1) over the elements of a (B, H) grid, in contiguous row pieces, split
// across threads by `parallel_for`. The pointwise gate math per element is cheap, so a
// task gets at least a few thousand elements.
template <typename For, typename F>
void for_each_row_piece(const For& parallel_for, int64_t B, int64_t H, const F& fn) {
  constexpr int64_t kGrain = 4096;
  parallel_for(0, B * H, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t idx = begin; idx < end;) {
      const int64_t b = idx / H, j0 = idx % H;
      const int64_t j1 = std::min(H, j0 + (end - idx));
      fn(b, j0, j1);
      idx += j1 - j0;
    }
  });
}

// Whether sequence b runs step t (every sequence does without lengths).
inline bool step_active(const int64_t* lengths, int64_t b, int64_t t) {
  return lengths == nullptr || t < lengths[b];
}

// A GEMM callable built from gemm_nn: C (+)= A B with row-major A (M, K), B (K, N).
// The binding passes its own callable (BLAS for large products) with the same signature.
template <typename For = SerialFor>
struct HeaderGemm {
  For parallel_for;
  template <typename T>
  void operator()(int64_t M, int64_t N, int64_t K, const T* A, int64_t lda, const T* B,
                  int64_t ldb, T* C, int64_t ldc, bool accumulate) const {
    gemm_nn(M, N, K, A, lda, B, ldb, C, ldc, accumulate, parallel_for);
  }
};

}  // namespace fastrnn
