#!/usr/bin/env bash
# Installs what fastrnn needs, without pulling CUDA wheels onto a CPU machine.
# An existing torch (e.g. a CUDA build on a GPU machine) is kept as it is.
set -euo pipefail
PYTHON=${PYTHON:-python}
pip_install() { "$PYTHON" -m pip install --quiet --disable-pip-version-check "$@"; }

if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  # The CPU build, never an unpinned torch: from the machine's wheel store or registries
  # where they carry it (CI), else from PyTorch's CPU index (plain PyPI has only the CUDA
  # build for Linux x86_64).
  pip_install "torch==2.13.0+cpu" --extra-index-url https://download.pytorch.org/whl/cpu \
      --timeout 20 --retries 1 || pip_install "torch==2.13.0"
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
pip_install --no-build-isolation --no-deps -e .
