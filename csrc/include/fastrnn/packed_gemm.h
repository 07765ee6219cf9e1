// A register-tiled GEMM on a weight matrix packed once per call into column panels, for the
// per-step recurrent products of the CPU recurrences. A panel holds kVecs vectors of
// kLanes<T> values (64 bytes each) per row of K, contiguous over K, so one step streams
// every panel once while the rows of the left operand are broadcast. The callers split
// the work over panels and finish each panel's outputs (the gate math) right after it, while
// they are in L1. Written with GCC/Clang vector extensions: the AVX-512 clone of the caller
// gets one zmm register per vector, other clones split it (correct, slower).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "fastrnn/common.h"

namespace fastrnn {

template <typename T>
constexpr int64_t kLanes = 64 / static_cast<int64_t>(sizeof(T));

// Unaligned 64-byte vector of T (spelled out per type: compilers drop vector_size on a
// dependent type).
template <typename T>
struct Vec64Of;
template <>
struct Vec64Of<float> {
  typedef float type __attribute__((vector_size(64), aligned(4)));
};
template <>
struct Vec64Of<double> {
  typedef double type __attribute__((vector_size(64), aligned(8)));
};
template <typename T>
using Vec64 = typename Vec64Of<T>::type;
static_assert(sizeof(Vec64<float>) == 64 && sizeof(Vec64<double>) == 64, "64-byte vectors");

// Rows per register tile: kRows x kVecs accumulators (16 with 4 vectors).
constexpr int64_t kPackedRows = 4;

// Bytes of a panel the row tiles share before moving on along K: a K chunk of the panel
// stays in L1 while every row tile uses it, instead of each tile streaming the whole panel
// (K x 256 bytes, past L1 for K >= 256) from L2. Measured on one core of a Xeon (AVX-512),
// B=32 x K=512 x 512 fp32 per step: 16 KB chunks ~24 GMAC/s against ~19.5 unchunked, in
// the same run (32 KB: the same; 64 KB: no gain).
constexpr int64_t kPackedChunkBytes = 16 * 1024;

// out[r][0 : NV * L] (+)= A[r][0:K] @ panel (K, NV * L) for MR rows of A, A[r][k] at
// A[r * lda + k * KS]; ACC: add to what out holds (the previous K chunks' sums), same order
// of additions.
template <typename T, int MR, int NV, bool ACC, int64_t KS = 1>
__attribute__((always_inline)) inline void packed_tile(const T* A, int64_t lda, int64_t K,
                                                       const T* panel, T* out) {
  using V = Vec64<T>;
  constexpr int64_t L = kLanes<T>;
  V acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v)
      acc[r][v] = ACC ? *reinterpret_cast<const V*>(out + r * NV * L + v * L) : V{};
  for (int64_t k = 0; k < K; ++k) {
    const T* p = panel + k * NV * L;
    V b[NV];
    for (int v = 0; v < NV; ++v) b[v] = *reinterpret_cast<const V*>(p + v * L);
    for (int r = 0; r < MR; ++r) {
      const T a = A[r * lda + k * KS];
      for (int v = 0; v < NV; ++v) acc[r][v] += a * b[v];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) *reinterpret_cast<V*>(out + r * NV * L + v * L) = acc[r][v];
}

// out (M, NV * L) (+)= A (M, K) @ panel over the K range of one chunk, in tiles of
// kPackedRows rows.
template <typename T, int NV, bool ACC>
__attribute__((always_inline)) inline void packed_rows_chunk(int64_t M, const T* A, int64_t lda,
                                                             int64_t K, const T* panel, T* out) {
  constexpr int64_t W = NV * kLanes<T>;
  int64_t m = 0;
  for (; m + kPackedRows <= M; m += kPackedRows) {
    packed_tile<T, kPackedRows, NV, ACC>(A + m * lda, lda, K, panel, out + m * W);
  }
  switch (M - m) {
    case 3: packed_tile<T, 3, NV, ACC>(A + m * lda, lda, K, panel, out + m * W); break;
    case 2: packed_tile<T, 2, NV, ACC>(A + m * lda, lda, K, panel, out + m * W); break;
    case 1: packed_tile<T, 1, NV, ACC>(A + m * lda, lda, K, panel, out + m * W); break;
    default: break;
  }
}

// out (M, NV * L) = A (M, K) @ panel, K chunk by K chunk (see kPackedChunkBytes);
// accumulate: out += instead.
template <typename T, int NV>
__attribute__((always_inline)) inline void packed_rows(int64_t M, const T* A, int64_t lda,
                                                       int64_t K, const T* panel, T* out,
                                                       bool accumulate = false) {
  constexpr int64_t W = NV * kLanes<T>;
  constexpr int64_t kChunk = kPackedChunkBytes / (W * static_cast<int64_t>(sizeof(T)));
  if (accumulate) {
    packed_rows_chunk<T, NV, true>(M, A, lda, std::min(K, kChunk), panel, out);
  } else {
    packed_rows_chunk<T, NV, false>(M, A, lda, std::min(K, kChunk), panel, out);
  }
  for (int64_t k0 = kChunk; k0 < K; k0 += kChunk) {
    packed_rows_chunk<T, NV, true>(M, A + k0, lda, std::min(kChunk, K - k0), panel + k0 * W, out);
  }
}

// out (M, 4 * L) (+)= A @ panel for A packed in tiles of kPackedRows rows, tile t holding
// its rows' K values k-major (row r's value k at A[t * K * kPackedRows + k * kPackedRows + r]),
// so each step of k broadcasts from one contiguous run. M a multiple of kPackedRows.
template <typename T, bool ACC>
FASTRNN_CPU_CLONES void packed_gemm4_tiles(int64_t M, const T* A, int64_t K, const T* panel,
                                           T* out) {
  constexpr int64_t W = 4 * kLanes<T>;
  for (int64_t m = 0; m < M; m += kPackedRows) {
    packed_tile<T, kPackedRows, 4, ACC, kPackedRows>(A + m * K, 1, K, panel, out + m * W);
  }
}

// Computes out (M, 3 * L) = A (M, K) @ panel with three vectors per panel row (GRU gates).
template <typename T>
FASTRNN_CPU_CLONES void packed_gemm3(int64_t M, const T* A, int64_t lda, int64_t K,
                                     const T* panel, T* out) {
  packed_rows<T, 3>(M, A, lda, K, panel, out);
}

// Computes out (M, 4 * L) = A (M, K) @ panel with four vectors per panel row.
template <typename T>
FASTRNN_CPU_CLONES void packed_gemm4(int64_t M, const T* A, int64_t lda, int64_t K,
                                     const T* panel, T* out) {
  packed_rows<T, 4>(M, A, lda, K, panel, out);
}

// Computes out (M, 4 * L) = [A1 A2] @ panel for a panel packed from two stacked weights,
// A1 (M, K1) against its first K1 rows and A2 (M, K2) against the next K2, without copying
// the two row blocks side by side (a step's input x_t and state h_{t-1}).
template <typename T>
FASTRNN_CPU_CLONES void packed_gemm4_pair(int64_t M, const T* A1, int64_t lda1, int64_t K1,
                                          const T* A2, int64_t lda2, int64_t K2, const T* panel,
                                          T* out) {
  packed_rows<T, 4>(M, A1, lda1, K1, panel, out);
  packed_rows<T, 4>(M, A2, lda2, K2, panel + K1 * 4 * kLanes<T>, out, /*accumulate=*/true);
}

}  // namespace fastrnn
