// The Python functions of fastrnn._C (module_step.cpp), which ops.cpp's PyInit__C adds to the
// module.
#pragma once

#include <Python.h>

namespace fastrnn::binding {

// The method table, ended by a null entry.
PyMethodDef* module_step_methods();

}  // namespace fastrnn::binding
