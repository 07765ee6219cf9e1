// Typed handles of the extension's forward ops (csrc/ops.cpp), for the C++ code that calls
// them through the dispatcher: the autograd formulas (autograd.cpp) below the Autograd key,
// and the modules' short forward (module_step.cpp) from the top, autograd included.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

#include <tuple>

#include "binding.h"

namespace fastrnn::binding {

// y, h_T, c_T, workspace / y, h_T, workspace.
using LstmOut = std::tuple<Tensor, Tensor, Tensor, Tensor>;
using LayerOut = std::tuple<Tensor, Tensor, Tensor>;

// x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, lengths.
using LstmForwardSig = LstmOut(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                               const Tensor&, const OptTensor&, const OptTensor&,
                               const OptTensor&, const OptTensor&);
// The same arguments; y, h_T, c_T (no workspace).
using LstmInferenceSig = LayerOut(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                                  const Tensor&, const OptTensor&, const OptTensor&,
                                  const OptTensor&, const OptTensor&);
// x, h0, w_ih, w_hh, b_ih, b_hh, lengths.
using GruForwardSig = LayerOut(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                               const OptTensor&, const OptTensor&, const OptTensor&);
// x, h0, w_ih, w_hh, b_ih, b_hh, lengths, nonlinearity ("tanh" or "relu").
using RnnForwardSig = LayerOut(const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                               const OptTensor&, const OptTensor&, const OptTensor&,
                               c10::string_view);

template <typename Signature>
c10::TypedOperatorHandle<Signature> find_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

}  // namespace fastrnn::binding
