// Sort-free sampling of one logits row on the CPU: temperature, top-k, top-p, min-p and
// greedy, with the semantics of fastrnn/ops/sampling/reference.py (DESIGN.md section 3).
// Torch-free; the binding (csrc/sampling.cpp) runs rows in parallel, one Workspace each.
// A row is one call, with no temporary tensors: its logits are read for the max and again
// (from cache) for the exponentials; everything after works on the row's probabilities in
// the thread's workspace, which stays in cache.
//
// Per row, over its V logits:
//   1. scan: max, first argmax, NaN / +inf / all -inf status;
//   2. e_j = exp((l_j - max) / T), rounded to float from a double exp, 0 on -inf logits,
//      and Z = sum(e) in double rounded to float; p_j = e_j / Z. These are the reference's
//      probabilities step for step, so the kept sets match it bit for bit;
//   3. each filter keeps the tokens with p at or above a threshold. Probabilities are
//      non-negative floats, so their bit patterns order like the values, and a threshold
//      is found by radix selection on those bits: a weighted histogram of the top bits
//      (a count for top-k, a double mass for top-p), then the same inside the one bucket
//      that holds it. Exact whatever the ties; nothing is sorted. One difference from
//      the reference remains possible: top-p masses are float64 sums in another order
//      than its sorted prefix sums (both exact when every survivor has p >= 2^-29), so a
//      token whose mass above lies within float64 rounding of top_p * Z could differ;
//   4. the draw: the first kept token, in index order, whose running double mass exceeds
//      u * (kept mass), summed in index order as the vectorised path's cumsum does, so a
//      shared uniform gives the same token.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "fastrnn/common.h"

// Vectorised reductions (with -fopenmp or -fopenmp-simd; the loops stay correct without).
#if defined(_OPENMP) || defined(FASTRNN_OPENMP_SIMD)
#define FASTRNN_STRINGIFY(x) #x
#define FASTRNN_SIMD_REDUCE(clauses) _Pragma(FASTRNN_STRINGIFY(omp simd clauses))
#else
#define FASTRNN_SIMD_REDUCE(clauses)
#endif

namespace fastrnn::sampling {

// Row status codes, as fastrnn/ops/sampling/op.py's STATUS.
enum Status : int32_t { kOk = 0, kNaN = 1, kPosInf = 2, kNoFinite = 3 };

struct RowParams {
  float temperature;  // 0 greedy, > 0 (float32 tiny or more), or +inf
  int64_t top_k;      // in [1, V]; V disables
  double top_p;       // in (0, 1]; 1 disables
  float min_p;        // in [0, 1]; 0 disables
};

// Per-thread scratch, reused across rows and calls (it only grows).
struct Workspace {
  std::vector<float> probs;      // p of the row
  std::vector<uint32_t> bits;    // bit patterns inside the bucket being refined
  std::vector<int32_t> list_a, list_b;  // candidate token indices, in index order
  std::vector<int32_t> kept;     // kept token indices, in index order
  double histograms[4 << 10];    // first_digit_histogram's interleaved copies
  void reserve(int64_t V) {
    if (static_cast<int64_t>(probs.size()) < V) {
      probs.resize(V);
      bits.resize(V);
      list_a.resize(V);
      list_b.resize(V);
      kept.resize(V);
    }
  }
};

inline uint32_t float_bits(float x) {
  uint32_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
}

// exp(x) for x <= 0 (NaN and x < -110 give a value that rounds to float 0), in double
// with about 1 ulp of error; written without a libm call so that loops over it vectorise.
// Cody-Waite reduction x = k ln2 + r, |r| <= ln2 / 2 (fdlibm's split of ln2), then the
// Taylor series of exp(r) to degree 13 (the next term is below 5e-18). Always inlined: as
// a call (GCC kept it out of line in the target_clones callers) the loop over a row does
// not vectorise, and the exponentials were 38% of a 1 x 128256 top-p draw.
__attribute__((always_inline)) inline double exp_nonpositive(double x) {
  x = x > -110.0 ? x : -110.0;
  const double shifter = 6755399441055744.0;  // 1.5 * 2^52: adding it rounds to an integer
  double kd = x * 1.4426950408889634 + shifter;
  int64_t k_bits;
  std::memcpy(&k_bits, &kd, sizeof k_bits);
  kd -= shifter;
  double r = x - kd * 6.93147180369123816490e-01;
  r = r - kd * 1.90821492927058770002e-10;
  double p = 1.0 / 6227020800.0;
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  // 2^k from the integer k held in the low bits of the shifted value (k in [-159, 0]).
  const int64_t scale_bits = (k_bits - 0x4338000000000000LL + 1023) << 52;
  double scale;
  std::memcpy(&scale, &scale_bits, sizeof scale);
  return p * scale;
}

struct RowScan {
  float max;
  int32_t status;
};

// The comparison type of a row's max: double logits keep their precision (the greedy
// argmax is taken on them, as torch.argmax does), the others compare as float exactly.
template <typename T>
using MaxType = std::conditional_t<std::is_same_v<T, double>, double, float>;

// Max (NaN ignored) and whether the row holds a NaN.
template <typename T>
FASTRNN_CPU_CLONES MaxType<T> row_max(const T* row, int64_t V, bool* has_nan) {
  MaxType<T> best = -std::numeric_limits<MaxType<T>>::infinity();
  int nan = 0;
  FASTRNN_SIMD_REDUCE(reduction(max : best) reduction(| : nan))
  for (int64_t j = 0; j < V; ++j) {
    const MaxType<T> v = static_cast<MaxType<T>>(row[j]);
    nan |= v != v;
    best = v > best ? v : best;
  }
  *has_nan = nan != 0;
  return best;
}

// The row's max as float and its status (op.py's STATUS).
template <typename T>
RowScan scan_row(const T* row, int64_t V) {
  bool nan = false;
  const float max = static_cast<float>(row_max(row, V, &nan));
  int32_t status = kOk;
  if (nan) {
    status = kNaN;
  } else if (max == std::numeric_limits<float>::infinity()) {
    status = kPosInf;
  } else if (max == -std::numeric_limits<float>::infinity()) {
    status = kNoFinite;
  }
  return {max, status};
}

// The first index of the row's maximum (a usable row: no NaN).
template <typename T>
int64_t first_argmax(const T* row, int64_t V) {
  bool nan = false;
  const MaxType<T> best = row_max(row, V, &nan);
  int64_t j = 0;
  while (static_cast<MaxType<T>>(row[j]) != best) ++j;
  return j;
}

// e_j = exp((l_j - max) / T) into `out` (reference.probabilities' rounding: the division
// in float, the exp in double rounded to float); returns Z = sum(e) in double, rounded to
// float.
template <typename T>
FASTRNN_CPU_CLONES float exponentials(const T* row, int64_t V, float max, float temperature,
                                      float* out) {
  double total = 0.0;
  FASTRNN_SIMD_REDUCE(reduction(+ : total))  // Z is rounded to float: order is free
  for (int64_t j = 0; j < V; ++j) {
    const float v = static_cast<float>(row[j]);
    const float shifted = (v - max) / temperature;
    // -inf logits stay at 0 even where T = +inf makes shifted = -inf / inf = NaN.
    const float e = v == -std::numeric_limits<float>::infinity()
                        ? 0.0f
                        : static_cast<float>(exp_nonpositive(static_cast<double>(shifted)));
    out[j] = e;
    total += e;
  }
  return static_cast<float>(total);
}

// p_j = e_j / Z, an IEEE division as the reference's (no reciprocal).
FASTRNN_CPU_CLONES inline void normalise(float* p, int64_t V, float total) {
  FASTRNN_SIMD
  for (int64_t j = 0; j < V; ++j) p[j] = p[j] / total;
}

// The radix digits of a probability's bit pattern (p <= 1.0f = 0x3F800000 < 2^30),
// most significant first: bits 29..20, 19..10, 9..0.
constexpr int kDigitBits = 10;
constexpr int kBuckets = 1 << kDigitBits;
constexpr int kLevels = 3;

inline uint32_t digit(uint32_t bits, int level) {
  return (bits >> (kDigitBits * (kLevels - 1 - level))) & (kBuckets - 1);
}

inline float bits_float(uint32_t b) {
  float x;
  std::memcpy(&x, &b, sizeof x);
  return x;
}

// The tokens a selection looks at, in index order: the whole row, or a list of indices.
struct Source {
  const int32_t* index;  // nullptr: tokens 0 .. n - 1
  int64_t n;
  int64_t at(int64_t i) const { return index == nullptr ? i : index[i]; }
};

// The first digit's weighted histogram (a count, or with kMass a double mass) of the
// eligible probabilities among `src` (bits >= floor), into `hist`. Neighbouring tokens
// mostly share a bucket, so the adds go to kCopies interleaved histograms: consecutive
// updates of one bucket would otherwise wait on each other.
template <bool kMass>
void first_digit_histogram(const float* p, const Source& src, uint32_t floor, double* hist,
                           Workspace& ws) {
  constexpr int kCopies = 4;
  double* copies = ws.histograms;
  std::fill(copies, copies + kCopies * kBuckets, 0.0);
  auto add = [&](int c, int64_t j) {
    const uint32_t b = float_bits(p[j]);
    const double w = b >= floor ? (kMass ? static_cast<double>(p[j]) : 1.0) : 0.0;
    copies[c * kBuckets + digit(b, 0)] += w;
  };
  int64_t i = 0;
  for (; i + kCopies <= src.n; i += kCopies) {
    for (int c = 0; c < kCopies; ++c) add(c, src.at(i + c));
  }
  for (; i < src.n; ++i) add(0, src.at(i));
  for (int d = 0; d < kBuckets; ++d) {
    double sum = 0.0;
    for (int c = 0; c < kCopies; ++c) sum += copies[c * kBuckets + d];
    hist[d] = sum;
  }
}

// The lowest non-empty bucket whose weight above (outside + the buckets above it) is still
// below the bound, and that weight; -1 when there is none.
inline int choose_bucket(const double* hist, double outside, double bound, double* above_it) {
  int chosen = -1;
  double above = outside;
  for (int d = kBuckets - 1; d >= 0; --d) {
    if (hist[d] <= 0.0) continue;
    if (!(above < bound)) break;
    chosen = d;
    *above_it = above;
    above += hist[d];
  }
  return chosen;
}

// A threshold and the tokens that can pass it: every token of the row with
// bits(p) >= threshold is in `candidates` (in index order).
struct Selection {
  uint32_t threshold;
  Source candidates;
};

// The bit pattern of the smallest value v among the eligible probabilities of `src`
// (bits >= floor) whose weight strictly above it is < the bound: a count, bound = limit
// (top-k: limit = k), or with kMass a double mass, bound = limit * (eligible mass) (top-p:
// limit = top_p). Such a value exists for a positive bound (the largest value has nothing
// above it); zero-weight buckets are never selected. The candidates (written to `list`)
// are the eligible tokens whose first digit is at least the threshold's.
template <bool kMass>
Selection radix_select(const float* p, const Source& src, uint32_t floor, double limit,
                       int32_t* list, Workspace& ws) {
  double hist[kBuckets];
  first_digit_histogram<kMass>(p, src, floor, hist, ws);
  double bound = limit;
  if (kMass) {
    double eligible = 0.0;
    for (int d = 0; d < kBuckets; ++d) eligible += hist[d];
    bound = limit * eligible;
  }
  double outside = 0.0;  // weight of the eligible values above the chosen bucket
  int chosen = choose_bucket(hist, 0.0, bound, &outside);
  if (chosen < 0) return {floor, src};  // cannot happen for a positive bound
  uint32_t prefix = static_cast<uint32_t>(chosen);
  // Branch-free appends: whether a token is inside is unpredictable near the threshold.
  // (`&`, not `&&`: GCC turned `eligible && ...` into a branch, mispredicted for about half
  // of a 32000-token row's tokens, most of that row's top-p time.) The values inside the
  // chosen bucket go to ws.bits for the next digits.
  int64_t m = 0, n = 0;
  for (int64_t i = 0; i < src.n; ++i) {
    const int64_t j = src.at(i);
    const uint32_t b = float_bits(p[j]);
    const int64_t eligible = b >= floor;
    list[m] = static_cast<int32_t>(j);
    m += eligible & static_cast<int64_t>(digit(b, 0) >= prefix);
    ws.bits[n] = b;
    n += eligible & static_cast<int64_t>(digit(b, 0) == prefix);
  }
  for (int level = 1; level < kLevels; ++level) {
    std::fill(hist, hist + kBuckets, 0.0);
    for (int64_t i = 0; i < n; ++i) {
      const uint32_t b = ws.bits[i];
      hist[digit(b, level)] += kMass ? static_cast<double>(bits_float(b)) : 1.0;
    }
    chosen = choose_bucket(hist, outside, bound, &outside);
    prefix = (prefix << kDigitBits) | static_cast<uint32_t>(chosen);
    if (level + 1 == kLevels) break;
    const int shift = kDigitBits * (kLevels - 1 - level);
    int64_t kept = 0;
    for (int64_t i = 0; i < n; ++i) {
      const uint32_t b = ws.bits[i];
      ws.bits[kept] = b;
      kept += (b >> shift) == prefix;
    }
    n = kept;
  }
  return {prefix, {list, m}};
}

// The kept set's threshold (token j is kept iff bits(p_j) >= it) and its candidates.
inline Selection kept_threshold(const float* p, int64_t V, const RowParams& prm, float p_max,
                                Workspace& ws) {
  Selection s{0, {nullptr, V}};
  if (prm.top_k < V) {
    s = radix_select<false>(p, s.candidates, 0, static_cast<double>(prm.top_k),
                            ws.list_a.data(), ws);
  }
  if (prm.top_p < 1.0) {
    // Z of top-p is the mass of the top-k survivors: the eligible mass above s.threshold.
    int32_t* list = s.candidates.index == ws.list_a.data() ? ws.list_b.data() : ws.list_a.data();
    const Selection by_p = radix_select<true>(p, s.candidates, s.threshold, prm.top_p, list, ws);
    s = {by_p.threshold > s.threshold ? by_p.threshold : s.threshold, by_p.candidates};
  }
  if (prm.min_p > 0.0f) {
    const uint32_t by_min = float_bits(prm.min_p * p_max);
    s.threshold = by_min > s.threshold ? by_min : s.threshold;
  }
  return s;
}

// The row's probabilities in ws.probs, its kept threshold and candidates; the row must be
// usable and not greedy.
template <typename T>
Selection filter_row(const T* row, int64_t V, const RowScan& scan, const RowParams& prm,
                     Workspace& ws) {
  ws.reserve(V);
  float* p = ws.probs.data();
  const float total = exponentials(row, V, scan.max, prm.temperature, p);
  normalise(p, V, total);
  // The maximum has e = exp(0) = 1 exactly, so max(p) = 1 / Z.
  return kept_threshold(p, V, prm, 1.0f / total, ws);
}

// The kept set of one row as bools (all false when the row is unusable).
template <typename T>
int32_t kept_mask_row(const T* row, int64_t V, const RowParams& prm, bool* mask,
                      Workspace& ws) {
  const RowScan scan = scan_row(row, V);
  std::fill(mask, mask + V, false);
  if (scan.status != kOk) return scan.status;
  if (prm.temperature == 0.0f) {
    mask[first_argmax(row, V)] = true;
    return kOk;
  }
  const uint32_t threshold = filter_row(row, V, scan, prm, ws).threshold;
  const float* p = ws.probs.data();
  for (int64_t j = 0; j < V; ++j) mask[j] = float_bits(p[j]) >= threshold;
  return kOk;
}

// One token drawn from the kept set with the uniform u in [0, 1) (-1 when the row is
// unusable); returns the status.
template <typename T>
int32_t sample_row(const T* row, int64_t V, const RowParams& prm, double u, int64_t* token,
                   Workspace& ws) {
  const RowScan scan = scan_row(row, V);
  *token = -1;
  if (scan.status != kOk) return scan.status;
  if (prm.temperature == 0.0f) {
    *token = first_argmax(row, V);
    return kOk;
  }
  const Selection s = filter_row(row, V, scan, prm, ws);
  const float* p = ws.probs.data();
  // Kept tokens with p > 0 (the draw's support) and their mass, in index order (appended
  // branch-free, as in radix_select).
  int64_t n = 0;
  double mass = 0.0;
  for (int64_t i = 0; i < s.candidates.n; ++i) {
    const int64_t j = s.candidates.at(i);
    ws.kept[n] = static_cast<int32_t>(j);
    n += static_cast<int64_t>(float_bits(p[j]) >= s.threshold) & static_cast<int64_t>(p[j] > 0.0f);
  }
  for (int64_t i = 0; i < n; ++i) mass += p[ws.kept[i]];
  const double target = u * mass;
  double running = 0.0;
  // Rounding can leave the target at the very end of the row: stay on a kept token.
  *token = ws.kept[n - 1];
  for (int64_t i = 0; i < n; ++i) {
    running += p[ws.kept[i]];
    if (running > target) {
      *token = ws.kept[i];
      break;
    }
  }
  return kOk;
}

}  // namespace fastrnn::sampling
