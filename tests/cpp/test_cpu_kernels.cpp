// Unit tests of the torch-free CPU kernels (csrc/include/fastrnn/*.h), run by ctest.
//
// The forward recurrences are checked against a naive loop written here from the
// definitions (std::exp / std::tanh in double); the backward recurrences against central
// finite differences of the naive loop's loss sum(y*gy) + sum(h_T*ghT) [+ sum(c_T*gcT)].
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "fastrnn/gru_cpu.h"
#include "fastrnn/lstm_cpu.h"
#include "fastrnn/rnn_cpu.h"
#include "fastrnn/step_cpu.h"

namespace {

using fastrnn::GruBackward;
using fastrnn::GruForward;
using fastrnn::LstmBackward;
using fastrnn::LstmForward;
using Vec = std::vector<double>;
int failures = 0;

void expect_close(const std::string& what, double actual, double expected, double tol) {
  const double err = std::fabs(actual - expected);
  if (!(err <= tol * (1.0 + std::fabs(expected)))) {
    if (failures < 20) {
      std::printf("FAIL %s: got %.10g, expected %.10g\n", what.c_str(), actual, expected);
    }
    ++failures;
  }
}

Vec random_vec(std::mt19937& gen, size_t n, double scale = 0.5) {
  std::normal_distribution<double> dist(0.0, scale);
  Vec v(n);
  for (auto& e : v) e = dist(gen);
  return v;
}

double sig(double x) { return 1.0 / (1.0 + std::exp(-x)); }

struct Case {
  int64_t T, B, H, P;
  bool proj;
  bool lengths;
};

// Per-row lengths 1, 3, 5, ... (mod T) when the case has lengths, else none.
std::vector<int64_t> case_lengths(const Case& c) {
  std::vector<int64_t> lengths;
  for (int64_t b = 0; c.lengths && b < c.B; ++b) lengths.push_back(1 + (b * 2) % c.T);
  return lengths;
}

std::string case_name(const std::string& cell, const Case& c) {
  return cell + " T=" + std::to_string(c.T) + " B=" + std::to_string(c.B) + " H=" +
         std::to_string(c.H) + (c.proj ? " proj" : "") + (c.lengths ? " lengths" : "");
}

// Step t of a naive loop: rows still active emit h_new (width per row) and keep it as
// their state; rows past their length emit zeros and keep the state they had.
void commit_step(const std::vector<int64_t>& lengths, int64_t t, int64_t B, int64_t width,
                 const Vec& h_new, Vec* h, Vec* y) {
  for (int64_t b = 0; b < B; ++b) {
    const bool active = lengths.empty() || t < lengths[b];
    for (int64_t q = 0; q < width; ++q) {
      (*y)[(t * B + b) * width + q] = active ? h_new[b * width + q] : 0.0;
      if (active) (*h)[b * width + q] = h_new[b * width + q];
    }
  }
}

// The header forward in fp64 and fp32 against the naive loop's output.
void expect_forward(const std::string& name, const Vec& got_d, const Vec& got_f,
                    const Vec& expected) {
  for (size_t i = 0; i < expected.size(); ++i) {
    expect_close(name + " forward fp64 [" + std::to_string(i) + "]", got_d[i], expected[i], 1e-12);
    expect_close(name + " forward fp32 [" + std::to_string(i) + "]", got_f[i], expected[i], 2e-6);
  }
}

double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

// A gradient against central differences of the loss dot(naive(params), weights) in one
// field of the parameters.
template <typename Params, typename Naive>
void expect_finite_differences(const std::string& name, const Params& p, Vec Params::*field,
                               const std::vector<double>& grad, const char* what,
                               const Vec& weights, const Naive& naive) {
  const double eps = 1e-6;
  for (size_t i = 0; i < grad.size(); ++i) {
    Params plus = p, minus = p;
    (plus.*field)[i] += eps;
    (minus.*field)[i] -= eps;
    const double fd = (dot(naive(plus), weights) - dot(naive(minus), weights)) / (2 * eps);
    expect_close(name + " " + what + "[" + std::to_string(i) + "]", grad[i], fd, 1e-6);
  }
}

// ---- LSTM -----------------------------------------------------------------------------

struct LstmParams {
  Vec xg;    // (T, B, 4H): x W_ih^T + biases
  Vec h0, c0;
  Vec w_hh;  // (4H, P)
  Vec w_hr;  // (P, H) or empty
  std::vector<int64_t> lengths;
};

// The naive LSTM: returns y (T,B,P) followed by h_T (B,P) and c_T (B,H).
Vec naive_lstm(const Case& c, const LstmParams& p) {
  const int64_t T = c.T, B = c.B, H = c.H, P = c.P;
  Vec h = p.h0, cs = p.c0, y(T * B * P, 0.0);
  for (int64_t t = 0; t < T; ++t) {
    Vec h_new(B * P), c_new(B * H), hid(B * H);
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t j = 0; j < H; ++j) {
        double g4[4];
        for (int k = 0; k < 4; ++k) {
          double s = p.xg[(t * B + b) * 4 * H + k * H + j];
          for (int64_t q = 0; q < P; ++q) s += h[b * P + q] * p.w_hh[(k * H + j) * P + q];
          g4[k] = s;
        }
        const double i = sig(g4[0]), f = sig(g4[1]), g = std::tanh(g4[2]), o = sig(g4[3]);
        c_new[b * H + j] = f * cs[b * H + j] + i * g;
        hid[b * H + j] = o * std::tanh(c_new[b * H + j]);
      }
      for (int64_t q = 0; q < P; ++q) {
        double v = hid[b * H + q];
        if (c.proj) {
          v = 0;
          for (int64_t j = 0; j < H; ++j) v += p.w_hr[q * H + j] * hid[b * H + j];
        }
        h_new[b * P + q] = v;
      }
    }
    commit_step(p.lengths, t, B, P, h_new, &h, &y);
    for (int64_t b = 0; b < B; ++b) {
      const bool active = p.lengths.empty() || t < p.lengths[b];
      for (int64_t j = 0; j < H && active; ++j) cs[b * H + j] = c_new[b * H + j];
    }
  }
  y.insert(y.end(), h.begin(), h.end());
  y.insert(y.end(), cs.begin(), cs.end());
  return y;
}

template <typename T>
std::vector<T> cast(const Vec& v) {
  return std::vector<T>(v.begin(), v.end());
}

Vec transpose(const Vec& m, int64_t rows, int64_t cols) {
  Vec out(m.size());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t q = 0; q < cols; ++q) out[q * rows + r] = m[r * cols + q];
  return out;
}

// Runs the header forward in precision T; returns y, h_T, c_T concatenated, and the workspace.
template <typename T>
Vec header_lstm_forward(const Case& c, const LstmParams& p, std::vector<T>* workspace) {
  const int64_t TT = c.T, B = c.B, H = c.H, P = c.P;
  auto gates = cast<T>(p.xg), h0 = cast<T>(p.h0), c0 = cast<T>(p.c0);
  auto w_hh_t = cast<T>(transpose(p.w_hh, 4 * H, P));
  auto w_hr_t = cast<T>(c.proj ? transpose(p.w_hr, P, H) : Vec());
  std::vector<T> y(TT * B * P), h_n(B * P), c_n(B * H), hidden(B * H);
  workspace->assign(TT * B * 5 * H, T(0));
  LstmForward<T> a{{TT, B, H, P}, gates.data(), h0.data(), c0.data(), w_hh_t.data(),
                   c.proj ? w_hr_t.data() : nullptr, p.lengths.empty() ? nullptr : p.lengths.data(),
                   y.data(), h_n.data(), c_n.data(), workspace->data(), hidden.data()};
  auto w_hh = cast<T>(p.w_hh);   // what the packed path packs
  a.w_hh = w_hh.data();
  lstm_forward(a, fastrnn::HeaderGemm<>(), fastrnn::SerialFor());
  Vec out(y.begin(), y.end());
  out.insert(out.end(), h_n.begin(), h_n.end());
  out.insert(out.end(), c_n.begin(), c_n.end());
  return out;
}

LstmParams make_lstm(std::mt19937& gen, const Case& c) {
  LstmParams p;
  p.xg = random_vec(gen, c.T * c.B * 4 * c.H);
  p.h0 = random_vec(gen, c.B * c.P);
  p.c0 = random_vec(gen, c.B * c.H);
  p.w_hh = random_vec(gen, 4 * c.H * c.P);
  if (c.proj) p.w_hr = random_vec(gen, c.P * c.H);
  p.lengths = case_lengths(c);
  return p;
}

void test_lstm(const Case& c, unsigned seed) {
  std::mt19937 gen(seed);
  const LstmParams p = make_lstm(gen, c);
  const std::string name = case_name("lstm", c);
  const Vec expected = naive_lstm(c, p);
  std::vector<double> ws_d;
  std::vector<float> ws_f;
  const Vec got_d = header_lstm_forward<double>(c, p, &ws_d);
  const Vec got_f = header_lstm_forward<float>(c, p, &ws_f);
  expect_forward(name, got_d, got_f, expected);

  // Backward (fp64) against finite differences of the naive loss.
  const int64_t T = c.T, B = c.B, H = c.H, P = c.P;
  const Vec weights = random_vec(gen, expected.size(), 1.0);  // gy, ghT, gcT in one vector
  const Vec gy(weights.begin(), weights.begin() + T * B * P);
  const Vec ghT(weights.begin() + T * B * P, weights.begin() + T * B * P + B * P);
  const Vec gcT(weights.begin() + T * B * P + B * P, weights.end());
  std::vector<double> dgates(T * B * 4 * H), dh0(B * P), dc0(B * H), dy(T * B * P),
      dhidden(B * H), dh_next(B * P);
  LstmBackward<double> a{{T, B, H, P}, gy.data(), ghT.data(), gcT.data(), p.c0.data(),
                         p.w_hh.data(), c.proj ? p.w_hr.data() : nullptr,
                         p.lengths.empty() ? nullptr : p.lengths.data(), ws_d.data(),
                         dgates.data(), dh0.data(), dc0.data(), c.proj ? dy.data() : nullptr,
                         dhidden.data(), dh_next.data()};
  lstm_backward(a, fastrnn::HeaderGemm<>(), fastrnn::SerialFor());
  auto naive = [&](const LstmParams& q) { return naive_lstm(c, q); };
  expect_finite_differences(name, p, &LstmParams::xg, dgates, "dgates", weights, naive);
  expect_finite_differences(name, p, &LstmParams::h0, dh0, "dh0", weights, naive);
  expect_finite_differences(name, p, &LstmParams::c0, dc0, "dc0", weights, naive);
}

// ---- GRU ------------------------------------------------------------------------------

struct GruParams {
  Vec xg;    // (T, B, 3H): x W_ih^T + b_ih
  Vec h0;
  Vec w_hh;  // (3H, H)
  Vec b_hh;  // (3H,)
  std::vector<int64_t> lengths;
};

Vec naive_gru(const Case& c, const GruParams& p) {
  const int64_t T = c.T, B = c.B, H = c.H;
  Vec h = p.h0, y(T * B * H, 0.0);
  for (int64_t t = 0; t < T; ++t) {
    Vec h_new(B * H);
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t j = 0; j < H; ++j) {
        double hg[3];
        for (int k = 0; k < 3; ++k) {
          double s = p.b_hh[k * H + j];
          for (int64_t q = 0; q < H; ++q) s += h[b * H + q] * p.w_hh[(k * H + j) * H + q];
          hg[k] = s;
        }
        const double* xg = &p.xg[(t * B + b) * 3 * H];
        const double r = sig(xg[j] + hg[0]), z = sig(xg[H + j] + hg[1]);
        const double n = std::tanh(xg[2 * H + j] + r * hg[2]);
        h_new[b * H + j] = (1 - z) * n + z * h[b * H + j];
      }
    }
    commit_step(p.lengths, t, B, H, h_new, &h, &y);
  }
  y.insert(y.end(), h.begin(), h.end());
  return y;
}

template <typename T>
Vec header_gru_forward(const Case& c, const GruParams& p, std::vector<T>* workspace,
                       std::vector<T>* y_out) {
  const int64_t TT = c.T, B = c.B, H = c.H;
  auto xg = cast<T>(p.xg), h0 = cast<T>(p.h0), b_hh = cast<T>(p.b_hh);
  auto w_hh_t = cast<T>(transpose(p.w_hh, 3 * H, H));
  std::vector<T> h_n(B * H), gates_h(B * 3 * H);
  y_out->assign(TT * B * H, T(0));
  workspace->assign(TT * B * 4 * H, T(0));
  GruForward<T> a{{TT, B, H, H}, xg.data(), h0.data(), w_hh_t.data(), b_hh.data(),
                  p.lengths.empty() ? nullptr : p.lengths.data(), y_out->data(), h_n.data(),
                  workspace->data(), gates_h.data()};
  auto w_hh = cast<T>(p.w_hh);   // what the packed path packs
  a.w_hh = w_hh.data();
  gru_forward(a, fastrnn::HeaderGemm<>(), fastrnn::SerialFor());
  Vec out(y_out->begin(), y_out->end());
  out.insert(out.end(), h_n.begin(), h_n.end());
  return out;
}

void test_gru(const Case& c, unsigned seed) {
  std::mt19937 gen(seed);
  const int64_t T = c.T, B = c.B, H = c.H;
  GruParams p;
  p.xg = random_vec(gen, T * B * 3 * H);
  p.h0 = random_vec(gen, B * H);
  p.w_hh = random_vec(gen, 3 * H * H);
  p.b_hh = random_vec(gen, 3 * H);
  p.lengths = case_lengths(c);
  const std::string name = case_name("gru", c);
  const Vec expected = naive_gru(c, p);
  std::vector<double> ws_d, y_d;
  std::vector<float> ws_f, y_f;
  const Vec got_d = header_gru_forward<double>(c, p, &ws_d, &y_d);
  const Vec got_f = header_gru_forward<float>(c, p, &ws_f, &y_f);
  expect_forward(name, got_d, got_f, expected);

  const Vec weights = random_vec(gen, expected.size(), 1.0);
  const Vec gy(weights.begin(), weights.begin() + T * B * H);
  const Vec ghT(weights.begin() + T * B * H, weights.end());
  std::vector<double> d_input(T * B * 3 * H), d_hidden(T * B * 3 * H), dh0(B * H), dh_prev(B * H);
  GruBackward<double> a{{T, B, H, H}, gy.data(), ghT.data(), p.h0.data(), y_d.data(),
                        p.w_hh.data(), p.lengths.empty() ? nullptr : p.lengths.data(),
                        ws_d.data(), d_input.data(), d_hidden.data(), dh0.data(), dh_prev.data()};
  gru_backward(a, fastrnn::HeaderGemm<>(), fastrnn::SerialFor());
  auto naive = [&](const GruParams& q) { return naive_gru(c, q); };
  expect_finite_differences(name, p, &GruParams::xg, d_input, "d_input", weights, naive);
  std::vector<double> db_hh(3 * H, 0.0);  // the sum of d_hidden over steps and rows
  for (int64_t r = 0; r < T * B; ++r)
    for (int64_t k = 0; k < 3 * H; ++k) db_hh[k] += d_hidden[r * 3 * H + k];
  expect_finite_differences(name, p, &GruParams::b_hh, db_hh, "db_hh", weights, naive);
  expect_finite_differences(name, p, &GruParams::h0, dh0, "dh0", weights, naive);
}

// ---- Elman RNN -------------------------------------------------------------------------

struct RnnParams {
  Vec xg;    // (T, B, H): x W_ih^T
  Vec bias;  // (H,): b_ih + b_hh
  Vec h0;
  Vec w_hh;  // (H, H)
  std::vector<int64_t> lengths;
};

// The naive RNN: returns y (T,B,H) followed by h_T (B,H).
Vec naive_rnn(const Case& c, const RnnParams& p, bool relu) {
  const int64_t T = c.T, B = c.B, H = c.H;
  Vec h = p.h0, y(T * B * H, 0.0);
  for (int64_t t = 0; t < T; ++t) {
    Vec h_new(B * H);
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t j = 0; j < H; ++j) {
        double s = p.xg[(t * B + b) * H + j] + p.bias[j];
        for (int64_t q = 0; q < H; ++q) s += h[b * H + q] * p.w_hh[j * H + q];
        h_new[b * H + j] = relu ? std::max(s, 0.0) : std::tanh(s);
      }
    }
    commit_step(p.lengths, t, B, H, h_new, &h, &y);
  }
  y.insert(y.end(), h.begin(), h.end());
  return y;
}

// Runs the header forward in precision T; returns y and h_T concatenated, and the workspace.
template <typename T>
Vec header_rnn_forward(const Case& c, const RnnParams& p, bool relu, std::vector<T>* workspace) {
  const int64_t TT = c.T, B = c.B, H = c.H;
  auto h0 = cast<T>(p.h0), bias = cast<T>(p.bias), w_hh_t = cast<T>(transpose(p.w_hh, H, H));
  *workspace = cast<T>(p.xg);
  std::vector<T> y(TT * B * H), h_n(B * H);
  fastrnn::RnnForward<T> a{{TT, B, H, H}, h0.data(), w_hh_t.data(), bias.data(),
                           p.lengths.empty() ? nullptr : p.lengths.data(), workspace->data(),
                           y.data(), h_n.data()};
  if (relu) {
    fastrnn::rnn_forward<true>(a, fastrnn::SerialFor());
  } else {
    fastrnn::rnn_forward<false>(a, fastrnn::SerialFor());
  }
  Vec out(y.begin(), y.end());
  out.insert(out.end(), h_n.begin(), h_n.end());
  return out;
}

void test_rnn(const Case& c, bool relu, unsigned seed) {
  std::mt19937 gen(seed);
  const int64_t T = c.T, B = c.B, H = c.H;
  RnnParams p;
  p.xg = random_vec(gen, T * B * H);
  p.bias = random_vec(gen, H);
  p.h0 = random_vec(gen, B * H);
  p.w_hh = random_vec(gen, H * H, 1.0 / std::sqrt(double(H)));
  p.lengths = case_lengths(c);
  const std::string name = case_name(relu ? "rnn relu" : "rnn tanh", c);
  const Vec expected = naive_rnn(c, p, relu);
  std::vector<double> ws_d;
  std::vector<float> ws_f;
  const Vec got_d = header_rnn_forward<double>(c, p, relu, &ws_d);
  const Vec got_f = header_rnn_forward<float>(c, p, relu, &ws_f);
  expect_forward(name, got_d, got_f, expected);

  const Vec weights = random_vec(gen, expected.size(), 1.0);
  const Vec gy(weights.begin(), weights.begin() + T * B * H);
  const Vec ghT(weights.begin() + T * B * H, weights.end());
  std::vector<double> d_pre(T * B * H), dh0(B * H);
  fastrnn::RnnBackward<double> a{{T, B, H, H}, gy.data(), ghT.data(), p.w_hh.data(),
                                 p.lengths.empty() ? nullptr : p.lengths.data(), ws_d.data(),
                                 d_pre.data(), dh0.data()};
  if (relu) {
    fastrnn::rnn_backward<true>(a, fastrnn::SerialFor());
  } else {
    fastrnn::rnn_backward<false>(a, fastrnn::SerialFor());
  }
  auto naive = [&](const RnnParams& q) { return naive_rnn(c, q, relu); };
  // The gradient of x W_ih^T is d_pre itself.
  expect_finite_differences(name, p, &RnnParams::xg, d_pre, "d_pre", weights, naive);
  expect_finite_differences(name, p, &RnnParams::h0, dh0, "dh0", weights, naive);
}

void test_gemm() {
  std::mt19937 gen(7);
  const int64_t M = 3, N = 300, K = 5;  // N crosses a column block
  const Vec A = random_vec(gen, M * K), B = random_vec(gen, K * N), C0 = random_vec(gen, M * N);
  for (bool accumulate : {false, true}) {
    Vec C = C0;
    fastrnn::gemm_nn<double>(M, N, K, A.data(), K, B.data(), N, C.data(), N, accumulate);
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t n = 0; n < N; ++n) {
        double s = accumulate ? C0[m * N + n] : 0.0;
        for (int64_t k = 0; k < K; ++k) s += A[m * K + k] * B[k * N + n];
        expect_close("gemm", C[m * N + n], s, 1e-13);
      }
    }
  }
}

// packed_matmul_tn (C = A^T B) against a plain sum, in float and double: K past one chunk
// and not a multiple of it, N not a multiple of the panel width (a partial last panel).
template <typename T>
void test_packed_matmul_tn(const char* name) {
  std::mt19937 gen(13);
  const int64_t M = 8, N = 70, K = 150;
  const Vec A = random_vec(gen, K * M), B = random_vec(gen, K * N);
  const std::vector<T> a = cast<T>(A), b = cast<T>(B);
  std::vector<T> c(M * N, T(-1));
  fastrnn::packed_matmul_tn<T>(M, N, K, a.data(), b.data(), c.data(), fastrnn::SerialFor());
  const double tol = sizeof(T) == 4 ? 1e-5 : 1e-13;
  for (int64_t m = 0; m < M; ++m) {
    for (int64_t n = 0; n < N; ++n) {
      double s = 0.0;
      for (int64_t k = 0; k < K; ++k) s += double(a[k * M + m]) * double(b[k * N + n]);
      expect_close(name, c[m * N + n], s, tol);
    }
  }
}

// The packed product's tiles of every vector width (64, 32 and 16 bytes), whichever the
// machine's clone runs: out = A @ panel and out += A @ panel against a plain sum, for
// panels of 3 and 4 vector groups, every row count's tail (M = 1..13) and K past a chunk.
template <typename T, int NV, int VB>
void test_packed_rows_width(std::mt19937& gen) {
  constexpr int64_t W = NV * fastrnn::kLanes<T>;
  const int64_t K = fastrnn::kPackedChunkBytes / (W * static_cast<int64_t>(sizeof(T))) + 7;
  const std::string name = "packed_rows NV=" + std::to_string(NV) + " VB=" + std::to_string(VB) +
                           (sizeof(T) == 4 ? " float" : " double");
  const double tol = sizeof(T) == 4 ? 1e-5 : 1e-13;
  for (int64_t M = 1; M <= 13; ++M) {
    const int64_t lda = K + 3;
    const std::vector<T> a = cast<T>(random_vec(gen, M * lda)), panel = cast<T>(random_vec(gen, K * W));
    const std::vector<T> init = cast<T>(random_vec(gen, M * W));
    for (bool accumulate : {false, true}) {
      std::vector<T> out = init;
      fastrnn::packed_rows_vb<T, VB, NV>(M, a.data(), lda, K, panel.data(), out.data(), accumulate);
      for (int64_t m = 0; m < M; ++m) {
        for (int64_t n = 0; n < W; ++n) {
          double s = accumulate ? double(init[m * W + n]) : 0.0;
          for (int64_t k = 0; k < K; ++k) s += double(a[m * lda + k]) * double(panel[k * W + n]);
          expect_close(name, out[m * W + n], s, tol);
        }
      }
    }
  }
}

template <typename T>
void test_packed_rows_widths() {
  std::mt19937 gen(17);
  test_packed_rows_width<T, 3, 64>(gen);
  test_packed_rows_width<T, 3, 32>(gen);
  test_packed_rows_width<T, 3, 16>(gen);
  test_packed_rows_width<T, 4, 64>(gen);
  test_packed_rows_width<T, 4, 32>(gen);
  test_packed_rows_width<T, 4, 16>(gen);
}

// step_products against a plain sum: K not a multiple of the vector width, G not a
// multiple of the row block, B > 1 rows at a row stride above G, and each part, bias
// and the other part absent.
void test_step_products() {
  std::mt19937 gen(11);
  const int64_t G = 7, B = 3, Kx = 5, Kh = 19, ld = G + 2;
  const Vec wx = random_vec(gen, G * Kx), wh = random_vec(gen, G * Kh), x = random_vec(gen, B * Kx);
  const Vec h = random_vec(gen, B * Kh), bx = random_vec(gen, G), bh = random_vec(gen, G);
  for (int parts = 1; parts <= 3; ++parts) {
    const bool with_x = parts & 1, with_h = parts & 2;
    for (bool bias : {false, true}) {
      Vec out(B * ld, 0.0);
      fastrnn::step_products<double>(G, B, with_x ? wx.data() : nullptr, x.data(), Kx,
                                     with_h ? wh.data() : nullptr, h.data(), Kh,
                                     bias ? bx.data() : nullptr, bias ? bh.data() : nullptr,
                                     out.data(), ld);
      for (int64_t b = 0; b < B; ++b) {
        for (int64_t g = 0; g < G; ++g) {
          double s = bias ? bx[g] + bh[g] : 0.0;
          for (int64_t k = 0; with_x && k < Kx; ++k) s += wx[g * Kx + k] * x[b * Kx + k];
          for (int64_t k = 0; with_h && k < Kh; ++k) s += wh[g * Kh + k] * h[b * Kh + k];
          expect_close("step_products", out[b * ld + g], s, 1e-13);
        }
      }
    }
  }
}

// float tanh_act within 2 ulp of tanh (double, rounded to float) over the gates' range,
// tiny values, signed zero and saturation: the ulp is the float result's.
void test_tanh() {
  std::vector<float> xs = {0.0f, -0.0f, 1e-30f, -1e-30f, 0.55f, -0.55f, 50.0f, -50.0f};
  for (int i = -200000; i <= 200000; ++i) xs.push_back(static_cast<float>(i) * 4e-5f);
  for (int e = -40; e <= 0; ++e) xs.push_back(std::ldexp(1.3f, e));
  int worst_ulps = 0;
  for (float x : xs) {
    const float got = fastrnn::tanh_act(x);
    const float want = static_cast<float>(std::tanh(static_cast<double>(x)));
    const float ulp = std::nextafter(std::fabs(want), INFINITY) - std::fabs(want);
    const int ulps = static_cast<int>(std::ceil(std::fabs(got - want) / ulp));
    if (ulps > worst_ulps) worst_ulps = ulps;
    if (ulps > 2 || std::signbit(got) != std::signbit(want)) {
      if (failures < 20) std::printf("FAIL tanh_act(%.9g) = %.9g, tanh = %.9g\n", x, got, want);
      ++failures;
    }
  }
  std::printf("tanh_act: worst error %d ulp\n", worst_ulps);
}

}  // namespace

int main() {
  test_tanh();
  test_gemm();
  test_step_products();
  test_packed_rows_widths<float>();
  test_packed_rows_widths<double>();
  test_packed_matmul_tn<float>("packed_matmul_tn float");
  test_packed_matmul_tn<double>("packed_matmul_tn double");
  unsigned seed = 1;
  for (const Case& c : {Case{1, 1, 1, 1, false, false}, Case{3, 2, 3, 3, false, false},
                        Case{4, 3, 5, 5, false, true}, Case{3, 2, 4, 3, true, false},
                        Case{4, 3, 3, 2, true, true}}) {
    test_lstm(c, seed++);
  }
  for (const Case& c : {Case{1, 1, 1, 1, false, false}, Case{3, 2, 3, 3, false, false},
                        Case{4, 3, 5, 5, false, true}}) {
    test_gru(c, seed++);
  }
  // H = 70 spans three fp64 panels of the RNN kernels (32 units each), the last partial.
  for (const Case& c : {Case{1, 1, 1, 1, false, false}, Case{3, 2, 3, 3, false, false},
                        Case{4, 3, 5, 5, false, true}, Case{3, 2, 70, 70, false, true}}) {
    for (bool relu : {false, true}) test_rnn(c, relu, seed++);
  }
  if (failures) {
    std::printf("%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("all CPU kernel checks passed\n");
  return 0;
}
