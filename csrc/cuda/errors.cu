// fastrnn.check_errors() for the CUDA extension: waits for every persistent launch whose
// barrier was reported (cuda_common.h) and raises the first timeout, as the Triton kernels'
// reports are collected by fastrnn/errors.py. Defined only in CUDA builds; Python looks for
// the op before calling it.
#include <torch/library.h>

#include "cuda/cuda_common.h"

namespace {

void check_barrier_timeouts() { fastrnn::binding::raise_barrier_timeouts(/*wait=*/true); }

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastrnn, m) {
  m.def("ext_check_barrier_timeouts() -> ()", &check_barrier_timeouts);
}
