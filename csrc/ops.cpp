// The extension's op schemas, declared once. Kernels are registered per device in
// lstm.cpp / gru.cpp / rnn.cpp (CPU) and cuda/*.cu (CUDA); fake tensors and autograd in
// Python (fastrnn/ops/<op>/ext.py).
//
// The Python-defined ops fastrnn::lstm_layer etc. live in the same namespace as library
// fragments, which coexist with this one TORCH_LIBRARY definition in either import order
// (tests/ops/test_ext.py checks both).
#include <Python.h>
#include <torch/library.h>

#include "module_step.h"

// set_python_module names where each op's fake (meta) implementation and autograd formula
// live, so torch imports that module when it needs them (e.g. tracing an op called
// straight through torch.ops.fastrnn).
TORCH_LIBRARY(fastrnn, m) {
  m.set_python_module("fastrnn.ops.lstm.ext");
  // Outputs: y (T, B, P), h_T (B, P), c_T (B, H), workspace (T, B, 5H): i, f, g, o, c.
  m.def("ext_lstm_forward(Tensor x, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, "
        "Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, Tensor? lengths) "
        "-> (Tensor, Tensor, Tensor, Tensor)");
  // ext_lstm_forward for calls that take no gradient (CPU, no autograd formula): y, h_T,
  // c_T, without writing the workspace.
  m.def("ext_lstm_inference(Tensor x, Tensor h0, Tensor c0, Tensor w_ih, Tensor w_hh, "
        "Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, Tensor? lengths) -> (Tensor, Tensor, Tensor)");
  // Outputs: dx, dh0, dc0, dw_ih, dw_hh, dbias (of the summed gate bias), dw_hr (empty
  // without projection).
  m.def("ext_lstm_backward(Tensor grad_y, Tensor grad_hT, Tensor grad_cT, Tensor x, Tensor h0, "
        "Tensor c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_hr, "
        "Tensor y, Tensor workspace, Tensor? lengths) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_FRAGMENT(fastrnn, m) {
  m.set_python_module("fastrnn.ops.gru.ext");
  // Outputs: y (T, B, H), h_T (B, H), workspace (T, B, 4H): r, z, n, h W_hn + b_hn.
  m.def("ext_gru_forward(Tensor x, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
        "Tensor? b_hh, Tensor? lengths) -> (Tensor, Tensor, Tensor)");
  // Outputs: dx, dh0, dw_ih, dw_hh, db_ih, db_hh.
  m.def("ext_gru_backward(Tensor grad_y, Tensor grad_hT, Tensor x, Tensor h0, Tensor w_ih, "
        "Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor y, Tensor workspace, Tensor? lengths) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_FRAGMENT(fastrnn, m) {
  m.set_python_module("fastrnn.ops.rnn.ext");
  // Outputs: y (T, B, H), h_T (B, H), workspace (T, B, H): the h state after every step.
  // nonlinearity: "tanh" or "relu".
  m.def("ext_rnn_forward(Tensor x, Tensor h0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
        "Tensor? b_hh, Tensor? lengths, str nonlinearity) -> (Tensor, Tensor, Tensor)");
  // Outputs: dx, dh0, dw_ih, dw_hh, dbias (of b_ih and of b_hh alike).
  m.def("ext_rnn_backward(Tensor grad_y, Tensor grad_hT, Tensor x, Tensor h0, Tensor w_ih, "
        "Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor y, Tensor workspace, Tensor? lengths, "
        "str nonlinearity) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_FRAGMENT(fastrnn, m) {
  m.set_python_module("fastrnn.ops.sampling.ext");
  // The C++ sampler (csrc/sampling.cpp). Per-row parameters as fastrnn.ops.sampling.op
  // hands them to a backend. Outputs: tokens (B,) int64 (-1 on unusable rows) or the kept
  // mask (B, V) bool, and status (B,) int32 (0 ok, 1 NaN, 2 +inf, 3 no finite logit).
  m.def("ext_sampling_forward(Tensor logits, Tensor temperature, Tensor top_k, Tensor top_p, "
        "Tensor min_p, Tensor uniform) -> (Tensor, Tensor)");
  m.def("ext_sampling_mask(Tensor logits, Tensor temperature, Tensor top_k, Tensor top_p, "
        "Tensor min_p) -> (Tensor, Tensor)");
}

// `import fastrnn._C` loads this library, which runs the registrations above; the Python
// module holds the modules' short forward (module_step.cpp).
extern "C" PyObject* PyInit__C(void) {
  static PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1,
                                   fastrnn::binding::module_step_methods()};
  return PyModule_Create(&module_def);
}
