// Unit tests of the torch-free CUDA kernels, run by ctest where a GPU is present (exit
// code 77, "skipped", without one). The persistent forward and backward kernels are checked
// against the CPU header recurrences, which test_cpu_kernels checks against a naive loop.
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include <cuda_runtime.h>

#include "fastrnn/cuda_launch.h"
#include "fastrnn/grid_barrier.cuh"
#include "fastrnn/gru_cpu.h"
#include "fastrnn/lstm_cpu.h"
#include "fastrnn/rnn_cpu.h"

namespace {

int failures = 0;

#define CUDA_OK(expr)                                                              \
  do {                                                                             \
    const cudaError_t err_ = (expr);                                               \
    if (err_ != cudaSuccess) {                                                     \
      std::printf("CUDA error %s at %s:%d\n", cudaGetErrorString(err_), __FILE__, \
                  __LINE__);                                                       \
      std::exit(1);                                                                \
    }                                                                              \
  } while (0)

template <typename T>
T* to_device(const std::vector<T>& v) {
  T* p = nullptr;
  CUDA_OK(cudaMalloc(&p, sizeof(T) * std::max<size_t>(v.size(), 1)));
  CUDA_OK(cudaMemcpy(p, v.data(), sizeof(T) * v.size(), cudaMemcpyHostToDevice));
  return p;
}

template <typename T>
std::vector<T> to_host(const T* p, size_t n) {
  std::vector<T> v(n);
  CUDA_OK(cudaMemcpy(v.data(), p, sizeof(T) * n, cudaMemcpyDeviceToHost));
  return v;
}

void expect_close(const char* what, const std::vector<float>& got,
                  const std::vector<float>& expected) {
  for (size_t i = 0; i < expected.size(); ++i) {
    if (!(std::fabs(got[i] - expected[i]) <= 1e-5f * (1 + std::fabs(expected[i])))) {
      std::printf("FAIL %s[%zu]: got %.8g expected %.8g\n", what, i, got[i], expected[i]);
      ++failures;
      return;
    }
  }
}

std::vector<float> random_vec(std::mt19937& gen, size_t n) {
  std::normal_distribution<float> dist(0.f, 0.3f);
  std::vector<float> v(n);
  for (auto& e : v) e = dist(gen);
  return v;
}

std::vector<float> transpose(const std::vector<float>& m, int64_t rows, int64_t cols) {
  std::vector<float> out(m.size());
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) out[c * rows + r] = m[r * cols + c];
  return out;
}

void test_lstm_persistent(int64_t T, int64_t B, int64_t H, bool with_lengths) {
  std::mt19937 gen(static_cast<unsigned>(T * 131 + B * 7 + H));
  const fastrnn::Dims d{T, B, H, H};
  auto gates = random_vec(gen, T * B * 4 * H), h0 = random_vec(gen, B * H),
       c0 = random_vec(gen, B * H), w_hh = random_vec(gen, 4 * H * H);
  std::vector<int64_t> lengths;
  for (int64_t b = 0; b < B && with_lengths; ++b) lengths.push_back(1 + (b * 3) % T);
  const auto plan = fastrnn::cuda::plan_persistent<float>(4, /*backward=*/false, d, 0);
  if (plan.blocks == 0) {
    std::printf("FAIL lstm persistent: no plan for H=%lld\n", static_cast<long long>(H));
    ++failures;
    return;
  }
  // Expected: the CPU recurrence.
  auto gates_cpu = gates;
  auto w_hh_t = transpose(w_hh, 4 * H, H);
  std::vector<float> y(T * B * H), h_n(B * H), c_n(B * H), ws(T * B * 5 * H), hidden(B * H);
  fastrnn::LstmForward<float> a{d, gates_cpu.data(), h0.data(), c0.data(), w_hh_t.data(),
                                nullptr, lengths.empty() ? nullptr : lengths.data(), y.data(),
                                h_n.data(), c_n.data(), ws.data(), hidden.data()};
  fastrnn::lstm_forward(a, fastrnn::HeaderGemm<>(), fastrnn::SerialFor());

  float *g_y, *g_hn, *g_cn, *g_ws, *g_hbuf;
  unsigned int* barrier;
  CUDA_OK(cudaMalloc(&g_y, sizeof(float) * y.size()));
  CUDA_OK(cudaMalloc(&g_hn, sizeof(float) * h_n.size()));
  CUDA_OK(cudaMalloc(&g_cn, sizeof(float) * c_n.size()));
  CUDA_OK(cudaMalloc(&g_ws, sizeof(float) * ws.size()));
  CUDA_OK(cudaMalloc(&g_hbuf, sizeof(float) * 2 * B * H));
  CUDA_OK(cudaMalloc(&barrier, 2 * sizeof(unsigned int)));
  CUDA_OK(cudaMemset(barrier, 0, 2 * sizeof(unsigned int)));
  float *g_gates = to_device(gates), *g_h0 = to_device(h0), *g_c0 = to_device(c0),
        *g_w = to_device(w_hh);
  int64_t* g_len = lengths.empty() ? nullptr : to_device(lengths);
  CUDA_OK(fastrnn::cuda::lstm_forward_persistent<float>(plan, d, g_gates, g_h0, g_c0, g_w, g_len,
                                                        g_y, g_hn, g_cn, g_ws, g_hbuf, barrier,
                                                        0));
  CUDA_OK(cudaDeviceSynchronize());
  expect_close("lstm persistent y", to_host(g_y, y.size()), y);
  expect_close("lstm persistent h_n", to_host(g_hn, h_n.size()), h_n);
  expect_close("lstm persistent c_n", to_host(g_cn, c_n.size()), c_n);
  expect_close("lstm persistent workspace", to_host(g_ws, ws.size()), ws);

  // Backward from the same workspace, against the CPU recurrence.
  const auto bplan = fastrnn::cuda::plan_persistent<float>(4, /*backward=*/true, d, 0);
  auto gy = random_vec(gen, T * B * H), ghT = random_vec(gen, B * H), gcT = random_vec(gen, B * H);
  std::vector<float> dgates(T * B * 4 * H), dh0(B * H), dc0(B * H), dh_next(B * H);
  fastrnn::LstmBackward<float> back{d, gy.data(), ghT.data(), gcT.data(), c0.data(), w_hh.data(),
                                    nullptr, lengths.empty() ? nullptr : lengths.data(), ws.data(),
                                    dgates.data(), dh0.data(), dc0.data(), nullptr, nullptr,
                                    dh_next.data()};
  fastrnn::lstm_backward(back, fastrnn::HeaderGemm<>(), fastrnn::SerialFor());
  float *g_gy = to_device(gy), *g_dh = to_device(ghT), *g_dc = to_device(gcT), *g_dg;
  CUDA_OK(cudaMalloc(&g_dg, sizeof(float) * dgates.size()));
  CUDA_OK(cudaMemset(barrier, 0, 2 * sizeof(unsigned int)));
  CUDA_OK(fastrnn::cuda::lstm_backward_persistent<float>(bplan, d, g_gy, g_c0, g_w, g_len, g_ws,
                                                         g_dg, g_dh, g_dc, barrier, 0));
  CUDA_OK(cudaDeviceSynchronize());
  expect_close("lstm persistent dgates", to_host(g_dg, dgates.size()), dgates);
  expect_close("lstm persistent dh0", to_host(g_dh, dh0.size()), dh0);
  expect_close("lstm persistent dc0", to_host(g_dc, dc0.size()), dc0);
  for (void* p : {(void*)g_gy, (void*)g_dh, (void*)g_dc, (void*)g_dg}) cudaFree(p);
  for (void* p : {(void*)g_y, (void*)g_hn, (void*)g_cn, (void*)g_ws, (void*)g_hbuf,
                  (void*)barrier, (void*)g_gates, (void*)g_h0, (void*)g_c0, (void*)g_w,
                  (void*)g_len}) {
    if (p) cudaFree(p);
  }
}

void test_gru_persistent(int64_t T, int64_t B, int64_t H, bool with_lengths) {
  std::mt19937 gen(static_cast<unsigned>(T * 17 + B * 5 + H));
  const fastrnn::Dims d{T, B, H, H};
  auto xg = random_vec(gen, T * B * 3 * H), h0 = random_vec(gen, B * H),
       w_hh = random_vec(gen, 3 * H * H), b_hh = random_vec(gen, 3 * H);
  std::vector<int64_t> lengths;
  for (int64_t b = 0; b < B && with_lengths; ++b) lengths.push_back(1 + (b * 3) % T);
  const auto plan = fastrnn::cuda::plan_persistent<float>(3, /*backward=*/false, d, 0);
  if (plan.blocks == 0) {
    std::printf("FAIL gru persistent: no plan for H=%lld\n", static_cast<long long>(H));
    ++failures;
    return;
  }
  auto w_hh_t = transpose(w_hh, 3 * H, H);
  std::vector<float> y(T * B * H), h_n(B * H), ws(T * B * 4 * H), hg(B * 3 * H);
  fastrnn::GruForward<float> a{d, xg.data(), h0.data(), w_hh_t.data(), b_hh.data(),
                               lengths.empty() ? nullptr : lengths.data(), y.data(), h_n.data(),
                               ws.data(), hg.data()};
  fastrnn::gru_forward(a, fastrnn::HeaderGemm<>(), fastrnn::SerialFor());

  float *g_y, *g_hn, *g_ws, *g_hbuf;
  unsigned int* barrier;
  CUDA_OK(cudaMalloc(&g_y, sizeof(float) * y.size()));
  CUDA_OK(cudaMalloc(&g_hn, sizeof(float) * h_n.size()));
  CUDA_OK(cudaMalloc(&g_ws, sizeof(float) * ws.size()));
  CUDA_OK(cudaMalloc(&g_hbuf, sizeof(float) * 2 * B * H));
  CUDA_OK(cudaMalloc(&barrier, 2 * sizeof(unsigned int)));
  CUDA_OK(cudaMemset(barrier, 0, 2 * sizeof(unsigned int)));
  float *g_xg = to_device(xg), *g_h0 = to_device(h0), *g_w = to_device(w_hh),
        *g_b = to_device(b_hh);
  int64_t* g_len = lengths.empty() ? nullptr : to_device(lengths);
  CUDA_OK(fastrnn::cuda::gru_forward_persistent<float>(plan, d, g_xg, g_h0, g_w, g_b, g_len, g_y,
                                                       g_hn, g_ws, g_hbuf, barrier, 0));
  CUDA_OK(cudaDeviceSynchronize());
  expect_close("gru persistent y", to_host(g_y, y.size()), y);
  expect_close("gru persistent h_n", to_host(g_hn, h_n.size()), h_n);
  expect_close("gru persistent workspace", to_host(g_ws, ws.size()), ws);

  // Backward from the same workspace and outputs, against the CPU recurrence.
  const auto bplan = fastrnn::cuda::plan_persistent<float>(3, /*backward=*/true, d, 0);
  auto gy = random_vec(gen, T * B * H), ghT = random_vec(gen, B * H);
  std::vector<float> d_input(T * B * 3 * H), d_hidden(T * B * 3 * H), dh0(B * H), dh_prev(B * H);
  fastrnn::GruBackward<float> back{d, gy.data(), ghT.data(), h0.data(), y.data(), w_hh.data(),
                                   lengths.empty() ? nullptr : lengths.data(), ws.data(),
                                   d_input.data(), d_hidden.data(), dh0.data(), dh_prev.data()};
  fastrnn::gru_backward(back, fastrnn::HeaderGemm<>(), fastrnn::SerialFor());
  float *g_gy = to_device(gy), *g_dh = to_device(ghT), *g_di, *g_dhid;
  CUDA_OK(cudaMalloc(&g_di, sizeof(float) * d_input.size()));
  CUDA_OK(cudaMalloc(&g_dhid, sizeof(float) * d_hidden.size()));
  CUDA_OK(cudaMemset(barrier, 0, 2 * sizeof(unsigned int)));
  CUDA_OK(fastrnn::cuda::gru_backward_persistent<float>(bplan, d, g_gy, g_h0, g_y, g_w, g_len,
                                                        g_ws, g_di, g_dhid, g_dh, barrier, 0));
  CUDA_OK(cudaDeviceSynchronize());
  expect_close("gru persistent d_input", to_host(g_di, d_input.size()), d_input);
  expect_close("gru persistent d_hidden", to_host(g_dhid, d_hidden.size()), d_hidden);
  expect_close("gru persistent dh0", to_host(g_dh, dh0.size()), dh0);
  for (void* p : {(void*)g_gy, (void*)g_dh, (void*)g_di, (void*)g_dhid}) cudaFree(p);
  for (void* p : {(void*)g_y, (void*)g_hn, (void*)g_ws, (void*)g_hbuf, (void*)barrier,
                  (void*)g_xg, (void*)g_h0, (void*)g_w, (void*)g_b, (void*)g_len}) {
    if (p) cudaFree(p);
  }
}

// The Elman RNN: the workspace enters holding x W_ih^T + biases (the CPU kernel is given
// no separate bias, so both start from the same values) and leaves holding h_t.
void test_rnn_persistent(int64_t T, int64_t B, int64_t H, bool relu, bool with_lengths) {
  std::mt19937 gen(static_cast<unsigned>(T * 29 + B * 3 + H + relu));
  const fastrnn::Dims d{T, B, H, H};
  auto pre = random_vec(gen, T * B * H), h0 = random_vec(gen, B * H), w_hh = random_vec(gen, H * H);
  std::vector<int64_t> lengths;
  for (int64_t b = 0; b < B && with_lengths; ++b) lengths.push_back(1 + (b * 3) % T);
  const int64_t* lens = lengths.empty() ? nullptr : lengths.data();
  const auto plan = fastrnn::cuda::plan_persistent<float>(1, /*backward=*/false, d, 0);
  const auto bplan = fastrnn::cuda::plan_persistent<float>(1, /*backward=*/true, d, 0);
  if (plan.blocks == 0 || bplan.blocks == 0) {
    std::printf("FAIL rnn persistent: no plan for H=%lld\n", static_cast<long long>(H));
    ++failures;
    return;
  }
  auto w_hh_t = transpose(w_hh, H, H);
  std::vector<float> ws = pre, y(T * B * H), h_n(B * H);
  const fastrnn::RnnForward<float> a{d, h0.data(), w_hh_t.data(), nullptr, lens, ws.data(),
                                     y.data(), h_n.data()};
  if (relu) {
    fastrnn::rnn_forward<true>(a, fastrnn::SerialFor());
  } else {
    fastrnn::rnn_forward<false>(a, fastrnn::SerialFor());
  }

  float *g_y, *g_hn, *g_hbuf, *g_ws = to_device(pre), *g_h0 = to_device(h0), *g_w = to_device(w_hh);
  unsigned int* barrier;
  CUDA_OK(cudaMalloc(&g_y, sizeof(float) * y.size()));
  CUDA_OK(cudaMalloc(&g_hn, sizeof(float) * h_n.size()));
  CUDA_OK(cudaMalloc(&g_hbuf, sizeof(float) * 2 * B * H));
  CUDA_OK(cudaMalloc(&barrier, 2 * sizeof(unsigned int)));
  CUDA_OK(cudaMemset(barrier, 0, 2 * sizeof(unsigned int)));
  int64_t* g_len = lengths.empty() ? nullptr : to_device(lengths);
  CUDA_OK(fastrnn::cuda::rnn_forward_persistent<float>(plan, d, relu, g_h0, g_w, g_len, g_y, g_hn,
                                                       g_ws, g_hbuf, barrier, 0));
  CUDA_OK(cudaDeviceSynchronize());
  expect_close("rnn persistent y", to_host(g_y, y.size()), y);
  expect_close("rnn persistent h_n", to_host(g_hn, h_n.size()), h_n);
  expect_close("rnn persistent workspace", to_host(g_ws, ws.size()), ws);

  auto gy = random_vec(gen, T * B * H), ghT = random_vec(gen, B * H);
  std::vector<float> d_pre(T * B * H), dh0(B * H);
  const fastrnn::RnnBackward<float> back{d, gy.data(), ghT.data(), w_hh.data(), lens, ws.data(),
                                         d_pre.data(), dh0.data()};
  if (relu) {
    fastrnn::rnn_backward<true>(back, fastrnn::SerialFor());
  } else {
    fastrnn::rnn_backward<false>(back, fastrnn::SerialFor());
  }
  float *g_gy = to_device(gy), *g_dh = to_device(ghT), *g_dpre;
  CUDA_OK(cudaMalloc(&g_dpre, sizeof(float) * d_pre.size()));
  CUDA_OK(cudaMemset(barrier, 0, 2 * sizeof(unsigned int)));
  CUDA_OK(fastrnn::cuda::rnn_backward_persistent<float>(bplan, d, relu, g_gy, g_w, g_len, g_ws,
                                                        g_dpre, g_dh, barrier, 0));
  CUDA_OK(cudaDeviceSynchronize());
  expect_close("rnn persistent d_pre", to_host(g_dpre, d_pre.size()), d_pre);
  expect_close("rnn persistent dh0", to_host(g_dh, dh0.size()), dh0);
  for (void* p : {(void*)g_y, (void*)g_hn, (void*)g_hbuf, (void*)g_ws, (void*)g_h0, (void*)g_w,
                  (void*)barrier, (void*)g_len, (void*)g_gy, (void*)g_dh, (void*)g_dpre}) {
    if (p) cudaFree(p);
  }
}

// Block `absent` never arrives at the barrier; the others time out. `left[b]` records that
// block b left its kernel, and what its barrier returned (2 + ok).
__global__ void one_block_never_arrives(unsigned int* barrier, int absent, int* left) {
  bool ok = true;
  if (static_cast<int>(blockIdx.x) != absent) ok = fastrnn::cuda::grid_barrier(barrier, 0);
  if (threadIdx.x == 0) left[blockIdx.x] = 2 + (ok ? 1 : 0);
}

// A barrier that never completes: every block leaves (no hang, no __trap that would end the
// CUDA context), each waiting block's barrier returns false, the error flag is set and the
// counter holds the abort value plus the arrivals after it.
void test_barrier_timeout() {
  const int blocks = 4;
  unsigned int* barrier;
  int* left;
  CUDA_OK(cudaMalloc(&barrier, 2 * sizeof(unsigned int)));
  CUDA_OK(cudaMemset(barrier, 0, 2 * sizeof(unsigned int)));
  CUDA_OK(cudaMalloc(&left, blocks * sizeof(int)));
  CUDA_OK(cudaMemset(left, 0, blocks * sizeof(int)));
  one_block_never_arrives<<<blocks, 64>>>(barrier, /*absent=*/1, left);
  CUDA_OK(cudaGetLastError());
  CUDA_OK(cudaDeviceSynchronize());
  const auto words = to_host(barrier, 2);
  const auto status = to_host(left, blocks);
  const std::vector<int> expected = {2, 3, 2, 2};
  if (status != expected || words[1] != 1u || words[0] < fastrnn::cuda::kBarrierAbort ||
      words[0] > fastrnn::cuda::kBarrierAbort + blocks) {
    std::printf("FAIL barrier timeout: counter %u, flag %u, blocks %d %d %d %d\n", words[0],
                words[1], status[0], status[1], status[2], status[3]);
    ++failures;
  }
  cudaFree(barrier);
  cudaFree(left);
}

}  // namespace

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("no CUDA device: skipped\n");
    return 77;
  }
  // H above the SM count spreads several units per block; odd sizes leave a partial block.
  test_lstm_persistent(5, 3, 37, false);
  test_lstm_persistent(7, 4, 301, true);
  test_gru_persistent(5, 3, 37, false);
  test_gru_persistent(7, 4, 301, true);
  for (bool relu : {false, true}) {
    test_rnn_persistent(5, 3, 37, relu, false);
    test_rnn_persistent(7, 4, 301, relu, true);
  }
  test_barrier_timeout();
  if (failures) {
    std::printf("%d check(s) failed\n", failures);
    return 1;
  }
  std::printf("all CUDA kernel checks passed\n");
  return 0;
}
