#!/usr/bin/env bash
# Installs what fastrnn needs, without pulling CUDA wheels onto a CPU machine.
# An existing torch (e.g. a CUDA build on a GPU machine) is kept as it is.
set -euo pipefail
PYTHON=${PYTHON:-python}
pip_install() { "$PYTHON" -m pip install --quiet --disable-pip-version-check "$@"; }

if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  pip_install "torch==2.13.0"      # the CPU build; never an unpinned torch
fi
"$PYTHON" -c "import triton" 2>/dev/null || pip_install "triton==3.9.0"   # the version CI tests the kernels with
for module_package in numpy:numpy pytest:pytest pytest_benchmark:pytest-benchmark \
                      expecttest:expecttest ninja:ninja; do
  module=${module_package%%:*}; package=${module_package#*:}
  "$PYTHON" -c "import $module" 2>/dev/null || pip_install "$package"
done
pip_install --no-build-isolation --no-deps -e .
