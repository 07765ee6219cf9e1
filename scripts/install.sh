#!/usr/bin/env bash
# Installs what fastrnn needs, without pulling CUDA wheels onto a CPU machine.
# An existing torch (e.g. a CUDA build on a GPU machine) is kept as it is.
set -euo pipefail
PYTHON=${PYTHON:-python}
pip_install() { "$PYTHON" -m pip install --quiet --disable-pip-version-check "$@"; }

TORCH_CPU_INDEX=${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}
reachable() {  # one quick request, no retries: an unreachable index costs seconds, not minutes
  "$PYTHON" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=5)" "$1" \
    >/dev/null 2>&1
}
if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  # The CPU build, never an unpinned torch. First the package registry pip is configured
  # with (the machine's wheel store, CI's mirror), quietly; then PyTorch's CPU index, only
  # if it answers; then the registry's plain torch==2.13.0 (on Linux x86_64 PyPI that is
  # the CUDA build, several GB).
  if pip_install "torch==2.13.0+cpu" >/dev/null 2>&1; then
    :
  elif reachable "$TORCH_CPU_INDEX/torch/"; then
    pip_install "torch==2.13.0+cpu" --extra-index-url "$TORCH_CPU_INDEX" --timeout 20 --retries 0
  else
    echo "install: torch 2.13.0+cpu is not in the package registry and $TORCH_CPU_INDEX does" \
         "not answer; installing torch==2.13.0 from the registry" >&2
    pip_install "torch==2.13.0"
  fi
fi
"$PYTHON" -c "import triton" 2>/dev/null || pip_install "triton==3.9.0"   # the version CI tests the kernels with
for module_package in numpy:numpy pytest:pytest pytest_benchmark:pytest-benchmark \
                      expecttest:expecttest ninja:ninja; do
  module=${module_package%%:*}; package=${module_package#*:}
  "$PYTHON" -c "import $module" 2>/dev/null || pip_install "$package"
done
# The editable install builds without isolation, so the build requirements of
# pyproject.toml come first (a stock venv has an older setuptools and no wheel).
"$PYTHON" -c "import setuptools, sys; sys.exit(int(setuptools.__version__.split('.')[0]) < 64)" \
  2>/dev/null || pip_install "setuptools>=64"
"$PYTHON" -c "import wheel" 2>/dev/null || pip_install wheel
# fastrnn itself, unless this checkout is what is installed and its extension is newer than
# every C++/CUDA source and setup.py (CI runs `make install` and then `make test`, which would
# otherwise build the extension twice).
so=$(ls fastrnn/_C*.so 2>/dev/null | head -n 1 || true)
if [ -n "$so" ] && [ -z "$(find csrc setup.py -newer "$so" -print -quit 2>/dev/null)" ] \
    && (here=$(pwd) && cd / && "$PYTHON" -c "import os, sys, fastrnn; sys.exit(os.path.realpath(os.path.dirname(fastrnn.__file__)) != os.path.realpath(sys.argv[1]))" "$here/fastrnn") 2>/dev/null; then
  exit 0
fi
pip_install --no-build-isolation --no-deps -e .
