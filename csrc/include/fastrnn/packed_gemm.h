// A register-tiled GEMM on a weight matrix packed once per call into column panels, for the
// per-step recurrent products of the CPU recurrences. A panel holds kVecs 64-byte groups of
// kLanes<T> values per row of K, contiguous over K, so one step streams every panel once
// while the rows of the left operand are broadcast. The callers split the work over panels
// and finish each panel's outputs (the gate math) right after it, while they are in L1.
// Written with GCC/Clang vector extensions. The register tile follows the vector width of
// the clone the CPU runs (FASTRNN_CPU_CLONES): 64-byte vectors and 4 rows x a whole panel
// row with AVX-512's 32 registers; with AVX2's (or SSE's) 16, 32-byte (16-byte) vectors and
// a tile of at most 12 accumulators over part of the panel row. One 64-byte tile for all
// clones spilled its 16 accumulators on AVX2: 1.5 GMAC/s on a Zen 3 EPYC core (AVX2 only),
// 20x below the products torch.nn ran there.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "fastrnn/common.h"

namespace fastrnn {

template <typename T>
constexpr int64_t kLanes = 64 / static_cast<int64_t>(sizeof(T));

// Unaligned vector of Bytes bytes of T (spelled out per type and width: compilers drop
// vector_size on a dependent type).
template <typename T, int Bytes>
struct VecOf;
#define FASTRNN_VEC_OF(T, BYTES)                                                   \
  template <>                                                                      \
  struct VecOf<T, BYTES> {                                                         \
    typedef T type __attribute__((vector_size(BYTES), aligned(sizeof(T))));        \
  };
FASTRNN_VEC_OF(float, 64)
FASTRNN_VEC_OF(float, 32)
FASTRNN_VEC_OF(float, 16)
FASTRNN_VEC_OF(double, 64)
FASTRNN_VEC_OF(double, 32)
FASTRNN_VEC_OF(double, 16)
#undef FASTRNN_VEC_OF
template <typename T, int Bytes>
using Vec = typename VecOf<T, Bytes>::type;
static_assert(sizeof(Vec<float, 64>) == 64 && sizeof(Vec<double, 16>) == 16, "vector sizes");

// Rows of the left operand in the k-major tiles of packed_gemm4_tiles.
constexpr int64_t kPackedRows = 4;

// The vector width in bytes of the clone FASTRNN_CPU_CLONES runs on this CPU: 64 where
// the CPU is x86-64-v4 (AVX-512), 32 where it is v3 (AVX2), else 16. Read once.
inline int cpu_vector_bytes() {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__CUDACC__) && defined(__linux__)
  static const int bytes = __builtin_cpu_supports("x86-64-v4")   ? 64
                           : __builtin_cpu_supports("x86-64-v3") ? 32
                                                                 : 16;
  return bytes;
#else
  return 16;
#endif
}

// Bytes of a panel the row tiles share before moving on along K: a K chunk of the panel
// stays in L1 while every row tile uses it, instead of each tile streaming the whole panel
// (K x 256 bytes, past L1 for K >= 256) from L2. Measured on one core of a Xeon (AVX-512),
// B=32 x K=512 x 512 fp32 per step: 16 KB chunks ~24 GMAC/s against ~19.5 unchunked, in
// the same run (32 KB: the same; 64 KB: no gain).
constexpr int64_t kPackedChunkBytes = 16 * 1024;

// out[r][0 : NC vectors] (+)= A[r][0:K] @ panel[0:K][0 : NC vectors] for MR rows of A, A[r][k]
// at A[r * lda + k * KS], panel row k at panel + k * ldp, out row r at out + r * ldo;
// vectors of VB bytes. ACC: add to what out holds (the previous K chunks' sums), same order
// of additions.
template <typename T, int VB, int MR, int NC, bool ACC, int64_t KS = 1>
__attribute__((always_inline)) inline void packed_tile(const T* A, int64_t lda, int64_t K,
                                                       const T* panel, int64_t ldp, T* out,
                                                       int64_t ldo) {
  using V = Vec<T, VB>;
  constexpr int64_t VL = VB / static_cast<int64_t>(sizeof(T));
  V acc[MR][NC];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NC; ++v)
      acc[r][v] = ACC ? *reinterpret_cast<const V*>(out + r * ldo + v * VL) : V{};
  for (int64_t k = 0; k < K; ++k) {
    const T* p = panel + k * ldp;
    V b[NC];
    for (int v = 0; v < NC; ++v) b[v] = *reinterpret_cast<const V*>(p + v * VL);
    for (int r = 0; r < MR; ++r) {
      const T a = A[r * lda + k * KS];
      for (int v = 0; v < NC; ++v) acc[r][v] += a * b[v];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NC; ++v) *reinterpret_cast<V*>(out + r * ldo + v * VL) = acc[r][v];
}

// The register tile of a panel NV 64-byte groups wide with VB-byte vectors: MR rows by NC
// vectors, NC dividing the row's NV * 64 / VB vectors. AVX-512 (32 registers): 4 rows by
// the whole row (16 accumulators for NV = 4). 16 registers: 12 accumulators or fewer.
template <int VB, int NV>
struct PackedTile {
  static constexpr int NC = NV;
  static constexpr int MR = VB == 64 ? 4 : 12 / NV;
};

// The last `rows` (< MR) rows of packed_rows_chunk, as one tile of that many rows.
template <typename T, int VB, int R, int NC, bool ACC>
__attribute__((always_inline)) inline void packed_tail_rows(int64_t rows, const T* A,
                                                            int64_t lda, int64_t K,
                                                            const T* panel, int64_t W, T* out) {
  if constexpr (R > 0) {
    if (rows != R) {
      packed_tail_rows<T, VB, R - 1, NC, ACC>(rows, A, lda, K, panel, W, out);
      return;
    }
    constexpr int64_t VL = VB / static_cast<int64_t>(sizeof(T));
    for (int64_t c = 0; c * NC * VL < W; ++c) {
      packed_tile<T, VB, R, NC, ACC>(A, lda, K, panel + c * NC * VL, W, out + c * NC * VL, W);
    }
  }
}

// out (M, NV * L) (+)= A (M, K) @ panel over the K range of one chunk, in tiles of MR rows by
// NC vectors.
template <typename T, int VB, int NV, bool ACC>
__attribute__((always_inline)) inline void packed_rows_chunk(int64_t M, const T* A, int64_t lda,
                                                             int64_t K, const T* panel, T* out) {
  constexpr int64_t W = NV * kLanes<T>, VL = VB / static_cast<int64_t>(sizeof(T));
  constexpr int MR = PackedTile<VB, NV>::MR, NC = PackedTile<VB, NV>::NC;
  constexpr int64_t parts = W / (NC * VL);
  static_assert(parts * NC * VL == W, "the tile divides the panel row");
  int64_t m = 0;
  for (; m + MR <= M; m += MR) {
    for (int64_t c = 0; c < parts; ++c) {
      packed_tile<T, VB, MR, NC, ACC>(A + m * lda, lda, K, panel + c * NC * VL, W,
                                      out + m * W + c * NC * VL, W);
    }
  }
  if (m < M) {
    packed_tail_rows<T, VB, MR - 1, NC, ACC>(M - m, A + m * lda, lda, K, panel, W, out + m * W);
  }
}

// out (M, NV * L) = A (M, K) @ panel, K chunk by K chunk (see kPackedChunkBytes), with
// VB-byte vectors; accumulate: out += instead.
template <typename T, int VB, int NV>
__attribute__((always_inline)) inline void packed_rows_vb(int64_t M, const T* A, int64_t lda,
                                                          int64_t K, const T* panel, T* out,
                                                          bool accumulate) {
  constexpr int64_t W = NV * kLanes<T>;
  constexpr int64_t kChunk = kPackedChunkBytes / (W * static_cast<int64_t>(sizeof(T)));
  if (accumulate) {
    packed_rows_chunk<T, VB, NV, true>(M, A, lda, std::min(K, kChunk), panel, out);
  } else {
    packed_rows_chunk<T, VB, NV, false>(M, A, lda, std::min(K, kChunk), panel, out);
  }
  for (int64_t k0 = kChunk; k0 < K; k0 += kChunk) {
    packed_rows_chunk<T, VB, NV, true>(M, A + k0, lda, std::min(kChunk, K - k0), panel + k0 * W,
                                       out);
  }
}

// packed_rows_vb with the vector width of the running clone.
template <typename T, int NV>
__attribute__((always_inline)) inline void packed_rows(int64_t M, const T* A, int64_t lda,
                                                       int64_t K, const T* panel, T* out,
                                                       bool accumulate = false) {
  switch (cpu_vector_bytes()) {
    case 64: packed_rows_vb<T, 64, NV>(M, A, lda, K, panel, out, accumulate); break;
    case 32: packed_rows_vb<T, 32, NV>(M, A, lda, K, panel, out, accumulate); break;
    default: packed_rows_vb<T, 16, NV>(M, A, lda, K, panel, out, accumulate); break;
  }
}

// out (M, 4 * L) (+)= A @ panel for A packed in tiles of kPackedRows rows, tile t holding
// its rows' K values k-major (row r's value k at A[t * K * kPackedRows + k * kPackedRows + r]),
// so each step of k broadcasts from one contiguous run. M a multiple of kPackedRows. With
// AVX-512's tile only: its one caller runs where cpu_vector_bytes() == 64 (csrc/cpu_all_steps.h).
template <typename T, bool ACC>
FASTRNN_CPU_CLONES void packed_gemm4_tiles(int64_t M, const T* A, int64_t K, const T* panel,
                                           T* out) {
  constexpr int64_t W = 4 * kLanes<T>;
  for (int64_t m = 0; m < M; m += kPackedRows) {
    packed_tile<T, 64, kPackedRows, 4, ACC, kPackedRows>(A + m * K, 1, K, panel, W, out + m * W,
                                                         W);
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
