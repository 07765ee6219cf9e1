// fastrnn._C.module_step: the short forward of fastrnn.LSTM / GRU / RNN (fastrnn/nn.py) as one
// call, for streaming and decoding, where a module is called once per step and a step's
// kernel takes microseconds.
//
// Why C++: in Python, the same checks, the per-layer state views and one op call cost more
// than the kernel of a small step (GRU(64, 256), B=1, fp32, one core of a Zen 4 EPYC: ~15 us
// around a ~20 us kernel, torch.nn's whole step ~67 us). Here they cost ~1 us. The layers
// run on the extension's ops through the dispatcher, autograd key included, so training
// works as on forward's general path and a call that needs no gradient builds no graph.
//
// It takes what nn.py's guard leaves (no autocast, no compile, no torch.func transform, no
// forward-mode AD, no dispatch mode) when the module and its arguments hold no surprise: a
// 3-D CPU tensor of the weights' dtype, one direction, no inter-layer dropout, every
// weight a plain parameter, hx absent or of the exact shapes, and the extension the backend
// fastrnn.backends picks. Anything else returns None, and forward's general path runs
// (which raises torch.nn's errors for bad input).
#include <Python.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/object_ptr.h>
#include <torch/csrc/utils/pybind.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <vector>

#include "layer_ops.h"
#include "module_step.h"

namespace fastrnn::binding {
namespace {

enum class Cell { kLstm, kGru, kRnnTanh, kRnnRelu };

// The module attributes read on every call, as interned strings (made once).
struct Names {
  PyObject* mode = PyUnicode_InternFromString("mode");
  PyObject* num_layers = PyUnicode_InternFromString("num_layers");
  PyObject* bidirectional = PyUnicode_InternFromString("bidirectional");
  PyObject* batch_first = PyUnicode_InternFromString("batch_first");
  PyObject* bias = PyUnicode_InternFromString("bias");
  PyObject* proj_size = PyUnicode_InternFromString("proj_size");
  PyObject* input_size = PyUnicode_InternFromString("input_size");
  PyObject* hidden_size = PyUnicode_InternFromString("hidden_size");
  PyObject* training = PyUnicode_InternFromString("training");
  PyObject* dropout = PyUnicode_InternFromString("dropout");
  PyObject* parameters = PyUnicode_InternFromString("_parameters");
  PyObject* flat_weights_names = PyUnicode_InternFromString("_flat_weights_names");
};

const Names& names() {
  static const Names n;
  return n;
}

THPObjectPtr attribute(PyObject* obj, PyObject* name) {
  PyObject* value = PyObject_GetAttr(obj, name);
  if (value == nullptr) throw python_error();
  return THPObjectPtr(value);
}

int64_t int_attribute(PyObject* obj, PyObject* name) {
  const long long value = PyLong_AsLongLong(attribute(obj, name).get());
  if (value == -1 && PyErr_Occurred()) throw python_error();
  return value;
}

bool bool_attribute(PyObject* obj, PyObject* name) {
  const int value = PyObject_IsTrue(attribute(obj, name).get());
  if (value < 0) throw python_error();
  return value != 0;
}

double float_attribute(PyObject* obj, PyObject* name) {
  const double value = PyFloat_AsDouble(attribute(obj, name).get());
  if (value == -1.0 && PyErr_Occurred()) throw python_error();
  return value;
}

std::optional<Cell> cell_of(PyObject* module) {
  THPObjectPtr mode = attribute(module, names().mode);
  if (!PyUnicode_Check(mode.get())) return std::nullopt;
  const char* text = PyUnicode_AsUTF8(mode.get());
  if (text == nullptr) throw python_error();
  if (std::strcmp(text, "LSTM") == 0) return Cell::kLstm;
  if (std::strcmp(text, "GRU") == 0) return Cell::kGru;
  if (std::strcmp(text, "RNN_TANH") == 0) return Cell::kRnnTanh;
  if (std::strcmp(text, "RNN_RELU") == 0) return Cell::kRnnRelu;
  return std::nullopt;
}

// Whether fastrnn.backends picks the extension for a CPU layer: FASTRNN_BACKEND (read as
// backends.requested_backend reads it; os.environ writes through to the C environment)
// unset, empty or "auto" (the automatic choice, which on the CPU is the extension once it is
// loaded, as it is here), or "ext". Other values take the general path, which applies them
// or raises backends' ValueError for an unknown one.
bool extension_chosen() {
  const char* requested = std::getenv("FASTRNN_BACKEND");
  return requested == nullptr || *requested == '\0' || std::strcmp(requested, "auto") == 0 ||
         std::strcmp(requested, "ext") == 0;
}

// A plain tensor (or parameter) of `dtype` on the CPU, else nullptr.
const Tensor* cpu_tensor(PyObject* obj, at::ScalarType dtype) {
  if (!THPVariable_CheckExact(obj)) return nullptr;
  const Tensor& t = THPVariable_Unpack(obj);
  return t.scalar_type() == dtype && t.is_cpu() ? &t : nullptr;
}

// One call's inputs, checked: time-major x, every layer's weights in the module's order,
// and the initial state tensors (L, B, .) (none when hx is None: zeros).
struct StepCall {
  Cell cell;
  int64_t layers, per_layer, hidden, out;  // out: the projection size, else hidden
  bool bias, projection, batch_first;
  Tensor x;
  std::vector<Tensor> weights;
  std::vector<Tensor> state;
};

// The module's weights (module._parameters[name] for name in _flat_weights_names) when each
// is a plain tensor of `dtype` on the CPU.
std::optional<std::vector<Tensor>> plain_weights(PyObject* module, at::ScalarType dtype) {
  THPObjectPtr params = attribute(module, names().parameters);
  THPObjectPtr weight_names = attribute(module, names().flat_weights_names);
  if (!PyDict_Check(params.get()) || !PyList_Check(weight_names.get())) return std::nullopt;
  const Py_ssize_t count = PyList_GET_SIZE(weight_names.get());
  std::vector<Tensor> weights;
  weights.reserve(count);
  for (Py_ssize_t i = 0; i < count; ++i) {
    // Borrowed. A name missing from _parameters is computed by a hook or a parametrization.
    PyObject* w = PyDict_GetItemWithError(params.get(), PyList_GET_ITEM(weight_names.get(), i));
    if (w == nullptr) {
      if (PyErr_Occurred()) throw python_error();
      return std::nullopt;
    }
    const Tensor* t = cpu_tensor(w, dtype);
    if (t == nullptr) return std::nullopt;
    weights.push_back(*t);
  }
  return weights;
}

// hx's tensors when they have exactly the shapes forward expects: nn.LSTM takes a tuple
// (h, c), nn.GRU / nn.RNN one tensor.
std::optional<std::vector<Tensor>> plain_state(PyObject* hx, const StepCall& c, int64_t B,
                                               at::ScalarType dtype) {
  std::vector<PyObject*> items;
  if (c.cell == Cell::kLstm) {
    if (!PyTuple_Check(hx) || PyTuple_GET_SIZE(hx) != 2) return std::nullopt;
    items = {PyTuple_GET_ITEM(hx, 0), PyTuple_GET_ITEM(hx, 1)};
  } else {
    items = {hx};
  }
  std::vector<Tensor> state;
  for (size_t i = 0; i < items.size(); ++i) {
    const Tensor* t = cpu_tensor(items[i], dtype);
    const int64_t width = i == 0 ? c.out : c.hidden;
    if (t == nullptr || t->sizes() != at::IntArrayRef({c.layers, B, width})) return std::nullopt;
    state.push_back(*t);
  }
  return state;
}

std::optional<StepCall> step_call(PyObject* module, PyObject* input, PyObject* hx) {
  const Names& n = names();
  if (!THPVariable_CheckExact(input)) return std::nullopt;
  const Tensor& in = THPVariable_Unpack(input);
  if (in.dim() != 3 || !in.is_cpu() || bool_attribute(module, n.bidirectional)) {
    return std::nullopt;
  }
  const std::optional<Cell> cell = cell_of(module);
  if (!cell || !extension_chosen()) return std::nullopt;
  StepCall c{*cell};
  c.layers = int_attribute(module, n.num_layers);
  if (c.layers > 1 && bool_attribute(module, n.training) &&
      float_attribute(module, n.dropout) != 0) {
    return std::nullopt;  // inter-layer dropout: the general path draws it
  }
  c.batch_first = bool_attribute(module, n.batch_first);
  c.x = c.batch_first ? in.transpose(0, 1) : in;
  if (c.x.size(0) == 0 || c.x.size(2) != int_attribute(module, n.input_size)) return std::nullopt;
  auto weights = plain_weights(module, in.scalar_type());
  if (!weights || weights->empty() || weights->size() % c.layers != 0) return std::nullopt;
  c.weights = std::move(*weights);
  c.per_layer = static_cast<int64_t>(c.weights.size()) / c.layers;
  c.bias = bool_attribute(module, n.bias);
  c.hidden = int_attribute(module, n.hidden_size);
  const int64_t proj = c.cell == Cell::kLstm ? int_attribute(module, n.proj_size) : 0;
  c.projection = proj > 0;
  c.out = c.projection ? proj : c.hidden;
  if (hx != Py_None) {
    auto state = plain_state(hx, c, c.x.size(1), in.scalar_type());
    if (!state) return std::nullopt;
    c.state = std::move(*state);
  }
  return c;
}

// Layer `layer`'s initial state tensor `i` (h, or the LSTM's c), (B, width).
Tensor layer_state(const StepCall& c, size_t i, int64_t layer, int64_t width) {
  if (c.state.empty()) return at::zeros({c.x.size(1), width}, c.x.options());
  return c.state[i].select(0, layer);
}

OptTensor weight_or_none(const StepCall& c, int64_t layer, bool present, int64_t k) {
  return present ? OptTensor(c.weights[layer * c.per_layer + k]) : std::nullopt;
}

// The final states stacked over layers, (L, B, .).
Tensor stacked(const std::vector<Tensor>& per_layer) {
  return per_layer.size() == 1 ? per_layer[0].unsqueeze(0) : at::stack(per_layer);
}

LayerOut lstm_without_workspace(const LstmOut& out) {
  return {std::get<0>(out), std::get<1>(out), std::get<2>(out)};
}

// Whether autograd records the call: grad mode on and a tensor of it requiring grad.
bool records_gradient(const StepCall& c) {
  if (!at::GradMode::is_enabled()) return false;
  auto wants_grad = [](const Tensor& t) { return t.requires_grad(); };
  return c.x.requires_grad() || std::any_of(c.weights.begin(), c.weights.end(), wants_grad) ||
         std::any_of(c.state.begin(), c.state.end(), wants_grad);
}

// Runs every layer; returns the last layer's output (time-major) and the stacked final
// states (h, and c for the LSTM). Without a gradient to take, the LSTM runs on the op that
// writes no workspace.
std::pair<Tensor, std::vector<Tensor>> run_layers(const StepCall& c) {
  static const auto lstm = find_op<LstmForwardSig>("fastrnn::ext_lstm_forward");
  static const auto lstm_inference = find_op<LstmInferenceSig>("fastrnn::ext_lstm_inference");
  const bool gradient = records_gradient(c);
  static const auto gru = find_op<GruForwardSig>("fastrnn::ext_gru_forward");
  static const auto rnn = find_op<RnnForwardSig>("fastrnn::ext_rnn_forward");
  std::vector<Tensor> h_n, c_n;
  Tensor x = c.x;
  for (int64_t l = 0; l < c.layers; ++l) {
    const Tensor& w_ih = c.weights[l * c.per_layer];
    const Tensor& w_hh = c.weights[l * c.per_layer + 1];
    const OptTensor b_ih = weight_or_none(c, l, c.bias, 2), b_hh = weight_or_none(c, l, c.bias, 3);
    const Tensor h0 = layer_state(c, 0, l, c.out);
    if (c.cell == Cell::kLstm) {
      const OptTensor w_hr = weight_or_none(c, l, c.projection, c.per_layer - 1);
      const Tensor c0 = layer_state(c, 1, l, c.hidden);
      auto [y, h, cell_state] =
          gradient ? lstm_without_workspace(lstm.call(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr,
                                                      std::nullopt))
                   : lstm_inference.call(x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, std::nullopt);
      x = y;
      h_n.push_back(h);
      c_n.push_back(cell_state);
    } else {
      auto [y, h, ws] = c.cell == Cell::kGru
                            ? gru.call(x, h0, w_ih, w_hh, b_ih, b_hh, std::nullopt)
                            : rnn.call(x, h0, w_ih, w_hh, b_ih, b_hh, std::nullopt,
                                       c.cell == Cell::kRnnTanh ? "tanh" : "relu");
      x = y;
      h_n.push_back(h);
    }
  }
  std::vector<Tensor> final_state{stacked(h_n)};
  if (c.cell == Cell::kLstm) final_state.push_back(stacked(c_n));
  return {c.batch_first ? x.transpose(0, 1) : x, final_state};
}

// (output, hidden) as forward returns it: hidden is h_n, or the LSTM's (h_n, c_n).
PyObject* forward_result(const Tensor& output, const std::vector<Tensor>& final_state) {
  THPObjectPtr out(THPVariable_Wrap(output));
  THPObjectPtr hidden(final_state.size() == 1
                          ? THPVariable_Wrap(final_state[0])
                          : PyTuple_Pack(2, THPObjectPtr(THPVariable_Wrap(final_state[0])).get(),
                                         THPObjectPtr(THPVariable_Wrap(final_state[1])).get()));
  if (!out || !hidden) throw python_error();
  PyObject* result = PyTuple_Pack(2, out.get(), hidden.get());
  if (result == nullptr) throw python_error();
  return result;
}

// module_step(module, input, hx) -> (output, hidden), or None when the call is not one it
// takes.
PyObject* module_step(PyObject* /*self*/, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  TORCH_CHECK(nargs == 3, "module_step(module, input, hx) takes 3 arguments, got ", nargs);
  const std::optional<StepCall> call = step_call(args[0], args[1], args[2]);
  if (!call) Py_RETURN_NONE;
  std::pair<Tensor, std::vector<Tensor>> result;
  {
    pybind11::gil_scoped_release no_gil;
    result = run_layers(*call);
  }
  return forward_result(result.first, result.second);
  END_HANDLE_TH_ERRORS
}

PyMethodDef methods[] = {
    {"module_step", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(module_step)),
     METH_FASTCALL,
     "module_step(module, input, hx): a fastrnn.LSTM/GRU/RNN module's forward in one call, or "
     "None when the call needs forward's general path (see fastrnn/nn.py)."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

PyMethodDef* module_step_methods() { return methods; }

}  // namespace fastrnn::binding
