// The products of one recurrent step at a small batch (streaming, decoding), for the CPU:
// pre = x W_x^T + h W_h^T + bias_x + bias_h, with W_x (G, Kx) and W_h (G, Kh) in PyTorch's
// own row-major layout, as dot products of weight rows with x and h.
//
// Why not the recurrence's kernels or BLAS: at batch 1 a step is a matrix-vector product,
// bound by reading the weights once, so what matters is the bytes and the fixed costs.
// The recurrence reads W^T (transposed, packed), which for one step costs several steps'
// time to make (LSTM H=256: W_hh.t().contiguous() ~150 us) or a cache that a `param.data`
// write would leave silently stale (such writes do not bump the version counter). On
// GRU(64, 256), B=1, fp32, one core of an AVX-512 EPYC, this reads the 960 KB of weights
// in ~19.5 us (~50 GB/s), where MKL's two products took ~24-28 us; the same loop on W^T
// (axpy form) would take ~14 us, which is what a transposed copy would buy.
#pragma once

#include <algorithm>
#include <cstdint>

#include "fastrnn/common.h"

namespace fastrnn {

// Inlined into its (multi-versioned) caller, so it is compiled for the caller's ISA.
#if defined(__GNUC__)
#define FASTRNN_STEP_INLINE inline __attribute__((always_inline))
#else
#define FASTRNN_STEP_INLINE inline
#endif

// Lanes of one 64-byte vector.
template <typename T>
constexpr int64_t kStepLanes = 64 / sizeof(T);

// out[b][g + r] for rows r < kRows of a block starting at row g; see step_dot_rows.
template <int64_t kRows, typename T>
FASTRNN_STEP_INLINE void step_dot_block(int64_t g, int64_t B, const T* w_x, const T* x,
                                        int64_t Kx, const T* w_h, const T* h, int64_t Kh,
                                        const T* bias_x, const T* bias_h, T* out,
                                        int64_t ld_out) {
  constexpr int64_t kLanes = kStepLanes<T>;
  // Every batch row uses this block of weight rows while it is in L1.
  for (int64_t b = 0; b < B; ++b) {
    // kLanes partial sums per weight row (one vector register), reduced once at the end:
    // one horizontal sum per row for both products, where a dot product per part would
    // cost two.
    T acc[kRows][kLanes] = {};
    for (int part = 0; part < 2; ++part) {
      const T* w = part == 0 ? w_x : w_h;
      if (w == nullptr) continue;
      const int64_t K = part == 0 ? Kx : Kh;
      const T* v = part == 0 ? x + b * Kx : h + b * Kh;
      w += g * K;
      const int64_t K_vec = K - K % kLanes;
      for (int64_t k = 0; k < K_vec; k += kLanes) {
        for (int64_t r = 0; r < kRows; ++r) {
          const T* wr = w + r * K + k;
          FASTRNN_SIMD
          for (int64_t l = 0; l < kLanes; ++l) acc[r][l] += wr[l] * v[k + l];
        }
      }
      for (int64_t r = 0; r < kRows; ++r) {
        for (int64_t k = K_vec; k < K; ++k) acc[r][0] += w[r * K + k] * v[k];
      }
    }
    for (int64_t r = 0; r < kRows; ++r) {
      // Pairwise halving (a shuffle tree once vectorised), not a serial chain of adds.
      for (int64_t width = kLanes / 2; width > 0; width /= 2) {
        FASTRNN_SIMD
        for (int64_t l = 0; l < width; ++l) acc[r][l] += acc[r][l + width];
      }
      const T bias = (bias_x != nullptr ? bias_x[g + r] : T(0)) +
                     (bias_h != nullptr ? bias_h[g + r] : T(0));
      out[b * ld_out + g + r] = acc[r][0] + bias;
    }
  }
}

// Rows [g0, g1) of out (row b at out + b * ld_out) for the B rows of x (B, Kx) and h
// (B, Kh), both contiguous: out[b][g] = W_x[g] . x[b] + W_h[g] . h[b] + bias_x[g] +
// bias_h[g]. A null weight leaves its part out; a null bias adds 0.
template <typename T>
FASTRNN_CPU_CLONES void step_dot_rows(int64_t g0, int64_t g1, int64_t B, const T* w_x,
                                      const T* x, int64_t Kx, const T* w_h, const T* h,
                                      int64_t Kh, const T* bias_x, const T* bias_h, T* out,
                                      int64_t ld_out) {
  constexpr int64_t kRows = 4;
  int64_t g = g0;
  for (; g + kRows <= g1; g += kRows) {
    step_dot_block<kRows>(g, B, w_x, x, Kx, w_h, h, Kh, bias_x, bias_h, out, ld_out);
  }
  for (; g < g1; ++g) step_dot_block<1>(g, B, w_x, x, Kx, w_h, h, Kh, bias_x, bias_h, out, ld_out);
}

// step_dot_rows over rows [0, G), split over `parallel_for` in blocks of at least ~256K
// multiply-adds (what pays for waking a thread).
template <typename T, typename For = SerialFor>
void step_products(int64_t G, int64_t B, const T* w_x, const T* x, int64_t Kx, const T* w_h,
                   const T* h, int64_t Kh, const T* bias_x, const T* bias_h, T* out,
                   int64_t ld_out, const For& parallel_for = For()) {
  const int64_t K = (w_x != nullptr ? Kx : 0) + (w_h != nullptr ? Kh : 0);
  const int64_t grain = std::max<int64_t>(4, (int64_t(1) << 18) / std::max<int64_t>(1, B * K));
  parallel_for(0, G, grain, [&](int64_t g0, int64_t g1) {
    step_dot_rows(g0, g1, B, w_x, x, Kx, w_h, h, Kh, bias_x, bias_h, out, ld_out);
  });
}

}  // namespace fastrnn
