// Loop helpers shared by the CPU recurrences.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <thread>
#include <type_traits>
#include <vector>

#if defined(_OPENMP)
#include <omp.h>
#endif

#include "fastrnn/common.h"
#include "fastrnn/gemm.h"
#include "fastrnn/packed_gemm.h"

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

// A barrier for a team of threads that meets once per time step: spins briefly (a step is
// microseconds), then yields the core.
class SpinBarrier {
 public:
  explicit SpinBarrier(int n) : n_(n) {}
  void set_size(int n) { n_ = n; }
  void wait() {
    if (n_ <= 1) return;
    const int gen = gen_.load(std::memory_order_acquire);
    if (count_.fetch_add(1, std::memory_order_acq_rel) == n_ - 1) {
      count_.store(0, std::memory_order_relaxed);
      gen_.store(gen + 1, std::memory_order_release);
      return;
    }
    for (int spins = 0; gen_.load(std::memory_order_acquire) == gen; ++spins) {
      if (spins > 20000) std::this_thread::yield();
#if defined(__x86_64__) && defined(__GNUC__)
      else __builtin_ia32_pause();
#endif
    }
  }

 private:
  int n_;
  std::atomic<int> count_{0};
  std::atomic<int> gen_{0};
};

// Runs fn(tid, n, barrier) on a team of up to n threads (the caller is thread 0): one team
// for the whole recurrence, the threads meeting at the barrier once per step, instead of a
// parallel region per step. With OpenMP (the torch extension) the team comes from the same
// pool as torch's and MKL's threads, which are warm and would otherwise spin beside ours;
// a nested call gets fewer threads, so fn is told the team's real size.
template <typename F>
void run_team(int n, const F& fn) {
  SpinBarrier barrier(n);
  if (n <= 1) {
    fn(0, 1, barrier);
    return;
  }
#if defined(_OPENMP)
#pragma omp parallel num_threads(n)
  {
#pragma omp single
    barrier.set_size(omp_get_num_threads());
    // (the end of `single` is a barrier: every thread sees the size before using it)
    fn(omp_get_thread_num(), omp_get_num_threads(), barrier);
  }
#else
  std::vector<std::thread> threads;
  for (int tid = 1; tid < n; ++tid) threads.emplace_back([&, tid] { fn(tid, n, barrier); });
  fn(0, n, barrier);
  for (auto& th : threads) th.join();
#endif
}

// The thread count a `For` callable offers: its num_threads() where it has one, else 1.
template <typename For>
auto for_threads(const For& f, int) -> decltype(static_cast<int>(f.num_threads())) {
  return static_cast<int>(f.num_threads());
}
template <typename For>
int for_threads(const For&, long) {
  return 1;
}

// Threads for a per-step loop of `work` multiply-adds over `items` independent items: one
// per ~256K multiply-adds of a step (a smaller share does not pay for the barrier and the
// wake-ups), at most one per item.
template <typename For>
int team_size(const For& f, int64_t work, int64_t items) {
  const int64_t by_work = std::max<int64_t>(1, work / (int64_t(1) << 14));
  return static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>({static_cast<int64_t>(for_threads(f, 0)), by_work, items})));
}

// Packs W (G*H, K), row-major as PyTorch keeps it, and optionally W2 (G*H, K2), stacked
// below it along K, into H / L panels of L = kLanes<T> units x G gates (H a multiple of L):
// row k of panel p holds the units p*L .. p*L + L - 1 of each gate g at columns g*L .. g*L +
// L - 1, so a panel's product gives every gate of its units at once.
// Each panel row is written whole from the L weight rows of its units, read as L
// sequential streams (no transposed copy of W first, which cost two more passes).

template <typename T>
std::vector<T> pack_gate_panels(const T* w, int64_t K, int64_t H, int64_t G,
                                const T* w2 = nullptr, int64_t K2 = 0) {
  constexpr int64_t L = kLanes<T>;
  const int64_t W = G * L, rows = K + K2;
  std::vector<T> packed(static_cast<size_t>(rows * G * H));
  for (int64_t p = 0; p < H / L; ++p) {
    T* panel = packed.data() + p * rows * W;
    for (int64_t g = 0; g < G; ++g) {
      const T* rows1 = w + (g * H + p * L) * K;   // the L weight rows of these units
      const T* rows2 = w2 ? w2 + (g * H + p * L) * K2 : nullptr;
      for (int64_t k = 0; k < rows; ++k) {
        T* dst = panel + k * W + g * L;
        if (k < K) {
          for (int64_t l = 0; l < L; ++l) dst[l] = rows1[l * K + k];
        } else {
          for (int64_t l = 0; l < L; ++l) dst[l] = rows2[l * K2 + (k - K)];
        }
      }
    }
  }
  return packed;
}

// Packs B (K, N) into ceil(N / W) column panels of W columns (K x W each, contiguous); the
// columns of the last panel past N are zero, so any N runs on the panel kernels.
template <typename T>
std::vector<T> pack_column_panels(const T* B, int64_t K, int64_t N, int64_t W) {
  const int64_t panels = (N + W - 1) / W;
  std::vector<T> packed(static_cast<size_t>(K * panels * W), T(0));
  for (int64_t p = 0; p < panels; ++p) {
    const int64_t cols = std::min(W, N - p * W);
    T* dst = packed.data() + p * K * W;
    for (int64_t k = 0; k < K; ++k) std::copy(B + k * N + p * W, B + k * N + p * W + cols, dst + k * W);
  }
  return packed;
}

// The loop every packed recurrence runs: `steps` steps over `panels` column panels, the
// panels split over a thread team (sized by `work`, the multiply-adds of one step) that
// meets once per step, since step s + 1 reads what every panel wrote at step s. Per step,
// step_fn(s, p) runs for each panel p of the thread's share.
template <typename For, typename F>
void run_panel_steps(const For& parallel_for, int64_t steps, int64_t panels, int64_t work,
                     const F& step_fn) {
  const int team = team_size(parallel_for, work, panels);
  run_team(team, [&](int tid, int n, SpinBarrier& barrier) {
    const int64_t p0 = panels * tid / n, p1 = panels * (tid + 1) / n;
    for (int64_t s = 0; s < steps; ++s) {
      for (int64_t p = p0; p < p1; ++p) step_fn(s, p);
      barrier.wait();
    }
  });
}

// C (M, N) = A (M, K) @ B (K, N), all row-major and contiguous, N a multiple of
// 4 * kLanes<T>: B packed into column panels, rows in blocks that stay in L2 with a panel,
// the blocks split over a thread team. For the large products over all steps.
template <typename T, typename For>
void packed_matmul(int64_t M, int64_t N, int64_t K, const T* A, const T* B, T* C,
                   const For& parallel_for) {
  constexpr int64_t W = 4 * kLanes<T>, kRowBlock = 32;
  const int64_t panels = N / W;
  const std::vector<T> packed = pack_column_panels(B, K, N, W);
  const int64_t blocks = (M + kRowBlock - 1) / kRowBlock;
  const int team = team_size(parallel_for, M * N * K, blocks);
  run_team(team, [&](int tid, int n, SpinBarrier&) {
    std::vector<T> out(static_cast<size_t>(kRowBlock * W));
    for (int64_t blk = blocks * tid / n; blk < blocks * (tid + 1) / n; ++blk) {
      const int64_t r0 = blk * kRowBlock, rows = std::min(kRowBlock, M - r0);
      for (int64_t p = 0; p < panels; ++p) {
        packed_gemm4(rows, A + r0 * K, K, K, packed.data() + p * K * W, out.data());
        for (int64_t r = 0; r < rows; ++r) {
          std::copy(out.data() + r * W, out.data() + (r + 1) * W, C + (r0 + r) * N + p * W);
        }
      }
    }
  });
}

// C (M, N) = A^T B for A (K, M) and B (K, N), row-major and contiguous, M a multiple of
// kPackedRows: the weight gradients dgates^T [x, h] of all steps, K = T * B. A's columns
// are read in place nowhere: rows of a gate-gradient matrix are 4H apart, so one column's
// values would all fall in one L1 set. Per chunk of kChunk rows of K, each thread packs its
// tiles of A (K-major within a tile) and the chunk's panels of B, and accumulates its rows
// of C panel by panel; the threads split the tiles.
template <typename T, typename For>
void packed_matmul_tn(int64_t M, int64_t N, int64_t K, const T* A, const T* B, T* C,
                      const For& parallel_for) {
  constexpr int64_t W = 4 * kLanes<T>, R = kPackedRows;
  // A panel chunk of kChunk x W stays in L1 while every tile uses it.
  constexpr int64_t kChunk = kPackedChunkBytes / (W * static_cast<int64_t>(sizeof(T)));
  const int64_t panels = (N + W - 1) / W, tiles = M / R;
  const int team = team_size(parallel_for, M * N * K, tiles);
  run_team(team, [&](int tid, int n, SpinBarrier&) {
    const int64_t t0 = tiles * tid / n, rows = (tiles * (tid + 1) / n - t0) * R;
    std::vector<T> a_tiles(static_cast<size_t>(rows * kChunk));
    std::vector<T> b_panels(static_cast<size_t>(panels * kChunk * W), T(0));
    std::vector<T> out(static_cast<size_t>(panels * rows * W));
    for (int64_t k0 = 0; k0 < K; k0 += kChunk) {
      const int64_t kk = std::min(kChunk, K - k0);
      for (int64_t k = 0; k < kk; ++k) {
        const T* a_row = A + (k0 + k) * M + t0 * R;
        for (int64_t t = 0; t < rows / R; ++t) {
          std::copy(a_row + t * R, a_row + (t + 1) * R, a_tiles.data() + (t * kk + k) * R);
        }
        const T* b_row = B + (k0 + k) * N;
        for (int64_t p = 0; p < panels; ++p) {
          std::copy(b_row + p * W, b_row + std::min(N, (p + 1) * W),
                    b_panels.data() + (p * kk + k) * W);
        }
      }
      for (int64_t p = 0; p < panels; ++p) {
        T* o = out.data() + p * rows * W;
        if (k0 == 0) {
          packed_gemm4_tiles<T, false>(rows, a_tiles.data(), kk, b_panels.data() + p * kk * W, o);
        } else {
          packed_gemm4_tiles<T, true>(rows, a_tiles.data(), kk, b_panels.data() + p * kk * W, o);
        }
      }
    }
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t p = 0; p < panels; ++p) {
        const T* o = out.data() + (p * rows + r) * W;
        std::copy(o, o + std::min(W, N - p * W), C + (t0 * R + r) * N + p * W);
      }
    }
  });
}

// Copies a block of `rows` outputs of one gate panel, out (rows, G * L), into their places
// in gates (rows, G * H) at units [j0, j0 + L), adding the bias (G * H) when given.
template <typename T>
FASTRNN_CPU_CLONES void store_gate_panel(int64_t rows, int64_t G, const T* out, const T* bias,
                                         T* gates, int64_t j0, int64_t H) {
  constexpr int64_t L = kLanes<T>;
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t g = 0; g < G; ++g) {
      const T* o = out + (r * G + g) * L;
      T* q = gates + r * G * H + g * H + j0;
      if (bias) {
        const T* bg = bias + g * H + j0;
        FASTRNN_SIMD
        for (int64_t l = 0; l < L; ++l) q[l] = o[l] + bg[l];
      } else {
        std::copy(o, o + L, q);
      }
    }
  }
}

// The input projection of G gates (3 or 4), gates (N, G * H) = x (N, I) W_ih^T + bias, on
// the packed kernel: W_ih (G * H, I) packed into panels of kLanes<T> units x G gates, rows
// in blocks that stay in L2 with one panel, split over a thread team. bias (G * H) may be
// null; H must be a multiple of kLanes<T>.
template <typename T, typename For>
void input_gates_packed(int64_t N, int64_t I, int64_t H, int64_t G, const T* x, const T* w_ih,
                        const T* bias, T* gates, const For& parallel_for) {
  constexpr int64_t L = kLanes<T>, kRowBlock = 64;
  const int64_t panels = H / L, W = G * L;
  std::vector<T> packed(static_cast<size_t>(G * H * I));
  for (int64_t p = 0; p < panels; ++p) {
    T* dst = packed.data() + p * I * W;
    for (int64_t g = 0; g < G; ++g) {
      for (int64_t l = 0; l < L; ++l) {
        const T* src = w_ih + (g * H + p * L + l) * I;
        for (int64_t k = 0; k < I; ++k) dst[k * W + g * L + l] = src[k];
      }
    }
  }
  const int64_t blocks = (N + kRowBlock - 1) / kRowBlock;
  const int team = team_size(parallel_for, N * I * G * H, blocks);
  run_team(team, [&](int tid, int n, SpinBarrier&) {
    std::vector<T> out(static_cast<size_t>(kRowBlock * W));
    for (int64_t blk = blocks * tid / n; blk < blocks * (tid + 1) / n; ++blk) {
      const int64_t r0 = blk * kRowBlock, rows = std::min(kRowBlock, N - r0);
      for (int64_t p = 0; p < panels; ++p) {
        const T* panel = packed.data() + p * I * W;
        if (G == 4) {
          packed_gemm4(rows, x + r0 * I, I, I, panel, out.data());
        } else {
          packed_gemm3(rows, x + r0 * I, I, I, panel, out.data());
        }
        store_gate_panel(rows, G, out.data(), bias, gates + r0 * G * H, p * L, H);
      }
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
