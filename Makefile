PYTHON ?= python
PYTEST = $(PYTHON) -m pytest

.PHONY: install demo bench test test-all test-gpu cpp-test gpu-static gpu-static-full
install:
	PYTHON=$(PYTHON) bash scripts/install.sh

# The main job: a byte-level LSTM LM on the Python standard library's source, trained
# with fastrnn and with torch.nn side by side (one thread each, so the comparison is fair),
# then sampled (30-50 s of training each on one core of the development machines, plus
# the extension build on the first run).
demo: install
	$(PYTHON) examples/char_lm.py --threads 1

# Benchmarks of every kernel against its baselines on the device present: appends to
# benchmarks/results/results.csv, writes results.md and PNG plots (matplotlib optional).
bench: install
	$(PYTHON) -c "import matplotlib" 2>/dev/null || $(PYTHON) -m pip install --quiet matplotlib \
		|| echo "matplotlib could not be installed: results as CSV and Markdown only"
	$(PYTHON) -m benchmarks.run

# The test suite as CI runs it (Triton kernels under the interpreter when there is no GPU).
test: install
	$(PYTEST) -q -m "not slow"

test-all: install
	$(PYTEST) -q

# C++ unit tests of the torch-free kernels (csrc/include/fastrnn) via CMake and ctest; the
# CUDA kernel test is compiled when nvcc is found and runs only where a GPU is present.
CPP_BUILD ?= build/cmake
cpp-test:
	cmake -S . -B $(CPP_BUILD) -DCMAKE_BUILD_TYPE=Release
	cmake --build $(CPP_BUILD) -j 2
	ctest --test-dir $(CPP_BUILD) --output-on-failure

# The static GPU check: compiles the launches the Triton kernels can choose for sm_90 and
# sm_80 without a GPU and fails on launches that would not fit, not be co-resident, race
# across time steps, read exchanged data through a stale cache or lose their barrier
# order. CI's check (gpu-static) compiles sm_90's headline grid and a fixed sample into
# build/gpu-static and compares them with the committed table, which records a hash of the
# kernel, planner and check sources (sm_80 is left to gpu-static-full: CI's cold budget).
# When those sources changed, run gpu-static-full (sm_90's whole grid and sm_80's sample,
# about 45 min on 2 cores from a cold Triton cache: rewrites benchmarks/results/gpu_static_sm*
# and the step-time model's table of those plans, step_model_sm90.md)
# and commit the tables. Neither builds the extension.
STATIC_JOBS ?= 2
gpu-static:
	env -u TRITON_INTERPRET $(PYTHON) -m benchmarks.gpu_static --ci --arch 90 --jobs $(STATIC_JOBS)

gpu-static-full:
	env -u TRITON_INTERPRET $(PYTHON) -m benchmarks.gpu_static --arch 90 --jobs 2
	env -u TRITON_INTERPRET $(PYTHON) -m benchmarks.gpu_static --ci --arch 80 --jobs 2 --out benchmarks/results
	$(PYTHON) -m benchmarks.step_model_table
